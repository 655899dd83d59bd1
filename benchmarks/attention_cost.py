"""Causal attention alone on the CPU: ours (`opt_jax.model.causal_attention` as the CPU runs it by default) against
torch's fused `scaled_dot_product_attention`, every layer of the model's shape over one batch, interleaved round by
round (`benchmarks.floor.Attention`; `scripts/benchmark.py --attention_cost`).

Each kernel runs in a process of its own (`benchmarks.isolated`: in one process, torch and JAX change each other's
step times). Each round times one batch of each kernel, the order rotating; the ratio ours / SDPA is taken within
each round, so that a shared machine's load, which changes between rounds, hits both alike, and its median is
reported.
"""

from __future__ import annotations

import os
from typing import Callable

import numpy as np

from benchmarks.cpu import _default_log, batch_size_for, time_interleaved
from benchmarks.floor import Attention
from benchmarks.isolated import Worker, variants
from opt_jax.config import OPTConfig


def _build(kernel: str, *args) -> dict:
    """A worker's variant (`benchmarks.isolated`): one kernel's `floor.Attention`."""
    return {kernel: Attention(kernel, *args)}


def attention_cost(config: OPTConfig, seq_lens=(512, 2048), tokens_per_batch: int = 4096, batches: int = 8,
                   warmup: int = 1, seed: int = 0, log: Callable = _default_log) -> list[dict]:
    """Per seq_len: seconds a batch (median, fastest) of torch SDPA and ours over all layers, and the median of
    the per-round ratios ours / SDPA."""
    rows = []
    heads, head_dim = config.num_attention_heads, config.head_dim
    for seq_len in seq_lens:
        batch_size = batch_size_for(seq_len, tokens_per_batch)
        workers = [Worker(_build, kernel, config.num_hidden_layers, batch_size, seq_len, heads, head_dim, seed)
                   for kernel in ("torch", "xla")]
        log(f"attention: seq {seq_len} x batch {batch_size}, {config.num_hidden_layers} layers of {heads} heads x "
            f"{head_dim}, {batches} rounds, each kernel in a process of its own")
        data = [(None, np.ones((batch_size, seq_len), bool))] * (warmup + batches)  # the kernels ignore the tokens
        try:
            timed = time_interleaved(variants(workers), data, warmup, log=log)
        finally:
            for w in workers:
                w.close()
        sdpa, ours = (np.array(timed[k]["step_seconds"]) for k in ("torch", "xla"))
        rows.append({"seq_len": seq_len, "batch_size": batch_size, "layers": config.num_hidden_layers,
                     "heads": heads, "head_dim": head_dim, "rounds": batches,
                     "sdpa_s": float(np.median(sdpa)), "ours_s": float(np.median(ours)),
                     "sdpa_fastest_s": float(sdpa.min()), "ours_fastest_s": float(ours.min()),
                     "ours_over_sdpa": float(np.median(ours / sdpa)), "load_1min": os.getloadavg()[0]})
    return rows
