"""What the activation-value histograms cost: resident collection with `value_hist` (2 bins per octave, the default)
and without (`--value_bins_per_octave 0`), interleaved on the same batches (`scripts/benchmark.py --value_hist_cost`).
Both keep the default example sets, so the fc1 output is kept in either and only the histogram's counting differs."""

from __future__ import annotations

from typing import Callable

from analyses.collection import values
from benchmarks.cpu import _default_log, flag_cost
from opt_jax.config import OPTConfig


def value_hist_cost(config: OPTConfig, seq_lens=(512, 2048), tokens_per_batch: int = 4096, batches: int = 3,
                    warmup: int = 1, per_octave: int = values.PER_OCTAVE, examples: int = 16,
                    workdir: str | None = None, seed: int = 0, log: Callable = _default_log) -> list[dict]:
    """Per seq_len: tokens/s of resident collection without and with the value histogram, and each batch's seconds."""
    bins = values.num_bins(per_octave)
    label = f"value_hist cost ({per_octave} bins per octave, {bins} bins, examples {examples})"
    rows = []
    for seq_len, batch_size, result in flag_cost(
            config, dict(examples=examples, value_bins_per_octave=0),
            dict(examples=examples, value_bins_per_octave=per_octave), label, seq_lens, tokens_per_batch, batches,
            warmup, workdir, seed, log):
        without, with_ = result["without"]["tokens_per_s"], result["with"]["tokens_per_s"]
        rows.append({"seq_len": seq_len, "batch_size": batch_size, "bins": bins,
                     "examples": examples, "timed_batches": batches, "without_tok_s": without,
                     "with_tok_s": with_, "cost": without / with_ - 1,
                     "step_seconds_without": result["without"]["step_seconds"],
                     "step_seconds_with": result["with"]["step_seconds"]})
    return rows
