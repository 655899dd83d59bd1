"""The neuron atlas of one or more statistics directories: a static folder with a page per neuron.

  python scripts/atlas.py --stats out/stats/stdlib-4l out/stats/stdlib-4l-nopos --out out/atlas
  python scripts/atlas.py --stats opt-125m=stats/opt-125m --out atlas/ --layers 0,1
  python scripts/atlas.py --stats opt-125m=stats/opt-125m --attribution opt-125m=stats/opt-125m-attribution ...
  python scripts/atlas.py --stats opt-66b=stats/opt-66b --out atlas/ --context 8,2 --band_examples 2 --curve_points 256  # smaller
Open OUT/index.html in a browser (no server needed), or host the folder as plain files.
"""

from absl import app, flags

from opt_jax import cli

FLAGS = flags.FLAGS
flags.DEFINE_multi_string("stats", None, "statistics directories written by scripts/collect.py, each DIR or "
                          "NAME=DIR", required=True)
flags.DEFINE_string("out", None, "the atlas folder (index.html and data/)", required=True)
flags.DEFINE_list("names", None, "model names, one per unlabelled --stats (default: the directories' names)")
flags.DEFINE_multi_string("model_dirs", None, "converted model directory of each --stats (default: the one its "
                          "manifest records); needed for token texts and promoted / suppressed tokens")
flags.DEFINE_list("layers", None, "build only these collected layers (default: all)")
flags.DEFINE_integer("block", 128, "neurons per data file of full neuron records")
flags.DEFINE_multi_string("attribution", None, "NAME=DIR: the attribution of model NAME (scripts/attribute.py, "
                          "of the same model), shown as each neuron's estimated effect of ablating it; or plain "
                          "DIRs, one per --stats in order")
flags.DEFINE_integer("related_depth", 2, "layers downstream and upstream searched for each neuron's related neurons "
                     "through the weights (0: none)")
flags.DEFINE_list("context", ["12", "4"], "BEFORE,AFTER: tokens of context kept around each example's token (the "
                  "size of every example record; docs/atlas.md, 'Size')")
flags.DEFINE_integer("curve_points", 512, "most points of a neuron's positional curve (a longer one is shown as "
                     "means over bins of positions)")
flags.DEFINE_integer("band_examples", None, "examples kept per quantile band of a store with quantile examples "
                     "(default: all K it holds; 0: no quantile bands)")

cli.define_lock_flag()


def context_flag(values: list[str]) -> tuple[int, int]:
    """(before, after) of --context BEFORE,AFTER."""
    from opt_jax.errors import InputError

    try:
        before, after = (int(v) for v in values)
    except ValueError:
        raise InputError(f"--context takes BEFORE,AFTER, two whole numbers, got {','.join(values)!r}") from None
    return before, after


def main(argv):
    from analyses.neurons.atlas import build_atlas
    from analyses.report import label_of

    stats = FLAGS.stats + argv[1:]
    layers = [int(l) for l in FLAGS.layers] if FLAGS.layers else None
    attributions = FLAGS.attribution
    if attributions and all(label_of(a)[0] is not None for a in attributions):
        attributions = dict(label_of(a) for a in attributions)  # by model name; else one per --stats, in order

    def build():
        before, after = context_flag(FLAGS.context)
        return build_atlas(stats, FLAGS.out, names=FLAGS.names, model_dirs=FLAGS.model_dirs, block=FLAGS.block,
                           layers=layers, attributions=attributions, related_depth=FLAGS.related_depth,
                           before=before, after=after, per_band=FLAGS.band_examples, curve_points=FLAGS.curve_points,
                           wait_for_lock=FLAGS.wait_for_lock)

    return cli.run(build,
                   lambda out: f"atlas: {out}/index.html", devices=True)


if __name__ == "__main__":
    app.run(main)
