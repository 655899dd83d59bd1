"""Statistics collection speed in one invocation: against the HF torch baseline (cpu), or on big shapes (gpu).

  python scripts/benchmark.py                          # cpu suite: OPT-125m shape, random weights, seq 512 and 2048
  python scripts/benchmark.py --seq_lens 512 --batches 2 --workdir /scratch
  python scripts/benchmark.py --device_suite gpu       # 1.3b/6.7b resident vs streamed, 30b/66b streamed, bf16
  python scripts/benchmark.py --device_suite gpu --shrink 32 --seq_len 32 --batch_size 2   # the same, CPU-sized
  python scripts/benchmark.py --device_suite gpu --study_step   # 66b: example sets' share, a flush's copy, streamed
cpu: ours (resident and streamed `analyses.collection.Runner`) and the baseline (HF `OPTForCausalLM` with fc1
forward hooks: full model, and decoder only) run on identical weights and batches; the numpy float32 matmul rate
is measured too. gpu: `benchmarks.device` on the default JAX device, against its bf16 matmul rate.
One JSON line per measurement on stdout, progress on stderr, then a markdown table for BENCHMARKS.md. Flags left
unset take the suite's own defaults.
"""

import json
import sys

from absl import app, flags

from opt_jax import cli

FLAGS = flags.FLAGS
flags.DEFINE_enum("device_suite", "cpu", ["cpu", "gpu"], "what to measure: cpu (JAX and torch on the CPU, against "
                  "HF); gpu (1.3b to 66b shapes on the default JAX device, resident and streamed)")
flags.DEFINE_string("size", "125m", "cpu: OPT size whose shape the random-weight model takes")
flags.DEFINE_list("seq_lens", ["512", "2048"], "cpu: sequence lengths (full-length windows, no padding)")
flags.DEFINE_integer("tokens_per_batch", 4096, "cpu: tokens per batch: batch size = tokens_per_batch / seq_len",
                     lower_bound=1)
flags.DEFINE_integer("batches", None, "timed batches per variant (default: cpu 6, gpu 8)", lower_bound=1)
flags.DEFINE_integer("warmup", None, "untimed batches first: compilation, allocator warm-up (default 1)",
                     lower_bound=0)
flags.DEFINE_integer("group_size", None, "layers per group in the streamed mode (default: cpu 4, gpu "
                     "min(30% of device memory for two groups, a quarter of the layers))", lower_bound=1)
flags.DEFINE_integer("chunk_batches", None, "batches per chunk in the streamed mode (default: cpu 2, gpu 4)",
                     lower_bound=1)
flags.DEFINE_integer("matmul_n", None, "size of the square matmul giving the machine rate (default: cpu 2048 "
                     "float32 numpy, gpu 8192 bf16 jnp)", lower_bound=1)
flags.DEFINE_integer("seed", None, "seed of the random weights and batches (default 0)")
flags.DEFINE_bool("ngram_cost", False, "cpu: measure only what exact n-gram counting (orders 2, 3) costs, resident, "
                  "at the first --seq_lens value")
flags.DEFINE_bool("examples_cost", False, "cpu: measure only what the example sets (--examples 16) cost, resident, "
                  "at each --seq_lens value")
flags.DEFINE_bool("contexts_cost", False, "cpu: measure only what context activations cost (their pass against a "
                  "collection pass over the same windows, interleaved, and the size they add)")
flags.DEFINE_bool("value_hist_cost", False, "cpu: measure only what the activation-value histogram (value_hist, "
                  "2 bins per octave) costs, resident with the default example sets, at each --seq_lens value")
flags.DEFINE_bool("quantile_cost", False, "cpu: measure only what the quantile examples (--quantile_examples 4) "
                  "cost, resident with the default example sets and value histogram, at each --seq_lens value")
flags.DEFINE_bool("attention_cost", False, "cpu: measure only causal attention (every layer, one batch) against "
                  "torch's fused SDPA, interleaved, at each --seq_lens value")
flags.DEFINE_bool("ablation_cost", False, "cpu: measure only an ablation pass (base + 300 neurons zeroed: losses and "
                  "KL) against HF + hooks doing the same, at each --seq_lens value")
flags.DEFINE_bool("keep_freed_memory", True, "cpu suite: every side (ours, HF, the floor) keeps freed host memory "
                  "(opt_jax.heap, the collection script's default on the CPU); --nokeep_freed_memory: glibc's default "
                  "for all")
flags.DEFINE_string("workdir", None, "cpu: where the temporary checkpoints go (default: the system temp dir)")
flags.DEFINE_list("sizes", None, "gpu: OPT sizes measured (default 1.3b,6.7b,30b,66b)")
flags.DEFINE_list("resident_sizes", None, "gpu: sizes also measured resident (default 1.3b,6.7b)")
flags.DEFINE_integer("shrink", None, "gpu: divide heads, widths, vocabulary and layers by this (default 1; "
                     "32 runs every size on a CPU in seconds)", lower_bound=1)
flags.DEFINE_integer("seq_len", None, "gpu: tokens per sequence (default 2048)", lower_bound=2)
flags.DEFINE_integer("batch_size", None, "gpu: sequences per batch (default 8)", lower_bound=1)
flags.DEFINE_integer("token_layers", None, "gpu: layers with tok_act, from layer 0 (default 1)", lower_bound=0)
flags.DEFINE_bool("study_step", False, "gpu: measure only the study's step of one --sizes size (default 66b): "
                  "compute-only with and without the example sets interleaved, one flush's device-to-host copy, "
                  "streamed (benchmarks/study_step.py; --batches default 12)")


def _set(**values) -> dict:
    """The flags given on the command line (the rest take the suite's defaults)."""
    return {k: v for k, v in values.items() if v is not None}


def main(argv):
    del argv
    if FLAGS.device_suite == "gpu":
        return gpu()
    import jax

    jax.config.update("jax_platforms", "cpu")
    import opt_jax
    from benchmarks import cpu, ngram_cost

    common = _set(batches=FLAGS.batches, warmup=FLAGS.warmup, seed=FLAGS.seed)
    if FLAGS.ngram_cost:
        seq_len = int(FLAGS.seq_lens[0])
        result = ngram_cost.ngram_cost(opt_jax.for_size(FLAGS.size), seq_len,
                                       cpu.batch_size_for(seq_len, FLAGS.tokens_per_batch),
                                       workdir=FLAGS.workdir, **common)
        print(json.dumps(result))
        return 0
    if FLAGS.examples_cost:
        from benchmarks.examples_cost import examples_cost

        rows = examples_cost(opt_jax.for_size(FLAGS.size), [int(s) for s in FLAGS.seq_lens], FLAGS.tokens_per_batch,
                             workdir=FLAGS.workdir, **common)
        for row in rows:
            print(json.dumps(row))
        return 0

    if FLAGS.contexts_cost:
        from benchmarks.contexts_cost import contexts_cost

        seq_len = int(FLAGS.seq_lens[0])
        print(json.dumps(contexts_cost(opt_jax.for_size(FLAGS.size), seq_len,
                                       cpu.batch_size_for(seq_len, FLAGS.tokens_per_batch), workdir=FLAGS.workdir,
                                       **common)))
        return 0

    if FLAGS.value_hist_cost:
        from benchmarks.value_hist_cost import value_hist_cost

        rows = value_hist_cost(opt_jax.for_size(FLAGS.size), [int(s) for s in FLAGS.seq_lens], FLAGS.tokens_per_batch,
                               workdir=FLAGS.workdir, **common)
        for row in rows:
            print(json.dumps(row))
        return 0

    if FLAGS.quantile_cost:
        from benchmarks.quantile_cost import quantile_cost

        rows = quantile_cost(opt_jax.for_size(FLAGS.size), [int(s) for s in FLAGS.seq_lens], FLAGS.tokens_per_batch,
                             workdir=FLAGS.workdir, **common)
        for row in rows:
            print(json.dumps(row))
        return 0

    if FLAGS.attention_cost:
        from benchmarks.attention_cost import attention_cost

        for row in attention_cost(opt_jax.for_size(FLAGS.size), [int(s) for s in FLAGS.seq_lens],
                                  FLAGS.tokens_per_batch, **common):
            print(json.dumps(row))
        return 0

    if FLAGS.ablation_cost:
        from benchmarks.ablation_cost import ablation_cost

        rows = ablation_cost(opt_jax.for_size(FLAGS.size), [int(s) for s in FLAGS.seq_lens], FLAGS.tokens_per_batch,
                             workdir=FLAGS.workdir, **common)
        for row in rows:
            print(json.dumps(row))
        return 0

    def suite():
        return cpu.run_suite(
            opt_jax.for_size(FLAGS.size), seq_lens=[int(s) for s in FLAGS.seq_lens],
            tokens_per_batch=FLAGS.tokens_per_batch, workdir=FLAGS.workdir, keep_freed_memory=FLAGS.keep_freed_memory,
            **common, **_set(group_size=FLAGS.group_size, chunk_batches=FLAGS.chunk_batches,
                             matmul_n=FLAGS.matmul_n))

    return cli.run(suite, _table(cpu.markdown_table))


def _table(markdown):
    """The command line, then the rows as a markdown table for BENCHMARKS.md."""
    return lambda rows: f"\nCommand: `{' '.join(['python scripts/benchmark.py', *sys.argv[1:]])}`\n\n{markdown(rows)}"


def gpu():
    if FLAGS.study_step:
        return study_step()
    from benchmarks import device

    settings = _set(sizes=FLAGS.sizes and tuple(FLAGS.sizes), resident_sizes=FLAGS.resident_sizes and
                    tuple(FLAGS.resident_sizes), shrink=FLAGS.shrink, seq_len=FLAGS.seq_len,
                    batch_size=FLAGS.batch_size, batches=FLAGS.batches, warmup=FLAGS.warmup,
                    chunk_batches=FLAGS.chunk_batches, group_size=FLAGS.group_size,
                    token_layers=FLAGS.token_layers, matmul_n=FLAGS.matmul_n, seed=FLAGS.seed)
    return cli.run(lambda: device.device_suite(device.DeviceSuite(**settings)),
                   _table(device.device_markdown_table))


def study_step():
    from benchmarks import study_step as step
    from opt_jax.errors import InputError

    settings = _set(shrink=FLAGS.shrink, seq_len=FLAGS.seq_len, batch_size=FLAGS.batch_size, batches=FLAGS.batches,
                    warmup=FLAGS.warmup, chunk_batches=FLAGS.chunk_batches, group_size=FLAGS.group_size,
                    token_layers=FLAGS.token_layers, matmul_n=FLAGS.matmul_n, seed=FLAGS.seed)

    def action():
        if FLAGS.sizes and len(FLAGS.sizes) != 1:
            raise InputError(f"--study_step measures one size; got --sizes {','.join(FLAGS.sizes)}")
        return step.study_step(step.StudyStep(**settings, **_set(size=FLAGS.sizes and FLAGS.sizes[0])))

    return cli.run(action, _table(step.study_step_markdown))


if __name__ == "__main__":
    app.run(main)
