"""Train a byte-level BPE tokenizer with OPT's special tokens (<s>=0, <pad>=1, </s>=2, <unk>=3) on a corpus.

  python scripts/train_tokenizer.py --out tokenizers/stdlib-4096            # the Python standard library
  python scripts/train_tokenizer.py --out tok --corpus docs.jsonl.zst --vocab 8192
  # then: scripts/train.py --tokenizer tokenizers/stdlib-4096 ...; AutoTokenizer.from_pretrained(OUT) loads it
"""

from absl import app, flags

from opt_jax import cli

FLAGS = flags.FLAGS
flags.DEFINE_string("out", None, "tokenizer directory to write", required=True)
flags.DEFINE_multi_string("corpus", None, cli.CORPUS_HELP + "; default: the running Python's standard library")
flags.DEFINE_integer("vocab", 4096, "vocabulary size, special and byte tokens included")
flags.DEFINE_string("text_key", "text", cli.TEXT_KEY_HELP)


def main(argv):
    del argv
    from opt_jax import stdlib_corpus
    from opt_jax.corpus import corpus_fingerprint, expand_paths, iter_documents
    from opt_jax.tokenizer import train_tokenizer

    def run_training():
        if FLAGS.corpus:
            files = expand_paths(FLAGS.corpus)
            documents = iter_documents(files, FLAGS.text_key)
            record = {"corpus_fingerprint": corpus_fingerprint(files), "text_key": FLAGS.text_key}
        else:
            documents = (d["text"] for d in stdlib_corpus.documents())
            record = {"stdlib": stdlib_corpus.describe()}
        return train_tokenizer(documents, FLAGS.vocab, FLAGS.out, record)

    return cli.run(run_training, lambda out: f"tokenizer: {out}")


if __name__ == "__main__":
    app.run(main)
