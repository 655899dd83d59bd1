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

from __future__ import annotations

import dataclasses
import functools
import itertools
import json
import os
import shutil
import time
from collections.abc import Iterator, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from opt_jax import atomic
from opt_jax import checkpoint as ckpt
from opt_jax import stdlib_corpus
from opt_jax import tokenizer as tokenization
from opt_jax.config import OPTConfig, for_size
from opt_jax.hf.config import to_hf_dict
from opt_jax.corpus import Corpus, batches, corpus_fingerprint, expand_paths, iter_documents
from opt_jax.hf.export import export_hf
from opt_jax.model import Params, decoder_layers, embed, flatten, head, init_params, unflatten
from opt_jax.errors import TrainError
from opt_jax.progress import Progress

FORMAT = "opt_jax.train"
VERSION = 1
RECORD = "train.json"
LOG = "log.jsonl"
RESUME_DIR = "resume"
KEEP_RESUME_STATES = 2  # the committed resume state and the one before it


@dataclasses.dataclass(frozen=True)
class TrainOptions:
    """Training flags; those in IDENTITY must match to resume a run."""

    seq_len: int = 128
    batch_size: int = 32
    steps: int = 1000
    lr: float = 1e-3
    warmup_steps: int = 100
    end_lr_fraction: float = 0.1  # the cosine decays to lr * end_lr_fraction at the last step
    weight_decay: float = 0.1  # on weight matrices and embeddings, not on biases or norms
    clip_norm: float = 1.0
    b1: float = 0.9
    b2: float = 0.95
    seed: int = 0  # initialisation and data order
    shuffle_windows: int = 1024  # windows permuted together (1: corpus order)
    compute_dtype: str = "float32"  # parameters stay float32; the forward runs in this dtype
    text_key: str = "text"
    save_steps: tuple[int, ...] = ()  # snapshots (step-N); the last step always gets one
    save_dtype: str = "float32"
    export_hf: bool = True  # an hf/ export in each snapshot, for models with positional embeddings
    save_every_s: float = 600.0  # commit a resume state at least this often
    log_every: int = 10
    overwrite: bool = False
    verbose: bool = True


IDENTITY = ("seq_len", "batch_size", "steps", "lr", "warmup_steps", "end_lr_fraction", "weight_decay",
            "clip_norm", "b1", "b2", "seed", "shuffle_windows", "compute_dtype", "text_key")


def model_config(size: str | None = None, *, layers: int | None = None, hidden: int | None = None,
                 heads: int | None = None, ffn: int | None = None, vocab_size: int = 4096,
                 max_positions: int = 2048, positional: bool = True) -> OPTConfig:
    """A published size's config (default 125m's shape) with any dimension, the vocabulary and positions set."""
    base = for_size(size or "125m")
    fields = dict(vocab_size=vocab_size, max_position_embeddings=max_positions, positional_embeddings=positional)
    if hidden and hidden != base.hidden_size:
        fields |= dict(hidden_size=hidden, word_embed_proj_dim=hidden)
    for name, value in (("num_hidden_layers", layers), ("num_attention_heads", heads), ("ffn_dim", ffn)):
        if value:
            fields[name] = value
    return base.replace(**fields)


# ---------------------------------------------------------------------------------------------
# The run


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
    with ResumeStates(out_dir) as states:
        state = trainer.restore(states, record) if record["state"] else trainer.init()
        if state.step:
            _say(options, f"{out_dir}: resuming at step {state.step} (epoch {state.cursor['epoch']}, "
                          f"window {state.cursor['window']})")
        _loop(trainer, state, data, record, out_dir, tokenizer_dir, states)
    if record["complete"]:
        atomic.remove(os.path.join(out_dir, RESUME_DIR))
    return out_dir


def _check_options(config: OPTConfig, options: TrainOptions) -> None:
    """Refuse flags that cannot make a run."""
    if options.seq_len < 2 or options.seq_len > config.max_position_embeddings:
        raise TrainError(f"seq_len {options.seq_len} must be in [2, max positions {config.max_position_embeddings}]")
    if not 0 <= options.warmup_steps < options.steps:
        raise TrainError(f"warmup_steps {options.warmup_steps} must be below steps {options.steps}")
    beyond = [s for s in options.save_steps if not 0 < s <= options.steps]
    if beyond:
        raise TrainError(f"save_steps {beyond} are outside steps 1..{options.steps}")
    devices = jax.local_device_count()
    if options.batch_size < 1 or options.batch_size % devices:
        raise TrainError(f"batch_size {options.batch_size} is not a positive multiple of the {devices} local devices")
    ckpt.dtype_name(options.save_dtype)
    ckpt.dtype_name(options.compute_dtype)


_OUTPUTS = (RECORD, LOG, RESUME_DIR, "corpus", "tokenizer")


def _check_out_dir(out_dir: str, overwrite: bool) -> None:
    """Refuse an output directory that holds something other than a training run's files."""
    if not os.path.isdir(out_dir) or overwrite or os.path.isfile(os.path.join(out_dir, RECORD)):
        return
    foreign = sorted(n for n in os.listdir(out_dir) if n not in _OUTPUTS and not n.startswith("step-"))
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
        else:
            with ResumeStates(out_dir) as states:
                states.discard_after(record["state"])
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


def _say(options: TrainOptions, message: str) -> None:
    if options.verbose:
        print(message, flush=True)


# ---------------------------------------------------------------------------------------------
# The model, loss and optimizer on the devices


def loss_fn(config: OPTConfig, compute_dtype, params: Params, ids, mask):
    """Mean next-token cross entropy (float32) over real targets, and their count."""
    params = jax.tree.map(lambda p: p.astype(compute_dtype), params)
    x = embed(config, params, ids, mask)  # [b, s, d]
    x, _ = decoder_layers(config, params["layers"], x, mask, lambda active, index, state: state, ())  # [b, s, d]
    logits = head(config, params, x)  # [b, s, v] float32
    losses = optax.softmax_cross_entropy_with_integer_labels(logits[:, :-1], ids[:, 1:])  # [b, s - 1]
    weights = mask[:, 1:].astype(jnp.float32)  # [b, s - 1]
    count = weights.sum()
    return (losses * weights).sum() / jnp.maximum(count, 1.0), count


def decay_mask(params: Params) -> Params:
    """True for the parameters weight decay applies to: weight matrices and embeddings."""
    def decays(path, _):
        name = "/".join(k.key for k in path)
        return name.startswith("embed/") or (name.endswith("/weight") and "norm" not in name)

    return jax.tree.map_with_path(decays, params)


def make_optimizer(options: TrainOptions) -> optax.GradientTransformation:
    """Global-norm clipping, then AdamW with linear warmup and cosine decay."""
    schedule = learning_rate(options)
    return optax.chain(optax.clip_by_global_norm(options.clip_norm),
                       optax.adamw(schedule, b1=options.b1, b2=options.b2, weight_decay=options.weight_decay,
                                   mask=decay_mask))


def learning_rate(options: TrainOptions) -> optax.Schedule:
    """The learning rate at each step (counted from 0)."""
    return optax.warmup_cosine_decay_schedule(0.0, options.lr, options.warmup_steps, options.steps,
                                              options.lr * options.end_lr_fraction)


@dataclasses.dataclass
class State:
    """Device parameters and optimizer state after `step` steps, and where the data stream is."""

    params: Params
    opt_state: Any
    step: int
    cursor: dict
    tokens: int


# HF's initialisation, jitted: one compilation per (config, seed) rather than one per operation.
initial_params = jax.jit(init_params, static_argnums=(0, 1))


def train_step(config: OPTConfig, options: TrainOptions, params: Params, opt_state, ids, mask):
    """One update on a batch: (params, opt_state, metrics {loss, grad_norm, tokens})."""
    grad_fn = jax.value_and_grad(functools.partial(loss_fn, config, jnp.dtype(options.compute_dtype)), has_aux=True)
    (loss, count), grads = grad_fn(params, ids, mask)
    updates, opt_state = make_optimizer(options).update(grads, opt_state, params)
    metrics = {"loss": loss, "grad_norm": optax.tree.norm(grads), "tokens": count}
    return optax.apply_updates(params, updates), opt_state, metrics


@functools.lru_cache(maxsize=8)
def _jitted_step(config: OPTConfig, options: TrainOptions, devices: tuple):
    """train_step jitted over a mesh of devices (cached: a resumed run in the same process compiles nothing)."""
    mesh = Mesh(np.array(devices), ("data",))
    replicated, data = NamedSharding(mesh, PartitionSpec()), NamedSharding(mesh, PartitionSpec("data"))
    return jax.jit(functools.partial(train_step, config, options), in_shardings=(replicated, replicated, data, data),
                   out_shardings=(replicated, replicated, replicated), donate_argnums=(0, 1))


class Trainer:
    """The jitted train step over a mesh of all local devices: parameters replicated, batches split."""

    def __init__(self, config: OPTConfig, options: TrainOptions):
        self.config, self.options = config, options
        devices = tuple(jax.local_devices())
        self.replicated = NamedSharding(Mesh(np.array(devices), ("data",)), PartitionSpec())
        self.optimizer = make_optimizer(options)
        step_options = TrainOptions(**{name: getattr(options, name) for name in IDENTITY})  # what the step uses
        self.step = _jitted_step(config, step_options, devices)

    def init(self) -> State:
        """Fresh parameters (HF's initialisation, seeded) and optimizer state."""
        params = jax.device_put(initial_params(self.config, self.options.seed), self.replicated)
        opt_state = jax.jit(self.optimizer.init, out_shardings=self.replicated)(params)
        return State(params, opt_state, 0, {"epoch": 0, "window": 0}, 0)

    def restore(self, states: "ResumeStates", record: dict) -> State:
        """The committed resume state named in the run record, on the devices as the step wants it."""
        params = jax.eval_shape(functools.partial(init_params, self.config, self.options.seed))
        template = {"params": params, "opt_state": jax.eval_shape(self.optimizer.init, params)}
        template = jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=self.replicated), template)
        restored = states.restore(record["state"], template)
        return State(restored["params"], restored["opt_state"], record["step"], dict(record["cursor"]),
                     record["tokens"])

    def run(self, state: State, ids: np.ndarray, mask: np.ndarray, cursor: dict) -> dict:
        """Advance state by one step on this batch (in place); the step's metrics, still on the device."""
        state.params, state.opt_state, metrics = self.step(state.params, state.opt_state, ids, mask)
        state.step, state.cursor, state.tokens = state.step + 1, cursor, state.tokens + int(mask.sum())
        return metrics


# ---------------------------------------------------------------------------------------------
# Data: the corpus windows, epoch after epoch, permuted a block at a time


def training_batches(corpus: Corpus, options: TrainOptions, pad_id: int, cursor: dict
                     ) -> Iterator[tuple[np.ndarray, np.ndarray, dict]]:
    """(ids [batch, seq], mask [batch, seq], cursor after the batch) from cursor on, forever."""
    windows = _cycled_windows(corpus, options, cursor)
    while True:
        group = list(itertools.islice(windows, options.batch_size))
        ids, mask = next(batches([window for window, _ in group], options.batch_size, options.seq_len, pad_id))
        yield ids, mask, group[-1][1]


def _cycled_windows(corpus: Corpus, options: TrainOptions, cursor: dict) -> Iterator[tuple[np.ndarray, dict]]:
    """Each window from cursor on, with the cursor after it; epoch after epoch."""
    epoch, start = cursor["epoch"], cursor["window"]
    while True:
        for index, window in enumerate(epoch_windows(corpus, options, epoch, start), start=start):
            yield window, {"epoch": epoch, "window": index + 1}
        epoch, start = epoch + 1, 0


def epoch_windows(corpus: Corpus, options: TrainOptions, epoch: int, start: int = 0) -> Iterator[np.ndarray]:
    """The windows of one epoch from index start on: corpus order, each block of shuffle_windows permuted."""
    block = options.shuffle_windows
    if block <= 1:
        return corpus.windows(skip=start)
    first = start - start % block
    shuffled = _shuffled_blocks(corpus.windows(skip=first), block, (options.seed, epoch), first // block)
    return itertools.islice(shuffled, start - first, None)


def _shuffled_blocks(windows: Iterator[np.ndarray], block: int, seed: tuple[int, int], first_block: int
                     ) -> Iterator[np.ndarray]:
    """windows with block after block permuted by a generator seeded with (*seed, block index)."""
    for index in itertools.count(first_block):
        group = list(itertools.islice(windows, block))
        if not group:
            return
        yield from (group[i] for i in np.random.default_rng([*seed, index]).permutation(len(group)))


# ---------------------------------------------------------------------------------------------
# The loop, snapshots and resume states


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


def write_snapshot(out_dir: str, state: State, config: OPTConfig, options: TrainOptions, tokenizer_dir: str,
                   record: dict) -> str:
    """Write out_dir/step-N: a converted checkpoint with the tokenizer (and hf/ where possible), atomically."""
    final = os.path.join(out_dir, f"step-{state.step}")
    tmp = f"{final}.tmp"
    atomic.remove(tmp)
    target = ckpt.DTYPES[ckpt.dtype_name(options.save_dtype)]
    flat = {path: np.asarray(value).astype(target) for path, value in flatten(jax.device_get(state.params)).items()}
    os.makedirs(tmp)
    _copy_tokenizer(tokenizer_dir, tmp)
    if config.positional_embeddings:
        atomic.write_json(os.path.join(tmp, "config.json"), to_hf_dict(config))
        if options.export_hf:
            hf_dtype = np.float16 if options.save_dtype == "float16" else np.float32
            export_hf(config, unflatten(flat), os.path.join(tmp, "hf"), dtype=hf_dtype)
            _copy_tokenizer(tokenizer_dir, os.path.join(tmp, "hf"))
    training = {"step": state.step, "tokens": state.tokens, "run": out_dir} | record["identity"]
    ckpt.write_checkpoint(tmp, config, flat, options.save_dtype, source=out_dir, training=training)
    return atomic.replace_dir(tmp, final)


def _copy_tokenizer(tokenizer_dir: str, directory: str) -> None:
    for path in tokenization.tokenizer_files(tokenizer_dir):
        shutil.copyfile(path, os.path.join(directory, os.path.basename(path)))


class ResumeStates:
    """The resume states of a run, `out_dir/resume/<step>/`, through orbax's `CheckpointManager`: a state is
    written to a temporary directory and finalised (renamed) only when complete, the last `KEEP_RESUME_STATES`
    are kept, and unfinished ones are cleaned up when the manager opens. `train.json` names the committed one."""

    def __init__(self, out_dir: str):
        options = ocp.CheckpointManagerOptions(max_to_keep=KEEP_RESUME_STATES, create=True,
                                               enable_async_checkpointing=False, cleanup_tmp_directories=True)
        self.manager = ocp.CheckpointManager(os.path.join(out_dir, RESUME_DIR), options=options)

    def __enter__(self) -> "ResumeStates":
        return self

    def __exit__(self, *exc) -> None:
        self.manager.close()

    def save(self, state: State) -> str:
        """Write (and finalise) the parameters and optimizer state after state.step; its name for train.json."""
        tree = {"params": state.params, "opt_state": state.opt_state}
        self.manager.save(state.step, args=ocp.args.StandardSave(tree), force=True)
        self.manager.wait_until_finished()
        return f"{RESUME_DIR}/{state.step}"

    def restore(self, name: str, template) -> dict:
        """The state `name` (from train.json) as arrays shaped, typed and placed like `template`."""
        step = _state_step(name)
        if step not in self.manager.all_steps():
            raise TrainError(f"{self.manager.directory}: the resume state of step {step} named in {RECORD} is "
                             "missing; pass --overwrite to start again")
        try:
            return self.manager.restore(step, args=ocp.args.StandardRestore(template))
        except (ValueError, KeyError) as e:  # another model's or optimizer's state
            raise TrainError(f"{self.manager.directory}/{step}: does not match this run ({e})") from None

    def discard_after(self, name: str) -> None:
        """Delete the states past the committed one (written before a crash, never committed)."""
        committed = _state_step(name)
        for step in self.manager.all_steps():
            if step > committed:
                self.manager.delete(step)


def _state_step(name: str) -> int:
    """The step of a resume state's name in train.json ('resume/<step>')."""
    return int(name.rsplit("/", 1)[-1])


def _commit(out_dir: str, record: dict, state: State, state_name: str | None, complete: bool) -> None:
    """Replace train.json (the commit point); orbax keeps the last resume states, older ones go as it writes."""
    record.update(step=state.step, tokens=state.tokens, cursor=state.cursor, state=state_name, complete=complete)
    atomic.write_json(os.path.join(out_dir, RECORD), record)
