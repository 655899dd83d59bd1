"""What building the neuron atlas costs: seconds, peak memory and size on disk, against reading the same data.

    python -m benchmarks.atlas_build OUT STATS [STATS ...] [--layers 0,1] [--repeats 1]
    python -m benchmarks.atlas_build --scores 66b          # E @ fc2 of one block of neurons at 66b's dims

Two passes over the same statistics, each in a fresh process (peak RSS is per process), alternated:
- read (the baseline): every built layer's `act`, `pos_act`, `tok_act` (a block of rows at a time), `value_hist`,
  its example sets (the quantile set too) with the windows they name and their context activations, read once,
  nothing computed;
- atlas: `build_atlas` of the stores into OUT (the facts, the data files and the token index).
`--scores SIZE` times the update scores of SCORE_BLOCK neurons (E @ fc2[:, block] and the top / bottom k) at that
size's dimensions with random weights: the part of a build that needs the weights, which a statistics store of a
model that does not exist here (66b) cannot show. It times the numpy path; the atlas now scores on jax's default
device, and `benchmarks.weight_products` compares the two.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import statistics
import subprocess
import sys
import time

import numpy as np

from benchmarks.conversion import peak_rss

PHASES = ("read", "atlas")


def read_pass(stats_dirs: list[str], layers=None) -> dict:
    """The baseline: read what the atlas reads, computing nothing."""
    from analyses.collection import open_stats
    from analyses.collection.candidates import BLOCK_CELLS
    from analyses.collection.store import example_slots

    for root in stats_dirs:
        stats = open_stats(root)
        for layer in layers if layers is not None else range(stats.act.shape[0]):
            stats.act[layer]
            stats.pos_act[layer]
            if layer in stats.token_layers:
                view = stats.tok_act.view(stats.token_layers.index(layer))
                step = max(1, BLOCK_CELLS // view.shape[1])
                for start in range(0, view.shape[0], step):
                    view[start:start + step]
            if "value_hist" in stats.manifest["arrays"]:
                stats.value_hist[layer]
            if stats.examples_per_neuron:
                kinds = tuple(example_slots(stats.manifest))
                sets = stats.layer_examples(layer, kinds)
                stats.window_rows(np.unique(np.concatenate([s["window"][s["window"] >= 0] for s in sets.values()])))
                if stats.contexts:
                    stats.layer_contexts(layer, kinds)
    return {}


def atlas_pass(stats_dirs: list[str], out: str, layers=None) -> dict:
    """The atlas of the stores into out."""
    from analyses.neurons.atlas import build_atlas

    build_atlas(stats_dirs, out, layers=layers, verbose=False)
    return {}


def record_parts(out: str) -> dict[str, float]:
    """MB of the neuron blocks' JSON by part of the records: each example set (`examples.top`, ..., the
    `quantile` bands with theirs), the curve, the related neurons, and the rest of the records."""
    from analyses.neurons.data_files import read_js

    def size(x) -> int:
        return len(json.dumps(x, separators=(",", ":"), ensure_ascii=False).encode())

    parts: dict[str, int] = {}
    for path in glob.glob(os.path.join(out, "data", "m*", "L*", "B*.js")):
        for record in read_js(path)[1]["neurons"]:
            shares = {f"examples.{k}": size(v) for k, v in record["examples"].items()}
            shares |= {k: size(record[k]) for k in ("quantile", "curve", "related") if k in record}
            shares["rest"] = size(record) - sum(shares.values())
            for k, v in shares.items():
                parts[k] = parts.get(k, 0) + v
    return {k: v / 1e6 for k, v in parts.items()}


def disk_mb(root: str) -> float:
    """Size of the files under root, MB (10^6 bytes)."""
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(root) for f in files) / 1e6


def run_phase(phase: str, out: str, stats_dirs: list[str], layers=None) -> dict:
    """One pass here: its seconds, peak RSS (bytes) and, for the atlas, its size (`record_parts` too)."""
    start = time.perf_counter()
    found = read_pass(stats_dirs, layers) if phase == "read" else atlas_pass(stats_dirs, out, layers)
    seconds, rss = time.perf_counter() - start, peak_rss()
    if phase == "atlas":  # after the clock and the memory: the atlas's size on disk, file count and parts
        found = {"mb": disk_mb(out), "files": sum(len(files) for _, _, files in os.walk(out)),
                 "parts": record_parts(out)}
    return {"phase": phase, "seconds": seconds, "peak_rss": rss} | found


def measure(out: str, stats_dirs: list[str], layers=None, repeats: int = 1) -> dict[str, list[dict]]:
    """Each pass in a fresh process, alternated `repeats` times."""
    results = {phase: [] for phase in PHASES}
    args = ["--layers", ",".join(map(str, layers))] if layers is not None else []
    for _ in range(repeats):
        for phase in PHASES:
            run = subprocess.run([sys.executable, "-m", "benchmarks.atlas_build", out, *stats_dirs, "--phase", phase,
                                  *args], capture_output=True, text=True, check=True)
            results[phase].append(json.loads(run.stdout.strip().splitlines()[-1]))
    return results


def table(results: dict[str, list[dict]]) -> str:
    """Median seconds and peak RSS of each pass, with the ratio to the read pass, as a Markdown table."""
    read = statistics.median(r["seconds"] for r in results["read"])
    lines = ["| pass | seconds (median) | x read | peak RSS MB |", "|---|---|---|---|"]
    for phase in PHASES:
        seconds = statistics.median(r["seconds"] for r in results[phase])
        rss = max(r["peak_rss"] for r in results[phase]) / 2 ** 20
        lines.append(f"| {phase} | {seconds:.1f} | {seconds / read:.2f} | {rss:,.0f} |")
    last = results["atlas"][-1]
    lines.append(f"\natlas on disk: {last['mb']:,.1f} MB in {last['files']:,} files")
    blocks = sum(last["parts"].values())
    lines.append(f"neuron blocks' records: {blocks:,.1f} MB, of which " + ", ".join(
        f"{k} {v:,.1f} MB ({v / blocks:.0%})" for k, v in sorted(last["parts"].items(), key=lambda kv: -kv[1])))
    return "\n".join(lines)


def score_block_seconds(size: str, repeats: int = 3) -> dict:
    """Seconds of the update scores of one SCORE_BLOCK of neurons at `size`'s dimensions (random weights)."""
    from analyses import suppression
    from analyses.neurons.facts import SCORE_BLOCK
    from opt_jax.config import for_size

    config = for_size(size)
    rng = np.random.default_rng(0)
    embedding = rng.standard_normal((config.vocab_size, config.word_embed_proj_dim), np.float32)  # [v, e]
    project_out = (rng.standard_normal((config.word_embed_proj_dim, config.hidden_size), np.float32)
                   if config.has_projections else None)
    seconds = []
    for _ in range(repeats):
        columns = rng.standard_normal((config.hidden_size, SCORE_BLOCK), np.float32)  # [d, b]
        start = time.perf_counter()
        scores = suppression.update_scores(embedding, project_out, columns)  # [b, v]
        suppression.lowest(scores, 10), suppression.lowest(-scores, 10)
        seconds.append(time.perf_counter() - start)
    per_block = statistics.median(seconds)
    blocks = -(-config.ffn_dim // SCORE_BLOCK) * config.num_hidden_layers
    return {"size": size, "block": SCORE_BLOCK, "seconds_per_block": per_block, "blocks": blocks,
            "projected_hours_all_alive": per_block * blocks / 3600}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", nargs="?")
    parser.add_argument("stats", nargs="*")
    parser.add_argument("--layers", default=None)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--phase", choices=PHASES)
    parser.add_argument("--scores", default=None, help="an OPT size: time the update scores of one block of neurons")
    args = parser.parse_args()
    if args.scores:
        print(json.dumps(score_block_seconds(args.scores)))
        return
    layers = [int(l) for l in args.layers.split(",")] if args.layers else None
    if args.phase:
        print(json.dumps(run_phase(args.phase, args.out, args.stats, layers)))
        return
    print(table(measure(args.out, args.stats, layers, args.repeats)))


if __name__ == "__main__":
    main()
