"""The neurons that fire on a text, token by token and layer by layer, with their atlas labels.

  python scripts/fired.py --model opt_jax/shipped_models/stdlib-4l --text "def f(x):" --atlas out/atlas
A text longer than the model's positions is refused (split it); --atlas may also be a statistics directory.
"""

from absl import app, flags

from opt_jax import cli

FLAGS = flags.FLAGS
flags.DEFINE_string("model", None, "converted model directory", required=True)
flags.DEFINE_string("text", None, "the text to run", required=True)
flags.DEFINE_string("atlas", None, "an atlas folder (scripts/atlas.py) or a statistics directory, for the neurons' "
                    "labels and the collected layers (default: every layer, no labels)")
flags.DEFINE_list("layers", None, "only these layers (default: the collected ones)")
flags.DEFINE_string("dtype", None, "compute dtype (float32, bfloat16, float16; default: the stored one)")
flags.DEFINE_integer("top", 5, "neurons shown per token and layer, strongest first")


def main(argv):
    del argv
    from analyses.neurons.fired import fired, format_fired

    layers = [int(l) for l in FLAGS.layers] if FLAGS.layers else None
    return cli.run(lambda: fired(FLAGS.model, FLAGS.text, atlas=FLAGS.atlas, layers=layers, dtype=FLAGS.dtype),
                   lambda tokens: format_fired(tokens, FLAGS.top), devices=FLAGS.model)


if __name__ == "__main__":
    app.run(main)
