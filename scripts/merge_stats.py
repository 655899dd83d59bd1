"""Sum the partial statistics of a multi-process collection into one directory.

  python scripts/merge_stats.py --parts stats/run/process-* --out stats/merged
"""

import glob
import sys

from absl import app, flags

import analyses

FLAGS = flags.FLAGS
flags.DEFINE_list("parts", None, "partial statistics directories (globs allowed)", required=True)
flags.DEFINE_string("out", None, "merged statistics directory", required=True)
flags.DEFINE_bool("overwrite", False, "replace existing statistics in --out")


def main(argv):
    parts = sorted({p for pattern in FLAGS.parts + argv[1:] for p in (glob.glob(pattern) or [pattern])})
    try:
        path = analyses.merge_stats(parts, FLAGS.out, overwrite=FLAGS.overwrite)
    except analyses.StatsError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"merged {len(parts)} parts into {path}")
    return 0


if __name__ == "__main__":
    app.run(main)
