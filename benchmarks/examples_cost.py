"""What the example sets cost: resident collection with `--examples 16` and with none, interleaved on the same
batches (`scripts/benchmark.py --examples_cost`)."""

from __future__ import annotations

import tempfile
from typing import Callable

from benchmarks.cpu import Ours, _default_log, batch_size_for, build_models, make_batches, time_interleaved
from opt_jax.config import OPTConfig


def examples_cost(config: OPTConfig, seq_lens=(512, 2048), tokens_per_batch: int = 4096, batches: int = 3,
                  warmup: int = 1, examples: int = 16, workdir: str | None = None, seed: int = 0,
                  log: Callable = _default_log) -> list[dict]:
    """Per seq_len: tokens/s of resident collection without and with `examples` per neuron and set."""
    rows = []
    with tempfile.TemporaryDirectory(dir=workdir) as directory:
        models = build_models(config, directory, seed)
        for seq_len in seq_lens:
            batch_size = batch_size_for(seq_len, tokens_per_batch)
            data = make_batches(config, seq_len, batch_size, warmup + batches, seed)
            variants = {"without_examples": Ours(models.converted_dir, config, (batch_size, seq_len), examples=0),
                        "with_examples": Ours(models.converted_dir, config, (batch_size, seq_len),
                                              examples=examples)}
            log(f"examples cost: seq {seq_len} x batch {batch_size}, {batches} timed batches, k = {examples}")
            result = time_interleaved(variants, data, warmup, log=log)
            for v in variants.values():
                v.close()
            without, with_ = result["without_examples"]["tokens_per_s"], result["with_examples"]["tokens_per_s"]
            rows.append({"seq_len": seq_len, "batch_size": batch_size, "examples": examples,
                         "timed_batches": batches, "without_examples_tok_s": without, "with_examples_tok_s": with_,
                         "slowdown": without / with_})
    return rows
