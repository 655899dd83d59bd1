"""What `--mesh` costs where it should cost nothing: resident collection on one device without a mesh (today's
path) and with `--mesh data=1,neurons=1` (the mesh path: the model's `constrain` marks live, the counters laid
out by `COUNTER_AXES`, every axis of size 1), interleaved on the same batches.

    python -m benchmarks.mesh_cost [SIZE] [SEQ_LEN ...]      # default: 125m 512 2048, 4096 tokens a batch
"""

from __future__ import annotations

import gc
import sys
import tempfile
import time

import opt_jax
from analyses.collection import Options, Runner, make_plan
from benchmarks.cpu import build_models, batch_size_for, make_batches, time_interleaved


class MeshVariant:
    """A resident Runner with `--mesh` or without, as a timed variant (one batch per step)."""

    def __init__(self, model: str, config, seq_len: int, batch_size: int, mesh: str | None):
        options = Options(seq_len=seq_len, batch_size=batch_size, token_layers=(0,), mesh=mesh, verbose=False)
        self.runner = Runner(model, make_plan(config, options), options)
        self.chunk, self.info = 1, {"mesh": mesh}

    def step(self, batches: list) -> float:
        start = time.perf_counter()
        self.runner.run(batches)
        self.runner.wait()
        return time.perf_counter() - start

    def close(self) -> None:
        self.runner.close()
        del self.runner
        gc.collect()


def mesh_cost(config, seq_lens=(512, 2048), tokens_per_batch: int = 4096, batches: int = 4, warmup: int = 1,
              seed: int = 0) -> list[dict]:
    """Per seq_len: tokens/s without a mesh and with data=1,neurons=1, and their ratio."""
    rows = []
    with tempfile.TemporaryDirectory() as directory:
        models = build_models(config, directory, seed)
        for seq_len in seq_lens:
            batch_size = batch_size_for(seq_len, tokens_per_batch)
            data = make_batches(config, seq_len, batch_size, warmup + batches, seed)
            variants = {"no mesh": MeshVariant(models.converted_dir, config, seq_len, batch_size, None),
                        "data=1,neurons=1": MeshVariant(models.converted_dir, config, seq_len, batch_size,
                                                        "data=1,neurons=1")}
            result = time_interleaved(variants, data, warmup, log=print)
            for v in variants.values():
                v.close()
            base, mesh = result["no mesh"]["tokens_per_s"], result["data=1,neurons=1"]["tokens_per_s"]
            rows.append({"seq_len": seq_len, "batch_size": batch_size, "no_mesh_tok_s": base, "mesh_tok_s": mesh,
                         "mesh_time_ratio": base / mesh})
            print(f"seq {seq_len} x batch {batch_size}: no mesh {base:.0f} tok/s, data=1,neurons=1 {mesh:.0f} tok/s, "
                  f"time ratio {base / mesh:.3f}", flush=True)
    return rows


if __name__ == "__main__":
    size, *lens = sys.argv[1:] or ["125m"]
    mesh_cost(opt_jax.for_size(size), tuple(int(s) for s in lens) or (512, 2048))
