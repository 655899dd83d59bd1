"""The run directory: what it may hold, the corpus and tokenizer a run uses, its record `train.json` (identity,
step, cursor, the committed resume state; the commit point) and its log `log.jsonl`."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence

import jax
import numpy as np

from opt_jax import atomic
from opt_jax import lock
from opt_jax import stdlib_corpus
from opt_jax import tokenizer as tokenization
from opt_jax.config import OPTConfig
from opt_jax.corpus import Corpus, corpus_fingerprint, iter_documents
from opt_jax.errors import TrainError
from opt_jax.progress import Progress
from opt_jax.train.options import IDENTITY, TrainOptions
from opt_jax.train.step import State


FORMAT = "opt_jax.train"


VERSION = 1


RECORD = "train.json"


LOG = "log.jsonl"


RESUME_DIR = "resume"


_OUTPUTS = (RECORD, LOG, RESUME_DIR, "corpus", "tokenizer")


def _check_out_dir(out_dir: str, overwrite: bool) -> None:
    """Refuse an output directory that holds something other than a training run's files."""
    if not os.path.isdir(out_dir) or overwrite or os.path.isfile(os.path.join(out_dir, RECORD)):
        return
    foreign = sorted(n for n in lock.entries(out_dir) if n not in _OUTPUTS and not n.startswith("step-"))
    if foreign:
        raise TrainError(f"{out_dir}: is not a training run's directory (it holds {foreign[:3]}); "
                         "choose another --out or pass --overwrite")


def resolve_corpus(corpus: Sequence[str] | None, out_dir: str) -> list[str]:
    """The corpus paths; none (or ['stdlib']) means the standard library, written to out_dir/corpus/."""
    if corpus is None or list(corpus) in ([], [stdlib_corpus.NAME]):
        return [stdlib_corpus.write_jsonl(os.path.join(out_dir, "corpus", "stdlib.jsonl"))]
    return list(corpus)


def resolve_tokenizer(tokenizer: str | None, out_dir: str, files: list[str], vocab_size: int,
                      text_key: str, overwrite: bool = False) -> str:
    """The tokenizer directory: the one given, or out_dir/tokenizer trained on the corpus (kept if current).

    The tokenizer of an existing run is never replaced without overwrite.
    """
    if tokenizer:
        return os.path.abspath(tokenizer)
    target = os.path.join(out_dir, "tokenizer")
    wanted = {"corpus_fingerprint": corpus_fingerprint(files), "text_key": text_key, "vocab_size": vocab_size}
    if tokenization.read_record(target) != wanted:
        if os.path.isfile(os.path.join(out_dir, RECORD)) and not overwrite:
            raise TrainError(f"{target}: the run's tokenizer was trained for another corpus or vocabulary "
                             f"({_difference(tokenization.read_record(target), wanted)}); use another --out "
                             "or pass --overwrite")
        record = {k: v for k, v in wanted.items() if k != "vocab_size"}
        tokenization.train_tokenizer(iter_documents(files, text_key), vocab_size, target, record)
    return target


def tokenizer_size(tokenizer_dir: str | None) -> int | None:
    """How many tokens the tokenizer in tokenizer_dir has (None for no directory)."""
    if not tokenizer_dir:
        return None
    from transformers import AutoTokenizer

    tokenization.fingerprint(tokenizer_dir)  # a clear error when tokenizer.json is missing
    return len(AutoTokenizer.from_pretrained(tokenizer_dir))


def _load_tokenizer(tokenizer_dir: str, config: OPTConfig):
    """The tokenizer, checked against the config's special ids and vocabulary."""
    from transformers import AutoTokenizer

    tokenization.fingerprint(tokenizer_dir)  # a clear error when tokenizer.json is missing
    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    if (tok.bos_token_id, tok.pad_token_id) != (config.bos_token_id, config.pad_token_id):
        raise TrainError(f"{tokenizer_dir}: BOS/pad ids {tok.bos_token_id}/{tok.pad_token_id} differ from the "
                         f"model's {config.bos_token_id}/{config.pad_token_id}")
    if len(tok) > config.vocab_size:
        raise TrainError(f"{tokenizer_dir}: {len(tok)} tokens do not fit the model's vocab_size {config.vocab_size}")
    return tok


def _identity(config: OPTConfig, options: TrainOptions, data: Corpus, tokenizer_dir: str) -> dict:
    """What must not change between a run and its resumption."""
    return {"config": config.to_dict() | {"positional_embeddings": config.positional_embeddings}, "options": {k: getattr(options, k) for k in IDENTITY},
            "corpus_fingerprint": data.fingerprint(), "tokenizer_fingerprint": tokenization.fingerprint(tokenizer_dir)}


def _open_run(out_dir: str, identity: dict, overwrite: bool) -> dict:
    """The run record of out_dir: the committed one when it matches identity, else a fresh one."""
    path = os.path.join(out_dir, RECORD)
    if os.path.isfile(path) and not overwrite:
        with open(path) as f:
            record = json.load(f)
        for key in identity:
            if record["identity"].get(key) != identity[key]:
                raise TrainError(f"{out_dir}: holds a training run of a different {key} "
                                 f"({_difference(record['identity'].get(key), identity[key])}); "
                                 "use another --out or pass --overwrite")
        if record["state"] is None:
            atomic.remove(os.path.join(out_dir, RESUME_DIR))
        _trim_log(out_dir, record["step"])
        return record
    for name in os.listdir(out_dir):
        if name in (RECORD, LOG, RESUME_DIR) or name.startswith("step-"):
            atomic.remove(os.path.join(out_dir, name))
    return {"format": FORMAT, "version": VERSION, "identity": identity, "step": 0, "tokens": 0,
            "cursor": {"epoch": 0, "window": 0}, "state": None, "snapshots": [], "complete": False}


def _difference(there, now) -> str:
    """'key: old there, new now' for each differing key of two dicts; both values otherwise."""
    if isinstance(there, dict) and isinstance(now, dict):
        keys = [k for k in {**there, **now} if there.get(k) != now.get(k)]
        return "; ".join(f"{k}: {there.get(k)!r} there, {now.get(k)!r} now" for k in keys)
    return f"{there!r} there, {now!r} now"


def _log(out_dir: str, state: State, pending: list[dict], lr: float, progress: Progress,
         since: tuple[float, int], options: TrainOptions) -> None:
    """Append the mean metrics of the steps since the last line to log.jsonl; show progress on stderr.

    since: (time, tokens) at the last line, for the recent tokens/s.
    """
    metrics = jax.device_get(pending)  # waits for the steps to finish
    counts = np.array([m["tokens"] for m in metrics])  # [steps]
    loss = float(np.dot([m["loss"] for m in metrics], counts) / max(counts.sum(), 1))
    line = {"step": state.step, "loss": loss, "grad_norm": float(np.mean([m["grad_norm"] for m in metrics])),
            "lr": lr, "tokens": state.tokens, "epoch": state.cursor["epoch"]}
    atomic.append_line(os.path.join(out_dir, LOG), json.dumps(line))
    if options.verbose:
        elapsed = time.monotonic() - since[0]
        rate = (state.tokens - since[1]) / elapsed if elapsed > 0 else 0.0
        print(f"{progress.line()}, loss {loss:.4f}, grad norm {line['grad_norm']:.3f}, lr {lr:.2e}, "
              f"{rate:,.0f} tokens/s", file=progress.stream, flush=True)


def _trim_log(out_dir: str, step: int) -> None:
    """Drop log lines past the committed step (a killed run logged steps it will redo)."""
    path = os.path.join(out_dir, LOG)
    if not os.path.isfile(path):
        return
    with open(path) as f:
        lines = [line for line in f if line.strip() and json.loads(line)["step"] <= step]
    atomic.write_file(path, lambda f: f.writelines(lines))


def _commit(out_dir: str, record: dict, state: State, state_name: str | None, complete: bool) -> None:
    """Replace train.json (the commit point); orbax keeps the last resume states, older ones go as it writes."""
    record.update(step=state.step, tokens=state.tokens, cursor=state.cursor, state=state_name, complete=complete)
    atomic.write_json(os.path.join(out_dir, RECORD), record)
