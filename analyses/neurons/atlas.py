"""The neuron atlas: statistics directories -> a static folder with a page per neuron (docs/atlas-format.md).

`build_atlas(stats_dirs, out_dir)` computes each collected layer's facts (`analyses.neurons.facts`) a layer at a
time and writes them as JavaScript data files (`atlasData("<key>", {...});`, loadable from `file://` by a
`<script>` element): per layer a summary (one row per neuron) and blocks of full neuron records, per model a
token search index, and the manifest `data/atlas.js`, beside the viewer `index.html` (copied from
`analyses/neurons/web/index.html`). Several models go side by side, named as `analyses.analyze` names them.
The data files' format is `analyses.neurons.data_files`, the token index `analyses.neurons.token_index`.

The atlas is built in `<out_dir>.partial` and takes the name `out_dir` only when complete
(`opt_jax.atomic.replace_dir`): an earlier atlas stays readable until then. A build that is killed resumes: the
layers already written (each layer's summary is written last, with its token-index entries beside it under
`.parts/`) are not computed again when the inputs are the same.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import math
import os

import numpy as np

from analyses import positional
from analyses.neurons import data_files, related, token_index
from analyses.neurons import facts as nf
from analyses.neurons.data_files import round_significant, significant, significant_up, write_js
from analyses.neurons.token_index import INDEX_LIMIT, TOKEN_BUCKETS, TokenIndex, index_entries
from analyses.report import Thresholds, split_labels
from opt_jax import atomic
from opt_jax import disk
from opt_jax import lock
from opt_jax.errors import AnalysisError, InputError, MissingError
from opt_jax.progress import Progress

VERSION = 2  # 2: neuron records gain `related` (version 1 atlases have none; the page reads both)
PAGE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "web", "index.html")
CURVE_POINTS = 512  # a longer curve is shown as the means over bins of consecutive positions
PARTS = ".parts"  # per-layer token-index entries and counts of a build in progress


# One neuron, one layer.

def curve_bins(kept: int, points: int = CURVE_POINTS) -> int:
    """Positions per point of a curve of `kept` positions drawn with at most `points` points."""
    return max(1, math.ceil(kept / points))


def binned_curves(facts: nf.LayerFacts, start: int, stop: int, points: int = CURVE_POINTS) -> tuple[list, np.ndarray]:
    """(positions, fr [points, stop - start]) of a block's curves: with more than `points` kept positions, the
    means over bins of `curve_bins` consecutive ones, each at its first position; 4 significant digits."""
    values = facts.curves[:, start:stop].astype(np.float64)  # [k, b]
    binned = curve_bins(len(facts.positions), points)
    if binned == 1 or not len(facts.positions):
        return facts.positions.tolist(), round_significant(values)
    firsts = np.arange(0, len(facts.positions), binned)  # [points]
    sizes = np.diff(np.append(firsts, len(facts.positions)))  # [points]
    means = np.add.reduceat(values, firsts, axis=0) / sizes[:, None]  # [points, b]
    return facts.positions[firsts].tolist(), round_significant(means)


def neuron_records(facts: nf.LayerFacts, source: nf.Source, start: int, stop: int,
                   points: int = CURVE_POINTS, per_band: int | None = None) -> list[dict]:
    """The full records of neurons start..stop-1 of a layer (the `neurons` of a block file); with quantile
    examples, at most `per_band` examples of each band (None: all the facts hold; 0: no `quantile` at all)."""
    text = source.text
    positions, curves = binned_curves(facts, start, stop, points)
    binned = curve_bins(len(facts.positions), points)
    shares = facts.trigger_shares()
    effect = source.effect(facts.layer)  # [ffn] or None
    out = []
    for col, n in enumerate(range(start, stop)):
        kind = facts.pos_type[n]
        record = {"n": n, "freq": significant(facts.freq[n]), "rank": int(facts.rank[n]), "dead": bool(facts.dead[n]),
                  "rate_bound": significant_up(facts.rate_bound) if facts.dead[n] else None,
                  "mi": None if facts.mi is None else significant(facts.mi[n]),
                  "positional": None if kind < 0 else {"type": positional.TYPES[kind],
                                                       "strong": bool(facts.strong[n])},
                  "curve": {"positions": positions, "freq": curves[:, col].tolist(), "binned": binned},
                  "triggers": [{"token": int(i), "text": text(i), "count": int(c), "share": significant(s, 4),
                                "rate": significant(r, 4), "always": bool(r >= nf.ALWAYS)}
                               for i, c, s, r in zip(facts.trigger_ids[n], facts.trigger_counts[n], shares[n],
                                                     facts.trigger_rates[n]) if i >= 0],
                  "label": nf.label(facts, n, source),
                  "effect": None if effect is None else significant(effect[n], 4)}
        found = []
        if n in facts.token_items:
            found.append({"kind": "token", "items": [text(i) for i in facts.token_items[n]],
                          "tokens": facts.token_items[n].tolist()})
        if n in facts.trigram_items:
            found.append({"kind": "trigram", "items": source.joined(facts.trigram_items[n]),
                          "tokens": facts.trigram_items[n].tolist()})
        record["detector"] = found[0] if found else None
        record["detectors"] = found
        record["promoted"], record["suppressed"] = [], []
        if facts.promoted is not None and not facts.dead[n]:
            record["promoted"] = [{"token": int(i), "text": text(i), "score": significant(s, 4)}
                                  for i, s in zip(facts.promoted[n], facts.promoted_scores[n])]
            record["suppressed"] = [{"token": int(i), "text": text(i), "score": significant(s, 4)}
                                    for i, s in zip(facts.suppressed[n], facts.suppressed_scores[n])]
        record["trigger_scores"] = []
        if n in facts.trigger_scores:
            values, ranks = facts.trigger_scores[n]
            record["trigger_scores"] = [{"token": int(i), "text": text(i), "score": significant(v, 4), "rank": int(r)}
                                        for i, v, r in zip(facts.token_items[n], values, ranks)]
        record["related"] = _related(facts, n)
        record["value_hist"] = None if facts.value_hist is None else _trimmed(facts.value_hist[n])
        record["examples"] = {"top": [], "random": []}
        out.append(record)
    for kind, examples in facts.examples.items():
        for n, record, contexts in zip(range(start, stop), out, _contexts(examples, start, stop, source.texts)):
            if kind == nf.QUANTILE:
                if per_band != 0:
                    record["quantile"] = _quantile(facts.bands[n], examples.band[n][examples.valid[n]], contexts,
                                                   per_band)
            else:
                record["examples"][kind] = contexts
    return out


def _quantile(bands: list, band: np.ndarray, contexts: list[dict], per_band: int | None = None) -> list[dict]:
    """A neuron's quantile bands (`store.Band`s), each with its value-histogram bins [first, last), value range
    (`high` None: no upper edge), activation count and example contexts (`band` [e]: each context's band), the
    first `per_band` of each (None: all; the first n of a band's uniform sample are a uniform sample of n)."""
    return [{"bins": list(b.bins), "low": significant(b.low), "high": significant(b.high), "count": b.count,
             "examples": [c for c, i in zip(contexts, band.tolist()) if i == b.index][:per_band]} for b in bands]


def _trimmed(counts: np.ndarray) -> list[int]:
    """A histogram's counts up to its last non-zero bin (the page reads the missing ones as 0)."""
    nonzero = np.flatnonzero(counts)
    return counts[:nonzero[-1] + 1].tolist() if len(nonzero) else []


def _related(facts: nf.LayerFacts, n: int) -> dict | None:
    """Neuron n's related neurons as [layer, neuron, cosine] lists per kind (None when not computed)."""
    if facts.related is None:
        return None
    return {kind: [[l, m, significant(c, 4)] for l, m, c in links] for kind, links in facts.related.of(n).items()}


def _contexts(examples: nf.Examples, start: int, stop: int, texts: list[str]) -> list[list[dict]]:
    """The examples of one set of neurons start..stop-1 as decoded contexts, a list per neuron."""
    ids = examples.ids[start:stop].tolist()  # [b][k][c]
    valid = examples.valid[start:stop].tolist()
    fire, window, position = (a[start:stop].tolist() for a in (examples.fire, examples.window, examples.position))
    value = round_significant(examples.value[start:stop]).tolist()
    heat = None if examples.values is None else round_significant(examples.values[start:stop]).tolist()

    def context(b, j):
        record = {"tokens": [texts[i] for i in ids[b][j] if i >= 0], "fire": fire[b][j], "value": value[b][j],
                  "window": window[b][j], "position": position[b][j]}
        if heat is not None:  # fc1 at each token (null where the stored span does not reach)
            record["values"] = [None if v != v else v for i, v in zip(ids[b][j], heat[b][j]) if i >= 0]
        return record

    return [[context(b, j) for j in range(len(valid[b])) if valid[b][j]] for b in range(len(valid))]


def layer_summary(facts: nf.LayerFacts, source: nf.Source) -> dict:
    """The summary columns of a layer (one row per neuron)."""
    return {"layer": facts.layer, "neurons": facts.neurons,
            "freq": [significant(f) for f in facts.freq.tolist()], "rank": facts.rank.tolist(),
            "dead": facts.dead.astype(int).tolist(),
            "mi": None if facts.mi is None else [significant(m) for m in facts.mi.tolist()],
            "pos": [positional.TYPES[k] if k >= 0 else None for k in facts.pos_type.tolist()],
            "strong": facts.strong.astype(int).tolist(),
            "token_det": [int(n in facts.token_items) for n in range(facts.neurons)],
            "trigram_det": [int(n in facts.trigram_items) for n in range(facts.neurons)],
            "label": [nf.label(facts, n, source) for n in range(facts.neurons)],
            "effect": _effects(source.effect(facts.layer))}


def _effects(effect: np.ndarray | None) -> list | None:
    """A layer's estimated zero-ablation effects with 4 significant digits (None without an attribution)."""
    return None if effect is None else [significant(e, 4) for e in effect.tolist()]


# The build.

@lock.writes("out_dir", replaced_whole=True)
def build_atlas(stats_dirs, out_dir: str, names=None, model_dirs=None, block: int = 128, layers=None,
                thresholds: Thresholds = Thresholds(), before: int = nf.BEFORE, after: int = nf.AFTER,
                curve_points: int = CURVE_POINTS, page: str | None = None, attributions=None,
                related_depth: int = related.DEPTH, per_band: int | None = None, verbose: bool = True) -> str:
    """Write the atlas of one or more statistics directories into out_dir; returns out_dir's absolute path.

    A statistics directory may be given as `NAME=DIR`; the others are named by `names`, else by their
    directory's name (as `analyses.analyze`). `model_dirs` (one per directory) points at the converted models
    when the statistics' manifests name a moved one. `layers` builds only those collected layers (default all);
    `block` neurons go in each block file; contexts show `before` / `after` tokens around a firing token; a
    curve has at most `curve_points` points (longer ones are binned).
    `page` is the viewer copied as index.html (default `analyses/neurons/web/index.html`). `attributions`: per
    model an attribution directory (`analyses.attribute`, of the same model) or None, as a list in the models'
    order or a dict {name: directory}; its neurons then show their estimated zero-ablation effect.
    `related_depth`: how many layers downstream and upstream the related neurons through the weights are searched
    (`analyses.neurons.related`; 0: none are computed).
    Size (docs/atlas.md, "Size"): `before` / `after` bound each example's context (the example's token is always
    kept); `per_band` bounds the examples kept per quantile band of a store with quantile examples (None: the K the
    store holds; 0: no quantile bands at all, the atlas of such a store is then that of a store without them).
    """
    page = page or PAGE
    if not os.path.isfile(page):
        raise MissingError(f"{page}: the atlas page is missing (the viewer index.html that the atlas copies)")
    if block < 1 or curve_points < 1:
        raise InputError(f"block and curve_points must be at least 1, got {block} and {curve_points}")
    if not isinstance(related_depth, (int, np.integer)) or related_depth < 0:
        raise InputError(f"related_depth must be 0 or more, got {related_depth!r}")
    for name, value in (("before", before), ("after", after), ("per_band", per_band)):
        if value is not None and (not isinstance(value, (int, np.integer)) or value < 0):
            raise InputError(f"{name} must be a whole number, 0 or more, got {value!r}")
    if before is None or after is None:
        raise InputError(f"before and after must be whole numbers, 0 or more, got {before!r} and {after!r}")
    stats_dirs = [str(d) for d in stats_dirs]
    if any("=" in d for d in stats_dirs):
        names, stats_dirs = split_labels(stats_dirs, names)
    names = list(names) if names else [os.path.basename(os.path.normpath(d)) for d in stats_dirs]
    if len(names) != len(stats_dirs) or len(set(names)) != len(names):
        raise AnalysisError(f"need one distinct name per statistics directory, got {names}: pass names")
    model_dirs = list(model_dirs) if model_dirs else [None] * len(stats_dirs)
    if len(model_dirs) != len(stats_dirs):
        raise InputError(f"{len(model_dirs)} model directories for {len(stats_dirs)} statistics directories")
    attributions = _per_model(attributions, names)
    sources = [nf.open_source(d, name, m, thresholds, attribution=a)
               for name, d, m, a in zip(names, stats_dirs, model_dirs, attributions)]
    chosen = [_layers(s, layers) for s in sources]
    out_dir = os.path.abspath(out_dir)
    atomic.recover_dir(out_dir)
    work = f"{out_dir}.partial"
    then = "the layers built so far are kept: make room and run the same command again to resume"
    with disk.writing(os.path.dirname(out_dir), AnalysisError, "building the atlas", then):
        identity = _identity(sources, chosen, block, thresholds, before, after, curve_points, related_depth, per_band)
        state_path = os.path.join(work, PARTS, "state.json")
        if atomic.read_json(state_path) != identity:  # a fresh build (or other inputs): nothing of it is reused
            atomic.remove(work)
            atomic.write_json(state_path, identity)
        models = []
        for index, (source, built) in enumerate(zip(sources, chosen)):
            models.append(_build_model(source, index, built, work, block, before, after, curve_points, related_depth,
                                       per_band, verbose))
        manifest = {"version": VERSION, "created": datetime.datetime.now(datetime.timezone.utc).strftime(
            "%Y-%m-%dT%H:%M:%SZ"), "block": block, "token_buckets": TOKEN_BUCKETS, "curve_points": curve_points,
            "index_limit": INDEX_LIMIT, "context": {"before": before, "after": after},
            "top_k": thresholds.top_k, "top_triggers": nf.TOP_TRIGGERS, "always": nf.ALWAYS,
            "related": {"depth": int(related_depth), "k": related.K}, "models": models}
        with open(page, "rb") as f:
            html = f.read()
        atomic.write_file(os.path.join(work, "index.html"), lambda f: f.write(html), binary=True)
        write_js(work, "atlas", manifest)
        atomic.remove(os.path.join(work, PARTS))
        return atomic.replace_dir(work, out_dir)


def _per_model(attributions, names: list[str]) -> list:
    """One attribution directory (or None) per model, from a list in the models' order or a {name: dir} dict."""
    if attributions is None:
        return [None] * len(names)
    if isinstance(attributions, dict):
        unknown = sorted(set(attributions) - set(names))
        if unknown:
            raise InputError(f"attributions for {unknown}, which name no model of the atlas ({', '.join(names)})")
        return [attributions.get(name) for name in names]
    attributions = list(attributions)
    if len(attributions) != len(names):
        raise InputError(f"{len(attributions)} attributions for {len(names)} statistics directories")
    return attributions


def _layers(source: nf.Source, layers) -> list[int]:
    """The collected layers to build, checked against the store."""
    count = source.collected_layers
    if layers is None:
        return list(range(count))
    bad = [l for l in layers if not isinstance(l, (int, np.integer)) or not 0 <= l < count]
    if bad:
        raise InputError(f"{source.stats.root}: layers {bad} are out of range; the store holds layers 0..{count - 1}")
    return sorted({int(l) for l in layers})


def _identity(sources, chosen, block, thresholds, before, after, curve_points, related_depth, per_band) -> dict:
    """What a build depends on: a resumed build reuses finished layers only when all of it is the same."""
    stores = [{"stats": s.stats.root, "generation": s.stats.manifest.get("generation"), "model": s.model_dir,
               "layers": built, "attribution": _attribution_entry(s)} for s, built in zip(sources, chosen)]
    return {"version": VERSION, "stores": stores, "block": block, "thresholds": thresholds.to_json(),
            "context": [before, after], "curve_points": curve_points, "related_depth": int(related_depth),
            "per_band": per_band, "builder": _builder_hash()}


def _attribution_entry(source: nf.Source) -> dict | None:
    """What the manifest says of a model's attribution (None without one)."""
    a = source.attribution
    if a is None:
        return None
    return {"path": a.root, "tokens": a.tokens, "seq_len": a.manifest.get("seq_len"),
            "corpus_fingerprint": a.manifest.get("corpus", {}).get("fingerprint"),
            "base_loss": significant(a.manifest.get("base_loss")), "effect_digest": _digest(a.effect)}


def _digest(values: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(values).tobytes()).hexdigest()[:16]


def _builder_hash() -> str:
    """A digest of the code that writes the data (this module, the facts, the data files' formats and the token
    index): a changed builder rebuilds."""
    return data_files.code_digest(__file__, nf.__file__, data_files.__file__, token_index.__file__, related.__file__,
                                  nf.products.__file__)


def _build_model(source: nf.Source, index: int, built: list[int], work: str, block: int, before: int,
                 after: int, curve_points: int, related_depth: int, per_band: int | None, verbose: bool) -> dict:
    """Write one model's layers and token index into work; its manifest entry."""
    stats = source.stats
    config = stats.config
    progress = Progress(f"atlas {source.name}", len(built), " layers", enabled=verbose, every=0.0)
    tokens = TokenIndex()
    counts = []
    for layer in built:
        part = os.path.join(work, PARTS, f"m{index}-L{layer}.npz")
        summary = os.path.join(work, "data", f"m{index}", f"L{layer}", "summary.js")
        if not (os.path.isfile(part) and os.path.isfile(summary)):
            facts = nf.layer_facts(source, layer, before, after, related_depth=related_depth,
                                   quantile=per_band != 0)
            for b, start in enumerate(range(0, facts.neurons, block)):
                stop = min(start + block, facts.neurons)
                write_js(work, f"m{index}/L{layer}/B{b}", {"layer": layer, "block": b,
                                                           "neurons": neuron_records(facts, source, start, stop,
                                                                                     curve_points, per_band)},
                         as_string=True)  # opening a neuron parses its block
            entries = index_entries(facts)
            flat = {f"{kind}.{field}": v for kind, e in entries.items() for field, v in e.items()}
            flat["counts"] = np.frombuffer(json.dumps(facts.counts()).encode(), np.uint8)
            atomic.write_file(part, lambda f: np.savez(f, **flat), binary=True)
            write_js(work, f"m{index}/L{layer}/summary", layer_summary(facts, source),  # the layer's commit
                     as_string=True)  # a filter over every layer parses every summary
        with np.load(part) as saved:
            entries = {}
            for name in saved.files:
                if name != "counts":
                    kind, field = name.split(".")
                    entries.setdefault(kind, {})[field] = saved[name]
            counts.append(json.loads(saved["counts"].tobytes()))
        tokens.add(entries)
        progress.update()
    for h, bucket in enumerate(tokens.buckets(source.text)):
        write_js(work, f"m{index}/tokens/{h}", bucket)
    notes = list(source.notes)
    return {"name": source.name, "index": index, "stats": stats.root, "model": source.model_dir,
            "layers": source.collected_layers, "built": built, "model_layers": config.num_hidden_layers,
            "ffn": config.ffn_dim, "seq_len": int(stats.pos_act.shape[1]), "vocab": config.vocab_size,
            "tokens": stats.tokens, "token_layers": list(stats.token_layers), "examples": stats.examples_per_neuron,
            "positional_embeddings": bool(config.positional_embeddings), "note": "; ".join(notes), "notes": notes,
            "counts": counts, "attribution": _attribution_entry(source),
            "value_edges": nf.value_edges(stats)} | _quantile_entry(stats, per_band)


def _quantile_entry(stats, per_band: int | None = None) -> dict:
    """A model's `quantile` entry when its store holds quantile examples and `per_band` is not 0 ({} otherwise: the
    manifest is unchanged): the bands per neuron (at most) and the examples per band (at most: the store's K, or
    `per_band` when fewer)."""
    if nf.QUANTILE not in stats.example_slots or per_band == 0:
        return {}
    k = int(stats.manifest["quantile_examples"])
    return {"quantile": {"bands": nf.QUANTILE_BANDS, "per_band": k if per_band is None else min(k, per_band)}}
