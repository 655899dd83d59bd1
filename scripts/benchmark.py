"""Statistics collection tokens/s against the Hugging Face torch baseline, on the same batches, in one invocation.

  python scripts/benchmark.py                          # OPT-125m shape, random weights, seq 512 and 2048
  python scripts/benchmark.py --seq_lens 512 --batches 2 --workdir /scratch
Ours (resident and streamed `analyses.collect.Runner`) and the baseline (HF `OPTForCausalLM` with fc1
forward hooks: full model, and decoder only) run on identical weights and batches; the numpy float32
matmul rate is measured too. One JSON line per measurement on stdout, progress on stderr, then a
markdown table for BENCHMARKS.md.
"""

import json
import sys

from absl import app, flags

FLAGS = flags.FLAGS
flags.DEFINE_enum("device_suite", "cpu", ["cpu", "gpu"], "what to measure: cpu (JAX and torch on the CPU); "
                  "gpu is not implemented yet")
flags.DEFINE_string("size", "125m", "OPT size whose shape the random-weight model takes")
flags.DEFINE_list("seq_lens", ["512", "2048"], "sequence lengths (full-length windows, no padding)")
flags.DEFINE_integer("tokens_per_batch", 4096, "tokens per batch: batch size = tokens_per_batch / seq_len",
                     lower_bound=1)
flags.DEFINE_integer("batches", 6, "timed batches per sequence length (the same for every variant)", lower_bound=1)
flags.DEFINE_integer("warmup", 1, "untimed batches first (compilation, allocator warm-up)", lower_bound=0)
flags.DEFINE_integer("group_size", 4, "layers per group in the streamed mode", lower_bound=1)
flags.DEFINE_integer("chunk_batches", 2, "batches per chunk in the streamed mode", lower_bound=1)
flags.DEFINE_integer("matmul_n", 2048, "size of the square numpy matmul that gives the machine rate", lower_bound=1)
flags.DEFINE_integer("seed", 0, "seed of the random weights and batches")
flags.DEFINE_bool("ngram_cost", False, "measure only what exact n-gram counting (orders 2, 3) costs, resident, "
                  "at the first --seq_lens value")
flags.DEFINE_string("workdir", None, "where the temporary checkpoints go (default: the system temp dir)")


def main(argv):
    del argv
    if FLAGS.device_suite == "gpu":
        print("error: --device_suite gpu is not implemented yet; only --device_suite cpu can be measured",
              file=sys.stderr)
        return 1
    import jax

    jax.config.update("jax_platforms", "cpu")
    import opt_jax
    from analyses import StatsError, benchmark

    if FLAGS.ngram_cost:
        seq_len = int(FLAGS.seq_lens[0])
        result = benchmark.ngram_cost(opt_jax.for_size(FLAGS.size), seq_len,
                                      benchmark.batch_size_for(seq_len, FLAGS.tokens_per_batch), FLAGS.batches,
                                      FLAGS.warmup, workdir=FLAGS.workdir, seed=FLAGS.seed)
        print(json.dumps(result))
        return 0
    try:
        rows = benchmark.run_suite(
            opt_jax.for_size(FLAGS.size), seq_lens=[int(s) for s in FLAGS.seq_lens],
            tokens_per_batch=FLAGS.tokens_per_batch, batches=FLAGS.batches, warmup=FLAGS.warmup,
            group_size=FLAGS.group_size, chunk_batches=FLAGS.chunk_batches, workdir=FLAGS.workdir,
            seed=FLAGS.seed, matmul_n=FLAGS.matmul_n, device_suite=FLAGS.device_suite)
    except (opt_jax.ConfigError, StatsError, NotImplementedError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"\nCommand: `{' '.join(['python scripts/benchmark.py', *sys.argv[1:]])}`\n")
    print(benchmark.markdown_table(rows))
    return 0


if __name__ == "__main__":
    app.run(main)
