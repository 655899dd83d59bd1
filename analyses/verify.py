"""Read every byte of a directory the project wrote and say what is wrong with it: a statistics store, a converted
checkpoint or an atlas (`scripts/verify.py DIR`).

- A statistics store: its manifest, the committed generation it names, every chunk file the manifest records
  (a deleted one), every chunk of every array read through its checksum (version 2 stores; version 1 stores
  carry none, so only what zstd itself detects), each array's shape against the manifest, and the counts
  against each other: `tokens` = sum of `pos_tokens`, `pos_tokens[0]` = `sequences` (one BOS a window),
  `token_occ` sums to the tokens after BOS, each layer's `act` = its `pos_act` summed over positions, and each
  token layer's `tok_act` summed over the vocabulary = its `act` less the activations on BOS (position 0).
- A converted checkpoint: its manifest, its recorded chunk files, every chunk read through its checksum, and
  each parameter's shape.
- An atlas: its manifest (`data/atlas.js`), `index.html`, and for every built layer of every model its summary
  (one row a neuron) and its blocks of neuron records, each parsed.

Problems are listed, not raised: one damaged chunk does not hide the next. Every chunk is read once, a chunk
at a time: the count checks use sums gathered on that pass, so host memory stays at one chunk plus a few
[layers, ffn] arrays.
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np

from analyses.collection import store as st
from analyses.neurons.data_files import read_js
from opt_jax import arrays
from opt_jax import checkpoint as ckpt
from opt_jax.errors import MissingError, OptJaxError
from opt_jax.progress import Progress


@dataclasses.dataclass(frozen=True)
class Problem:
    """One thing wrong: `where` (an array, a file or a check) and `what`."""

    where: str
    what: str

    def __str__(self) -> str:
        return f"{self.where}: {self.what}"


@dataclasses.dataclass
class Report:
    """What was checked (`kind`: "statistics", "checkpoint" or "atlas"; `items`: chunks or files read) and the
    problems found (none: the directory is sound)."""

    path: str
    kind: str
    items: int
    problems: list[Problem]

    @property
    def ok(self) -> bool:
        return not self.problems


def verify(path: str, verbose: bool = True) -> Report:
    """Check the directory at path, whichever of the three it is; `MissingError` when it is none of them."""
    path = os.path.abspath(path)
    if os.path.isfile(os.path.join(path, st.MANIFEST)):
        return _verify_stats(path, verbose)
    if os.path.isfile(os.path.join(path, ckpt.MANIFEST)):
        return _verify_checkpoint(path, verbose)
    if os.path.isfile(os.path.join(path, "data", "atlas.js")):
        return _verify_atlas(path, verbose)
    raise MissingError(f"{path}: not a statistics store ({st.MANIFEST}), a converted checkpoint ({ckpt.MANIFEST}) "
                       "or an atlas (data/atlas.js)")


def _open_all(root: str, shapes: dict, open_array, problems: list, verbose: bool) -> tuple:
    """({name: array} of those that open with the manifest's shape, their chunk count, a Progress over them);
    the others become Problems."""
    opened = {}
    for name, shape in shapes.items():
        try:
            array = open_array(name)
        except OptJaxError as e:
            problems.append(Problem(name, str(e)))
            continue
        if list(array.shape) != list(shape):
            problems.append(Problem(name, f"shape {list(array.shape)}, the manifest says {shape}"))
        else:
            opened[name] = array
    total = sum(len(st.chunk_blocks(a.shape, a.chunk_layout.write_chunk.shape)) for a in opened.values())
    return opened, total, Progress(f"verify {os.path.basename(root)}", total, " chunks", enabled=verbose)


def _read_blocks(array, name: str, shape, problems: list, progress: Progress):
    """Read `array` chunk by chunk (yielding (block, values)); a damaged chunk becomes a Problem."""
    chunk = tuple(array.chunk_layout.write_chunk.shape)
    for block in st.chunk_blocks(shape, chunk):
        try:
            yield block, array[block].read().result()
        except OptJaxError as e:
            problems.append(Problem(name, str(e)))
        progress.update()


def _verify_stats(root: str, verbose: bool) -> Report:
    problems = []
    try:
        manifest = st.read_manifest(root)
    except (OptJaxError, ValueError) as e:
        return Report(root, "statistics", 0, [Problem(st.MANIFEST, str(e))])
    store = st.StatsStore(root, manifest)
    gen_dir = store.generation_dir
    if not os.path.isdir(gen_dir):
        return Report(root, "statistics", 0, [Problem(st.MANIFEST, f"names generation {manifest['generation']}, "
                                                                   f"but {gen_dir} is missing")])
    problems += [Problem(os.path.relpath(f, gen_dir), f"missing from {os.path.basename(gen_dir)} (the manifest "
                                                      "records it)")
                 for f in arrays.missing_chunks(gen_dir, manifest.get("chunks", {}))]
    if manifest["version"] < 2 and verbose:
        print(f"{root}: a version 1 store: its chunks carry no checksums (only zstd's own checks apply)")
    opened, total, progress = _open_all(root, manifest["arrays"], store.array, problems, verbose)
    counts = _Counts(opened)
    for name, array in opened.items():
        for block, values in _read_blocks(array, name, array.shape, problems, progress):
            counts.add(name, block, values)
    if not problems:
        problems += counts.check(manifest)
    return Report(root, "statistics", total, problems)


class _Counts:
    """What the count checks need, gathered from the chunks as the checksum pass reads them (each chunk is read
    once): `act`, `pos_tokens` and `token_occ` whole, each layer's `pos_act` summed over positions and at BOS,
    and each token layer's `tok_act` summed over the vocabulary; all [layers, ffn] or smaller."""

    def __init__(self, opened: dict):
        self.kept = {name: np.zeros(opened[name].shape, np.int64) for name in ("act", "pos_tokens", "token_occ")
                     if name in opened}
        if "pos_act" in opened:
            layers, _, ffn = opened["pos_act"].shape
            self.kept["pos_sum"] = np.zeros((layers, ffn), np.int64)
            self.kept["bos"] = np.zeros((layers, ffn), np.int64)
        if "tok_act" in opened:
            token_layers, _, ffn = opened["tok_act"].shape
            self.kept["tok_sum"] = np.zeros((token_layers, ffn), np.int64)

    def add(self, name: str, block: tuple, values: np.ndarray) -> None:
        """Take in one chunk of array `name` (its block of slices, its values)."""
        if name in ("act", "pos_tokens", "token_occ"):
            self.kept[name][block] = values
        elif name == "pos_act":  # chunks hold whole positions: [1, seq, neurons]
            layer, _, neurons = block
            self.kept["pos_sum"][layer.start, neurons] = values[0].sum(axis=0)
            self.kept["bos"][layer.start, neurons] = values[0, 0]
        elif name == "tok_act":  # chunks hold whole neuron rows of a block of tokens: [1, tokens, ffn]
            self.kept["tok_sum"][block[0].start, block[2]] += values[0].sum(axis=0)

    def check(self, manifest: dict) -> list[Problem]:
        """The counts against each other (see the module's docstring)."""
        problems, kept = [], self.kept
        pos_tokens, token_occ = kept.get("pos_tokens"), kept.get("token_occ")
        if pos_tokens is not None:
            if int(pos_tokens.sum()) != manifest["tokens"]:
                problems.append(Problem("tokens", f"the manifest counts {manifest['tokens']}, pos_tokens sums to "
                                                  f"{int(pos_tokens.sum())}"))
            if len(pos_tokens) and int(pos_tokens[0]) != manifest["sequences"]:
                problems.append(Problem("sequences", f"the manifest counts {manifest['sequences']} windows, "
                                                     f"pos_tokens[0] (their BOS) is {int(pos_tokens[0])}"))
        if token_occ is not None and int(token_occ.sum()) != manifest["tokens"] - manifest["sequences"]:
            problems.append(Problem("token_occ", f"sums to {int(token_occ.sum())}, but the tokens after BOS are "
                                                 f"{manifest['tokens'] - manifest['sequences']}"))
        if "act" not in kept or "pos_sum" not in kept:
            return problems
        act = kept["act"]  # [layers, ffn]
        for layer in range(act.shape[0]):
            if not np.array_equal(kept["pos_sum"][layer], act[layer]):
                bad = int(np.flatnonzero(kept["pos_sum"][layer] != act[layer])[0])
                problems.append(Problem(f"act[{layer}]", f"differs from pos_act[{layer}] summed over positions "
                                                         f"(first at neuron {bad})"))
        for t, layer in enumerate(manifest.get("token_layers", []) if "tok_sum" in kept else []):
            after_bos = act[layer] - kept["bos"][layer]  # [ffn]
            if not np.array_equal(kept["tok_sum"][t], after_bos):
                bad = int(np.flatnonzero(kept["tok_sum"][t] != after_bos)[0])
                problems.append(Problem(f"tok_act[{t}]", f"summed over the vocabulary differs from layer {layer}'s "
                                                         f"activations after BOS (first at neuron {bad})"))
        return problems


def _verify_checkpoint(root: str, verbose: bool) -> Report:
    try:
        manifest = ckpt.read_manifest(root)
    except (OptJaxError, ValueError) as e:
        return Report(root, "checkpoint", 0, [Problem(ckpt.MANIFEST, str(e))])
    params_dir = os.path.join(root, ckpt.PARAMS_DIR)
    problems = [Problem(os.path.relpath(f, params_dir), "missing (the manifest records it)")
                for f in arrays.missing_chunks(params_dir, manifest.get("chunks", {}))]
    opened, total, progress = _open_all(root, manifest["params"], lambda path: ckpt.open_array(root, path),
                                        problems, verbose)
    for path, array in opened.items():
        for _ in _read_blocks(array, path, array.shape, problems, progress):
            pass
    return Report(root, "checkpoint", total, problems)


def _verify_atlas(root: str, verbose: bool) -> Report:
    problems, items = [], 0

    def load(relative: str, key: str):
        nonlocal items
        items += 1
        path = os.path.join(root, relative)
        try:
            got, payload = read_js(path)
        except FileNotFoundError:
            problems.append(Problem(relative, "missing"))
            return None
        except (ValueError, OSError) as e:
            problems.append(Problem(relative, f"does not parse ({e})"))
            return None
        if got != key:
            problems.append(Problem(relative, f"holds key {got!r}, expected {key!r}"))
            return None
        return payload

    manifest = load(os.path.join("data", "atlas.js"), "atlas")
    if not os.path.isfile(os.path.join(root, "index.html")):
        problems.append(Problem("index.html", "missing (the page that opens the atlas)"))
    if manifest is None:
        return Report(root, "atlas", items, problems)
    block = manifest.get("block", 128)
    for model in manifest.get("models", []):
        m = model["index"]
        for layer in model.get("built", []):
            summary = load(os.path.join("data", f"m{m}", f"L{layer}", "summary.js"), f"m{m}/L{layer}/summary")
            if summary is not None and len(summary.get("freq", [])) != model["ffn"]:
                problems.append(Problem(f"data/m{m}/L{layer}/summary.js",
                                        f"{len(summary.get('freq', []))} rows, the model has {model['ffn']} neurons"))
            for b in range(-(-model["ffn"] // block)):
                load(os.path.join("data", f"m{m}", f"L{layer}", f"B{b}.js"), f"m{m}/L{layer}/B{b}")
        if verbose:
            print(f"{root}: model {model['name']}: {len(model.get('built', []))} layers read", flush=True)
    return Report(root, "atlas", items, problems)


def summary(report: Report) -> str:
    """The report in words: a line a problem, then the verdict."""
    lines = [f"  {p}" for p in report.problems]
    verdict = (f"{report.path}: {report.kind}, {report.items:,} chunks or files read: "
               + ("sound" if report.ok else f"{len(report.problems)} problem(s)"))
    return "\n".join(lines + [verdict])

