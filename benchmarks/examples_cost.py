"""What the example sets cost: resident collection with `--examples 16` and with none, interleaved on the same
batches (`scripts/benchmark.py --examples_cost`)."""

from __future__ import annotations

from typing import Callable

from benchmarks.cpu import _default_log, flag_cost
from opt_jax.config import OPTConfig


def examples_cost(config: OPTConfig, seq_lens=(512, 2048), tokens_per_batch: int = 4096, batches: int = 3,
                  warmup: int = 1, examples: int = 16, workdir: str | None = None, seed: int = 0,
                  log: Callable = _default_log) -> list[dict]:
    """Per seq_len: tokens/s of resident collection without and with `examples` per neuron and set."""
    rows = []
    for seq_len, batch_size, result in flag_cost(config, dict(examples=0), dict(examples=examples),
                                                 f"examples cost (k = {examples})", seq_lens, tokens_per_batch,
                                                 batches, warmup, workdir, seed, log):
        without, with_ = result["without"]["tokens_per_s"], result["with"]["tokens_per_s"]
        rows.append({"seq_len": seq_len, "batch_size": batch_size, "examples": examples,
                     "timed_batches": batches, "without_examples_tok_s": without, "with_examples_tok_s": with_,
                     "slowdown": without / with_})
    return rows
