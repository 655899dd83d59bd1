"""The main job: statistics of the models over a corpus, then every analysis (report.json, figures, tables) and
the neuron atlas (a page per neuron).

  python scripts/study.py                      # the shipped twins on the Python standard library -> out/
  python scripts/study.py --model converted/opt-125m --corpus pile_val.jsonl.zst --seq_len 2048 \\
      --max_tokens 5000000 --out out/opt-125m
  python scripts/study.py --model opt-66b=converted/opt-66b-bf16 --corpus pile_val.jsonl.zst --seq_len 2048 \\
      --batch_size 8 --offload --group_size 4 --chunk_batches 16 --flush_every_s 3600 --nocausal --out out/opt-66b

Each model's token layers are collected in as many runs as the device's memory needs (at 66b on an H200: three or
four), joined into one store per model (`analyses.collection.runs`); a killed study resumes the run it was in.
"""

from absl import app, flags

from opt_jax import cli

FLAGS = flags.FLAGS
flags.DEFINE_string("out", "out", "output directory: corpus/, stats/<name>/, ablation/<name>/, report/, atlas/")
flags.DEFINE_multi_string("model", None, "converted model directories, each DIR or NAME=DIR; a training run "
                          "directory (scripts/train.py --out) stands for its step-N snapshots, in step order "
                          "(default: the shipped twins)")
flags.DEFINE_list("names", None, "names of the unlabelled models, in order (default: the directories' names)")
flags.DEFINE_multi_string("corpus", None, "corpus files, directories or globs, each PATH or DOMAIN=PATH; with two "
                          "domains or more each model is also collected per domain and its positional neurons "
                          "compared across them (default: the Python standard library, written to "
                          "OUT/corpus/stdlib.jsonl)")
flags.DEFINE_integer("seq_len", 128, "tokens per window; only full-length windows are kept")
flags.DEFINE_integer("batch_size", 16, "windows per batch")
flags.DEFINE_integer("max_tokens", 200_000, "tokens collected per model (0: the whole corpus)")
flags.DEFINE_list("ngram_orders", ["2", "3"], "n-gram orders counted exactly")
flags.DEFINE_list("analyses", ["dead", "ngrams", "detectors", "suppression", "positional"], "analyses to run")
flags.DEFINE_bool("domains", True, "collect each domain of a labelled corpus (with the default corpus: the standard "
                  "library's docstrings and its code) and compare positional neurons across domains")
flags.DEFINE_bool("atlas", True, "also write the neuron atlas of the models (OUT/atlas/index.html: a page per neuron)")
flags.DEFINE_bool("causal", True, "test the paper's readings causally: ablate each model's dead neurons, token "
                  "detectors and positional neurons (with matched random controls) on held-out text")
flags.DEFINE_integer("causal_tokens", 50_000, "held-out tokens the causal ablations read per model")
flags.DEFINE_bool("overwrite", False, "replace statistics collected with other flags")
flags.DEFINE_float("device_memory_gb", None, "plan the token-layer runs for this much device memory (on the CPU: "
                   "host memory, the runtime included) instead of what the device has free now, e.g. to force "
                   "runs of fewer token layers")
flags.DEFINE_bool("offload", False, "stream the weights a layer group at a time (scripts/collect.py --offload)")
flags.DEFINE_integer("group_size", None, "layers per streamed group (default: from device memory)")
flags.DEFINE_integer("chunk_batches", 4, "batches per streamed chunk (each group is moved once per chunk)")
flags.DEFINE_enum("dtype", None, ["float32", "bfloat16", "float16"], "compute dtype of the collections "
                  "(default: stored)")
flags.DEFINE_float("flush_every_s", 300.0, "commit statistics at least this often (seconds)")

cli.define_lock_flag()
cli.define_heap_flag()


def main(argv):
    del argv
    cli.headless_figures()
    from analyses import report
    from analyses.study import example_contexts, run_study

    return cli.run(lambda: run_study(FLAGS.out, FLAGS.model, FLAGS.corpus, FLAGS.names, seq_len=FLAGS.seq_len,
                                     batch_size=FLAGS.batch_size, max_tokens=FLAGS.max_tokens or None,
                                     ngram_orders=[int(k) for k in FLAGS.ngram_orders], analyses=FLAGS.analyses,
                                     overwrite=FLAGS.overwrite, compare_domains=FLAGS.domains, atlas=FLAGS.atlas,
                                     causal=FLAGS.causal, causal_tokens=FLAGS.causal_tokens or None,
                                     device_memory_gb=FLAGS.device_memory_gb,
                                     collect_options=dict(offload=FLAGS.offload, group_size=FLAGS.group_size,
                                                          chunk_batches=FLAGS.chunk_batches, dtype=FLAGS.dtype,
                                                          flush_every_s=FLAGS.flush_every_s),
                                     wait_for_lock=FLAGS.wait_for_lock),
                   lambda result: f"{report.summary(result)}\n{example_contexts(result)}\n"
                                  f"report, figures and tables: {FLAGS.out}/report/"
                                  + (f"\natlas: {FLAGS.out}/atlas/index.html" if FLAGS.atlas else ""),
                   devices=True, keep_freed_memory=FLAGS.keep_freed_memory, streamed=FLAGS.offload)


if __name__ == "__main__":
    app.run(main)
