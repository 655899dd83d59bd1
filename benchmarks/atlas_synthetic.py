"""A synthetic neuron atlas of any shape, written file by file in the atlas format (docs/atlas-format.md).

It needs no statistics: every number is drawn from a seeded generator, shaped like the real thing (a
dead share, log-uniform frequencies, a few detectors and positional neurons per layer, whitespace in the
token texts). The page under `analyses/neurons/web/` is copied beside the data, so the folder opens in a
browser like a built atlas. Used to time the page and measure its size at OPT-66b's shape (64 layers x 36864
neurons: `python -m benchmarks.atlas_synthetic OUT --layers 64 --ffn 36864 --blocks 0,100,287`) without a
66b statistics store, and by the browser tests for what a small built atlas cannot show.

With `content=True` (the command line's default; `--content november` for the records of before issue 20) the
neuron records carry today's content as `build_atlas` writes it, through the builder's own writer
(`analyses.neurons.atlas.neuron_records` of a synthetic `LayerFacts` of each block): a value histogram in the
store's bins (`analyses.collection.values`, 36 at the default 2 per octave), related neurons (`related.K` each
way, `related.DEPTH` layers), the examples' context activations (`before` / `after` tokens around each) and, with
`quantile_examples` K > 0, the quantile bands of the histogram (`analyses.collection.quantile_bands`, up to
`QUANTILE_BANDS`) with up to K examples each; blocks and summaries written through `JSON.parse`, the manifest of
format version 2. `before`, `after`, `per_band` and `curve_points` are `build_atlas`'s size options.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil

import numpy as np

from analyses import positional
from analyses.collection import quantile_bands, values
from analyses.dead import rate_bound
from analyses.neurons import atlas, related
from analyses.neurons import facts as nf
from analyses.neurons.data_files import read_js, write_js
from analyses.neurons.token_index import INDEX_LIMIT, fnv1a32, token_key
from analyses.tokens import context_span
from opt_jax.progress import Progress

PAGE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "analyses", "neurons", "web",
                    "index.html")
TYPES = ("oscillatory", "both extremes", "one extreme", "other")


def read_data(out_dir: str, key: str):
    """The payload of an atlas's data file data/<key>.js."""
    return read_js(os.path.join(out_dir, "data", key + ".js"))[1]


def vocabulary(size: int) -> list[str]:
    """Token texts with the whitespace real tokenizers have: leading spaces, newlines, tabs, bare words."""
    forms = (" w{}", "w{}", "\n", " ", "\tw{}", "w{}\n", " na\u00efve{}")
    return [forms[i % len(forms)].format(i) if "{}" in forms[i % len(forms)] else forms[i % len(forms)] * (1 + i // 7 % 3)
            for i in range(size)]


def layer_summary(rng, ffn: int, dead_share: float, vocab: list[str]) -> dict:
    """One layer's summary columns: frequencies, ranks, dead, MI, positional type, detectors, labels."""
    freq = np.exp(rng.uniform(np.log(1e-4), np.log(0.3), ffn))  # [ffn]
    dead = rng.random(ffn) < dead_share  # [ffn]
    freq[dead] = 0.0
    order = np.argsort(-freq, kind="stable")  # [ffn]
    rank = np.empty(ffn, np.int64)
    rank[order] = np.arange(1, ffn + 1)
    mi = np.where(dead, 0.0, rng.exponential(0.02, ffn))  # [ffn]: about 8% of the alive above 0.05
    positional = (mi > 0.05) & ~dead
    pos = [TYPES[i % len(TYPES)] if p else None for i, p in enumerate(positional)]
    strong = (positional & (mi > 0.08)).astype(int)
    token_det = (~dead & (rng.random(ffn) < 0.002)).astype(int)
    trigram_det = (~dead & (rng.random(ffn) < 0.001)).astype(int)
    labels = []
    for n in range(ffn):
        if dead[n]:
            labels.append("dead")
        elif token_det[n]:
            labels.append(f"detector of {vocab[n % len(vocab)]!r}")
        elif pos[n]:
            labels.append(f"positional, {pos[n]} {'strong' if strong[n] else 'weak'}")
        else:
            labels.append(", ".join(repr(vocab[(n * 7 + k) % len(vocab)]) for k in range(3)))
    return {"freq": [float(f"{f:.6g}") for f in freq], "rank": rank.tolist(), "dead": dead.astype(int).tolist(),
            "mi": [round(float(m), 6) for m in mi], "pos": pos, "strong": strong.tolist(),
            "token_det": token_det.tolist(), "trigram_det": trigram_det.tolist(), "label": labels}


def neuron_facts(rng, layer: int, n: int, summary: dict, vocab: list[str], seq_len: int, examples: int,
                 token_layer: bool) -> dict:
    """One neuron's full facts, consistent with its summary row."""
    dead = bool(summary["dead"][n])
    f = summary["freq"][n]
    binned = max(1, seq_len // 128)  # long windows: means over bins of positions, as the format allows
    positions = list(range(1, seq_len, binned))
    curve = np.clip(f * (1 + 0.8 * np.sin(np.array(positions) / 6.0 + n)), 0, 1)  # [points]

    def tok(k):
        return int((n * 31 + k * 17) % len(vocab))

    def context(k, value):
        ids = [tok(k + j) for j in range(17)]
        return {"tokens": [vocab[i] for i in ids], "fire": 12, "value": round(value, 4), "window": int(k * 13 + n),
                "position": 12 + k}

    facts = {"n": n, "freq": f, "rank": summary["rank"][n], "dead": dead, "mi": summary["mi"][n],
             "positional": {"type": summary["pos"][n], "strong": bool(summary["strong"][n])} if summary["pos"][n] else None,
             "curve": {"positions": positions, "freq": [0.0] * len(positions) if dead else [round(float(c), 6) for c in curve],
                       "binned": binned},
             "triggers": [], "detector": None, "promoted": [], "suppressed": [], "trigger_scores": [],
             "examples": {"top": [], "random": []}}
    if dead:
        return facts
    if token_layer:
        facts["triggers"] = [{"token": tok(k), "text": vocab[tok(k)], "count": 100 - 9 * k, "share": round(0.3 / (k + 1), 4),
                              "rate": round(0.99 - 0.1 * k, 4), "always": k == 0} for k in range(5)]
    if summary["token_det"][n]:
        facts["detector"] = {"kind": "token", "items": [vocab[tok(0)]]}
        facts["trigger_scores"] = [{"text": vocab[tok(0)], "score": -0.5, "rank": 1}]
    scores = np.sort(rng.normal(0, 0.2, 20))  # [20]
    facts["promoted"] = [{"token": tok(k + 40), "text": vocab[tok(k + 40)], "score": round(float(s), 4)}
                         for k, s in enumerate(scores[::-1][:10])]
    facts["suppressed"] = [{"token": tok(k + 60), "text": vocab[tok(k + 60)], "score": round(float(s), 4)}
                           for k, s in enumerate(scores[:10])]
    if examples:
        values = np.sort(rng.exponential(1.0, examples))[::-1]  # [examples]
        facts["examples"] = {"top": [context(k, float(v)) for k, v in enumerate(values)],
                             "random": [context(k + 100, float(v) / 2) for k, v in enumerate(values)]}
    return facts


class _Texts:
    """What `atlas.neuron_records` reads of an `nf.Source`: token texts, trigram texts, no attribution."""

    def __init__(self, texts: list[str]):
        self.texts = texts

    def text(self, token: int) -> str:
        return self.texts[token]

    def joined(self, sequences) -> list[str]:
        return ["".join(self.texts[i] for i in seq) for seq in sequences]

    def effect(self, layer: int):
        return None


def block_facts(rng, layer: int, layers: int, start: int, stop: int, summary: dict, vocab: list[str], seq_len: int,
                examples: int, token_layer: bool, before: int, after: int, quantile_examples: int,
                tokens: int) -> nf.LayerFacts:
    """A `LayerFacts` of neurons start..stop-1 of a layer (row i is neuron start + i), consistent with the layer's
    summary, holding everything a real store with value histograms, context activations and (K > 0) quantile
    examples gives: what `atlas.neuron_records` turns into today's records."""
    b, v = stop - start, len(vocab)
    rows = slice(start, stop)
    freq = np.array(summary["freq"][rows], np.float64)  # [b]
    dead = np.array(summary["dead"][rows], bool)  # [b]
    act = np.round(freq * tokens).astype(np.int64)  # [b]
    pos_type = np.array([-1 if t is None else TYPES.index(t) for t in summary["pos"][rows]], np.int8)  # [b]
    positions = positional.kept_positions(np.ones(seq_len, np.int64), False)  # [kept]: positions 1 .. seq_len - 1
    curves = np.clip(freq * (1 + 0.8 * np.sin(positions[:, None] / 6.0 + np.arange(start, stop))), 0, 1)  # [kept, b]
    top = min(nf.TOP_TRIGGERS, v)
    ids = (np.arange(start, stop)[:, None] * 31 + np.arange(top) * 17) % v  # [b, T]
    trigger_ids = np.where(dead[:, None] | (not token_layer), -1, ids)  # [b, T]
    trigger_counts = np.where(trigger_ids >= 0, np.maximum(act[:, None] // (2 + np.arange(top)), 1), 0)  # [b, T]
    trigger_rates = np.where(trigger_ids >= 0, np.linspace(0.99, 0.1, top), 0.0)  # [b, T]
    token_items = {i: np.array([ids[i, 0]]) for i in range(b) if summary["token_det"][start + i]}
    trigram_items = {i: ids[i, :3][None, :] for i in range(b) if summary["trigram_det"][start + i]}
    k = min(10, v)
    scores = np.sort(rng.normal(0, 0.2, (b, 2 * k)), axis=1).astype(np.float32)  # [b, 2k]
    alive = ~dead[:, None]
    promoted = np.where(alive, (ids[:, :1] + 40 + np.arange(k)) % v, -1)  # [b, k]
    suppressed = np.where(alive, (ids[:, :1] + 60 + np.arange(k)) % v, -1)
    trigger_scores = {i: (np.array([-0.5]), np.array([1])) for i in token_items}
    edges = np.concatenate([[0.0], values.edges(values.PER_OCTAVE), [np.inf]])  # [bins + 1]
    bins = len(edges) - 1
    centre = rng.uniform(8, bins - 6, b)  # [b]: each neuron's values spread log-normally over ~8 bins
    weights = np.exp(-0.5 * ((np.arange(bins) - centre[:, None]) / rng.uniform(1.5, 3.5, b)[:, None]) ** 2)  # [b, bins]
    value_hist = np.stack([rng.multinomial(a, w / w.sum()) for a, w in zip(act, weights)])  # [b, bins]
    bands = [quantile_bands(h, edges, nf.QUANTILE_BANDS) for h in value_hist] if quantile_examples else None

    def example_set(value, band=None):  # value [b, s], NaN: no example
        s = value.shape[1]
        valid = ~np.isnan(value)  # [b, s]
        position = rng.integers(1, seq_len, (b, s))  # [b, s]
        first, stop_ = context_span(position, seq_len, before, after)  # [b, s] each
        at = position[..., None] + np.arange(-before, after + 1)  # [b, s, c]
        inside = valid[..., None] & (at >= first[..., None]) & (at < stop_[..., None])  # [b, s, c]
        window = np.where(valid, rng.integers(0, 10**6, (b, s)), -1)  # [b, s]
        neuron = np.arange(start, stop)[:, None, None]  # [b, 1, 1]
        heat = (0.4 * np.sin(at * 12.9898 + window[..., None] * 78.233 + neuron) - 0.1).astype(np.float32)  # [b, s, c]:
        # a function of the window's token, so that a shorter context keeps the same values
        heat[..., before] = np.nan_to_num(value)
        return nf.Examples(np.where(inside, (at * 7 + neuron) % v, -1), position - first,
                           np.nan_to_num(value).astype(np.float32), window, position, valid,
                           np.where(inside, heat, np.nan), band)

    sets = {}
    if examples:
        strongest = np.sort(rng.exponential(1.0, (b, examples)), axis=1)[:, ::-1]  # [b, k]
        have = np.arange(examples)[None, :] < act[:, None]  # [b, k]
        sets["top"] = example_set(np.where(have, strongest, np.nan))
        sets["random"] = example_set(np.where(have, strongest / 3, np.nan))
    if quantile_examples:
        slots = nf.QUANTILE_BANDS * quantile_examples
        band = np.full((b, slots), -1, np.int64)  # [b, slots]: K slots per band, band by band
        value = np.full((b, slots), np.nan)
        for i, found in enumerate(bands):
            for j, bd in enumerate(found):
                kept = min(quantile_examples, bd.count)
                band[i, j * quantile_examples:j * quantile_examples + kept] = bd.index
                value[i, j * quantile_examples:j * quantile_examples + kept] = rng.uniform(
                    bd.low, min(bd.high, 2 * bd.low + 1e-3), kept)
        sets[nf.QUANTILE] = example_set(value, band)
    related_ = None
    if related.DEPTH:
        def links(others, sign):
            cols = related.K if others else 0
            layer_ids = rng.choice(others, (b, cols)) if others else np.zeros((b, 0), np.int64)
            score = sign * np.sort(rng.uniform(0.05, 0.4, (b, cols)), axis=1)[:, ::-1]
            return related.Links(layer_ids, rng.integers(0, len(summary["freq"]), (b, cols)), score.astype(np.float32))

        down = [l for l in range(layer + 1, layer + 1 + related.DEPTH) if l < layers]
        up = [l for l in range(layer - related.DEPTH, layer) if l >= 0]
        related_ = related.Related(layer, np.arange(start, stop), related.DEPTH, links(down, 1), links(down, -1),
                                   links(up, 1), links(up, -1))
    return nf.LayerFacts(layer, freq, np.array(summary["rank"][rows], np.int64), dead,
                         np.array(summary["mi"][rows], np.float64), pos_type, np.array(summary["strong"][rows], bool),
                         positions, curves.astype(np.float32), token_layer, trigger_ids, trigger_counts,
                         trigger_rates, trigger_counts.sum(1), token_items, trigram_items, promoted, scores[:, ::-1][:, :k],
                         suppressed, scores[:, :k], trigger_scores, sets, related_, rate_bound(tokens), value_hist,
                         bands)


def content_records(rng, layer: int, layers: int, start: int, stop: int, summary: dict, vocab: list[str],
                    seq_len: int, examples: int, token_layer: bool, before: int, after: int, quantile_examples: int,
                    per_band: int | None, tokens: int, points: int = atlas.CURVE_POINTS) -> list[dict]:
    """Today's records of neurons start..stop-1, written by the builder's own `atlas.neuron_records`."""
    facts = block_facts(rng, layer, layers, start, stop, summary, vocab, seq_len, examples, token_layer, before, after,
                        quantile_examples, tokens)
    records = atlas.neuron_records(facts, _Texts(vocab), 0, stop - start, points, per_band)
    for i, record in enumerate(records):  # the block's rows are the layer's neurons start..stop-1
        record["n"] = start + i
        record["label"] = summary["label"][start + i]
    return records


def write_atlas(out_dir: str, layers: int = 4, ffn: int = 256, blocks: list[int] | None = None, block: int = 128,
                vocab: int = 4096, seq_len: int = 128, examples: int = 4, token_layers: int = 2, buckets: int = 256,
                models: tuple[str, ...] = ("synthetic",), seed: int = 0, verbose: bool = False, content: bool = False,
                before: int = nf.BEFORE, after: int = nf.AFTER, quantile_examples: int = 4,
                per_band: int | None = None, tokens: int = 1_000_000, curve_points: int = atlas.CURVE_POINTS) -> str:
    """Write a synthetic atlas into out_dir: the page, the manifest, every layer's summary, the blocks
    `blocks` of every layer (all when None) and every token bucket. Returns out_dir. `content`: today's records
    (module docstring; `before`, `after`, `quantile_examples` K of the store, `per_band` of the build), else
    November's (format version 1)."""
    rng = np.random.default_rng(seed)
    texts = vocabulary(vocab)
    block_ids = list(range(-(-ffn // block))) if blocks is None else blocks
    os.makedirs(out_dir, exist_ok=True)
    shutil.copyfile(PAGE, os.path.join(out_dir, "index.html"))
    entries = []
    progress = Progress("synthetic atlas", len(models) * layers, unit=" layers", enabled=verbose)
    for m, name in enumerate(models):
        counts = []
        index: dict[str, dict] = {}
        for layer in range(layers):
            summary = layer_summary(rng, ffn, max(0.0, 0.5 * (1 - layer / max(layers / 2, 1))), texts)
            if content:
                summary = {"layer": layer, "neurons": ffn} | summary | {"effect": None}
            write_js(out_dir, f"m{m}/L{layer}/summary", summary, as_string=True)  # as build_atlas writes them
            for b in block_ids:
                if content:  # each block its own generator: the same neurons whatever the size options
                    neurons = content_records(np.random.default_rng([seed, m, layer, b]), layer, layers, b * block, min((b + 1) * block, ffn), summary,
                                              texts, seq_len, examples, layer < token_layers, before, after,
                                              quantile_examples, per_band, tokens, curve_points)
                else:
                    neurons = [neuron_facts(rng, layer, n, summary, texts, seq_len, examples, layer < token_layers)
                               for n in range(b * block, min((b + 1) * block, ffn))]
                write_js(out_dir, f"m{m}/L{layer}/B{b}", {"layer": layer, "block": b, "neurons": neurons},
                         as_string=content)
            kinds = {t: sum(p == t for p in summary["pos"]) for t in TYPES}
            counts.append({"layer": layer, "neurons": ffn, "dead": sum(summary["dead"]),
                           "token_detectors": sum(summary["token_det"]), "trigram_detectors": sum(summary["trigram_det"]),
                           "positional": kinds})
            alive = [n for n in range(ffn) if not summary["dead"][n]]
            for k in range(vocab):  # every token names an alive neuron of each layer (50 per list at most)
                if not alive:
                    break
                key = token_key(texts[k])
                entry = index.setdefault(key, {"texts": [], "triggers": [], "detects": [], "promotes": [], "suppresses": []})
                if texts[k] not in entry["texts"]:
                    entry["texts"].append(texts[k])
                n = alive[(k * 7919 + layer) % len(alive)]
                for group, value in (("triggers", 0.2), ("promotes", 0.3), ("suppresses", -0.3)):
                    if len(entry[group]) < 50:
                        entry[group].append([layer, n, value])
                if summary["token_det"][n] and len(entry["detects"]) < 50:
                    entry["detects"].append([layer, n])
            progress.update(1)
        by_bucket: list[dict] = [{} for _ in range(buckets)]
        for key, entry in index.items():
            by_bucket[fnv1a32(key) % buckets][key] = entry
        for h, payload in enumerate(by_bucket):
            write_js(out_dir, f"m{m}/tokens/{h}", payload)
        entries.append({"name": name, "index": m, "stats": None, "model": None, "layers": layers, "ffn": ffn,
                        "seq_len": seq_len, "vocab": vocab, "tokens": tokens, "token_layers": list(range(token_layers)),
                        "examples": examples, "note": "synthetic: every number is drawn at random", "counts": counts})
        if content:
            entries[-1] |= {"built": list(range(layers)), "model_layers": layers, "positional_embeddings": True,
                            "notes": [entries[-1]["note"]], "attribution": None,
                            "value_edges": [float(e) for e in values.edges(values.PER_OCTAVE)]}
            if quantile_examples and per_band != 0:
                entries[-1]["quantile"] = {"bands": nf.QUANTILE_BANDS, "per_band": quantile_examples if per_band is None
                                           else min(quantile_examples, per_band)}
    progress.update(0, force=True)
    manifest = {"version": 1, "created": "synthetic", "block": block, "token_buckets": buckets, "models": entries}
    if content:
        manifest |= {"version": atlas.VERSION, "curve_points": curve_points, "index_limit": INDEX_LIMIT,
                     "context": {"before": before, "after": after}, "top_k": 10, "top_triggers": nf.TOP_TRIGGERS,
                     "always": nf.ALWAYS, "related": {"depth": related.DEPTH, "k": related.K}}
    write_js(out_dir, "atlas", manifest)
    return out_dir


def sizes(out_dir: str) -> dict:
    """What an atlas's files weigh and what the whole would (for a synthetic atlas holding a few blocks per layer):
    bytes of the neuron blocks per neuron written (alive and dead apart), of the summaries, token index, manifest
    and page; `projected` the atlas with every block of every layer (each layer's written neurons' mean times its
    neurons, plus the rest as written); `parts` MB of the blocks' records by part (`atlas_build.record_parts`)."""
    from benchmarks.atlas_build import record_parts

    manifest = read_data(out_dir, "atlas")
    total = blocks = written = alive = alive_bytes = dead_bytes = projected = 0
    for model in manifest["models"]:
        for layer in model.get("built", range(model["layers"])):
            folder = os.path.join(out_dir, "data", f"m{model['index']}", f"L{layer}")
            layer_bytes = layer_neurons = 0
            for name in sorted(os.listdir(folder)):
                if name.startswith("B"):
                    size = os.path.getsize(os.path.join(folder, name))
                    records = read_js(os.path.join(folder, name))[1]["neurons"]
                    lengths = [len(json.dumps(r, separators=(",", ":"), ensure_ascii=False).encode()) for r in records]
                    scale = size / sum(lengths)  # each record's share of the file (the string's escaping, the key)
                    alive += sum(not r["dead"] for r in records)
                    alive_bytes += scale * sum(n for r, n in zip(records, lengths) if not r["dead"])
                    dead_bytes += scale * sum(n for r, n in zip(records, lengths) if r["dead"])
                    layer_bytes += size
                    layer_neurons += len(records)
            blocks += layer_bytes
            written += layer_neurons
            projected += layer_bytes / max(layer_neurons, 1) * model["ffn"]
    for root, _, names in os.walk(out_dir):
        total += sum(os.path.getsize(os.path.join(root, n)) for n in names)
    rest = total - blocks
    return {"bytes": total, "block_bytes": blocks, "neurons_written": written, "per_neuron": blocks / max(written, 1),
            "per_alive": alive_bytes / max(alive, 1), "per_dead": dead_bytes / max(written - alive, 1),
            "alive_share": alive / max(written, 1), "rest_bytes": rest, "projected": projected + rest,
            "parts": record_parts(out_dir)}


def report(found: dict) -> str:
    """`sizes` as lines of text."""
    parts = sum(found["parts"].values())
    return "\n".join([
        f"on disk: {found['bytes'] / 1e6:,.1f} MB; neuron blocks {found['block_bytes'] / 1e6:,.1f} MB for "
        f"{found['neurons_written']:,} neurons: {found['per_neuron'] / 1e3:.2f} KB a neuron ({found['per_alive'] / 1e3:.2f} "
        f"KB alive, {found['per_dead'] / 1e3:.2f} KB dead; {found['alive_share']:.0%} alive); summaries, token index, "
        f"manifest and page {found['rest_bytes'] / 1e6:,.1f} MB",
        f"projected with every block of every layer: {found['projected'] / 1e9:,.2f} GB",
        "neuron blocks' records by part (JSON): " + ", ".join(
            f"{k} {v:,.1f} MB ({v / parts:.0%})" for k, v in sorted(found["parts"].items(), key=lambda kv: -kv[1]))])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", help="the atlas folder to write")
    parser.add_argument("--layers", type=int, default=64)
    parser.add_argument("--ffn", type=int, default=36864)
    parser.add_argument("--blocks", default="0,100,287", help="comma-separated block indices written for every layer")
    parser.add_argument("--vocab", type=int, default=50272)
    parser.add_argument("--seq_len", type=int, default=2048)
    parser.add_argument("--examples", type=int, default=16)
    parser.add_argument("--content", choices=("today", "november"), default="today",
                        help="today's records (value histograms, related neurons, context activations, quantile "
                        "bands) or November's (format version 1)")
    parser.add_argument("--quantile_examples", type=int, default=4, help="K of the store (0: no quantile examples)")
    parser.add_argument("--context", default=f"{nf.BEFORE},{nf.AFTER}", help="BEFORE,AFTER: the build's --context")
    parser.add_argument("--band_examples", type=int, default=None, help="the build's --band_examples (0: no bands)")
    parser.add_argument("--curve_points", type=int, default=atlas.CURVE_POINTS, help="the build's --curve_points")
    parser.add_argument("--token_layers", type=int, default=2, help="the first this many layers have triggers")
    args = parser.parse_args(argv)
    blocks = [int(b) for b in args.blocks.split(",")] if args.blocks else None
    before, after = (int(v) for v in args.context.split(","))
    write_atlas(args.out, args.layers, args.ffn, blocks, vocab=args.vocab, seq_len=args.seq_len, examples=args.examples,
                token_layers=args.token_layers, verbose=True, content=args.content == "today", before=before,
                after=after, quantile_examples=args.quantile_examples, per_band=args.band_examples,
                curve_points=args.curve_points)
    print(report(sizes(args.out)))
    print(args.out)


if __name__ == "__main__":
    main()
