"""What `--mesh` costs where it should cost nothing: resident collection on one device without a mesh (today's
path) and with `--mesh data=1,neurons=1` (the mesh path: the model's `constrain` marks live, the counters laid
out by `COUNTER_AXES`, every axis of size 1), interleaved on the same batches.

    python -m benchmarks.mesh_cost [SIZE] [SEQ_LEN ...]      # default: 125m 512 2048, 4096 tokens a batch
"""

from __future__ import annotations

import sys

import opt_jax
from benchmarks.cpu import flag_cost

MESH = "data=1,neurons=1"


def mesh_cost(config, seq_lens=(512, 2048), tokens_per_batch: int = 4096, batches: int = 4, warmup: int = 1,
              seed: int = 0) -> list[dict]:
    """Per seq_len: tokens/s without a mesh and with data=1,neurons=1, and their ratio."""
    rows = []
    for seq_len, batch_size, result in flag_cost(config, dict(token_layers=(0,)), dict(token_layers=(0,), mesh=MESH),
                                                 f"mesh cost (no mesh against {MESH})", seq_lens, tokens_per_batch,
                                                 batches, warmup, None, seed, log=print):
        base, mesh = result["without"]["tokens_per_s"], result["with"]["tokens_per_s"]
        rows.append({"seq_len": seq_len, "batch_size": batch_size, "no_mesh_tok_s": base, "mesh_tok_s": mesh,
                     "mesh_time_ratio": base / mesh})
        print(f"seq {seq_len} x batch {batch_size}: no mesh {base:.0f} tok/s, {MESH} {mesh:.0f} tok/s, "
              f"time ratio {base / mesh:.3f}", flush=True)
    return rows


if __name__ == "__main__":
    size, *lens = sys.argv[1:] or ["125m"]
    mesh_cost(opt_jax.for_size(size), tuple(int(s) for s in lens) or (512, 2048))
