"""Train an OPT-architecture model from scratch, with or without positional embeddings (resumable).

  python scripts/train.py --out runs/small --layers 4 --hidden 256 --heads 4 --ffn 1024 --seq_len 128 \\
      --steps 3000 --save_steps 500,1500                         # corpus: the Python standard library
  python scripts/train.py --out runs/small-nopos --no_positional ...      # the twin without positions
  python scripts/train.py --out runs/125m --size 125m --corpus owt.jsonl.zst --tokenizer converted/opt-125m
  # killed, the same command resumes; each step-N/ is a checkpoint for opt_jax.load and scripts/collect.py
"""

from absl import app, flags

from opt_jax import cli

FLAGS = flags.FLAGS
flags.DEFINE_string("out", None, "run directory (snapshots step-N/, resume state, log.jsonl)", required=True)
flags.DEFINE_multi_string("corpus", None, cli.CORPUS_HELP + "; default: the running Python's standard library")
flags.DEFINE_string("tokenizer", None, "fast tokenizer directory (default: train a byte-level BPE of --vocab "
                    "tokens on the corpus into OUT/tokenizer)")
flags.DEFINE_string("size", None, "published OPT shape to start from (125m, 350m, ...; default 125m's)")
flags.DEFINE_integer("layers", None, "decoder layers")
flags.DEFINE_integer("hidden", None, "hidden size")
flags.DEFINE_integer("heads", None, "attention heads")
flags.DEFINE_integer("ffn", None, "FFN neurons per layer")
flags.DEFINE_integer("vocab", None, "vocabulary size (default: 4096, or the --tokenizer's size)")
flags.DEFINE_integer("max_positions", None, "positions of the model (default: --seq_len)")
flags.DEFINE_bool("no_positional", False, "no positional embeddings at all (not exportable to HF)")
flags.DEFINE_integer("seq_len", 128, "tokens per window (BOS + seq_len - 1 document tokens)")
flags.DEFINE_integer("batch_size", 32, "windows per step (divisible by the local device count)")
flags.DEFINE_integer("steps", 1000, "optimizer steps")
flags.DEFINE_float("lr", 1e-3, "peak learning rate")
flags.DEFINE_integer("warmup_steps", 100, "linear warmup steps (then cosine decay)")
flags.DEFINE_float("end_lr_fraction", 0.1, "final learning rate as a fraction of --lr")
flags.DEFINE_float("weight_decay", 0.1, "AdamW weight decay (weight matrices and embeddings)")
flags.DEFINE_float("clip_norm", 1.0, "global gradient norm clipping")
flags.DEFINE_integer("seed", 0, "initialisation and data order")
flags.DEFINE_integer("shuffle_windows", 1024, "windows permuted together (1: corpus order)")
flags.DEFINE_enum("compute_dtype", "float32", ["float32", "bfloat16", "float16"], "forward/backward dtype")
flags.DEFINE_list("save_steps", [], "steps with a snapshot OUT/step-N (the last step always has one)")
flags.DEFINE_enum("save_dtype", "float32", ["float32", "bfloat16", "float16"], "snapshot dtype")
flags.DEFINE_bool("export_hf", True, "also export each snapshot to OUT/step-N/hf (models with positions)")
flags.DEFINE_float("save_every_s", 600.0, "commit a resume state at least this often (seconds)")
flags.DEFINE_integer("log_every", 10, "steps per log line (stderr and OUT/log.jsonl)")
flags.DEFINE_string("text_key", "text", cli.TEXT_KEY_HELP)
flags.DEFINE_bool("overwrite", False, "replace a training run of other settings in --out")

cli.define_lock_flag()


def main(argv):
    del argv
    from opt_jax import train

    def run_training():
        config = train.model_config(
            FLAGS.size, layers=FLAGS.layers, hidden=FLAGS.hidden, heads=FLAGS.heads, ffn=FLAGS.ffn,
            vocab_size=FLAGS.vocab or train.tokenizer_size(FLAGS.tokenizer) or 4096,
            max_positions=FLAGS.max_positions or FLAGS.seq_len, positional=not FLAGS.no_positional)
        options = train.TrainOptions(
            seq_len=FLAGS.seq_len, batch_size=FLAGS.batch_size, steps=FLAGS.steps, lr=FLAGS.lr,
            warmup_steps=FLAGS.warmup_steps, end_lr_fraction=FLAGS.end_lr_fraction,
            weight_decay=FLAGS.weight_decay, clip_norm=FLAGS.clip_norm, seed=FLAGS.seed,
            shuffle_windows=FLAGS.shuffle_windows, compute_dtype=FLAGS.compute_dtype, text_key=FLAGS.text_key,
            save_steps=tuple(int(s) for s in FLAGS.save_steps), save_dtype=FLAGS.save_dtype,
            export_hf=FLAGS.export_hf, save_every_s=FLAGS.save_every_s, log_every=FLAGS.log_every,
            overwrite=FLAGS.overwrite)
        return train.train(FLAGS.out, config, options, corpus=FLAGS.corpus, tokenizer=FLAGS.tokenizer,
                           wait_for_lock=FLAGS.wait_for_lock)

    return cli.run(run_training, lambda out: f"trained: {out}", devices=True)


if __name__ == "__main__":
    app.run(main)
