"""Train an OPT-architecture model from scratch, with or without positional embeddings; resumable.

The data is the collection's: `opt_jax.corpus.Corpus` windows (BOS + seq_len - 1 document
tokens), read epoch after epoch, each block of `shuffle_windows` windows permuted by a
generator seeded with (seed, epoch, block). So the batch of every step is a function of the
corpus, the tokenizer and the flags alone, and the cursor (epoch, window) says where a resumed
run picks up. The only other randomness is the initialisation (`init_params(config, seed)`):
there is no dropout, so a resume state needs no generator state.

The loss is next-token cross entropy in float32 over real targets; AdamW with linear warmup,
cosine decay and global-norm clipping (optax). The step is jitted with the parameters and
optimizer state replicated and the batch split over all local devices.

The output directory:

    train.json            the run: identity (config, flags, corpus and tokenizer fingerprints),
                          step, data cursor, the committed resume state, snapshots; replaced atomically
    log.jsonl             every log_every steps: step, mean loss, grad norm, learning rate, tokens
    resume/<N>/           parameters and optimizer state after step N (orbax `CheckpointManager`)
    step-<N>/             a converted opt_jax checkpoint (`opt_jax.load`, `scripts/collect.py --model`)
                          with the tokenizer; `hf/` inside for models with positional embeddings
    corpus/stdlib.jsonl   the default corpus (`opt_jax.stdlib_corpus`)
    tokenizer/            the default tokenizer, trained on the corpus (`opt_jax.tokenizer`)

A resume state is written by orbax's `CheckpointManager` (a temporary directory, finalised by a
rename once complete; the last `KEEP_RESUME_STATES` kept), then named in `train.json` (the commit
point). A run killed at any moment and started again with the same arguments discards the states
`train.json` does not reach, continues from its last commit and ends with the parameters of an
uninterrupted run. When it finishes, the resume states are removed and `train.json` says complete.
"""

from opt_jax.errors import TrainError
from opt_jax.train.data import epoch_windows, training_batches
from opt_jax.train.loop import train
from opt_jax.train.options import IDENTITY, TrainOptions, model_config
from opt_jax.train.rundir import LOG, RECORD, RESUME_DIR, resolve_corpus, resolve_tokenizer, tokenizer_size
from opt_jax.train.snapshots import KEEP_RESUME_STATES, ResumeStates, write_snapshot
from opt_jax.train.step import State, Trainer, decay_mask, initial_params, learning_rate, loss_fn, make_optimizer

__all__ = ["IDENTITY", "KEEP_RESUME_STATES", "LOG", "RECORD", "RESUME_DIR", "ResumeStates", "State", "TrainError",
           "TrainOptions", "Trainer", "decay_mask", "epoch_windows", "initial_params", "learning_rate", "loss_fn",
           "make_optimizer", "model_config", "resolve_corpus", "resolve_tokenizer", "tokenizer_size", "train",
           "training_batches", "write_snapshot"]
