"""A synthetic neuron atlas of any shape, written file by file in the atlas format (docs/atlas-format.md).

It needs no statistics: every number is drawn from a seeded generator, shaped like the real thing (a
dead share, log-uniform frequencies, a few detectors and positional neurons per layer, whitespace in the
token texts). The page under `analyses/neurons/web/` is copied beside the data, so the folder opens in a
browser like a built atlas. Used to time the page at OPT-66b's size (64 layers x 36864 neurons:
`python -m benchmarks.atlas_synthetic OUT --layers 64 --ffn 36864 --blocks 0,100,287`) without a
66b statistics store, and by the browser tests for what a small built atlas cannot show.
"""

from __future__ import annotations

import argparse
import os
import shutil

import numpy as np

from analyses.neurons.data_files import read_js, write_js
from analyses.neurons.token_index import fnv1a32, token_key
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


def write_atlas(out_dir: str, layers: int = 4, ffn: int = 256, blocks: list[int] | None = None, block: int = 128,
                vocab: int = 4096, seq_len: int = 128, examples: int = 4, token_layers: int = 2, buckets: int = 256,
                models: tuple[str, ...] = ("synthetic",), seed: int = 0, verbose: bool = False) -> str:
    """Write a synthetic atlas into out_dir: the page, the manifest, every layer's summary, the blocks
    `blocks` of every layer (all when None) and every token bucket. Returns out_dir."""
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
            write_js(out_dir, f"m{m}/L{layer}/summary", summary, as_string=True)  # as build_atlas writes them
            for b in block_ids:
                neurons = [neuron_facts(rng, layer, n, summary, texts, seq_len, examples, layer < token_layers)
                           for n in range(b * block, min((b + 1) * block, ffn))]
                write_js(out_dir, f"m{m}/L{layer}/B{b}", {"layer": layer, "block": b, "neurons": neurons})
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
                        "seq_len": seq_len, "vocab": vocab, "tokens": 1_000_000, "token_layers": list(range(token_layers)),
                        "examples": examples, "note": "synthetic: every number is drawn at random", "counts": counts})
    progress.update(0, force=True)
    write_js(out_dir, "atlas", {"version": 1, "created": "synthetic", "block": block, "token_buckets": buckets,
                                  "models": entries})
    return out_dir


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", help="the atlas folder to write")
    parser.add_argument("--layers", type=int, default=64)
    parser.add_argument("--ffn", type=int, default=36864)
    parser.add_argument("--blocks", default="0,100,287", help="comma-separated block indices written for every layer")
    parser.add_argument("--vocab", type=int, default=50272)
    parser.add_argument("--seq_len", type=int, default=2048)
    parser.add_argument("--examples", type=int, default=16)
    args = parser.parse_args(argv)
    blocks = [int(b) for b in args.blocks.split(",")] if args.blocks else None
    write_atlas(args.out, args.layers, args.ffn, blocks, vocab=args.vocab, seq_len=args.seq_len, examples=args.examples,
                verbose=True)
    print(args.out)


if __name__ == "__main__":
    main()
