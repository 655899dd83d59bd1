"""Sum the partial statistics of a multi-process collection into one directory.

  python scripts/merge_stats.py --parts stats/run/process-* --out stats/merged
"""

import glob

from absl import app, flags

import analyses
from opt_jax import cli

FLAGS = flags.FLAGS
flags.DEFINE_list("parts", None, "partial statistics directories (globs allowed)", required=True)
flags.DEFINE_string("out", None, "merged statistics directory", required=True)
flags.DEFINE_bool("overwrite", False, "replace existing statistics in --out")

cli.define_lock_flag()


def main(argv):
    parts = sorted({p for pattern in FLAGS.parts + argv[1:] for p in (glob.glob(pattern) or [pattern])})
    return cli.run(lambda: analyses.merge_stats(parts, FLAGS.out, overwrite=FLAGS.overwrite,
                                                wait_for_lock=FLAGS.wait_for_lock),
                   lambda path: f"merged {len(parts)} parts into {path}")


if __name__ == "__main__":
    app.run(main)
