"""Estimate every FFN neuron's zero-ablation effect at once (activation x gradient of the next-token loss).

  python scripts/attribute.py --model converted/opt-125m --corpus val.jsonl.zst --out stats/opt-125m-attribution
  python scripts/attribute.py ... --offload --group_size 8          # layer groups streamed, forward then back
Writes OUT/effect (zarr3 float64 [layers, ffn]: the estimated change of the mean loss, nats per token, when
zero-ablating each neuron alone) and OUT/attribution.json; `analyses.read_attribution(OUT)` reads them.
"""

from absl import app, flags

from opt_jax import cli

FLAGS = flags.FLAGS
flags.DEFINE_string("model", None, "converted opt_jax checkpoint directory", required=True)
flags.DEFINE_multi_string("corpus", None, cli.CORPUS_HELP,
                          required=True)
flags.DEFINE_string("out", None, "attribution directory (replaced when it holds an attribution)", required=True)
flags.DEFINE_integer("seq_len", 2048, "tokens per window (BOS + seq_len - 1 document tokens), as collection cuts")
flags.DEFINE_integer("batch_size", 8, "windows per batch (divisible by the local device count)")
flags.DEFINE_integer("max_tokens", None, "stop as collection stops after this many tokens of the window stream")
flags.DEFINE_enum("dtype", None, ["float32", "bfloat16", "float16"], "compute dtype (default: stored)")
flags.DEFINE_bool("offload", False, "stream the weights a layer group at a time: forward through the groups, "
                  "then back through them in reverse, recomputing each group's forward")
flags.DEFINE_integer("group_size", None, "layers per streamed group (default: from device memory)")
flags.DEFINE_integer("chunk_batches", 4, "batches per streamed chunk (each group is moved twice per chunk)")
flags.DEFINE_string("text_key", "text", cli.TEXT_KEY_HELP)

cli.define_lock_flag()
cli.define_heap_flag()


def main(argv):
    del argv
    import analyses

    return cli.run(lambda: analyses.attribute(
            FLAGS.model, FLAGS.corpus, FLAGS.out, seq_len=FLAGS.seq_len, batch_size=FLAGS.batch_size,
            max_tokens=FLAGS.max_tokens, dtype=FLAGS.dtype, offload=FLAGS.offload, group_size=FLAGS.group_size,
            chunk_batches=FLAGS.chunk_batches, text_key=FLAGS.text_key, wait_for_lock=FLAGS.wait_for_lock),
        lambda path: f"attribution: {path}", devices=FLAGS.model, keep_freed_memory=FLAGS.keep_freed_memory,
        streamed=FLAGS.offload)


if __name__ == "__main__":
    app.run(main)
