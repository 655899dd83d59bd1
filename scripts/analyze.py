"""The paper's analyses of one or more statistics directories: report.json, figures (PNG) and CSV tables.

  python scripts/analyze.py --stats stats/opt-125m stats/opt-1.3b --out report/
  python scripts/analyze.py --stats stats/opt-125m --out report/ --analyses dead,positional
Every threshold is a flag with the paper's value as default (see --helpfull).
"""

from absl import app, flags

from analyses import report
from opt_jax import cli

FLAGS = flags.FLAGS
flags.DEFINE_multi_string("stats", None, "statistics directories written by scripts/collect.py, each DIR or "
                          "NAME=DIR", required=True)
flags.DEFINE_string("out", None, "output directory for report.json, the figures and the tables", required=True)
flags.DEFINE_list("analyses", list(report.ANALYSES), "analyses to run: " + ",".join(report.ANALYSES))
flags.DEFINE_list("names", None, "model names for figures and the report, one per unlabelled --stats (default: "
                  "the directories' names)")
flags.DEFINE_multi_string("domain", None, "[MODEL:]DOMAIN=DIR: the statistics of MODEL (a --stats name; may be "
                          "left out with one model) collected over one domain's corpus alone; two domains or more "
                          "compare its positional neurons across domains")
flags.DEFINE_multi_string("model", None, "converted model directory of each --stats (default: the one its "
                          "manifest records); needed for token strings and suppression")
flags.DEFINE_multi_string("causal", None, "NAME=DIR: an ablation of the model NAME (scripts/ablate.py or the study's "
                          "OUT/ablation/NAME) whose dead, detector and positional sets the causal claims read")
for _name, _default in report.flat_thresholds().items():
    _help = report.THRESHOLD_HELP[_name]
    if isinstance(_default, bool):
        flags.DEFINE_bool(_name, _default, _help)
    elif isinstance(_default, int):
        flags.DEFINE_integer(_name, _default, _help)
    elif isinstance(_default, float):
        flags.DEFINE_float(_name, _default, _help)
    else:
        flags.DEFINE_list(_name, [str(v) for v in _default], _help)

cli.define_lock_flag()


def main(argv):
    stats = FLAGS.stats + argv[1:]
    cli.headless_figures()
    thresholds = report.thresholds_from_flat({name: FLAGS[name].value for name in report.flat_thresholds()})
    return cli.run(lambda: report.analyze(stats, FLAGS.out, analyses=FLAGS.analyses, names=FLAGS.names,
                                          model_dirs=FLAGS.model, thresholds=thresholds,
                                          domains=report.domain_stores(FLAGS.domain or [], stats, FLAGS.names),
                                          causal=dict(zip(*report.split_labels(FLAGS.causal))) if FLAGS.causal
                                          else None,
                                          wait_for_lock=FLAGS.wait_for_lock),
                   lambda result: f"{report.summary(result)}\nreport: {FLAGS.out}/report.json")


if __name__ == "__main__":
    app.run(main)
