"""What the quantile examples cost: resident collection with `--quantile_examples Q` (default 4) and without (0),
interleaved on the same batches (`scripts/benchmark.py --quantile_cost`). Both keep the default example sets and
value histogram, so only the quantile set's selection differs. `selection_times` (`python -m benchmarks.quantile_cost`)
times one layer's selection of each set alone."""

from __future__ import annotations

from typing import Callable

from analyses.collection import values
from benchmarks.cpu import _default_log, flag_cost
from opt_jax.config import OPTConfig


def quantile_cost(config: OPTConfig, seq_lens=(512, 2048), tokens_per_batch: int = 4096, batches: int = 3,
                  warmup: int = 1, quantile: int = 4, per_octave: int = values.PER_OCTAVE, examples: int = 16,
                  workdir: str | None = None, seed: int = 0, log: Callable = _default_log) -> list[dict]:
    """Per seq_len: tokens/s of resident collection without and with the quantile set, and each batch's seconds."""
    bins = values.num_bins(per_octave)
    common = dict(examples=examples, value_bins_per_octave=per_octave)
    label = f"quantile cost ({quantile} per bin of {bins}, examples {examples})"
    rows = []
    for seq_len, batch_size, result in flag_cost(
            config, dict(quantile_examples=0, **common), dict(quantile_examples=quantile, **common), label, seq_lens,
            tokens_per_batch, batches, warmup, workdir, seed, log):
        without, with_ = result["without"]["tokens_per_s"], result["with"]["tokens_per_s"]
        rows.append({"seq_len": seq_len, "batch_size": batch_size, "bins": bins,
                     "quantile": quantile, "examples": examples, "timed_batches": batches,
                     "without_tok_s": without, "with_tok_s": with_, "cost": without / with_ - 1,
                     "step_seconds_without": result["without"]["step_seconds"],
                     "step_seconds_with": result["with"]["step_seconds"]})
    return rows


def selection_times(batch: int = 2, seq_len: int = 2048, ffn: int = 3072, rounds: int = 3, seed: int = 0) -> dict:
    """Seconds per call (each round's, interleaved) of one layer's device work on a random fc1 output [batch, seq_len,
    ffn]: value_hist's count, the top and random sets' update (k = 16), and the quantile set's with Q = 1 and 4."""
    import time

    import jax
    import jax.numpy as jnp
    import numpy as np

    from analyses.collection import examples as ex

    fc1 = jnp.asarray((np.random.default_rng(seed).normal(size=(batch, seq_len, ffn)) * 0.5).astype(np.float32))
    counted = jnp.ones((batch, seq_len), bool).at[:, 0].set(False)  # [b, s]
    p = values.PER_OCTAVE

    def quantile(q):
        sets = ex.zero_sets(1, ffn, 1, values.num_bins(p) * q)[ex.QUANTILE]
        step = jax.jit(lambda sets, x: ex.update_quantile(sets, 0, jnp.int32(3), x, counted, jnp.int32(0), p))
        return lambda: step(sets, fc1)

    sets = ex.zero_sets(1, ffn, 16)
    update = jax.jit(lambda sets, x: ex.update(sets, 0, jnp.int32(3), x, counted, jnp.int32(0), 16))
    count = jax.jit(lambda x: values.count(x, (x > 0) & counted[..., None], p))
    calls = {"value_hist": lambda: count(fc1), "top_random_k16": lambda: update(sets, fc1),
             "quantile_q1": quantile(1), "quantile_q4": quantile(4)}
    for call in calls.values():
        jax.block_until_ready(call())  # compiled
    times = {name: [] for name in calls}
    for _ in range(rounds):
        for name, call in calls.items():
            start = time.perf_counter()
            jax.block_until_ready(call())
            times[name].append(time.perf_counter() - start)
    return times


if __name__ == "__main__":
    for name, seconds in selection_times().items():
        print(f"{name}: best {min(seconds) * 1000:.0f} ms, rounds {[round(s * 1000) for s in seconds]}")
