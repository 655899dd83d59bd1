"""What exact n-gram counting costs: resident collection with and without it, interleaved on the same batches
(`scripts/benchmark.py --ngram_cost`)."""

from __future__ import annotations

import tempfile
from typing import Callable

from benchmarks.cpu import Ours, _default_log, build_models, make_batches, time_interleaved
from opt_jax.config import OPTConfig

def ngram_cost(config: OPTConfig, seq_len: int = 512, batch_size: int = 8, batches: int = 3, warmup: int = 1,
               orders=(2, 3), workdir: str | None = None, seed: int = 0, log: Callable = _default_log) -> dict:
    """Resident collection with and without exact n-gram counting, interleaved: tokens/s of each and pairs held."""
    with tempfile.TemporaryDirectory(dir=workdir) as directory:
        models = build_models(config, directory, seed)
        data = make_batches(config, seq_len, batch_size, warmup + batches, seed)
        plain = Ours(models.converted_dir, config, (batch_size, seq_len))
        counted = Ours(models.converted_dir, config, (batch_size, seq_len), ngram_orders=tuple(orders))
        log(f"n-gram cost: seq {seq_len} x batch {batch_size}, {batches} timed batches, orders {list(orders)}")
        result = time_interleaved({"without_ngrams": plain, "with_ngrams": counted}, data, warmup)
        pairs = counted.runner.ngrams.num_pairs()
        plain.close()
        counted.close()
    without, with_ = result["without_ngrams"]["tokens_per_s"], result["with_ngrams"]["tokens_per_s"]
    return {"seq_len": seq_len, "batch_size": batch_size, "orders": list(orders),
            "tokens_counted": (warmup + batches) * seq_len * batch_size,
            "without_ngrams_tok_s": without, "with_ngrams_tok_s": with_, "slowdown": without / with_,
            "distinct_pairs": pairs, "pair_bytes": 16 * pairs}
