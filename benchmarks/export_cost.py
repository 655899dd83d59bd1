"""What the bulk export costs: seconds, peak memory and size on disk, against reading the same data.

    python -m benchmarks.export_cost OUT STATS [--model_dir DIR] [--layers 0,1] [--repeats 1]
    python -m benchmarks.export_cost OUT --synthetic 125m [--num_layers N] [--examples 16] [--layers ...] [--repeats 1]

Passes over the same statistics, each in a fresh process (peak RSS is per process), alternated `repeats` times:
- read (the baseline): what the export reads, computing nothing: every exported layer's `act`, `pos_act` and
  example arrays with the windows they name (`benchmarks.atlas_build.read_pass`; the store has no token layers);
- parquet, jsonl: `analyses.neurons.export.export` of the store into OUT/<format>, with its sizes on disk and rows.
`--synthetic SIZE` first writes a store of that size's dimensions (`benchmarks.scale.write_synthetic_stats`:
synthetic counts, 64 strong positional neurons a layer, `--examples` per neuron and set over 200 random windows)
into OUT/stats, and a word-level tokenizer of OPT's 50272 entries (`tests/scale_data.py`) into OUT/tokenizer as
its model directory, so that every token and context is decoded.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

from benchmarks.atlas_build import disk_mb, read_pass
from benchmarks.conversion import peak_rss

PHASES = ("read", "parquet", "jsonl")


def export_pass(stats: str, out: str, fmt: str, model_dir: str | None, layers=None) -> dict:
    """The export of the store into out/<fmt>; its size on disk by table and its rows."""
    import pyarrow.parquet as pq

    from analyses.neurons.export import export

    root = export(stats, os.path.join(out, fmt), fmt, model_dir=model_dir, layers=layers, verbose=False)
    with open(os.path.join(root, "export.json")) as f:
        files = json.load(f)["files"]
    rows = {}
    for table, paths in files.items():
        if fmt == "parquet":
            rows[table] = sum(pq.ParquetFile(os.path.join(root, p)).metadata.num_rows for p in paths)
        else:
            rows[table] = sum(sum(1 for _ in open(os.path.join(root, p))) for p in paths)
    return {"mb": {table: disk_mb(os.path.join(root, table)) for table in files}, "rows": rows}


def run_phase(phase: str, out: str, stats: str, model_dir: str | None, layers=None) -> dict:
    """One pass here: its seconds, peak RSS (bytes) and findings."""
    start = time.perf_counter()
    found = read_pass([stats], layers) if phase == "read" else export_pass(stats, out, phase, model_dir, layers)
    return {"phase": phase, "seconds": time.perf_counter() - start, "peak_rss": peak_rss()} | found


def synthetic(out: str, size: str, examples: int, num_layers: int | None = None) -> tuple[str, str]:
    """(stats, model_dir): a synthetic store of `size`'s dimensions (its first `num_layers` layers, default all)
    and a 50272-word tokenizer beside it."""
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests"))
    import scale_data

    from benchmarks.scale import write_synthetic_stats
    from opt_jax.config import for_size

    stats, tokenizer = os.path.join(out, "stats"), os.path.join(out, "tokenizer")
    if not os.path.isfile(os.path.join(stats, "manifest.json")):
        config = for_size(size)
        write_synthetic_stats(stats, config.replace(num_hidden_layers=num_layers or config.num_hidden_layers),
                              sequences=200, examples=examples)
    if not os.path.isfile(os.path.join(tokenizer, "tokenizer.json")):
        scale_data.write_word_tokenizer(tokenizer)
    return stats, tokenizer


def measure(out: str, stats: str, model_dir: str | None, layers=None, repeats: int = 1) -> dict[str, list[dict]]:
    """Each pass in a fresh process, alternated `repeats` times."""
    results = {phase: [] for phase in PHASES}
    args = (["--layers", ",".join(map(str, layers))] if layers is not None else []) + (
        ["--model_dir", model_dir] if model_dir else [])
    for _ in range(repeats):
        for phase in PHASES:
            run = subprocess.run([sys.executable, "-m", "benchmarks.export_cost", out, stats, "--phase", phase, *args],
                                 capture_output=True, text=True, check=True)
            results[phase].append(json.loads(run.stdout.strip().splitlines()[-1]))
    return results


def table(results: dict[str, list[dict]]) -> str:
    """Median seconds and peak RSS of each pass, the ratio to the read pass, sizes and rows, as Markdown."""
    read = statistics.median(r["seconds"] for r in results["read"])
    lines = ["| pass | seconds (median) | x read | peak RSS MB | facts MB | examples MB | example rows |",
             "|---|---|---|---|---|---|---|"]
    for phase in PHASES:
        seconds = statistics.median(r["seconds"] for r in results[phase])
        rss = max(r["peak_rss"] for r in results[phase]) / 2 ** 20
        last = results[phase][-1]
        sizes = (f"{last['mb']['facts']:,.1f} | {last['mb']['examples']:,.1f} | {last['rows']['examples']:,}"
                 if "mb" in last else "| |")
        lines.append(f"| {phase} | {seconds:.1f} | {seconds / read:.2f} | {rss:,.0f} | {sizes} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out")
    parser.add_argument("stats", nargs="?")
    parser.add_argument("--model_dir", default=None)
    parser.add_argument("--synthetic", default=None, help="an OPT size: write a synthetic store of its dimensions")
    parser.add_argument("--examples", type=int, default=16)
    parser.add_argument("--num_layers", type=int, default=None, help="the synthetic store's layers (default all)")
    parser.add_argument("--layers", default=None)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--phase", choices=PHASES)
    args = parser.parse_args()
    layers = [int(l) for l in args.layers.split(",")] if args.layers else None
    stats, model_dir = args.stats, args.model_dir
    if args.synthetic:
        stats, model_dir = synthetic(args.out, args.synthetic, args.examples, args.num_layers)
    if args.phase:
        print(json.dumps(run_phase(args.phase, args.out, stats, model_dir, layers)))
        return
    print(table(measure(args.out, stats, model_dir, layers, args.repeats)))


if __name__ == "__main__":
    main()
