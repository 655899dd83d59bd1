"""Read every chunk of a statistics store, a converted checkpoint or an atlas and report what is damaged.

  python scripts/verify.py stats/opt-125m converted/opt-125m atlas/

Checks checksums, recorded chunk files, shapes and the counts against each other (`analyses.verify`); prints a
line a problem and a verdict per directory; exits 1 when any directory has a problem (or is none of the three).
"""

from absl import app, flags

from opt_jax import cli

FLAGS = flags.FLAGS
flags.DEFINE_bool("quiet", False, "no progress lines, only the problems and the verdicts")


def main(argv):
    from analyses.verify import summary, verify

    directories = argv[1:]
    if not directories:
        raise app.UsageError("name one or more directories to verify")
    status = 0
    for directory in directories:
        reports = []
        status = max(status, cli.run(lambda: reports.append(verify(directory, verbose=not FLAGS.quiet))
                                     or reports[-1], summary))
        if reports and not reports[-1].ok:
            status = 1
    return status


if __name__ == "__main__":
    app.run(main)
