"""The statistics store: zarr3 arrays and `manifest.json`, committed atomically, readable by any tool.

Contract: `<out>/manifest.json` and arrays opened with tensorstore as
`{"driver": "zarr3", "kvstore": "file://<out>/<name>"}`. Each `<out>/<name>` is a symlink into
`<out>/data-<generation>/<name>`. A flush writes the new totals into a fresh generation
directory, then replaces `manifest.json` (the commit point), then repoints the symlinks and
removes the old generation. A crash at any moment leaves the manifest describing a complete
generation; opening the store repairs the symlinks and discards any unfinished generation.

Version 2 (since 2026-12) checksums every chunk (crc32c, `opt_jax.arrays`) and records in the manifest the
chunk files each commit wrote (`chunks`), so that a flipped, truncated or deleted chunk is a `StatsError`
naming the array and the file, never other numbers. Version 1 stores (no checksums, no inventory) keep reading
and resuming as they are.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import os

import numpy as np
import tensorstore as ts

from opt_jax import arrays
from opt_jax import atomic
from opt_jax import disk
from opt_jax import lock
from opt_jax.atomic import write_json as write_json_atomic
from opt_jax.errors import StatsError

MANIFEST = "manifest.json"
FORMAT = "opt_jax.stats"
VERSION = 2
VERSIONS = (1, 2)  # read and resumed; new stores are VERSION
_CODECS_V1 = [{"name": "bytes", "configuration": {"endian": "little"}},
              {"name": "zstd", "configuration": {"level": 3}}]
CODECS = {1: _CODECS_V1, 2: _CODECS_V1 + [arrays.CHECKSUM]}  # by format version
# Blocks a commit writes while it reads and adds the next ones (each at most one chunk): the default of
# `StatsStore.writes_in_flight`.
WRITES_IN_FLIGHT = 2
# Cells per chunk of the large arrays (32 MiB of int64): bounds what a commit or a reader holds at once,
# whatever the vocabulary, sequence length or width.
CHUNK_CELLS = 1 << 22


def array_layouts(num_layers: int, num_token_layers: int, seq_len: int, vocab: int, ffn: int) -> dict:
    """name -> (shape, chunk shape) of every count array (all int64, zero-filled)."""
    return {
        "act": ((num_layers, ffn), (1, ffn)),
        # Whole positions, blocks of neurons: a [seq, ffn] layer is 604 MB of int64 at 66b.
        "pos_act": ((num_layers, seq_len, ffn), (1, seq_len, max(1, min(ffn, CHUNK_CELLS // seq_len)))),
        "pos_tokens": ((seq_len,), (seq_len,)),
        "token_occ": ((vocab,), (vocab,)),
        # Blocks of whole token rows: a [vocab, ffn] layer is 14.8 GB of int64 at 66b.
        "tok_act": ((num_token_layers, vocab, ffn), (1, max(1, min(vocab, CHUNK_CELLS // ffn)), ffn)),
    }


VALUE_HIST = "value_hist"  # [layers, ffn, bins]: activations by value bin (`analyses.collection.values`)


def value_layouts(num_layers: int, ffn: int, bins: int) -> dict:
    """name -> (shape, chunk shape) of `value_hist` [layers, ffn, bins], one layer per chunk (none when bins = 0)."""
    return {VALUE_HIST: ((num_layers, ffn, bins), (1, ffn, bins))} if bins else {}


EXAMPLE_KINDS = ("top", "random")  # the sets of every store with examples, k slots each
QUANTILE = "quantile"  # the quantile set, with --quantile_examples K: K slots per value bin (bins x K)
EXAMPLE_FIELDS = {"window": ("int32", -1), "position": ("int32", -1), "value": ("float32", 0.0)}


def example_name(kind: str, field: str) -> str:
    """The array holding one field of one example set, e.g. `examples_top_value`."""
    return f"examples_{kind}_{field}"


def context_name(kind: str) -> str:
    """The array of one example set's context activations, e.g. `context_top_value` (`analyses.collection.contexts`)."""
    return f"context_{kind}_value"


def example_slots(manifest: dict) -> dict:
    """kind -> slots per neuron of a store's example sets: k for top and random, and with quantile examples
    bins x K for `quantile` (slots j K .. j K + K - 1 hold value bin j's); {} for a store without examples."""
    k = int(manifest.get("examples", 0))
    if not k:
        return {}
    quantile = int(manifest.get("quantile_examples", 0))
    return {kind: k for kind in EXAMPLE_KINDS} | ({QUANTILE: quantile * value_bins(manifest)} if quantile else {})


def value_bins(manifest: dict) -> int:
    """Bins of a store's `value_hist` (its manifest's inner `value_edges` plus one; 0 without the histogram)."""
    return len(manifest["value_edges"]) + 1 if manifest.get("value_edges") else 0


def example_layouts(num_layers: int, ffn: int, k: int, seq_len: int, quantile_slots: int = 0) -> dict:
    """name -> (shape, chunk shape, dtype, fill value) of the example arrays and `windows` (none when k = 0).

    `examples_{top,random}_{window,position,value}` [layers, ffn, k], one layer per chunk (window and
    position -1, value 0 in empty slots), with `quantile_slots` (bins x K) `examples_quantile_*` [layers, ffn,
    bins x K] alike; `windows` [windows, seq_len] int32, the token ids of every window
    of the run's stream (-1 after the window's end), growing with each commit, whole rows per chunk.
    """
    if not k:
        return {}
    slots = {kind: k for kind in EXAMPLE_KINDS} | ({QUANTILE: quantile_slots} if quantile_slots else {})
    out = {example_name(kind, field): ((num_layers, ffn, c), (1, ffn, c), dtype, fill)
           for kind, c in slots.items() for field, (dtype, fill) in EXAMPLE_FIELDS.items()}
    out["windows"] = ((0, seq_len), (max(1, CHUNK_CELLS // seq_len), seq_len), "int32", -1)
    return out


def chunk_blocks(shape, chunk) -> list[tuple[slice, ...]]:
    """The chunk-aligned blocks covering an array, in C order; the last block of each axis is cut at its end."""
    axes = [[slice(start, min(start + step, size)) for start in range(0, size, step)]
            for size, step in zip(shape, chunk)]
    return [tuple(block) for block in itertools.product(*axes)]


def from_layers(layer_delta):
    """A block delta (for `StatsStore.commit`) from a function of the layer index giving that layer whole.

    For deltas computed a layer at a time: the last layer is kept, so each is computed once, and a
    commit then holds one layer of that array in host memory (plus one block).
    """
    last = {}

    def block_delta(block):
        layer = block[0].start
        if layer not in last:
            last.clear()
            last[layer] = np.asarray(layer_delta(layer))
        return last[layer][block[1:]][None]  # [1, ...]

    return block_delta


def generation_dir(root: str, generation: int) -> str:
    """The directory of one committed generation of the store at root."""
    return os.path.join(root, f"data-{generation:06d}")


def _spec(path: str) -> dict:
    return {"driver": "zarr3", "kvstore": {"driver": "file", "path": path}}


def create_array(path: str, shape, chunk, dtype: str = "int64", fill_value=0, version: int = VERSION):
    """A new zarr3 array at path (replacing one there) with the codecs of store format `version`."""
    metadata = {"shape": list(shape), "data_type": dtype, "fill_value": fill_value, "codecs": CODECS[version],
                "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": list(chunk)}}}
    return ts.open(_spec(path) | {"metadata": metadata, "create": True, "delete_existing": True}).result()


def _open(path: str) -> ts.TensorStore:
    return ts.open(_spec(path), open=True).result()


def _checked(root: str, name: str, path: str) -> arrays.Checked:
    """The committed array at `path` (`name` of the store at root), whose damaged chunks are `StatsError`s."""
    try:
        store = _open(path)
    except ValueError as e:
        raise StatsError(f"{root}: the array {name!r} is missing or unreadable ({path}): {e}. Its counts are "
                         "lost: collect again into a new directory (or pass --overwrite)") from None

    def damaged(chunk: str | None, cause: str) -> StatsError:
        return StatsError(f"{root}: the array {name!r} has a damaged chunk ({chunk or path}: {cause}). Its counts "
                          "are lost: collect again into a new directory (or pass --overwrite); "
                          "`scripts/verify.py` lists every damaged chunk")

    return arrays.Checked(store, damaged)


def check_chunks(root: str, manifest: dict) -> None:
    """Refuse a store whose committed generation is gone or has lost chunk files its manifest records."""
    gen_dir = generation_dir(root, manifest["generation"])
    if not os.path.isdir(gen_dir):
        raise StatsError(f"{root}: {MANIFEST} names generation {manifest['generation']}, but {gen_dir} is missing; "
                         "the store is damaged: collect again into a new directory (or pass --overwrite)")
    gone = arrays.missing_chunks(gen_dir, manifest.get("chunks", {}))
    if gone:
        raise StatsError(f"{root}: {len(gone)} chunk file(s) of the committed generation are missing ({gone[0]}"
                         f"{', ...' if len(gone) > 1 else ''}); the store is damaged: collect again into a new "
                         "directory (or pass --overwrite); `scripts/verify.py` lists them all")


def read_manifest(root: str) -> dict:
    """The manifest of a statistics directory, with a clear error when there is none."""
    path = os.path.join(root, MANIFEST)
    if not os.path.isfile(path):
        raise StatsError(f"{root}: not a statistics directory ({MANIFEST} is missing)")
    with open(path) as f:
        manifest = json.load(f)
    if manifest.get("format") != FORMAT or manifest.get("version") not in VERSIONS:
        raise StatsError(f"{path}: unsupported format {manifest.get('format')!r} v{manifest.get('version')!r} "
                         f"(expected {FORMAT} v{'/'.join(map(str, VERSIONS))})")
    return manifest


class StatsStore:
    """A statistics directory being written: holds the manifest and commits new totals generation by generation."""

    def __init__(self, root: str, manifest: dict, writes_in_flight: int = WRITES_IN_FLIGHT):
        self.root = os.path.abspath(root)
        self.manifest = manifest
        self.writes_in_flight = writes_in_flight  # blocks a commit writes while it reads the next
        self.version = manifest["version"]  # a version 1 store stays one: its unchanged chunks are linked

    @classmethod
    def create(cls, root: str, manifest: dict, layouts: dict, version: int = VERSION) -> "StatsStore":
        """A fresh store: generation 0 holds zero arrays; the manifest is written last. (`version` 1 only to test
        that the stores written before version 2 keep working.)"""
        root = os.path.abspath(root)
        os.makedirs(root, exist_ok=True)
        for name in os.listdir(root):
            if name.startswith("data-") or name == MANIFEST or name in layouts:
                _remove(os.path.join(root, name))
        gen_dir = generation_dir(root, 0)
        for name, (shape, chunk, *kind) in layouts.items():  # kind: (dtype, fill value), default int64 zeros
            create_array(os.path.join(gen_dir, name), shape, chunk, *kind, version=version)
        manifest = manifest | {"format": FORMAT, "version": version, "generation": 0,
                               "arrays": {n: list(layout[0]) for n, layout in layouts.items()},
                               **({"chunks": arrays.inventory(gen_dir, layouts)} if version >= 2 else {})}
        write_json_atomic(os.path.join(root, MANIFEST), manifest)
        store = cls(root, manifest)
        store._link()
        return store

    @classmethod
    def open(cls, root: str) -> "StatsStore":
        """An existing store, repaired after any crash (links to the committed generation, no stray data)."""
        store = cls(root, read_manifest(root))
        check_chunks(store.root, store.manifest)
        store._link()
        store._remove_other_generations()
        return store

    @property
    def generation_dir(self) -> str:
        return generation_dir(self.root, self.manifest["generation"])

    def array(self, name: str) -> arrays.Checked:
        """The committed array `name`."""
        return _checked(self.root, name, os.path.join(self.generation_dir, name))

    def commit(self, deltas: dict, manifest_updates: dict, replacements: dict | None = None,
               values: dict | None = None, shapes: dict | None = None, new: dict | None = None) -> None:
        """Write old totals + deltas as a new generation, then commit it with the manifest updates.

        `deltas[name]` is an array of the full shape, or a function of a block (a tuple of slices, one per
        axis, as `chunk_blocks` gives them) returning the delta of that block, so that no more than one
        chunk of a large array is in host memory at once; missing names are copied unchanged.
        `values[name]` is a function of a block giving its new value instead (not a sum: example sets,
        windows), or None where the block is unchanged (its stored chunk is then linked, not rewritten);
        `shapes[name]` a new shape for `name` (the same chunks; `windows` grows).
        `replacements[name]` is a whole 1-D array (any length) that takes the place of `name`.
        `new[name]` = (shape, chunk shape, dtype, fill value): an array added to the store (or taking the place of
        one it has, whatever its old layout), its blocks from `values[name]` (the fill value where that gives None).

        A full disk (or another OS error of writing) is a `StatsError` saying so, with the space needed and free;
        the last commit stays as it was and a rerun resumes from it. The arrays rewritten whole need at least
        their committed size again: with less free, the commit is refused before it writes.
        """
        replacements, values, shapes, new = replacements or {}, values or {}, shapes or {}, new or {}
        old_gen, new_gen = self.manifest["generation"], self.manifest["generation"] + 1
        new_dir = generation_dir(self.root, new_gen)
        needed = sum(disk.used_bytes(os.path.join(self.generation_dir, name)) for name in self.manifest["arrays"]
                     if name not in values)
        what, then = (f"committing generation {new_gen}", f"the last commit (generation {old_gen}) is intact: make "
                      "room and run the same command again to resume from it")
        disk.check_free(self.root, needed, StatsError, what, then)
        try:
            with disk.writing(self.root, StatsError, what, then, needed):
                self._commit(new_gen, new_dir, deltas, manifest_updates, replacements, values, shapes, new)
        except StatsError:
            if read_manifest(self.root)["generation"] == old_gen:
                _remove(new_dir)  # its space back at once (a rerun would discard it too)
            raise

    def _commit(self, new_gen: int, new_dir: str, deltas: dict, manifest_updates: dict, replacements: dict,
                values: dict, shapes: dict, added: dict) -> None:
        """`commit`'s work: write the generation new_gen into new_dir, then the manifest naming it."""
        _remove(new_dir)
        for name, value in replacements.items():
            value = np.asarray(value, np.int64)  # [m]
            store = create_array(os.path.join(new_dir, name), value.shape, (max(1, min(len(value), 1 << 22)),),
                            version=self.version)
            if len(value):
                store.write(value).result()
        writes = []
        try:
            for name in [*self.manifest["arrays"], *(n for n in added if n not in self.manifest["arrays"])]:
                if name in replacements:
                    continue
                if name in added:
                    shape, chunk, dtype, fill = added[name]
                else:
                    old = self.array(name)
                    chunk, dtype = old.chunk_layout.write_chunk.shape, old.dtype.name
                    shape, fill = tuple(shapes.get(name, old.shape)), old.fill_value.item()
                new = create_array(os.path.join(new_dir, name), shape, chunk, dtype, fill, self.version)
                if name in added and name not in values:
                    continue  # the fill value throughout
                delta = deltas.get(name)
                for block in chunk_blocks(shape, chunk):
                    if name in values:
                        value = values[name](block)
                        if value is None:
                            if name not in added:
                                self._link_chunk(name, new_dir, block, chunk)
                            continue
                    else:
                        value = old[block].read().result()
                        if delta is not None:
                            value = value + (delta(block) if callable(delta) else np.asarray(delta)[block])
                    if np.any(value != fill):
                        writes.append(new[block].write(value))  # compressed and written meanwhile
                    while len(writes) > self.writes_in_flight:
                        writes.pop(0).result()
        except BaseException:  # interrupted: no write may land after the caller (or a rerun) cleans up
            for write in writes:
                try:
                    write.result()
                except Exception:  # noqa: BLE001 - the interruption is the error to report
                    pass
            raise
        for write in writes:
            write.result()
        _fsync_tree(new_dir)
        names = self.manifest["arrays"] | {n: list(v) for n, v in shapes.items()} | \
            {n: [len(v)] for n, v in replacements.items()} | {n: list(layout[0]) for n, layout in added.items()}
        self.manifest = self.manifest | manifest_updates | {"generation": new_gen, "arrays": names}
        if self.version >= 2:
            self.manifest["chunks"] = arrays.inventory(new_dir, names)
        write_json_atomic(os.path.join(self.root, MANIFEST), self.manifest)
        self._link()
        self._remove_other_generations()

    def _link_chunk(self, name: str, new_dir: str, block: tuple, chunk) -> None:
        """Hard-link one unchanged chunk of `name` from the committed generation into new_dir (zarr3 keys c/i/j)."""
        key = ["c", *(str(b.start // c) for b, c in zip(block, chunk))]
        source = os.path.join(self.generation_dir, name, *key)
        if os.path.exists(source):  # absent: the chunk holds only the fill value
            target = os.path.join(new_dir, name, *key)
            os.makedirs(os.path.dirname(target), exist_ok=True)
            os.link(source, target)

    def _link(self) -> None:
        for name in self.manifest["arrays"]:
            link = os.path.join(self.root, name)
            target = os.path.relpath(os.path.join(self.generation_dir, name), self.root)
            if os.path.islink(link) and os.readlink(link) == target:
                continue
            tmp = f"{link}.tmp-link"
            _remove(tmp)
            os.symlink(target, tmp)
            os.replace(tmp, link)

    def _remove_other_generations(self) -> None:
        keep = os.path.basename(self.generation_dir)
        for name in os.listdir(self.root):
            if name.startswith("data-") and name != keep:
                _remove(os.path.join(self.root, name))


_remove = atomic.remove  # the commit protocol lives in opt_jax.atomic
_fsync_tree = atomic.fsync_tree


class LazyArray:
    """A committed statistics array read on demand: `a[l]` reads one layer, `np.asarray(a)` reads all."""

    def __init__(self, store: ts.TensorStore):
        self._store = store
        self.shape = tuple(store.shape)
        self.chunk_shape = tuple(store.chunk_layout.write_chunk.shape)
        self.dtype = np.dtype(store.dtype.numpy_dtype)

    def __getitem__(self, index) -> np.ndarray:
        """Read `index` (ints and slices, numpy semantics: a slice past the end stops at the end)."""
        return np.asarray(self._store[_clipped(index, self.shape)].read().result())

    def view(self, index) -> "LazyArray":
        """A lazy sub-array (e.g. one layer of `tok_act`), read only when indexed."""
        return LazyArray(self._store[_clipped(index, self.shape)])

    def __len__(self) -> int:
        return self.shape[0]

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        value = self._store.read().result()
        return value if dtype is None else value.astype(dtype)


def _clipped(index, shape) -> tuple:
    """Index with numpy's slice semantics for tensorstore, which refuses a slice reaching past an axis."""
    index = index if isinstance(index, tuple) else (index,)
    out = []
    for i, size in zip(index, shape):
        out.append(slice(*i.indices(size)) if isinstance(i, slice) and i.step in (None, 1) else i)
    return tuple(out) + tuple(index[len(out):])


ARRAY_NAMES = ("act", "pos_act", "pos_tokens", "token_occ", "tok_act")


def _rows(array: ts.TensorStore, block: tuple, fill) -> np.ndarray:
    """A block of a 2-D array that may reach past its rows: those rows read as `fill`."""
    rows, cols = block
    out = np.full((rows.stop - rows.start, cols.stop - cols.start), fill, array.dtype.numpy_dtype)
    stop = min(rows.stop, array.shape[0])
    if stop > rows.start:
        out[:stop - rows.start] = array[rows.start:stop, cols].read().result()
    return out


def example_merges(sources: list, manifest: dict) -> dict:
    """`StatsStore.commit` values for the example arrays of a store with this manifest: each layer's sets merged
    over `sources`, functions of a layer giving {kind: {window, position, value: [ffn, slots]}}
    (`analyses.collection.examples.merge_sets`; the quantile set bin by bin)."""
    from analyses.collection.examples import merge_sets

    kinds, bins = tuple(example_slots(manifest)), value_bins(manifest)
    last = {}

    def merged(layer):
        if layer not in last:  # blocks come layer by layer: each layer is merged once, one is held
            last.clear()
            parts = [source(layer) for source in sources]
            last[layer] = {kind: merge_sets(kind, layer, *(p[kind] for p in parts), groups=bins) for kind in kinds}
        return last[layer]

    def value(kind, field):
        return lambda block: merged(block[0].start)[kind][field][None]  # [1, ffn, slots]

    return {example_name(kind, field): value(kind, field) for kind in kinds for field in EXAMPLE_FIELDS}


def stored_examples(store, kinds: tuple | None = None) -> callable:
    """A source for `example_merges`: one layer's committed sets of a `StatsStore` or `Stats` (every set it holds,
    or those of `kinds` it holds)."""
    kinds = tuple(kind for kind in example_slots(store.manifest) if kinds is None or kind in kinds)
    return lambda layer: {kind: {field: store.array(example_name(kind, field))[layer].read().result()
                                 for field in EXAMPLE_FIELDS} for kind in kinds}


def appended_windows(old: ts.TensorStore, new: list) -> tuple:
    """`StatsStore.commit` (value, shape) for `windows`: the committed rows plus `new`, a list of (first window
    index, ids int32 [rows, seq_len], -1 after each window's end). Chunks no new row touches are linked as they are."""
    old_rows = old.shape[0]
    rows = max([old_rows] + [first + len(ids) for first, ids in new])

    def value(block):
        start, stop = block[0].start, block[0].stop
        touching = [(first, ids) for first, ids in new if first < stop and first + len(ids) > start]
        if not touching and stop <= old_rows:
            return None
        out = _rows(old, block, -1)  # [r, s]
        for first, ids in touching:
            lo, hi = max(first, start), min(first + len(ids), stop)
            out[lo - start:hi - start] = ids[lo - first:hi - first, block[1]]
        return out

    return value, (rows, old.shape[1])


@dataclasses.dataclass(frozen=True)
class Band:
    """A quantile band of one neuron's activation values (`Stats.quantile_bands`): the value-histogram bins
    `bins[0] <= j < bins[1]`, from the first to the last that holds an activation, whose values lie in
    [low, high) (the bins' edges), holding `count` activations (`value_hist`'s, BOS included); band `index` of
    the neuron's bands, lowest values first."""

    index: int
    bins: tuple[int, int]
    low: float
    high: float
    count: int


def quantile_bands(counts: np.ndarray, edges: np.ndarray, bands: int) -> list[Band]:
    """The bands of a neuron's value histogram `counts` [bins] (edges [bins + 1], 0 first and inf last): each of
    the bands - 1 cuts between bins placed where the counts below it come nearest to q / bands of the total
    (q = 1 .. bands - 1; a tie to the lower bin), bands without activations dropped, each trimmed to its first and
    last bin holding one. Whole bins, so not exact quantiles: a band holds about 1 / bands of the activations
    when the histogram's bins are finer than that, and one bin holding more is a band of its own (so fewer bands)."""
    counts = np.asarray(counts, np.int64)  # [bins]
    below = np.concatenate([[0], np.cumsum(counts)])  # [bins + 1]: activations below each boundary
    total = int(below[-1])
    if not total:
        return []
    inner = below[1:-1]  # [bins - 1]: the cuts between bins
    cuts = {1 + int(np.argmin(np.abs(inner * bands - q * total))) for q in range(1, bands)} if len(inner) else set()
    bounds = sorted({0, len(counts)} | cuts)
    out = []
    for start, stop in zip(bounds[:-1], bounds[1:]):
        held = np.flatnonzero(counts[start:stop]) + start
        if len(held):
            first, last = int(held[0]), int(held[-1]) + 1
            out.append(Band(len(out), (first, last), float(edges[first]), float(edges[last]),
                            int(counts[first:last].sum())))
    return out


@dataclasses.dataclass(frozen=True)
class Example:
    """One example activation of a neuron: its fc1 output `value` (> 0) at `position` (0 = BOS) of window
    `window` (its index in the run's window stream), whose token ids are `tokens` (without padding).

    With context activations (`analyses.collection.contexts`), also the span around it: `context_tokens` (a
    contiguous slice of `tokens`), `context_values` (the neuron's fc1 output at each, float32 read from float16)
    and `context_index` (the example's place in the span: `context_values[context_index]` is `value`); None
    without them."""

    window: int
    position: int
    value: float
    tokens: np.ndarray
    context_tokens: np.ndarray | None = None
    context_values: np.ndarray | None = None
    context_index: int | None = None
    band: Band | None = None  # the quantile band it samples (kind "quantile" only)

    @property
    def token(self) -> int:
        """The token the neuron fired on."""
        return int(self.tokens[self.position])


def _with_context(example: Example, stored: np.ndarray, entry: dict) -> Example:
    """`example` with its context from its stored span (float16 [before + after + 1], `analyses.collection.contexts`)
    and the manifest's `contexts` entry: cut to the window, never BOS (as the atlas's contexts); its own value exact."""
    before, after = entry["before"], entry["after"]
    start, stop = max(1, example.position - before), min(len(example.tokens), example.position + after + 1)
    first = start - (example.position - before)  # the slot of `start`
    values = stored[first:first + stop - start].astype(np.float32)  # [stop - start]
    index = example.position - start
    values[index] = example.value  # the record's float32 value
    return dataclasses.replace(example, context_tokens=example.tokens[start:stop], context_values=values,
                               context_index=index)


@dataclasses.dataclass
class Stats:
    """A statistics directory opened for reading: the manifest's counts and the arrays, lazily."""

    root: str
    manifest: dict
    act: LazyArray  # [layers, ffn]
    pos_act: LazyArray  # [layers, seq_len, ffn]
    pos_tokens: LazyArray  # [seq_len]
    token_occ: LazyArray  # [vocab]
    tok_act: LazyArray  # [len(token_layers), vocab, ffn]

    @property
    def tokens(self) -> int:
        return self.manifest["tokens"]

    @property
    def sequences(self) -> int:
        return self.manifest["sequences"]

    @property
    def full_length_sequences(self) -> int:
        return self.manifest["full_length_sequences"]

    @property
    def token_layers(self) -> list[int]:
        return self.manifest["token_layers"]

    @property
    def config(self):
        from opt_jax.config import OPTConfig

        return OPTConfig.from_dict(self.manifest["config"])

    def ngram_table(self, max_pairs: int = 2**62):
        """The exact n-gram counts of the token layers (an `analyses.collection.ngrams.NgramTable`), None if not collected."""
        from analyses.collection.ngrams import NgramTable

        orders = self.manifest.get("ngram_orders") or []
        if not orders or not self.token_layers:
            return None
        config = self.config
        shape = (tuple(orders), len(self.token_layers), config.ffn_dim, config.vocab_size, max_pairs)
        tables = {name: self._read(name) for name in self.manifest["arrays"] if name.startswith("ngram")}
        return NgramTable.from_arrays(tables, *shape) if tables else NgramTable(*shape)

    def tracked_neurons(self):
        """bool [token_layers, ffn]: the neurons whose n-grams were counted (None when n-grams were not)."""
        if not self.manifest.get("ngram_orders") or not self.token_layers:
            return None
        shape = (len(self.token_layers), self.config.ffn_dim)
        if "tracked_neurons" not in self.manifest["arrays"]:
            return np.ones(shape, bool)
        tracked = np.zeros(shape[0] * shape[1], bool)
        tracked[self._read("tracked_neurons")] = True
        return tracked.reshape(shape)

    def _read(self, name: str) -> np.ndarray:
        """The whole committed array `name`."""
        return np.asarray(self.array(name).read().result())

    def array(self, name: str) -> arrays.Checked:
        """The committed array `name`, with a clear error when the store lacks it or a chunk is damaged."""
        if name not in self.manifest["arrays"]:
            raise StatsError(f"{self.root}: has no array {name!r}")
        gen_dir = generation_dir(self.root, self.manifest["generation"])
        return _checked(self.root, name, os.path.join(gen_dir, name))

    @property
    def value_hist(self) -> LazyArray:
        """int64 [layers, ffn, bins]: each neuron's activations by the bin of their fc1 value (bins: `value_edges`);
        `value_hist.sum(-1) == act`. A store collected without it (before it existed, or with
        --value_bins_per_octave 0) opens as any other; only asking for it is an error."""
        self._check_value_hist()
        return LazyArray(self.array(VALUE_HIST))

    @property
    def value_edges(self) -> np.ndarray:
        """float32 [bins + 1]: the edges of `value_hist`'s bins, 0 first and inf last (bin j: [edges[j], edges[j + 1]),
        bin 0 from 0 exclusive)."""
        self._check_value_hist()
        return np.concatenate([[0.0], self.manifest["value_edges"], [np.inf]]).astype(np.float32)

    def _check_value_hist(self) -> None:
        """Refuse a store without `value_hist`."""
        if VALUE_HIST not in self.manifest["arrays"]:
            raise StatsError(f"{self.root}: holds no activation-value histogram (collected before value_hist "
                             "existed, or with --value_bins_per_octave 0); collect again to have one")

    @property
    def examples_per_neuron(self) -> int:
        """k of the example sets (0: the run collected none)."""
        return int(self.manifest.get("examples", 0))

    @property
    def example_slots(self) -> dict:
        """kind -> slots per neuron of the store's example sets (module function `example_slots`): k for top and
        random, bins x K for `quantile`; {} without examples."""
        return example_slots(self.manifest)

    def examples(self, layer: int, neuron: int, kind: str = "random", bands: int = 10) -> list[Example]:
        """The example activations of one neuron: `kind` "top" (its strongest, largest value first), "random"
        (a uniform sample, in the order that chose it); at most k, fewer when the neuron fired fewer times.

        "quantile" (a store collected with --quantile_examples K): K examples of each of the neuron's `bands`
        quantile bands (`quantile_bands`), lowest band first, each record's `band` saying which (its bins, value
        range and count). A band is a run of whole value-histogram bins cut nearest to the deciles (at bands=10),
        not the exact deciles; its examples are a uniform sample of the band's activations at non-BOS positions
        (the K of its bins' samples with the smallest `random` rank: each bin keeps its K smallest), fewer when
        the band holds fewer."""
        slots = example_slots(self.manifest)
        if kind not in (*EXAMPLE_KINDS, QUANTILE):
            raise StatsError(f"unknown example kind {kind!r}; expected one of "
                             f"{', '.join((*EXAMPLE_KINDS, QUANTILE))}")
        self._check_example_layer(layer)
        if kind not in slots:
            raise StatsError(f"{self.root}: holds no quantile examples (collected with --quantile_examples 0); "
                             "collect again with --quantile_examples K")
        ffn = self.config.ffn_dim
        if not isinstance(neuron, (int, np.integer)) or not 0 <= neuron < ffn:
            raise StatsError(f"{self.root}: neuron {neuron!r} is out of range; layers have neurons 0..{ffn - 1}")
        rows = {f: self.array(example_name(kind, f))[int(layer), int(neuron)].read().result()
                for f in EXAMPLE_FIELDS}  # [slots] each
        picked = [(None, np.flatnonzero(rows["window"] >= 0))] if kind != QUANTILE else \
            self._band_slots(int(layer), int(neuron), rows, bands)
        spans = self.array(context_name(kind))[int(layer), int(neuron)].read().result() \
            if self.contexts is not None else None  # [slots, span]
        out = []
        for band, at in picked:
            for j in at:
                e = Example(int(rows["window"][j]), int(rows["position"][j]), float(rows["value"][j]),
                            self.window(int(rows["window"][j])), band=band)
                out.append(e if spans is None else _with_context(e, spans[j], self.contexts))
        return out

    def quantile_bands(self, layer: int, neuron: int, bands: int = 10) -> list[Band]:
        """One neuron's quantile bands from its value histogram (module function `quantile_bands`): at most
        `bands`, each a run of whole bins nearest to the q / bands quantiles, lowest values first; [] when it never
        fired."""
        if not isinstance(bands, (int, np.integer)) or bands < 1:
            raise StatsError(f"bands must be a number of bands >= 1, got {bands!r}")
        counts = self.value_hist[int(layer), int(neuron)]  # [bins]
        return quantile_bands(counts, self.value_edges, int(bands))

    def _band_slots(self, layer: int, neuron: int, rows: dict, bands: int) -> list[tuple[Band, np.ndarray]]:
        """(band, the slots of its examples in the `random` order) for each quantile band of a neuron."""
        from analyses.collection.examples import neuron_hash, sample_rank, token_hash

        k = int(self.manifest["quantile_examples"])
        window, position = rows["window"], rows["position"]  # [bins * K]
        rank = sample_rank(np, token_hash(np, window, position), neuron_hash(np, np.uint32(layer), np.uint32(neuron)))
        out = []
        for band in self.quantile_bands(layer, neuron, bands):
            held = np.arange(band.bins[0] * k, band.bins[1] * k)  # the slots of its bins
            held = held[window[held] >= 0]
            order = np.lexsort((position[held], window[held], rank[held]))[:k]  # rank first, ties to earlier
            out.append((band, held[order]))
        return out

    def layer_contexts(self, layer: int, kinds: tuple = EXAMPLE_KINDS) -> dict:
        """Both sets' context activations of a whole layer in one read: {kind: float16 [ffn, k, span]}, slot j of an
        example at `position` holding its fc1 output at `position - before + j` (`contexts` gives before and span;
        `examples` cuts each to its window). A store without current contexts is refused. `kinds`: the sets read
        (QUANTILE too, when the store holds it: [ffn, bins x K, span])."""
        self._check_example_layer(layer)
        if self.contexts is None:
            raise StatsError(f"{self.root}: holds no complete context activations for its example sets; run "
                             "scripts/contexts.py")
        return {kind: self.array(context_name(kind))[int(layer)].read().result()
                for kind in example_slots(self.manifest) if kind in kinds}

    @property
    def contexts(self) -> dict | None:
        """The manifest's entry of the context activations (`analyses.collection.contexts`) when they are complete
        and computed for the example sets the store holds now; None otherwise."""
        entry = self.manifest.get("contexts")
        current = entry and entry.get("complete") and entry.get("tokens") == self.manifest["tokens"]
        return entry if current else None

    def layer_examples(self, layer: int, kinds: tuple = EXAMPLE_KINDS) -> dict:
        """Both example sets of a whole layer in one read: {kind: {window, position, value: [ffn, k]}} (window and
        position -1, value 0 in empty slots; the rows of `examples`, for every neuron at once). `kinds`: the sets
        read (QUANTILE too, when the store holds it: [ffn, bins x K], value bin j's in slots j K .. j K + K - 1)."""
        self._check_example_layer(layer)
        return stored_examples(self, kinds)(int(layer))

    def _check_example_layer(self, layer) -> None:
        """Refuse a store without example sets, or a layer it does not hold."""
        if not self.examples_per_neuron:
            raise StatsError(f"{self.root}: holds no example activations (collected with --examples 0); collect "
                             "again with --examples K")
        layers = self.manifest["layers"]
        if not isinstance(layer, (int, np.integer)) or not 0 <= layer < layers:
            raise StatsError(f"{self.root}: layer {layer!r} is out of range; the store holds layers 0..{layers - 1}")

    def window_rows(self, indices) -> np.ndarray:
        """The token ids of several windows in one read: int32 [len(indices), seq_len], -1 after each window's end
        (`window` gives one, without the padding)."""
        indices = np.asarray(indices, np.int64).reshape(-1)  # [m]
        windows = self._windows()
        bad = indices[(indices < 0) | (indices >= windows.shape[0])]
        if len(bad):
            raise self._past_end(int(bad[0]), windows)
        if not len(indices):
            return np.zeros((0, windows.shape[1]), np.int32)
        return np.asarray(windows.oindex[indices].read().result())

    @property
    def num_windows(self) -> int:
        """Rows of the `windows` array: the windows of the stream so far (0 when it was not kept)."""
        return self.manifest["arrays"].get("windows", [0])[0]

    def window(self, i: int) -> np.ndarray:
        """The token ids of window i of the run's window stream (int32, without padding)."""
        windows = self._windows()
        if not isinstance(i, (int, np.integer)) or not 0 <= i < windows.shape[0]:
            raise self._past_end(i, windows)
        row = windows[int(i)].read().result()  # [seq_len]
        if row[0] < 0:
            raise StatsError(f"{self.root}: window {i} is not in this store (the padding of the last batch, or "
                             "a batch of another process before merging)")
        return np.asarray(row[row >= 0])

    def _windows(self) -> ts.TensorStore:
        """The committed `windows` array, refused for a store that keeps none."""
        if "windows" not in self.manifest["arrays"]:
            raise StatsError(f"{self.root}: keeps no windows (collected with --examples 0)")
        return self.array("windows")

    def _past_end(self, i, windows: ts.TensorStore) -> StatsError:
        return StatsError(f"{self.root}: window {i!r} is past the end; the store holds windows "
                          f"0..{windows.shape[0] - 1}")


def open_stats(root: str) -> Stats:
    """Open a statistics directory written by `collect` (or `merge_stats`) for reading."""
    root = os.path.abspath(root)
    manifest = read_manifest(root)
    check_chunks(root, manifest)
    gen_dir = generation_dir(root, manifest["generation"])
    counts = {name: LazyArray(_checked(root, name, os.path.join(gen_dir, name))) for name in ARRAY_NAMES}
    return Stats(root, manifest, **counts)


@lock.writes("out_dir")
def merge_stats(parts, out_dir: str, overwrite: bool = False) -> str:
    """Sum the partial stores of a multi-process run (same model, corpus and flags) into out_dir."""
    manifests = [read_manifest(p) for p in parts]
    if not manifests:
        raise StatsError("no partial statistics directories to merge")
    first = manifests[0]
    count = first["process"]["count"]
    for part, m in zip(parts, manifests):
        for key in ("model", "config", "corpus", "flags", "token_layers", "layers", "ngram_orders",
                    "ngram_candidates_source"):
            if m.get(key) != first.get(key):
                raise StatsError(f"{part}: its {key} differs from {parts[0]}'s; cannot merge")
        if not m.get("complete"):
            raise StatsError(f"{part}: the run is not complete; finish it before merging")
    indices = sorted(m["process"]["index"] for m in manifests)
    if indices != list(range(count)):
        raise StatsError(f"expected the {count} parts 0..{count - 1} of one run, got process indices {indices}")
    if os.path.exists(os.path.join(out_dir, MANIFEST)) and not overwrite:
        raise StatsError(f"{out_dir}: already holds statistics; pass overwrite to replace them")
    opened = [open_stats(p) for p in parts]
    layouts = {name: (getattr(opened[0], name).shape, getattr(opened[0], name).chunk_shape) for name in ARRAY_NAMES}
    if VALUE_HIST in first["arrays"]:
        layouts |= value_layouts(first["layers"], opened[0].config.ffn_dim, first["arrays"][VALUE_HIST][-1])
    k = opened[0].examples_per_neuron
    if k:
        layouts |= example_layouts(first["layers"], opened[0].config.ffn_dim, k, first["flags"]["seq_len"],
                                   example_slots(first).get(QUANTILE, 0))
    base = {k: v for k, v in first.items() if k not in ("format", "version", "generation", "arrays", "chunks")}
    unmerged = {"process": {"index": 0, "count": 1, "merged_from": count}, "complete": False,
                "tokens": 0, "sequences": 0, "full_length_sequences": 0}
    store = StatsStore.create(out_dir, base | unmerged, layouts)

    def summed(name):
        return lambda block: sum(s.array(name)[block].read().result() for s in opened)

    totals = {k: sum(m[k] for m in manifests) for k in ("tokens", "sequences", "full_length_sequences")}
    tables = [s.ngram_table() for s in opened]
    if tables[0] is not None:
        for table in tables[1:]:
            tables[0].merge(table)
    replacements = tables[0].to_arrays() if tables[0] is not None else None
    if "tracked_neurons" in first["arrays"]:  # the same in every part: checked with the flags above
        replacements["tracked_neurons"] = np.flatnonzero(opened[0].tracked_neurons())
    values, shapes = {}, {}
    if k:
        values = example_merges([stored_examples(s) for s in opened], first)
        # Each part holds its own batches' windows and -1 in the rows of the others: the maximum picks the owner's.
        shapes["windows"] = (max(s.num_windows for s in opened), first["flags"]["seq_len"])
        windows = [s.array("windows") for s in opened]
        values["windows"] = lambda block: np.max([_rows(w, block, -1) for w in windows], axis=0)
    counts = ARRAY_NAMES + ((VALUE_HIST,) if VALUE_HIST in first["arrays"] else ())
    store.commit({name: summed(name) for name in counts}, totals | {"complete": True},
                 replacements=replacements, values=values, shapes=shapes)
    return store.root
