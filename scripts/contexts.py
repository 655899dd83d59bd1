"""Add every example's context activations to a statistics store: the neuron's fc1 output at each token of a span.

  python scripts/contexts.py --stats stats/opt-125m                    # 32 tokens before, 8 after
  python scripts/contexts.py --stats stats/opt-66b --offload           # stream the weights (66b on one GPU)
  python scripts/contexts.py --stats stats/opt-66b --mesh neurons=8    # 66b resident over 8 GPUs
Runs the model (the manifest's, or --model) over the store's own windows that hold examples, each once; the records
of `open_stats(STATS).examples(layer, neuron, kind)` then carry `context_tokens`, `context_values` and
`context_index` (docs/interventions.md, "Context activations"). Killed, the same command resumes.
"""

from absl import app, flags

from opt_jax import cli

FLAGS = flags.FLAGS
flags.DEFINE_string("stats", None, "statistics directory with example sets (collected with --examples K)",
                    required=True)
flags.DEFINE_string("model", None, "converted opt_jax checkpoint (default: the one the store's manifest names)")
flags.DEFINE_integer("before", 32, "tokens of the span before each example")
flags.DEFINE_integer("after", 8, "tokens of the span after each example")
flags.DEFINE_bool("offload", False, "stream the weights a layer group at a time (66b on one GPU)")
flags.DEFINE_integer("group_size", None, "layers per streamed group (default: from device memory)")
flags.DEFINE_integer("batch_size", None, "windows per batch (default: the collection's)")
flags.DEFINE_integer("chunk_batches", 4, "batches per streamed chunk (each group moves once per chunk)")
flags.DEFINE_float("flush_every_s", 300.0, "seconds between commits (a kill resumes from the last)")
flags.DEFINE_string("mesh", None, "data=A,neurons=B (A x B = the local devices): batches over A devices, each "
                    "layer's weights and the spans over B (docs/collection.md, 'Several devices'); default: one "
                    "device")

cli.define_lock_flag()
cli.define_heap_flag()


def main(argv):
    del argv
    from analyses.collection.contexts import add_contexts

    return cli.run(lambda: add_contexts(
        FLAGS.stats, model=FLAGS.model, before=FLAGS.before, after=FLAGS.after, offload=FLAGS.offload,
        group_size=FLAGS.group_size, batch_size=FLAGS.batch_size, chunk_batches=FLAGS.chunk_batches,
        flush_every_s=FLAGS.flush_every_s, mesh=FLAGS.mesh, wait_for_lock=FLAGS.wait_for_lock), _summary,
        devices=FLAGS.model or _model_of(FLAGS.stats), keep_freed_memory=FLAGS.keep_freed_memory,
        streamed=FLAGS.offload)


def _model_of(stats: str) -> str | None:
    """The model the store's manifest names (None when it cannot be read: the run says why)."""
    from analyses.collection.store import read_manifest
    from opt_jax.errors import OptJaxError

    try:
        return read_manifest(stats).get("model")
    except OptJaxError:
        return None


def _summary(entry: dict) -> str:
    return (f"contexts: {entry['before']} tokens before and {entry['after']} after every example, from "
            f"{entry['windows']:,} windows ({entry['batches']:,} batches of {entry['batch_size']}); largest "
            f"difference of a span's center from its example's value {entry['center_deviation']:.2g}; "
            f"stored in {FLAGS.stats}")


if __name__ == "__main__":
    app.run(main)
