"""What a flush costs in host memory: one token layer's device counters ([vocab, ffn] int32) committed to a store.

Two ways of handing the counters to `StatsStore.commit`, each in its own process (alternated, so a noisy
machine hits both alike), measured as the peak RSS above the process's RSS just before the commit:
- `blocks` (what collection does): each chunk of the store is sliced on the device and only it crosses;
- `whole_layer` (what it did before): the whole [vocab, ffn] layer is copied to the host, then cut into chunks.
  On an accelerator that copy is a host allocation of the layer's size; on the CPU `np.asarray` of a device array
  may alias it instead, so this mode copies explicitly (`np.array`) to show what an accelerator's host pays.

    python -m benchmarks.flush                      # OPT-66b's vocabulary and width: a 7.4 GB token layer
    python -m benchmarks.flush --vocab 50272 --ffn 3072 --rounds 3
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np

from benchmarks.conversion import rss

MODES = ("blocks", "whole_layer")


class PeakSampler:
    """The largest RSS seen every `every` seconds while the `with` block runs (and at its edges)."""

    def __init__(self, every: float = 0.005):
        self.every, self.peak, self._stop = every, rss(), threading.Event()

    def __enter__(self):
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self):
        while not self._stop.wait(self.every):
            self.peak = max(self.peak, rss())

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss())


def measure(mode: str, vocab: int, ffn: int, root: str, seed: int = 0) -> dict:
    """One commit of a sparse token layer held on the default JAX device: seconds and peak RSS above the start."""
    import jax
    import jax.numpy as jnp

    from analyses.collection.store import StatsStore, array_layouts

    rng = np.random.default_rng(seed)
    rows = np.unique(rng.integers(0, vocab, max(1, vocab // 50)))  # 2% of the tokens seen, as in a short run
    counts = jnp.zeros((1, vocab, ffn), jnp.int32).at[0, rows].set(
        jnp.asarray(rng.integers(0, 3, (len(rows), ffn)), jnp.int32))  # [1, v, n] on the device
    counts.block_until_ready()
    store = StatsStore.create(root, {"model": None, "tokens": 0}, {"tok_act": array_layouts(1, 1, 2, vocab, ffn)["tok_act"]})
    if mode == "blocks":
        delta = lambda block: np.asarray(counts[(0, *block[1:])], np.int64)[None]  # noqa: E731 - [1, r, n]
    else:
        delta = lambda block: whole[block]  # noqa: E731
    start_rss, start = rss(), time.perf_counter()
    with PeakSampler() as sampler:
        if mode == "whole_layer":
            whole = np.array(counts)  # [1, v, n] int32: the old flush's device -> host copy
        store.commit({"tok_act": delta}, {"tokens": 1})
    seconds = time.perf_counter() - start
    return {"mode": mode, "vocab": vocab, "ffn": ffn, "seconds": seconds, "rss_before": start_rss,
            "peak_above_before": sampler.peak - start_rss, "layer_bytes_int32": vocab * ffn * 4}


def compare(vocab: int, ffn: int, rounds: int = 1, workdir: str | None = None) -> list[dict]:
    """Each mode in its own process, alternated `rounds` times."""
    results = []
    for _ in range(rounds):
        for mode in MODES:
            with tempfile.TemporaryDirectory(dir=workdir) as root:
                out = subprocess.run([sys.executable, "-m", "benchmarks.flush", "--one", mode, "--vocab", str(vocab),
                                      "--ffn", str(ffn), "--root", root], capture_output=True, text=True,
                                     env=os.environ | {"JAX_PLATFORMS": "cpu"})
                if out.returncode:
                    raise RuntimeError(f"{mode} failed:\n{out.stderr[-3000:]}")
                results.append(json.loads(out.stdout.strip().splitlines()[-1]))
    return results


def markdown(results: list[dict]) -> str:
    lines = ["| mode | vocab x ffn | token layer (int32) | peak host memory above the start | seconds |",
             "|---|---|---|---|---|"]
    for r in results:
        lines.append(f"| {r['mode']} | {r['vocab']} x {r['ffn']} | {r['layer_bytes_int32'] / 1e9:.2f} GB | "
                     f"{r['peak_above_before'] / 1e9:.2f} GB | {r['seconds']:.1f} |")
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--vocab", type=int, default=50272)
    parser.add_argument("--ffn", type=int, default=36864)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--workdir")
    parser.add_argument("--one", choices=MODES, help=argparse.SUPPRESS)
    parser.add_argument("--root", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.one:
        print(json.dumps(measure(args.one, args.vocab, args.ffn, args.root)))
        return
    print(markdown(compare(args.vocab, args.ffn, args.rounds, args.workdir)))


if __name__ == "__main__":
    main()
