"""Bulk export of a statistics directory: neuron facts and example activations as tables for pandas, duckdb or
Hugging Face datasets (docs/formats.md, "Export").

  python scripts/export.py --stats out/stats/opt-125m --out out/export
  python scripts/export.py --stats stats/opt-125m --atlas atlas/ --attribution stats/opt-125m-attribution \
      --out export/ --format jsonl
OUT/facts/layer-LLL.parquet (one row per neuron), OUT/examples/layer-LLL.parquet (one row per example) and
OUT/export.json (the source, the files and every column).
"""

from absl import app, flags

from opt_jax import cli

FLAGS = flags.FLAGS
flags.DEFINE_string("stats", None, "statistics directory written by scripts/collect.py", required=True)
flags.DEFINE_string("out", None, "the export folder (facts/, examples/, export.json)", required=True)
flags.DEFINE_enum("format", "parquet", ["parquet", "jsonl"], "table file format")
flags.DEFINE_string("atlas", None, "an atlas built from --stats (scripts/atlas.py): its labels, effects and "
                    "promoted / suppressed tokens go into the facts")
flags.DEFINE_string("attribution", None, "the attribution of the same model (scripts/attribute.py): each neuron's "
                    "estimated effect of ablating it")
flags.DEFINE_string("model_dir", None, "converted model directory, for token texts (default: the one the store's "
                    "manifest records)")
flags.DEFINE_list("layers", None, "export only these collected layers (default: all)")

cli.define_lock_flag()


def main(argv):
    from analyses.neurons.export import export

    layers = [int(l) for l in FLAGS.layers] if FLAGS.layers else None
    return cli.run(lambda: export(FLAGS.stats, FLAGS.out, FLAGS.format, atlas=FLAGS.atlas,
                                  attribution=FLAGS.attribution, model_dir=FLAGS.model_dir, layers=layers,
                                  wait_for_lock=FLAGS.wait_for_lock),
                   lambda out: f"export: {out}/export.json")


if __name__ == "__main__":
    app.run(main)
