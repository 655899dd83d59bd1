"""`train`: open or resume a run, then step, log, snapshot and commit until the last step."""

from __future__ import annotations

import os
import time
from collections.abc import Sequence


from opt_jax import atomic
from opt_jax import disk
from opt_jax import lock
from opt_jax import stdlib_corpus
from opt_jax.config import OPTConfig
from opt_jax.corpus import Corpus, expand_paths
from opt_jax.errors import TrainError
from opt_jax.progress import Progress
from opt_jax.train.data import training_batches
from opt_jax.train.options import TrainOptions, _check_options
from opt_jax.train.rundir import (RESUME_DIR, _check_out_dir, _commit, _identity, _load_tokenizer, _log, _open_run,
                                  resolve_corpus, resolve_tokenizer)
from opt_jax.train.snapshots import ResumeStates, write_snapshot
from opt_jax.train.step import State, Trainer, learning_rate


@lock.writes("out_dir")
def train(out_dir: str, config: OPTConfig, options: TrainOptions = TrainOptions(),
          corpus: Sequence[str] | None = None, tokenizer: str | None = None) -> str:
    """Train a model of this config in out_dir (resuming what is there); returns out_dir.

    corpus: files, directories or globs as for collection (default: the Python standard library);
    tokenizer: a fast tokenizer directory (default: train one of config.vocab_size tokens on the corpus).
    """
    out_dir = os.path.abspath(out_dir)
    _check_options(config, options)
    _check_out_dir(out_dir, options.overwrite)
    os.makedirs(out_dir, exist_ok=True)
    stdlib = corpus is None or list(corpus) in ([], [stdlib_corpus.NAME])
    files = expand_paths(resolve_corpus(corpus, out_dir))
    tokenizer_dir = resolve_tokenizer(tokenizer, out_dir, files, config.vocab_size, options.text_key,
                                      options.overwrite)
    data = Corpus(files, _load_tokenizer(tokenizer_dir, config), options.seq_len, config.bos_token_id,
                  options.text_key)
    data.check_not_empty()
    record = _open_run(out_dir, _identity(config, options, data, tokenizer_dir), options.overwrite)
    record |= {"corpus_files": files, "tokenizer": tokenizer_dir,
               "stdlib": stdlib_corpus.describe() if stdlib else None}
    if record["complete"]:
        atomic.remove(os.path.join(out_dir, RESUME_DIR))  # a run killed right after its last commit left them
        _say(options, f"{out_dir}: already complete ({record['step']} steps)")
        return out_dir
    trainer = Trainer(config, options)
    then = "the last saved state is kept: make room and run the same command again to resume from it"
    with disk.writing(out_dir, TrainError, "training", then), ResumeStates(out_dir) as states:
        if record["state"]:
            states.discard_after(record["state"])  # written before a crash, never committed
            state = trainer.resume(states.restore(record["state"], trainer.template()), record)
        else:
            state = trainer.init()
        if state.step:
            _say(options, f"{out_dir}: resuming at step {state.step} (epoch {state.cursor['epoch']}, "
                          f"window {state.cursor['window']})")
        _loop(trainer, state, data, record, out_dir, tokenizer_dir, states)
    if record["complete"]:
        atomic.remove(os.path.join(out_dir, RESUME_DIR))
    return out_dir


def _say(options: TrainOptions, message: str) -> None:
    if options.verbose:
        print(message, flush=True)


def _loop(trainer: Trainer, state: State, data: Corpus, record: dict, out_dir: str, tokenizer_dir: str,
          states: "ResumeStates") -> None:
    """Train to options.steps, logging, snapshotting and committing resume states on the way."""
    options, config = trainer.options, trainer.config
    stream = training_batches(data, options, config.pad_token_id, state.cursor)
    progress = Progress("train", options.steps, " steps", enabled=False, initial=state.step)
    last_commit, pending, since = time.monotonic(), [], (time.monotonic(), state.tokens)
    schedule = learning_rate(options)
    for ids, mask, cursor in stream:
        pending.append(trainer.run(state, ids, mask, cursor))
        progress.update(1)
        if state.step % options.log_every == 0 or state.step == options.steps:
            _log(out_dir, state, pending, float(schedule(state.step - 1)), progress, since, options)
            pending, since = [], (time.monotonic(), state.tokens)
        final = state.step == options.steps
        if final or state.step in options.save_steps:
            record["snapshots"] = sorted(set(record["snapshots"]) | {f"step-{state.step}"},
                                         key=lambda name: int(name.split("-")[1]))
            write_snapshot(out_dir, state, config, options, tokenizer_dir, record)
        if final:
            _commit(out_dir, record, state, None, complete=True)
            _say(options, f"{out_dir}: trained {state.step} steps, {state.tokens:,} tokens")
            return
        if state.step in options.save_steps or time.monotonic() - last_commit >= options.save_every_s:
            _commit(out_dir, record, state, states.save(state), complete=False)
            last_commit = time.monotonic()
