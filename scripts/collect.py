"""Collect FFN activation statistics of a converted OPT model over a corpus.

  python scripts/collect.py --model converted/opt-125m --corpus val.jsonl.zst --out stats/opt-125m
  python scripts/collect.py ... --offload --group_size 8          # layer groups read and moved as needed
  # several hosts: the same command on each, with --coordinator HOST:PORT --num_processes N --process_id I;
  # each writes OUT/process-I-of-N, then: python scripts/merge_stats.py --parts OUT/process-* --out MERGED
"""

import os

from absl import app, flags

from opt_jax import cli

FLAGS = flags.FLAGS
flags.DEFINE_string("model", None, "converted opt_jax checkpoint directory", required=True)
flags.DEFINE_multi_string("corpus", None, cli.CORPUS_HELP,
                          required=True)
flags.DEFINE_string("out", None, "statistics directory", required=True)
flags.DEFINE_integer("seq_len", 2048, "tokens per window (BOS + seq_len - 1 document tokens)")
flags.DEFINE_integer("batch_size", 8, "windows per batch (divisible by the local device count)")
flags.DEFINE_integer("max_tokens", None, "stop after this many tokens of the window stream")
flags.DEFINE_bool("full_length_only", False, "keep only windows of exactly seq_len tokens")
flags.DEFINE_bool("offload", False, "stream the weights: read each layer group from the checkpoint when needed "
                  "(two groups ahead) and move it to the device, instead of holding every layer there")
flags.DEFINE_integer("group_size", None, "layers per streamed group (default: from device memory)")
flags.DEFINE_integer("chunk_batches", 4, "batches per streamed chunk (each group is moved once per chunk)")
flags.DEFINE_integer("max_layers", None, "run only the first K layers")
flags.DEFINE_list("token_layers", None, "layers with token statistics (default: the first half)")
flags.DEFINE_enum("dtype", None, ["float32", "bfloat16", "float16"], "compute dtype (default: stored)")
flags.DEFINE_string("text_key", "text", cli.TEXT_KEY_HELP)
flags.DEFINE_list("ngram_orders", [], "n-gram orders counted exactly for the token layers, e.g. 2,3 "
                  "(default: none)")
flags.DEFINE_integer("ngram_max_pairs", 50_000_000, "most distinct (n-gram, neuron) pairs held (16 bytes each)")
flags.DEFINE_string("ngram_candidates_from", None, "a finished statistics directory of the same model: count "
                    "n-grams only for neurons that at most --ngram_max_coverage tokens cover there")
flags.DEFINE_integer("ngram_max_coverage", 50, "most tokens covering a candidate neuron's activations")
flags.DEFINE_float("ngram_coverage_fraction", 0.95, "the share of its activations those tokens must cover")
flags.DEFINE_integer("examples", 16, "example activations kept per neuron and set: its strongest and a uniform "
                     "sample (0: none)", lower_bound=0)
flags.DEFINE_integer("quantile_examples", 0, "K activations per neuron and value bin, a uniform sample of each bin's "
                     "(read as Stats.examples(layer, neuron, 'quantile'), grouped into bands near the deciles); "
                     "bins x K slots per neuron (4 GB at OPT-66b with K 4 and 36 bins; fewer with "
                     "--value_bins_per_octave 1); 0: none")
flags.DEFINE_integer("value_bins_per_octave", 2, "bins per octave of value_hist, each neuron's activations by the "
                     "bin of their fc1 value (1, 2, 4 or 8; edges from 2^-10 to 2^7; 0: none)", lower_bound=0)
flags.DEFINE_float("flush_every_s", 300.0, "commit statistics at least this often (seconds)")
flags.DEFINE_integer("flush_every_batches", None, "also commit every this many batches (chunks when offloading)")
flags.DEFINE_bool("background_commits", True, "write each commit in a background thread while counting goes on "
                  "into fresh counters, when a second set of counters fits on the device or the host "
                  "(--nobackground_commits: the step loop waits for every commit)")
flags.DEFINE_bool("background_ngrams", True, "count each batch's n-grams in a background thread while the next "
                  "batches run (--nobackground_ngrams: the step loop counts them)")
flags.DEFINE_bool("overwrite", False, "replace statistics of another model, corpus or flags in --out")
flags.DEFINE_string("mesh", None, "data=A,neurons=B (A x B = the local devices): batches split over A devices, "
                    "each layer's weights and the neurons and their counters over B, results identical to one "
                    "device's (docs/collection.md); default: every device on data")
flags.DEFINE_string("coordinator", None, "jax.distributed coordinator HOST:PORT (multi-host runs)")
flags.DEFINE_integer("num_processes", 1, "number of processes in a multi-host run")
flags.DEFINE_integer("process_id", 0, "this process's index in a multi-host run")

cli.define_lock_flag()
cli.define_heap_flag()


def main(argv):
    del argv
    import jax

    if FLAGS.num_processes > 1:
        jax.distributed.initialize(FLAGS.coordinator, FLAGS.num_processes, FLAGS.process_id)
    import analyses

    out = FLAGS.out
    if FLAGS.num_processes > 1:
        out = os.path.join(out, f"process-{FLAGS.process_id}-of-{FLAGS.num_processes}")
    return cli.run(lambda: analyses.collect(
            FLAGS.model, FLAGS.corpus, out, seq_len=FLAGS.seq_len, batch_size=FLAGS.batch_size,
            max_tokens=FLAGS.max_tokens, full_length_only=FLAGS.full_length_only, offload=FLAGS.offload,
            group_size=FLAGS.group_size, chunk_batches=FLAGS.chunk_batches, max_layers=FLAGS.max_layers,
            token_layers=tuple(int(l) for l in FLAGS.token_layers) if FLAGS.token_layers else None,
            dtype=FLAGS.dtype, text_key=FLAGS.text_key,
            ngram_orders=tuple(int(k) for k in FLAGS.ngram_orders), ngram_max_pairs=FLAGS.ngram_max_pairs,
            ngram_candidates_from=FLAGS.ngram_candidates_from, ngram_max_coverage=FLAGS.ngram_max_coverage,
            ngram_coverage_fraction=FLAGS.ngram_coverage_fraction, examples=FLAGS.examples,
            value_bins_per_octave=FLAGS.value_bins_per_octave, quantile_examples=FLAGS.quantile_examples,
            flush_every_s=FLAGS.flush_every_s,
            flush_every_batches=FLAGS.flush_every_batches, background_commits=FLAGS.background_commits,
            background_ngrams=FLAGS.background_ngrams, overwrite=FLAGS.overwrite, mesh=FLAGS.mesh,
            process_index=FLAGS.process_id, process_count=FLAGS.num_processes, wait_for_lock=FLAGS.wait_for_lock),
        lambda path: f"statistics: {path}", devices=FLAGS.model, keep_freed_memory=FLAGS.keep_freed_memory,
        streamed=FLAGS.offload)


if __name__ == "__main__":
    app.run(main)
