"""Convert an HF OPT checkpoint into an opt_jax checkpoint.

  python scripts/convert.py --size 66b --out converted/opt-66b        # facebook/opt-66b from the HF cache
  python scripts/convert.py --hf_path /path/to/checkpoint --out DIR   # any local HF checkpoint directory
"""

from absl import app, flags

import opt_jax
from opt_jax import cli

FLAGS = flags.FLAGS
flags.DEFINE_string("size", None, f"OPT size, resolved as facebook/opt-SIZE in the HF cache: {', '.join(opt_jax.SIZES)}")
flags.DEFINE_string("hf_path", None, "a local HF checkpoint directory (instead of --size)")
flags.DEFINE_string("out", None, "output directory (default: converted/opt-SIZE)")
flags.DEFINE_enum("dtype", None, ["float32", "bfloat16", "float16"], "stored dtype (default: the source's)")
flags.DEFINE_string("cache_dir", None, "Hugging Face hub cache directory (default: HF_HUB_CACHE)")
flags.DEFINE_bool("overwrite", False, "replace an existing converted checkpoint of another source")
cli.define_lock_flag()


def main(argv):
    del argv
    if (FLAGS.size is None) == (FLAGS.hf_path is None):
        raise app.UsageError("give exactly one of --size and --hf_path")
    out = FLAGS.out or (f"converted/opt-{FLAGS.size}" if FLAGS.size else None)
    if out is None:
        raise app.UsageError("--out is required with --hf_path")
    return cli.run(lambda: opt_jax.convert(FLAGS.hf_path or FLAGS.size, out, dtype=FLAGS.dtype,
                                           cache_dir=FLAGS.cache_dir, overwrite=FLAGS.overwrite,
                                           wait_for_lock=FLAGS.wait_for_lock),
                   lambda path: f"converted checkpoint: {path}")


if __name__ == "__main__":
    app.run(main)
