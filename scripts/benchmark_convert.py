"""Conversion speed and peak memory (random weights), and mask agreement of bf16/fp16 with float32.

  python scripts/benchmark_convert.py --sizes 125m,350m
Every figure comes from one invocation: the streaming conversion is compared with a whole-checkpoint
load (the naive baseline) of the same file, each in a fresh interpreter.
"""

import json

from absl import app, flags

import opt_jax
from benchmarks import conversion as bench

FLAGS = flags.FLAGS
flags.DEFINE_list("sizes", ["125m", "350m"], "OPT sizes to convert (random weights, float32 checkpoints)")
flags.DEFINE_integer("agreement_layers", 12, "layers of the 125m-shaped model used for mask agreement")
flags.DEFINE_integer("agreement_seq", 256, "tokens per sequence for mask agreement")
flags.DEFINE_string("workdir", None, "where the temporary checkpoints go (default: the system temp dir)")


def main(argv):
    del argv
    rows = []
    for size in FLAGS.sizes:
        r = bench.conversion_benchmark(opt_jax.for_size(size), f"opt-{size} shape", FLAGS.workdir)
        rows.append(r)
        print(json.dumps(r))
    print("\n| model | params MB (f32) | one layer MB | convert f32 s | MB/s | convert→bf16 s | peak RSS MB "
          "(interpreter alone) | naive load s | naive peak RSS MB | RSS ratio naive/stream |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['model']} | {r['model_mb']:.0f} | {r['layer_mb']:.1f} | {r['convert_f32_s']:.2f} | "
              f"{r['convert_f32_mb_per_s']:.0f} | {r['convert_bf16_s']:.2f} | {r['convert_peak_rss_mb']:.0f} "
              f"({r['interpreter_rss_mb']:.0f}) | {r['naive_load_s']:.2f} | {r['naive_peak_rss_mb']:.0f} | "
              f"{r['naive_peak_rss_mb'] / r['convert_peak_rss_mb']:.2f} |")
    config = opt_jax.for_size("125m", num_hidden_layers=FLAGS.agreement_layers)
    agreement = bench.mask_agreement(config, batch=2, seq=FLAGS.agreement_seq)
    print(json.dumps(agreement))
    print(f"\nmask agreement with float32 ({FLAGS.agreement_layers}-layer 125m shape, random weights, "
          f"2x{FLAGS.agreement_seq} tokens, {100 * agreement['active_fraction']:.1f}% bits set): "
          + ", ".join(f"{d} {100 * a:.3f}% (worst layer {100 * min(agreement['per_layer'][d]):.3f}%)"
                      for d, a in agreement["agreement"].items()))
    return 0


if __name__ == "__main__":
    app.run(main)
