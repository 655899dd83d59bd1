"""Join the runs of one model (split by --token_layers) into one statistics store that every tool reads as one model.

  python scripts/join_stats.py --parts stats/66b-a,stats/66b-b,stats/66b-c --out stats/66b

The parts: complete runs of one converted model over the same corpus with the same window flags, differing in
--token_layers, --max_layers, n-gram orders or candidates, and --examples. The joined store hard-links the parts'
chunk files (nothing large is copied; --out must be on their file system); `analyses.collection.join` says what
is checked and taken from where.
"""

import glob

from absl import app, flags

import analyses
from opt_jax import cli

FLAGS = flags.FLAGS
flags.DEFINE_list("parts", None, "statistics directories of the runs (globs allowed), in any order", required=True)
flags.DEFINE_string("out", None, "joined statistics directory (on the parts' file system)", required=True)
flags.DEFINE_bool("overwrite", False, "replace other statistics in --out (a join of the same parts is replaced "
                  "without it)")
flags.DEFINE_bool("quiet", False, "no progress lines")

cli.define_lock_flag()


def main(argv):
    parts = [p for pattern in FLAGS.parts + argv[1:] for p in (sorted(glob.glob(pattern)) or [pattern])]
    return cli.run(lambda: analyses.join_stats(parts, FLAGS.out, overwrite=FLAGS.overwrite, verbose=not FLAGS.quiet,
                                               wait_for_lock=FLAGS.wait_for_lock),
                   lambda path: f"joined {len(parts)} runs into {path}")


if __name__ == "__main__":
    app.run(main)
