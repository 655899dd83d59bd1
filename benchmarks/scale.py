"""The analyses at scale: a synthetic statistics store of any OPT shape, and the dead and positional
analyses over it measured against a read-only pass (time and peak RSS, each in its own process).

Synthetic counts: one [positions, ffn] template of binomial counts (each neuron its own frequency,
log-uniform in [1e-4, 0.3]) is made once; layer l takes it with its neurons shuffled, a dead share
that falls from 70% at layer 0 to none at mid-depth (as the paper finds), and `positional` neurons
whose counts follow a square wave of position (exactly 0 / all tokens: strong oscillatory).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import numpy as np

from analyses.collection.store import (EXAMPLE_FIELDS, EXAMPLE_KINDS, StatsStore, array_layouts, example_layouts,
                                       example_name, from_layers, open_stats)
from benchmarks.conversion import peak_rss
from opt_jax.progress import Progress

PHASES = ("read", "analyze")


def dead_share(layer: int, num_layers: int) -> float:
    """The synthetic dead share of a layer: 70% at layer 0, falling linearly to 0 at mid-depth."""
    return max(0.0, 0.7 * (1 - layer / max(num_layers / 2, 1)))


def write_synthetic_stats(root: str, config, seq_len: int = 2048, sequences: int = 1000, positional: int = 64,
                          seed: int = 0, verbose: bool = True, examples: int = 0) -> str:
    """A complete statistics store of `config`'s shape with synthetic act / pos_act counts (no token layers).

    `examples` > 0 adds k synthetic example activations per neuron and set (`synthetic_examples`) over
    `sequences` windows of random token ids, so that the store has the atlas's example contexts to show."""
    rng = np.random.default_rng(seed)
    layers, ffn = config.num_hidden_layers, config.ffn_dim
    frequency = np.exp(rng.uniform(np.log(1e-4), np.log(0.3), ffn))  # [n]
    template = rng.binomial(sequences, np.broadcast_to(frequency, (seq_len, ffn)).astype(np.float64))  # [p, n]
    wave = (np.arange(seq_len) // 64) % 2 == 1  # [p]: on for 64 positions, off for 64
    manifest = {"model": None, "config": config.to_dict(), "corpus": {"synthetic": True, "seed": seed},
                "flags": {"seq_len": seq_len}, "token_layers": [], "layers": layers, "ngram_orders": [],
                "tokens": 0, "sequences": 0, "full_length_sequences": 0, "complete": False}
    layouts = array_layouts(layers, 0, seq_len, config.vocab_size, ffn)
    if examples:
        layouts |= example_layouts(layers, ffn, examples, seq_len)
        manifest["examples"] = examples
    store = StatsStore.create(root, manifest, layouts)
    progress = Progress("synthetic layers", layers, enabled=verbose, every=10.0)

    column_sums = template.sum(axis=0)  # [n]

    def plan(layer):  # the layer's neuron shuffle and dead neurons
        layer_rng = np.random.default_rng([seed, layer])
        return layer_rng.permutation(ffn), layer_rng.random(ffn) < dead_share(layer, layers)

    def pos_act(layer):  # [p, n]
        order, dead = plan(layer)
        counts = template[:, order]  # [p, n]
        counts[:, dead] = 0
        counts[:, :positional] = np.where(wave[:, None], sequences, 0)
        progress.update()
        return counts

    def act(layer):  # [n]: pos_act(layer) summed over positions
        order, dead = plan(layer)
        total = np.where(dead, 0, column_sums[order])  # [n]
        total[:positional] = wave.sum() * sequences
        return total

    values, shapes = {}, {}
    if examples:
        values, shapes = synthetic_examples(layers, ffn, examples, seq_len, sequences, config.vocab_size, seed)
    store.commit({"act": from_layers(act), "pos_act": from_layers(pos_act),
                  "pos_tokens": np.full(seq_len, sequences, np.int64)},
                 {"tokens": seq_len * sequences, "sequences": sequences, "full_length_sequences": sequences,
                  "complete": True}, values=values, shapes=shapes)
    return store.root


def synthetic_examples(layers: int, ffn: int, k: int, seq_len: int, windows: int, vocab: int, seed: int = 0):
    """`StatsStore.commit` (values, shapes) of synthetic example sets: every neuron k examples per set at random
    (window, position >= 1), top values falling, random ones below them; `windows` rows of random token ids."""
    def sets(layer):
        rng = np.random.default_rng([seed, layer, 1])
        out = {}
        for kind, scale in (("top", 3.0), ("random", 1.0)):
            value = np.sort(rng.exponential(scale, (ffn, k)).astype(np.float32), axis=1)[:, ::-1]  # [n, k]
            out[kind] = {"window": rng.integers(0, windows, (ffn, k), dtype=np.int32),
                         "position": rng.integers(1, seq_len, (ffn, k), dtype=np.int32), "value": value}
        return out

    last = {}

    def field(kind, name):
        def value(block):
            layer = block[0].start
            if layer not in last:
                last.clear()
                last[layer] = sets(layer)
            return last[layer][kind][name][None]  # [1, n, k]
        return value

    values = {example_name(kind, name): field(kind, name) for kind in EXAMPLE_KINDS for name in EXAMPLE_FIELDS}
    values["windows"] = lambda block: np.random.default_rng([seed, block[0].start]).integers(
        0, vocab, (block[0].stop - block[0].start, seq_len), dtype=np.int32)  # [rows, s]
    return values, {"windows": (windows, seq_len)}


def read_pass(root: str) -> dict:
    """The baseline: read every layer of act and pos_act once, computing nothing."""
    stats = open_stats(root)
    for layer in range(stats.act.shape[0]):
        stats.act[layer]
        stats.pos_act[layer]
    return {}


def analyze_pass(root: str) -> dict:
    """The dead and positional analyses of the store, a layer at a time."""
    from analyses.dead import analyze_dead
    from analyses.positional import analyze_positional

    stats = open_stats(root)
    dead = analyze_dead(stats)
    found = analyze_positional(stats)
    return {"positional_neurons": len(found.neurons),
            "dead_fraction_layer0": float(dead.fraction_per_layer[0])}


def run_phase(phase: str, root: str) -> dict:
    """Run one phase here; return its seconds, peak RSS (bytes) and findings."""
    start = time.perf_counter()
    found = {"read": read_pass, "analyze": analyze_pass}[phase](root)
    return {"phase": phase, "seconds": time.perf_counter() - start, "peak_rss": peak_rss()} | found


def measure(root: str) -> dict[str, dict]:
    """Each phase in a fresh process (peak RSS is per process), in one invocation."""
    out = {}
    for phase in PHASES:
        result = subprocess.run([sys.executable, "-m", "benchmarks.scale", phase, root], capture_output=True,
                                text=True, check=True)
        out[phase] = json.loads(result.stdout.strip().splitlines()[-1])
    return out


def table(results: dict[str, dict], root: str) -> str:
    """The measurements with ratios against the read-only pass, as a Markdown table."""
    stats = open_stats(root)
    layer_mb = np.prod(stats.pos_act.shape[1:]) * 8 / 2 ** 20
    read = results["read"]
    lines = [f"store: {stats.pos_act.shape[0]} layers x {stats.pos_act.shape[1]} positions x "
             f"{stats.pos_act.shape[2]} neurons (one pos_act layer = {layer_mb:,.0f} MB as int64), "
             f"{_disk_mb(root):,.0f} MB on disk", "",
             "| pass | seconds | x read | peak RSS MB | above the read pass, MB |", "|---|---|---|---|---|"]
    for phase in PHASES:
        r = results[phase]
        lines.append(f"| {phase} | {r['seconds']:.1f} | {r['seconds'] / read['seconds']:.2f} | "
                     f"{r['peak_rss'] / 2 ** 20:,.0f} | {(r['peak_rss'] - read['peak_rss']) / 2 ** 20:,.0f} |")
    found = results["analyze"]
    lines.append(f"\npositional neurons found: {found['positional_neurons']:,}; "
                 f"dead in layer 0: {found['dead_fraction_layer0']:.1%}")
    return "\n".join(lines)


def _disk_mb(root: str) -> float:
    total = 0
    for dirpath, _, files in os.walk(root):
        total += sum(os.path.getsize(os.path.join(dirpath, f)) for f in files)
    return total / 2 ** 20


if __name__ == "__main__":  # one phase, in its own process: python -m benchmarks.scale PHASE ROOT
    print(json.dumps(run_phase(sys.argv[1], sys.argv[2])))


def commit_speed(root: str, layers: int = 4, positions: int = 2048, neurons: int = 8192, in_flight=(0, 1, 2, 4),
                 rounds: int = 3) -> str:
    """Seconds per commit of a [layers, positions, neurons] store, writing 0 (wait for each block) or more
    blocks while reading the next, alternated in this process; a Markdown table with the ratio to 0."""
    counts = np.random.default_rng(0).binomial(1000, 0.05, (positions, neurons))  # [p, n]
    stats = StatsStore.create(root, {"model": None, "tokens": 0},
                              array_layouts(layers, 0, positions, 16, neurons))
    seconds = {k: [] for k in in_flight}
    for _ in range(rounds):
        for k in in_flight:
            stats.writes_in_flight = k
            start = time.perf_counter()
            stats.commit({"pos_act": from_layers(lambda layer: counts)}, {})
            seconds[k].append(time.perf_counter() - start)
    cells = layers * positions * neurons * 8 / 1e9
    base = min(seconds[in_flight[0]])
    lines = ["| writes in flight | best seconds per commit | GB/s of int64 cells | x the first |", "|---|---|---|---|"]
    lines += [f"| {k} | {min(s):.2f} | {cells / min(s):.3f} | {base / min(s):.2f} |" for k, s in seconds.items()]
    return "\n".join(lines)
