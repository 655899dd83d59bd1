"""The dead and positional analyses at scale, on a synthetic statistics store of an OPT shape.

  python scripts/benchmark_analyses.py --size 66b --dir /tmp/opt_jax_scale_66b
  python scripts/benchmark_analyses.py --commit_speed      # statistics commits, overlapped writes vs not
Writes the store once (reused when present), then runs a read-only pass and the analyses, each in a
fresh process, and prints time and peak RSS with ratios against the read-only pass.
"""

from absl import app, flags

FLAGS = flags.FLAGS
flags.DEFINE_string("size", "66b", "OPT size whose shape the store takes")
flags.DEFINE_integer("layers", None, "override the number of layers (e.g. a quick partial run)")
flags.DEFINE_integer("seq_len", 2048, "positions")
flags.DEFINE_integer("sequences", 1000, "full-length sequences the synthetic counts stand for")
flags.DEFINE_integer("positional", 64, "planted strong oscillatory neurons per layer")
flags.DEFINE_string("dir", None, "where the synthetic store lives (default /tmp/opt_jax_scale_SIZE)")
flags.DEFINE_bool("commit_speed", False, "instead: time store commits with and without overlapped block writes")


def main(argv):
    del argv
    import os

    from benchmarks import scale
    from analyses.collection.store import StatsError, open_stats
    from opt_jax.config import for_size

    config = for_size(FLAGS.size)
    if FLAGS.layers:
        config = config.replace(num_hidden_layers=FLAGS.layers)
    root = FLAGS.dir or f"/tmp/opt_jax_scale_{FLAGS.size}"
    if FLAGS.commit_speed:
        print(scale.commit_speed(root + "_commits"))
        return
    try:
        reuse = open_stats(root).pos_act.shape == (config.num_hidden_layers, FLAGS.seq_len, config.ffn_dim)
    except StatsError:
        reuse = False
    if not reuse:
        scale.write_synthetic_stats(root, config, FLAGS.seq_len, FLAGS.sequences, FLAGS.positional)
    print(scale.table(scale.measure(root), root))
    print(f"(store kept in {os.path.abspath(root)})")


if __name__ == "__main__":
    app.run(main)
