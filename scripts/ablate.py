"""Zero-ablate (or set, or scale) sets of FFN neurons and measure the change of the next-token loss.

  python scripts/ablate.py --model converted/opt-125m --corpus val.jsonl --neurons detectors:stats/opt-125m \
      --neurons match:detectors:stats/opt-125m --out ablations/detectors
  python scripts/ablate.py ... --neurons 3:117,5:20 --edit set:2.5      # set two neurons to 2.5
SPEC: L:N,L:N,... | dead:STATS | detectors:STATS | trigram-detectors:STATS | positional:STATS |
random:K[:LAYERS] | match:SPEC | file:PATH (see analyses/interventions/spec.py). Several --neurons share one
pass. Writes OUT/ablation.json, ablation.csv, by_position.csv, triggers.csv (token detectors) and ablation.png.
"""

from absl import app, flags

from opt_jax import cli

FLAGS = flags.FLAGS
flags.DEFINE_string("model", None, "converted opt_jax checkpoint directory", required=True)
flags.DEFINE_multi_string("corpus", None, cli.CORPUS_HELP, required=True)
flags.DEFINE_multi_string("neurons", None, "a neuron set SPEC (repeat for several sets in one pass)", required=True)
flags.DEFINE_string("out", None, "output directory", required=True)
flags.DEFINE_string("edit", "zero", "what is done to the neurons: zero, set:VALUE or scale:FACTOR")
flags.DEFINE_integer("seq_len", 2048, "tokens per window (BOS + seq_len - 1 document tokens), as collection cuts them")
flags.DEFINE_integer("max_tokens", None, "stop after this many tokens of the window stream")
flags.DEFINE_integer("skip_windows", 0, "skip the first windows (e.g. those a statistics run saw: held-out text)")
flags.DEFINE_bool("full_length_only", False, "keep only windows of exactly seq_len tokens (as collect's flag)")
flags.DEFINE_integer("batch_size", 8, "windows per batch (divisible by the local device count)")
flags.DEFINE_enum("dtype", None, ["float32", "bfloat16", "float16"], "compute dtype (default: stored)")
flags.DEFINE_bool("offload", False, "stream the weights a layer group at a time (66b on one GPU)")
flags.DEFINE_string("mesh", None, "data=A,neurons=B (A x B = the local devices): batches over A devices, each "
                    "layer's weights and neurons over B (docs/collection.md, 'Several devices'); default: all on data")
flags.DEFINE_integer("group_size", None, "layers per streamed group (default: from device memory)")
flags.DEFINE_integer("seed", 0, "seed of random and matched sets and of the bootstrap")
flags.DEFINE_string("stats", None, "statistics whose alive neurons random:/match: sets draw from (default: the "
                    "first STATS a --neurons names; with none, every neuron)")
flags.DEFINE_string("text_key", "text", cli.TEXT_KEY_HELP)

cli.define_lock_flag()
cli.define_heap_flag()


def main(argv):
    del argv
    cli.headless_figures()
    import analyses

    return cli.run(lambda: analyses.ablate(
        FLAGS.model, FLAGS.corpus, FLAGS.neurons, FLAGS.out, seq_len=FLAGS.seq_len, max_tokens=FLAGS.max_tokens,
        batch_size=FLAGS.batch_size, dtype=FLAGS.dtype, offload=FLAGS.offload, seed=FLAGS.seed, edit=FLAGS.edit,
        skip_windows=FLAGS.skip_windows, alive_from=FLAGS.stats, text_key=FLAGS.text_key,
        full_length_only=FLAGS.full_length_only,
        group_size=FLAGS.group_size, mesh=FLAGS.mesh, wait_for_lock=FLAGS.wait_for_lock), lambda r: _summary(r, FLAGS.out),
        devices=FLAGS.model, keep_freed_memory=FLAGS.keep_freed_memory,
        streamed=FLAGS.offload)


def _summary(result: dict, out: str) -> str:
    lines = [f"base loss {result['base_loss']:.4f} nats over {result['tokens']:,} predictions "
             f"({result['windows']:,} windows); edit: {result['edit']}"]
    for v in result["variants"]:
        low, high = v["interval"]
        lines.append(f"  {v['spec']}: {v['neurons']} neurons, loss {v['ablated_loss']:.4f}, change "
                     f"{v['change']:+.5f} [{low:+.5f}, {high:+.5f}], KL {v['kl']:.5f}")
        if "against_control" in v:
            c = v["against_control"]
            lines.append(f"    minus its control {c['control']}: {c['difference']:+.5f} "
                         f"[{c['interval'][0]:+.5f}, {c['interval'][1]:+.5f}]")
    return "\n".join(lines + [f"ablation: {out}/ablation.json"])


if __name__ == "__main__":
    app.run(main)
