"""Bulk export: a statistics store's neuron facts and example activations as tables (parquet or JSON lines).

`export(stats_dir, out_dir)` writes, a collected layer at a time, two tables (docs/formats.md, "Export"):

- `facts`: one row per neuron (layer, neuron, frequency, dead and its 95% rate bound, positional MI and type,
  top trigger tokens, token and trigram detector items, label, estimated zero-ablation effect where there is one,
  promoted / suppressed tokens where an atlas holds them), from `analyses.neurons.facts.layer_facts`;
- `examples`: one row per example activation (layer, neuron, kind, slot, window, position, token, value, the
  token's text, and its context: token ids, the example's index in them, their text, and the neuron's value at
  each of them when the store holds context activations).

Each table is one file per layer (`facts/layer-000.parquet`, ...; `.jsonl` with format "jsonl"), rows ordered by
(neuron) and (neuron, kind, slot), a layer's examples written in row groups of `block` neurons: memory holds one
layer's facts and one block's rows, whatever the model. `export.json`, written last, names the source, the
files and the columns (`COLUMNS`).

With an atlas of the same store (`analyses.neurons.atlas`), the layers it built take its labels, effects and
promoted / suppressed tokens; with an attribution (`analyses.interventions.attribution`) the effects are its.
Token texts come from the tokenizer of the model directory the store names (ids as '<id N>' without it).

The export is built in `<out_dir>.partial` and renamed into place when complete; a killed export resumes from
its finished layers when the inputs are the same.
"""

from __future__ import annotations

import json
import math
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from analyses import positional
from analyses.neurons import facts as nf
from analyses.neurons.data_files import code_digest, read_js
from analyses.report import Thresholds
from analyses.tokens import context_span
from opt_jax import atomic
from opt_jax import disk
from opt_jax import lock
from opt_jax.errors import AnalysisError, InputError, MissingError
from opt_jax.progress import Progress

FORMAT = "opt_jax.export"
VERSION = 1
MANIFEST = "export.json"
FORMATS = ("parquet", "jsonl")
BLOCK = 4096  # neurons per row group of the examples table
WINDOW_ROWS = 4096  # windows read at once for the examples' contexts (32 MiB of int32 at 2048 tokens)
CONTEXT_FIELDS = ("context_tokens", "context_values", "context_index")  # per example, when the store holds them

TOKENS = pa.list_(pa.int32())
TEXTS = pa.list_(pa.string())
FACTS = pa.schema([
    ("layer", pa.int32()), ("neuron", pa.int32()),
    ("activations", pa.int64()), ("frequency", pa.float64()), ("rank", pa.int64()),
    ("dead", pa.bool_()), ("rate_bound", pa.float64()),
    ("mi", pa.float64()), ("positional", pa.string()), ("positional_strong", pa.bool_()),
    ("triggers", TOKENS), ("trigger_counts", pa.list_(pa.int64())), ("trigger_texts", TEXTS),
    ("token_detector", TOKENS), ("token_detector_texts", TEXTS),
    ("trigram_detector", pa.list_(TOKENS)), ("trigram_detector_texts", TEXTS),
    ("label", pa.string()), ("effect", pa.float64()),
    ("promoted", TOKENS), ("promoted_texts", TEXTS), ("suppressed", TOKENS), ("suppressed_texts", TEXTS),
])
EXAMPLES = pa.schema([
    ("layer", pa.int32()), ("neuron", pa.int32()), ("kind", pa.string()), ("slot", pa.int32()),
    ("window", pa.int32()), ("position", pa.int32()), ("token", pa.int32()), ("value", pa.float32()),
    ("text", pa.string()), ("context_tokens", TOKENS), ("context_index", pa.int32()),
    ("context_text", pa.string()), ("context_values", pa.list_(pa.float32())),
])
COLUMNS = {  # what each column holds (export.json and docs/formats.md say the same)
    "facts": {
        "layer": "collected layer", "neuron": "neuron index in the layer",
        "activations": "tokens it fired on (fc1 > 0, BOS included)", "frequency": "activations / tokens",
        "rank": "1 + the layer's neurons firing strictly more often", "dead": "never fired",
        "rate_bound": "a dead neuron's 95% upper bound on its firing rate (null when alive)",
        "mi": "positional mutual information (null without full-length sequences)",
        "positional": "positional type (analyses.positional.TYPES) or null", "positional_strong":
            "strong positional neuron (null when not positional)",
        "triggers": "token layers: its top trigger token ids, most activations first (null elsewhere)",
        "trigger_counts": "their activation counts", "trigger_texts": "their texts",
        "token_detector": "token ids it detects (null when no token detector)", "token_detector_texts": "their texts",
        "trigram_detector": "trigrams it detects, 3 token ids each (null when none)",
        "trigram_detector_texts": "their texts", "label": "the atlas's short label",
        "effect": "estimated change of the mean loss (nats per token) when zero-ablated (null without an "
                  "attribution)",
        "promoted": "token ids its update promotes most (from an atlas; null without)", "promoted_texts": "texts",
        "suppressed": "token ids its update suppresses most (from an atlas; null without)",
        "suppressed_texts": "texts",
    },
    "examples": {
        "layer": "collected layer", "neuron": "neuron index", "kind": "example set (top, random, ...)",
        "slot": "place in the set (top: largest value first)", "window": "window index in the run's stream",
        "position": "position in the window (0 = BOS)", "token": "token id it fired on",
        "value": "fc1 output there (float32)", "text": "the token's text",
        "context_tokens": "token ids of a contiguous span of the window around it",
        "context_index": "the example's index in context_tokens",
        "context_text": "context_tokens decoded together",
        "context_values": "the neuron's fc1 output at each context token (null unless the store holds context "
                          "activations)",
    },
}


@lock.writes("out_dir", replaced_whole=True)
def export(stats_dir: str, out_dir: str, fmt: str = "parquet", atlas: str | None = None,
           attribution: str | None = None, model_dir: str | None = None, layers=None, block: int = BLOCK,
           before: int = nf.BEFORE, after: int = nf.AFTER, thresholds: Thresholds = Thresholds(),
           verbose: bool = True) -> str:
    """Write the facts and examples tables of a statistics directory into out_dir; returns its absolute path.

    `fmt`: "parquet" or "jsonl". `atlas`: an atlas directory built from this store (its labels, effects and
    promoted / suppressed tokens are used for the layers it built); `attribution`: an attribution directory of
    the same model (its effects); `model_dir`: the converted model, for token texts (default: the store's).
    `layers`: only these collected layers (default all). Without stored context activations an example's context
    is the window's tokens `before` / `after` around it, as the atlas shows it.
    """
    if fmt not in FORMATS:
        raise InputError(f"unknown export format {fmt!r}; expected one of {', '.join(FORMATS)}")
    if block < 1:
        raise InputError(f"block must be at least 1, got {block}")
    source = nf.open_source(stats_dir, model_dir=model_dir, thresholds=thresholds, scores=False,
                            attribution=attribution)
    stats = source.stats
    chosen = _layers(source, layers)
    shown = _atlas_model(atlas, stats) if atlas else None
    out_dir = os.path.abspath(out_dir)
    atomic.recover_dir(out_dir)
    work = f"{out_dir}.partial"
    identity = {"format": FORMAT, "version": VERSION, "stats": stats.root, "generation": stats.manifest.get("generation"),
                "table_format": fmt, "layers": chosen, "block": block, "context": [before, after],
                "contexts": stored_contexts(stats),
                "thresholds": thresholds.to_json(), "model": source.model_dir,
                "atlas": None if shown is None else [shown.root, shown.created],
                "attribution": None if source.attribution is None else source.attribution.root,
                "writer": _writer_hash()}
    then = "the layers written so far are kept: make room and run the same command again to resume"
    with disk.writing(os.path.dirname(out_dir), AnalysisError, "exporting", then):
        state = os.path.join(work, "state.json")
        if atomic.read_json(state) != identity:  # a fresh export (or other inputs): nothing of it is reused
            atomic.remove(work)
            atomic.write_json(state, identity)
        progress = Progress("export", len(chosen), " layers", enabled=verbose, every=0.0)
        contexts = stored_contexts(stats)
        for layer in chosen:
            paths = [os.path.join(work, table, f"layer-{layer:03d}.{fmt}") for table in ("facts", "examples")]
            if not all(os.path.isfile(p) for p in paths):
                facts = nf.layer_facts(source, layer, examples=False, related_depth=0)
                _write(paths[0], [facts_table(facts, source, shown)], FACTS, fmt)
                sets = stats.layer_examples(layer) if stats.examples_per_neuron else {}
                _write(paths[1], (examples_table(stats, source, layer, sets, start, min(start + block, facts.neurons),
                                                 before, after, contexts)
                                  for start in range(0, facts.neurons, block)), EXAMPLES, fmt)
            progress.update()
        manifest = {"format": FORMAT, "version": VERSION, "table_format": fmt, "stats": stats.root,
                    "generation": stats.manifest.get("generation"), "model": source.model_dir,
                    "tokens": stats.tokens, "layers": chosen, "ffn": stats.config.ffn_dim,
                    "examples_per_neuron": stats.examples_per_neuron,
                    "contexts": None if not stats.examples_per_neuron else "store" if contexts else "window",
                    "context": ({"before": contexts["before"], "after": contexts["after"]} if contexts
                                else {"before": before, "after": after}),
                    "atlas": None if shown is None else {"path": shown.root, "built": sorted(shown.built)},
                    "attribution": identity["attribution"], "notes": source.notes,
                    "files": {table: [f"{table}/layer-{layer:03d}.{fmt}" for layer in chosen]
                              for table in ("facts", "examples")},
                    "columns": COLUMNS}
        atomic.write_json(os.path.join(work, MANIFEST), manifest)
        atomic.remove(os.path.join(work, "state.json"))
        return atomic.replace_dir(work, out_dir)


def _layers(source: nf.Source, layers) -> list[int]:
    """The collected layers to export, checked against the store."""
    count = source.collected_layers
    if layers is None:
        return list(range(count))
    bad = [l for l in layers if not isinstance(l, (int, np.integer)) or not 0 <= l < count]
    if bad:
        raise InputError(f"{source.stats.root}: layers {bad} are out of range; the store holds layers 0..{count - 1}")
    return sorted({int(l) for l in layers})


# The atlas's share: labels, effects, promoted / suppressed tokens.

class AtlasModel:
    """One model of an atlas built from the store being exported: its layer summaries and neuron records."""

    def __init__(self, root: str, created: str, index: int, built: list[int]):
        self.root, self.created, self.index, self.built = root, created, index, set(built)

    def summary(self, layer: int) -> dict:
        return self._read(f"m{self.index}/L{layer}/summary")

    def records(self, layer: int):
        """The layer's neuron records, block file by block file, in neuron order."""
        b = 0
        while os.path.isfile(self._path(f"m{self.index}/L{layer}/B{b}")):
            yield from self._read(f"m{self.index}/L{layer}/B{b}")["neurons"]
            b += 1

    def _path(self, key: str) -> str:
        return os.path.join(self.root, "data", f"{key}.js")

    def _read(self, key: str):
        path = self._path(key)
        if not os.path.isfile(path):
            raise MissingError(f"{self.root}: the atlas lacks {path} (an incomplete atlas: build it again)")
        return read_js(path)[1]


def _atlas_model(root: str, stats) -> AtlasModel:
    """The model of the atlas at root that was built from `stats`; an error naming both when there is none."""
    root = os.path.abspath(root)
    path = os.path.join(root, "data", "atlas.js")
    if not os.path.isfile(path):
        raise MissingError(f"{root}: not an atlas ({path} is missing)")
    _, manifest = read_js(path)
    models = manifest.get("models", [])
    same = [m for m in models if m.get("stats") == stats.root] or (models if len(models) == 1 else [])
    config = stats.config
    facts = {"tokens": stats.tokens, "ffn": config.ffn_dim, "vocab": config.vocab_size,
             "layers": int(stats.act.shape[0]), "token_layers": list(stats.token_layers)}
    for model in same:
        differ = [f"{key} {model.get(key)!r} != {value!r}" for key, value in facts.items() if model.get(key) != value]
        if differ:
            raise InputError(f"{root}: an atlas of another store than {stats.root} (model {model.get('name')!r} "
                             f"of {model.get('stats')}: {', '.join(differ)})")
        return AtlasModel(root, manifest.get("created"), model["index"], model.get("built", []))
    raise InputError(f"{root}: an atlas of other stores ({', '.join(str(m.get('stats')) for m in models)}), not of "
                     f"{stats.root}")


# The tables.

def facts_table(facts: nf.LayerFacts, source: nf.Source, atlas: AtlasModel | None = None) -> pa.Table:
    """The facts rows of one layer (schema `FACTS`), the atlas's labels, effects and update tokens where it built
    the layer."""
    n = facts.neurons
    texts = pa.array(source.texts, pa.string())
    shown = atlas is not None and facts.layer in atlas.built
    summary = atlas.summary(facts.layer) if shown else None
    label = summary["label"] if shown else [nf.label(facts, i, source) for i in range(n)]
    effect = source.effect(facts.layer)
    if effect is None and shown and summary.get("effect") is not None:
        effect = np.array([np.nan if e is None else e for e in summary["effect"]], np.float64)
    promoted = suppressed = [None] * n
    if shown:
        promoted, suppressed = [], []
        for record in atlas.records(facts.layer):  # a block file at a time: only the token ids are kept
            promoted.append([t["token"] for t in record["promoted"]] or None)
            suppressed.append([t["token"] for t in record["suppressed"]] or None)
        if len(promoted) != n or len(label) != n:
            raise InputError(f"{atlas.root}: layer {facts.layer} has {len(promoted)} neuron records and "
                             f"{len(label)} labels, the store {n} neurons")
    kind = facts.pos_type  # [n]
    triggers = _lists(facts.trigger_ids, facts.trigger_ids >= 0) if facts.token_layer else pa.nulls(n, TOKENS)
    counts = (_lists(facts.trigger_counts, facts.trigger_ids >= 0, pa.int64()) if facts.token_layer
              else pa.nulls(n, pa.list_(pa.int64())))
    detected = [facts.token_items.get(i) for i in range(n)]
    grams = [facts.trigram_items.get(i) for i in range(n)]
    columns = {
        "layer": pa.array(np.full(n, facts.layer, np.int32)), "neuron": pa.array(np.arange(n, dtype=np.int32)),
        "activations": pa.array(np.asarray(source.stats.act[facts.layer], np.int64)),
        "frequency": pa.array(facts.freq), "rank": pa.array(facts.rank),
        "dead": pa.array(facts.dead), "rate_bound": pa.array(np.where(facts.dead, facts.rate_bound, np.nan),
                                                             from_pandas=True),
        "mi": pa.nulls(n, pa.float64()) if facts.mi is None else pa.array(facts.mi),
        "positional": pa.array([positional.TYPES[k] if k >= 0 else None for k in kind.tolist()], pa.string()),
        "positional_strong": pa.array(np.where(kind >= 0, facts.strong, False), mask=kind < 0),
        "triggers": triggers, "trigger_counts": counts, "trigger_texts": _texts(triggers, texts),
        "token_detector": pa.array([None if d is None else d.tolist() for d in detected], TOKENS),
        "trigram_detector": pa.array([None if g is None else g.tolist() for g in grams], pa.list_(TOKENS)),
        "trigram_detector_texts": pa.array([None if g is None else source.joined(g) for g in grams], TEXTS),
        "label": pa.array(label, pa.string()),
        "effect": pa.nulls(n, pa.float64()) if effect is None else pa.array(effect, from_pandas=True),
        "promoted": pa.array(promoted, TOKENS), "suppressed": pa.array(suppressed, TOKENS),
    }
    columns["token_detector_texts"] = _texts(columns["token_detector"], texts)
    columns["promoted_texts"] = _texts(columns["promoted"], texts)
    columns["suppressed_texts"] = _texts(columns["suppressed"], texts)
    return pa.table({name: columns[name] for name in FACTS.names}, schema=FACTS)


def stored_contexts(stats) -> dict | None:
    """The manifest's entry of the store's context activations (`Stats.contexts`: their span's `before` and
    `after`) when it holds current ones; None otherwise (a store written before they existed included)."""
    return getattr(stats, "contexts", None) or None


def examples_table(stats, source: nf.Source, layer: int, sets: dict, start: int, stop: int,
                   before: int = nf.BEFORE, after: int = nf.AFTER, contexts: dict | None = None) -> pa.Table:
    """The example rows of neurons start..stop-1 of a layer (schema `EXAMPLES`), ordered by (neuron, kind, slot):
    every kind's filled slots. `sets`: the layer's example sets (`Stats.layer_examples`). The context: with
    `contexts` (`stored_contexts`) the stored span around the example and the neuron's values there (as
    `Stats.examples` reads them); else the window's `before` / `after` tokens around it, as the atlas shows them,
    without values. Either span leaves BOS out (`analyses.tokens.context_span`)."""
    kinds = list(sets)
    if not kinds:
        return EXAMPLES.empty_table()
    k = sets[kinds[0]]["window"].shape[1]
    b = stop - start

    def stacked(field):  # [b * kinds * k] in (neuron, kind, slot) order
        return np.stack([sets[kind][field][start:stop] for kind in kinds], axis=1).reshape(-1)

    window = stacked("window")  # [r]
    filled = window >= 0  # [r]
    window = window[filled].astype(np.int32)  # [m]
    position = stacked("position")[filled].astype(np.int32)  # [m]
    value = stacked("value")[filled].astype(np.float32)  # [m]
    neuron = np.repeat(np.arange(start, stop, dtype=np.int32), len(kinds) * k)[filled]  # [m]
    kind = np.tile(np.repeat(np.arange(len(kinds)), k), b)[filled]  # [m]
    slot = np.tile(np.arange(k, dtype=np.int32), b * len(kinds))[filled]  # [m]
    if contexts:
        before, after = contexts["before"], contexts["after"]
    ids, first, token = _spans(stats, window, position, before, after)  # [m, c], [m], [m]
    inside = ids >= 0  # [m, c]
    if contexts:
        from analyses.collection.store import context_name

        spans = np.stack([np.asarray(stats.array(context_name(name))[layer, start:stop], np.float32)
                          for name in kinds], axis=1)  # [b, kinds, k, c]
        values = spans.reshape(-1, spans.shape[-1])[filled]  # [m, c]: slot j at position - before + j
        values[:, before] = value  # the example itself: its record's float32 value, exact
        context_values = _lists(values, inside, pa.float32())
    else:
        context_values = pa.nulls(len(value), pa.list_(pa.float32()))
    texts = pa.array(source.texts, pa.string())
    columns = {"layer": pa.array(np.full(len(value), layer, np.int32)), "neuron": pa.array(neuron),
               "kind": pa.array(np.array(kinds, object)[kind].tolist(), pa.string()),
               "slot": pa.array(slot), "window": pa.array(window), "position": pa.array(position),
               "token": pa.array(token), "value": pa.array(value), "text": texts.take(pa.array(token)),
               "context_tokens": _lists(ids, inside), "context_index": pa.array(position - first),
               "context_text": pa.array(_joined(ids, source), pa.string()), "context_values": context_values}
    return pa.table({name: columns[name] for name in EXAMPLES.names}, schema=EXAMPLES)


def _spans(stats, window: np.ndarray, position: np.ndarray, before: int, after: int) -> tuple:
    """(ids int32 [m, before + after + 1], first [m], token [m]) of m examples: column j holds the token at
    `position - before + j` where it is inside the span (`analyses.tokens.context_span`: never BOS; -1
    elsewhere), `first` the span's first position. The
    windows are read WINDOW_ROWS at a time, so memory stays bounded however many windows the examples name."""
    offsets = np.arange(-before, after + 1)  # [c]
    ids = np.full((len(window), len(offsets)), -1, np.int32)  # [m, c]
    first = np.zeros(len(window), np.int32)  # [m]
    token = np.zeros(len(window), np.int32)  # [m]
    used, which = np.unique(window, return_inverse=True)  # [u], [m]
    for lo in range(0, len(used), WINDOW_ROWS):
        rows = stats.window_rows(used[lo:lo + WINDOW_ROWS])  # [w, seq]: -1 after each window's end
        lengths = (rows >= 0).sum(axis=1)  # [w]
        chosen = np.flatnonzero((which >= lo) & (which < lo + WINDOW_ROWS))  # [s]
        row, p = which[chosen] - lo, position[chosen]  # [s] each
        begin, end = context_span(p, lengths[row], before, after)  # [s] each
        at = p[:, None] + offsets  # [s, c]
        inside = (at >= begin[:, None]) & (at < end[:, None])  # [s, c]
        ids[chosen] = np.where(inside, rows[row[:, None], np.clip(at, 0, rows.shape[1] - 1)], -1)
        first[chosen], token[chosen] = begin, rows[row, p]
    return ids, first, token


def _lists(values: np.ndarray, keep: np.ndarray, kind=pa.int32()) -> pa.ListArray:
    """One list per row of values [m, c]: the entries where keep [m, c] (a row's kept entries in order)."""
    lengths = keep.sum(axis=1)  # [m]
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)  # [m + 1]
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array(values[keep], kind))


def _texts(ids: pa.ListArray, texts: pa.Array) -> pa.ListArray:
    """The texts of list<int32> token ids, list by list (nulls stay null)."""
    ids = ids.combine_chunks() if isinstance(ids, pa.ChunkedArray) else ids
    return pa.ListArray.from_arrays(ids.offsets, texts.take(ids.flatten()), mask=ids.is_null())


def _joined(ids: np.ndarray, source: nf.Source) -> list[str]:
    """Each row of ids [m, c] (-1 outside its span) decoded together, rows of one length in one call."""
    lengths = (ids >= 0).sum(axis=1)  # [m]
    out = [""] * len(ids)
    for length in np.unique(lengths):
        rows = np.flatnonzero(lengths == length)  # [r]
        spans = ids[rows][ids[rows] >= 0].reshape(len(rows), int(length))  # [r, length]
        for row, text in zip(rows.tolist(), source.joined(spans)):
            out[row] = text
    return out


# Writing.

def _write(path: str, tables, schema: pa.Schema, fmt: str) -> None:
    """Write tables (each a row group) as one file at path, atomically."""
    def parquet(f):
        with pq.ParquetWriter(f, schema, compression="zstd") as writer:
            for table in tables:
                writer.write_table(table, row_group_size=max(table.num_rows, 1))

    def jsonl(f):
        for table in tables:
            for batch in table.to_batches(max_chunksize=65536):
                f.write("".join(json.dumps(_finite(row), ensure_ascii=False, allow_nan=False) + "\n"
                                for row in batch.to_pylist()))

    atomic.write_file(path, parquet if fmt == "parquet" else jsonl, binary=fmt == "parquet")


def _finite(row: dict) -> dict:
    """A row with NaN floats as None (JSON has no NaN)."""
    return {k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in row.items()}


def _writer_hash() -> str:
    """A digest of the code that writes the tables: a changed writer rewrites every layer."""
    return code_digest(__file__, nf.__file__)

