"""The runs of one model joined into one statistics store (`join_stats`): every layer any run collected, the token
statistics of every token layer, one manifest.

At OPT-66b the token statistics (`tok_act`) of the 32 first-half layers do not fit on one device at once, so one
model's statistics come from several runs over the same windows, each with its own `--token_layers` (and, after
the first, `--max_layers` ending at its last token layer; `analyses.collection.runs` plans them). The join makes
them one store that `open_stats`, the report, the atlas and the ablations read as any other:

- a layer's `act`, `pos_act`, `value_hist` and example sets come from the part with the most layers that holds them
  (`value_hist` only when every part has one, with the same bins: else the join has none);
- a token layer's `tok_act` from a part that counted it, its n-gram tables from one that counted its orders;
- `pos_tokens`, `token_occ`, `windows`, the n-gram occurrences and the counts from the first part that has them.

Checked before anything is written, with a `StatsError` naming the parts and what differs: every part is a
complete, single-process store of one format version; the same model config, corpus (fingerprint, text key) and
window flags (seq_len, batch_size, full_length_only, dtype); the same windows seen (tokens, sequences, cursor,
`pos_tokens`, `token_occ`); and equal counts wherever two parts hold one layer (`act`, `pos_act`, `value_hist`)
or one token layer (`tok_act`), and equal n-gram occurrences; value histograms, where every part has one, in the
same bins. Parts may differ in token layers, `--max_layers`, n-gram orders and candidates, and example sets (0 in
some). The joined n-gram orders are those counted for every token layer;
example sets must have one K where there are several.

Storage: hard links. The joined store has a generation of its own (`data-000000`: each array's `zarr.json` with
the joined shape, the manifest's chunk inventory) whose chunk files are hard links to the parts' committed chunk
files: nothing large is copied, and `--out` must be on the parts' file system. A part's later commit writes a new
generation and removes its old one; the join keeps the chunks it linked (a hard link outlives the other name), so
it never changes behind its manifest: join again to take the new counts. Deleting a part frees no space while a
join links its chunks. Equal-looking checks read the parts' chunk files byte for byte, and decode only chunks whose
bytes differ.

A crash: `manifest.json` is written last, so a join killed at any moment leaves no manifest, which no reader takes
for a store (`open_stats` refuses the directory); the next join clears what it left. Joining the same parts again
(the same committed generations) does nothing.
"""

from __future__ import annotations

import dataclasses
import errno
import filecmp
import json
import os

import numpy as np

from analyses.collection.store import (ARRAY_NAMES, EXAMPLE_FIELDS, MANIFEST, VALUE_HIST, Stats,
                                       StatsStore,
                                       chunk_blocks, create_array, example_name, example_slots, generation_dir,
                                       open_stats, read_manifest)
from opt_jax import arrays
from opt_jax import atomic
from opt_jax import lock
from opt_jax.errors import StatsError
from opt_jax.progress import Progress

STORAGE = "hard links"  # the manifest's `join.storage`
# The flags every part must share: what decides the windows and the numbers computed on them.
WINDOW_FLAGS = ("seq_len", "batch_size", "full_length_only", "text_key", "dtype")
# The layer-indexed arrays: chunks hold one layer each (the first key of a chunk file is its layer).
LAYER_ARRAYS = ("act", "pos_act")


@dataclasses.dataclass(eq=False)  # compared and hashed by identity
class Part:
    """One run being joined: its directory, manifest and reader."""

    root: str
    manifest: dict
    stats: Stats

    @property
    def layers(self) -> int:
        return self.manifest["layers"]

    @property
    def token_layers(self) -> list[int]:
        return list(self.manifest["token_layers"])

    @property
    def orders(self) -> set[int]:
        return set(self.manifest.get("ngram_orders") or []) if self.token_layers else set()

    @property
    def examples(self) -> int:
        return int(self.manifest.get("examples", 0))

    @property
    def gen_dir(self) -> str:
        return generation_dir(self.root, self.manifest["generation"])

    def chunks(self, name: str, index: int | None = None) -> str:
        """The folder of `name`'s chunk files: all of them, or (index) those of one layer / token layer."""
        folder = os.path.join(self.gen_dir, name, "c")
        return folder if index is None else os.path.join(folder, str(index))

    def tracked(self, t: int) -> np.ndarray:
        """bool [ffn]: the neurons whose n-grams this part counted at its token layer index t."""
        return self.stats.tracked_neurons()[t]


@dataclasses.dataclass
class Sources:
    """Where each piece of the joined store comes from: (part, its index) per layer, token layer and order."""

    layers: list[Part]  # by layer: the part with the most layers that holds it
    tokens: list[tuple[Part, int]]  # by joined token layer: a part holding it, its index there
    ngrams: list[tuple[Part, int]]  # by joined token layer: a part holding it with every joined order
    orders: list[int]  # the n-gram orders counted for every token layer
    examples: list[Part | None]  # by layer: the part whose example sets are taken (None: no part has them)
    k: int  # examples per neuron and set (0: none)
    value_hist: bool  # every part has a value histogram (with the same bins): the join has one
    quantile: int = 0  # quantile examples per neuron and value bin (0: none, or a part without value_hist)

    @property
    def layer_arrays(self) -> tuple[str, ...]:
        """The layer-indexed arrays taken from `layers`: act, pos_act, and value_hist when joined."""
        return LAYER_ARRAYS + ((VALUE_HIST,) if self.value_hist else ())

    @property
    def token_layers(self) -> list[int]:
        return [part.token_layers[t] for part, t in self.tokens]


@lock.writes("out_dir")
def join_stats(parts, out_dir: str, overwrite: bool = False, verbose: bool = True) -> str:
    """Join the statistics directories `parts` (runs of one model over the same windows that differ in their token
    layers, `--max_layers`, n-gram orders or candidates and example sets) into out_dir, holding its write lock;
    returns out_dir's absolute path. See the module's docstring for what is checked, taken and linked."""
    out_dir = os.path.abspath(out_dir)
    loaded = _load(parts, out_dir)
    joined = _joined_parts(out_dir)  # [(path, generation)] of a join already there
    if joined == [(p.root, p.manifest["generation"]) for p in loaded] and not overwrite:
        _say(verbose, f"{out_dir}: already joins these {len(loaded)} parts (as they are committed now)")
        return out_dir
    _check_identity(loaded)
    sources = _sources(loaded)
    _say(verbose, f"joining {len(loaded)} runs into {out_dir}: {len(sources.layers)} layers, token layers "
                  f"{layer_ranges(sources.token_layers)}")
    _check_counts(loaded, sources, verbose)
    # A join of the same parts, some since committed again, is replaced without `overwrite`: that is a rejoin.
    _clear(out_dir, overwrite or [path for path, _ in joined or []] == [p.root for p in loaded])
    try:
        _write(loaded, sources, out_dir, verbose)
    except BaseException:
        if not os.path.isfile(os.path.join(out_dir, MANIFEST)):
            atomic.remove(generation_dir(out_dir, 0))  # nothing half-written stays (a kill leaves it to the next join)
        raise
    return StatsStore.open(out_dir).root  # the array links, as every store has them


def _say(verbose: bool, message: str) -> None:
    if verbose:
        print(message, flush=True)


def layer_ranges(layers: list[int]) -> str:
    """0-10, 12, 14-15: a list of layers, short."""
    out, start = [], None
    for i, layer in enumerate(layers):
        start = layer if start is None else start
        if i + 1 == len(layers) or layers[i + 1] != layer + 1:
            out.append(f"{start}-{layer}" if layer > start else f"{layer}")
            start = None
    return ", ".join(out) or "none"


# ---------------------------------------------------------------------------------------------------------------
# The checks: nothing is written before they pass.

def _load(parts, out_dir: str) -> list[Part]:
    """The parts, opened; refused when one is not a complete single-process store, or is out_dir itself."""
    roots = [os.path.abspath(p) for p in parts]
    if not roots:
        raise StatsError("no statistics directories to join")
    if len(set(roots)) != len(roots):
        raise StatsError(f"a part is given twice: {', '.join(sorted({r for r in roots if roots.count(r) > 1}))}")
    inside = [r for r in roots if out_dir == r or out_dir.startswith(r + os.sep)]
    if inside:
        raise StatsError(f"{out_dir}: is (inside) the part {inside[0]}; write the join to a directory of its own")
    loaded = []
    for root in roots:
        manifest = read_manifest(root)
        if not manifest.get("complete"):
            raise StatsError(f"{root}: the run is not complete; finish it (run the same command again) before joining")
        process = manifest.get("process") or {}
        if process.get("count", 1) != 1:
            raise StatsError(f"{root}: is process {process.get('index')} of {process['count']} of a multi-process "
                             "run; merge its parts first (scripts/merge_stats.py), then join the merged store")
        loaded.append(Part(root, manifest, open_stats(root)))
    versions = {p.manifest["version"] for p in loaded}
    if len(versions) > 1:
        raise StatsError("the parts are stores of different format versions ("
                         + ", ".join(f"{p.root}: v{p.manifest['version']}" for p in loaded)
                         + "); collect the older ones again")
    return loaded


def _differs(first: Part, part: Part, what: str, a, b) -> StatsError:
    return StatsError(f"{part.root}: its {what} differs from {first.root}'s ({b!r} there, {a!r} here): the parts of "
                      "a join must be runs of one model over the same windows (same corpus, --seq_len, "
                      "--batch_size, --full_length_only, --max_tokens, --dtype)")


def _check_identity(loaded: list[Part]) -> None:
    """The same model, corpus, window flags and windows seen (the manifest's counts), or a StatsError."""
    first = loaded[0]
    for part in loaded[1:]:
        a, b = part.manifest, first.manifest
        if a["config"] != b["config"]:
            keys = sorted(k for k in set(a["config"]) | set(b["config"]) if a["config"].get(k) != b["config"].get(k))
            raise StatsError(f"{part.root}: statistics of another model than {first.root} (config "
                             + ", ".join(f"{k}: {a['config'].get(k)!r} vs {b['config'].get(k)!r}" for k in keys)
                             + "); join the runs of one model")
        for key in ("fingerprint", "text_key"):
            if a["corpus"].get(key) != b["corpus"].get(key):
                raise _differs(first, part, f"corpus {key}", a["corpus"].get(key), b["corpus"].get(key))
        for key in WINDOW_FLAGS:
            if a["flags"].get(key) != b["flags"].get(key):
                raise _differs(first, part, f"--{key}", a["flags"].get(key), b["flags"].get(key))
        for key in ("tokens", "sequences", "full_length_sequences", "cursor"):
            if a.get(key) != b.get(key):
                raise _differs(first, part, key, a.get(key), b.get(key))
    ks = {p.examples for p in loaded if p.examples}
    if len(ks) > 1:
        raise StatsError("the parts keep example sets of different sizes ("
                         + ", ".join(f"{p.root}: {p.examples}" for p in loaded if p.examples)
                         + "); collect them with one --examples K (or 0 in all but one)")
    quantiles = {p.manifest.get("quantile_examples", 0) for p in loaded if p.examples}
    if len(quantiles) > 1:
        raise StatsError("the parts keep quantile examples of different sizes ("
                         + ", ".join(f"{p.root}: {p.manifest.get('quantile_examples', 0)}" for p in loaded
                                     if p.examples)
                         + "); collect them with one --quantile_examples K")
    edges = {tuple(p.manifest["value_edges"]) for p in loaded if VALUE_HIST in p.manifest["arrays"]}
    if len(edges) > 1:
        raise StatsError("the parts count activation values in different bins ("
                         + ", ".join(f"{p.root}: {p.manifest['flags'].get('value_bins_per_octave')} per octave"
                                     for p in loaded if VALUE_HIST in p.manifest["arrays"])
                         + "); collect them with one --value_bins_per_octave")


def _sources(loaded: list[Part]) -> Sources:
    """Which part each layer, token layer, n-gram table and example set is taken from."""
    by_layers = sorted(loaded, key=lambda p: -p.layers)  # stable: the given order among equals
    layers = max(p.layers for p in loaded)
    token_layers = sorted({l for p in loaded for l in p.token_layers})
    holding = {l: [p for p in loaded if l in p.token_layers] for l in token_layers}
    orders = set.intersection(*(set().union(*(p.orders for p in holding[l])) for l in token_layers)) \
        if token_layers else set()
    ngrams = []
    for l in token_layers:
        part = next((p for p in holding[l] if orders <= p.orders), holding[l][0])
        ngrams.append((part, part.token_layers.index(l)))
    with_examples = [p for p in by_layers if p.examples]
    return Sources(
        layers=[next(p for p in by_layers if l < p.layers) for l in range(layers)],
        tokens=[(holding[l][0], holding[l][0].token_layers.index(l)) for l in token_layers],
        ngrams=ngrams, orders=sorted(orders),
        examples=[next((p for p in with_examples if l < p.layers), None) for l in range(layers)],
        k=with_examples[0].examples if with_examples else 0,
        value_hist=all(VALUE_HIST in p.manifest["arrays"] for p in loaded),
        quantile=with_examples[0].manifest.get("quantile_examples", 0)
        if with_examples and all(VALUE_HIST in p.manifest["arrays"] for p in loaded) else 0)


def _check_counts(loaded: list[Part], sources: Sources, verbose: bool) -> None:
    """Equal windows counts in every part, equal counts wherever two parts hold one layer or token layer."""
    first = loaded[0]
    pairs = [(name, first, None, part, None) for part in loaded[1:] for name in ("pos_tokens", "token_occ")]
    for layer, source in enumerate(sources.layers):  # (array, part taken, its index, another part, its index)
        pairs += [(name, source, layer, part, layer) for part in loaded if part is not source and layer < part.layers
                  for name in sources.layer_arrays]
    for (source, t), layer in zip(sources.tokens, sources.token_layers):
        pairs += [("tok_act", source, t, part, part.token_layers.index(layer)) for part in loaded
                  if part is not source and layer in part.token_layers]
    for k in sources.orders:
        having = [p for p in loaded if k in p.orders]
        pairs += [(f"ngram{k}_occ_{field}", having[0], None, part, None) for part in having[1:]
                  for field in ("keys", "counts")]
    progress = Progress("join: checking the parts agree", len(pairs), " arrays", enabled=verbose, every=10.0)
    for name, base, index, part, part_index in pairs:
        cells, largest = _difference(base, part, name, index, part_index)
        if cells:
            layer = base.token_layers[index] if name == "tok_act" else index
            what = f" of layer {layer}" if layer is not None else ""
            raise StatsError(f"{part.root} and {base.root}: {name}{what} differs in {cells:,} cells (largest "
                             f"difference {largest:,}): the parts of a join must be runs of one model over the same "
                             "windows, whose shared layers count alike")
        progress.update()


def _difference(a: Part, b: Part, name: str, ia: int | None, ib: int | None) -> tuple[int, int]:
    """(cells that differ, largest difference) between a's `name` (its layer ia, or whole) and b's (layer ib):
    (0, 0) at once when their chunk files are equal byte for byte, else decoded chunk by chunk."""
    if _same_files(a.chunks(name, ia), b.chunks(name, ib)):
        return 0, 0
    x, y = a.stats.array(name), b.stats.array(name)
    if ia is not None:
        x, y = x[ia], y[ib]
    if tuple(x.shape) != tuple(y.shape):
        return int(np.prod(x.shape)), 0
    chunk = tuple(a.stats.array(name).chunk_layout.write_chunk.shape)[ia is not None:]
    cells, largest = 0, 0
    for block in chunk_blocks(tuple(x.shape), chunk):
        u, v = x[block].read().result(), y[block].read().result()
        if not np.array_equal(u, v):
            diff = np.abs(u.astype(np.float64) - v.astype(np.float64))
            cells, largest = cells + int(np.count_nonzero(diff)), max(largest, diff.max().item())
    return cells, largest


def _same_files(a: str, b: str) -> bool:
    """Whether two chunk folders hold the same files, byte for byte (missing folders hold none)."""
    names = _files(a)
    return names == _files(b) and all(filecmp.cmp(os.path.join(a, n), os.path.join(b, n), shallow=False)
                                       for n in names)


def _files(folder: str) -> list[str]:
    """The files under folder, as sorted relative paths ([] when it does not exist)."""
    found = []
    for dirpath, _, filenames in os.walk(folder):
        found += [os.path.relpath(os.path.join(dirpath, name), folder) for name in filenames]
    return sorted(found)


# ---------------------------------------------------------------------------------------------------------------
# The output directory.

def _joined_parts(out_dir: str) -> list[tuple[str, int]] | None:
    """(path, generation) of each part of the join in out_dir; None when out_dir holds no join."""
    try:
        manifest = read_manifest(out_dir)
    except StatsError:
        return None
    join = manifest.get("join")
    return [(p["path"], p["generation"]) for p in join["parts"]] if join else None


def _clear(out_dir: str, overwrite: bool) -> None:
    """Make out_dir ready for a join: refuse statistics there (unless overwrite) and foreign files; remove what a
    killed join (or collection) left. The manifest goes first: from then on no reader takes out_dir for a store."""
    if not os.path.isdir(out_dir):
        return
    if os.path.exists(os.path.join(out_dir, MANIFEST)):
        if not overwrite:
            raise StatsError(f"{out_dir}: already holds statistics; pass overwrite (--overwrite) to replace them")
        atomic.remove(os.path.join(out_dir, MANIFEST))
    names = lock.entries(out_dir)
    leftovers = [n for n in names if _store_file(out_dir, n)]
    foreign = sorted(set(names) - set(leftovers))
    if foreign and not overwrite:
        raise StatsError(f"{out_dir}: exists, is not empty and is not a statistics directory ({foreign[0]}"
                         f"{', ...' if len(foreign) > 1 else ''}); join into a new directory")
    for name in leftovers:  # with overwrite, other files stay, as `collect --overwrite` leaves them
        atomic.remove(os.path.join(out_dir, name))


def _store_file(root: str, name: str) -> bool:
    """Whether `name` in root is a store's own: a generation, an array's link into one, or a temporary of either."""
    path = os.path.join(root, name)
    if os.path.islink(path):
        return os.readlink(path).startswith("data-")
    return name.startswith("data-") or name == f"{MANIFEST}.tmp" or name.endswith(".tmp-link")


def _write(loaded: list[Part], sources: Sources, out_dir: str, verbose: bool) -> None:
    """The joined generation (arrays created, chunk files linked), flushed to disk, then the manifest naming it."""
    gen_dir = generation_dir(out_dir, 0)
    atomic.remove(gen_dir)
    first, version = loaded[0], loaded[0].manifest["version"]
    ffn, layers, t = first.stats.config.ffn_dim, len(sources.layers), len(sources.tokens)
    links = []  # (source chunk folder, target chunk folder)
    shapes = {}

    def array(name: str, shape, parts: list[Part], source_name: str | None = None) -> str:
        """Create the joined array `name` of `shape` like the parts' `source_name` (whose chunks it links); its chunk
        folder."""
        shapes[name] = list(shape)
        _create_like(os.path.join(gen_dir, name), shape, list(dict.fromkeys(parts)), source_name or name, version)
        return os.path.join(gen_dir, name, "c")

    for name in sources.layer_arrays:
        target = array(name, (layers, *first.stats.array(name).shape[1:]), sources.layers)
        links += [(part.chunks(name, l), os.path.join(target, str(l))) for l, part in enumerate(sources.layers)]
    for name in ("pos_tokens", "token_occ"):
        links.append((first.chunks(name), array(name, first.stats.array(name).shape, [first])))
    token_parts = [part for part, _ in sources.tokens] or [first]
    target = array("tok_act", (t, *token_parts[0].stats.array("tok_act").shape[1:]), token_parts)
    links += [(part.chunks("tok_act", i), os.path.join(target, str(j))) for j, (part, i) in enumerate(sources.tokens)]
    tracked = _ngram_arrays(loaded, sources, array, links)
    if sources.k:
        examples = [p for p in sources.examples if p is not None]
        kept = {"examples": sources.k, "quantile_examples": sources.quantile,
                "value_edges": first.manifest.get("value_edges")}
        for kind, slots in example_slots(kept).items():  # top, random, and the quantile set when kept
            for field in EXAMPLE_FIELDS:
                name = example_name(kind, field)
                target = array(name, (layers, ffn, slots), examples)
                links += [(part.chunks(name, l), os.path.join(target, str(l)))
                          for l, part in enumerate(sources.examples) if part is not None]
        windows = examples[0].stats.array("windows").shape
        links.append((examples[0].chunks("windows"), array("windows", windows, examples[:1])))
    if tracked is not None:
        shapes["tracked_neurons"] = [len(tracked)]
        store = create_array(os.path.join(gen_dir, "tracked_neurons"), tracked.shape,
                             (max(1, min(len(tracked), 1 << 22)),), version=version)
        if len(tracked):
            store.write(tracked).result()
    _link_all(links, out_dir, verbose)
    atomic.fsync_tree(gen_dir)
    manifest = _manifest(loaded, sources, shapes)
    if version >= 2:
        manifest["chunks"] = arrays.inventory(gen_dir, shapes)
    atomic.write_json(os.path.join(out_dir, MANIFEST), manifest)  # the commit point


def _ngram_arrays(loaded: list[Part], sources: Sources, array, links: list) -> np.ndarray | None:
    """Create the joined n-gram tables (each token layer's from its n-gram source, each order's occurrences from the
    first part counting it) and add their links; the joined `tracked_neurons` (flat t * ffn + n), None if all are."""
    if not sources.orders:
        return None
    for k in sources.orders:
        for j, (part, i) in enumerate(sources.ngrams):
            for field in ("keys", "counts"):
                name = f"ngram{k}_layer{i}_{field}"
                links.append((part.chunks(name), array(f"ngram{k}_layer{j}_{field}", part.stats.array(name).shape,
                                                       [part], name)))
        having = next(p for p in loaded if k in p.orders)
        for field in ("keys", "counts"):
            name = f"ngram{k}_occ_{field}"
            links.append((having.chunks(name), array(name, having.stats.array(name).shape, [having])))
    rows = [part.tracked(i) for part, i in sources.ngrams]  # bool [ffn] each
    if all(row.all() for row in rows):
        return None
    return np.flatnonzero(np.stack(rows)).astype(np.int64)  # [m]


def _create_like(path: str, shape, parts: list[Part], name: str, version: int) -> None:
    """Create the array at path with `shape` and the chunking, dtype, fill value and codecs of the parts' `name`,
    whose chunk files it will link; refused when a part stores that array otherwise (its files could not be
    linked in)."""
    metadata = _metadata(parts[0], name)
    chunk = metadata["chunk_grid"]["configuration"]["chunk_shape"]
    create_array(path, shape, chunk, metadata["data_type"], metadata["fill_value"], version)
    with open(os.path.join(path, "zarr.json")) as f:
        created = json.load(f)
    for part in parts:
        theirs = _metadata(part, name)
        if any(theirs.get(key) != created.get(key) for key in ("chunk_grid", "codecs", "data_type", "fill_value",
                                                                "chunk_key_encoding")):
            raise StatsError(f"{part.root}: its array {name!r} is stored in other chunks or codecs than a store of "
                             f"format v{version} writes; collect it again to join it")


def _metadata(part: Part, name: str) -> dict:
    with open(os.path.join(part.gen_dir, name, "zarr.json")) as f:
        return json.load(f)


def _link_all(links: list[tuple[str, str]], out_dir: str, verbose: bool) -> None:
    """Hard-link every chunk file under each source folder into its target folder (the same relative keys)."""
    files = [(source, name, target) for source, target in links for name in _files(source)]
    progress = Progress("join: linking chunk files", len(files), " files", enabled=verbose, every=10.0)
    made = set()
    for source, name, target in files:
        path = os.path.join(target, name)
        folder = os.path.dirname(path)
        if folder not in made:
            os.makedirs(folder, exist_ok=True)
            made.add(folder)
        try:
            os.link(os.path.join(source, name), path)
        except OSError as e:
            if e.errno in (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP):
                raise StatsError(f"{out_dir}: cannot hard-link the chunk file {os.path.join(source, name)} there "
                                 f"({os.strerror(e.errno)}); a join links its parts' chunks instead of copying them, "
                                 "so it must be on the parts' file system: join into a directory beside them") from None
            raise
        progress.update()


def _manifest(loaded: list[Part], sources: Sources, shapes: dict) -> dict:
    """The joined store's manifest: the first part's (model, corpus, counts, cursor), with the joined layers, token
    layers, orders and example sets, and `join`: the parts (path, committed generation, what each held)."""
    first = loaded[0].manifest
    layers, token_layers = len(sources.layers), sources.token_layers
    ngram_parts = [part for part, _ in sources.ngrams] if sources.orders else []
    candidates = [p.manifest.get("ngram_candidates_source") for p in dict.fromkeys(ngram_parts)]
    candidates = [c for c in candidates if c]
    source = None if not candidates else candidates[0] if all(c == candidates[0] for c in candidates) else \
        {"parts": candidates}  # read only for being there (the report's note on trigram detectors)
    coverage = [p.manifest["flags"].get("ngram_max_coverage") for p in dict.fromkeys(ngram_parts)
                if p.manifest.get("ngram_candidates_source")]
    widest = max(loaded, key=lambda p: p.layers).manifest["flags"].get("max_layers")
    flags = first["flags"] | {
        "token_layers": token_layers, "max_layers": widest, "ngram_orders": sources.orders, "examples": sources.k,
        "ngram_candidates_from": (candidates[0]["path"] if len({c["path"] for c in candidates}) == 1 else
                                  sorted({c["path"] for c in candidates})) if candidates else None}
    flags["quantile_examples"] = sources.quantile  # 0 when a part has no value_hist (it bins the quantile set)
    if not sources.value_hist:
        flags["value_bins_per_octave"] = 0  # a part counted none: the join has none
    if coverage:
        flags["ngram_max_coverage"] = min(coverage)  # the report's note on unseen trigram detectors: the strictest
    held = set().union(*(p.orders for p in loaded))
    join = {"storage": STORAGE,
            "parts": [{"path": p.root, "generation": p.manifest["generation"], "layers": p.layers,
                       "token_layers": p.token_layers, "ngram_orders": sorted(p.orders), "examples": p.examples}
                      for p in loaded],
            "dropped_ngram_orders": sorted(held - set(sources.orders)),
            "layers_without_examples": [l for l, p in enumerate(sources.examples) if p is None] if sources.k else []}
    kept = {k: v for k, v in first.items() if k not in ("format", "version", "generation", "arrays", "chunks",
                                                         "value_edges")}
    if sources.value_hist:
        kept["value_edges"] = first["value_edges"]
    return kept | {
        "format": first["format"], "version": first["version"], "generation": 0, "arrays": shapes,
        "layers": layers, "token_layers": token_layers, "ngram_orders": sources.orders, "examples": sources.k,
        "quantile_examples": sources.quantile, "ngram_candidates_source": source, "flags": flags, "join": join}
