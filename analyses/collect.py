"""Corpus -> forward passes -> activation statistics in a resumable tensorstore directory.

The window stream is cut into fixed batches (global batch b holds windows b*B .. b*B+B-1).
Process p of P takes the batches with b % P == p. Weights are either resident on the device
(one jitted step per batch) or streamed a layer group at a time over a chunk of batches
(layer-major: each group crosses to the device once per chunk), read lazily from the converted
checkpoint (or sliced from parameters a caller holds in memory) two groups ahead. Statistics
stay on the device until a flush commits them (see `analyses.store`); the manifest's cursor
is the next global batch, so a rerun continues exactly where the last commit left off.
"""

from __future__ import annotations

import dataclasses
import os
import time

import jax
import numpy as np
import psutil
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from analyses import statistics as st
from opt_jax.corpus import Corpus, batches
from analyses.coverage import ngram_candidates
from analyses.store import CHUNK_CELLS, WRITES_IN_FLIGHT, StatsError, StatsStore, array_layouts, open_stats, read_manifest
from opt_jax import checkpoint as ckpt
from opt_jax.bits import unpack_masks
from opt_jax.model import Params, param_shapes, unflatten
from opt_jax.progress import Progress
from opt_jax.streaming import CheckpointLayers, GroupStream, StackedLayers, group_size_for


@dataclasses.dataclass(frozen=True)
class Options:
    """Collection flags; those in IDENTITY must match to resume a run."""

    seq_len: int = 2048
    batch_size: int = 8
    max_tokens: int | None = None
    full_length_only: bool = False
    offload: bool = False
    group_size: int | None = None  # layers per streamed group (default: from device memory)
    chunk_batches: int = 4  # batches per streamed chunk (each group moves once per chunk)
    max_layers: int | None = None
    token_layers: tuple[int, ...] | None = None  # default: the first half of the model's layers
    dtype: str | None = None
    text_key: str = "text"
    ngram_orders: tuple[int, ...] = ()  # exact n-gram counts of the token layers, e.g. (2, 3); () for none
    ngram_max_pairs: int = 50_000_000  # distinct (n-gram, neuron) pairs kept in host memory, 16 B each
    ngram_candidates_from: str | None = None  # a finished run: track only neurons few tokens cover there
    ngram_max_coverage: int = 50  # ... at most this many tokens
    ngram_coverage_fraction: float = 0.95  # ... covering this fraction of the neuron's activations
    flush_every_s: float = 300.0
    flush_every_batches: int | None = None
    overwrite: bool = False
    process_index: int = 0
    process_count: int = 1
    verbose: bool = True


IDENTITY = ("seq_len", "batch_size", "full_length_only", "max_layers", "token_layers", "dtype", "text_key",
            "ngram_orders", "ngram_candidates_from", "ngram_max_coverage", "ngram_coverage_fraction")


def make_plan(config, options: Options) -> st.Plan:
    """What a run with these options collects from a model of this config; refuses impossible options."""
    num_layers = min(options.max_layers or config.num_hidden_layers, config.num_hidden_layers)
    token_layers = options.token_layers
    if token_layers is None:
        token_layers = tuple(range(min(config.num_hidden_layers // 2, num_layers)))
    token_layers = tuple(sorted(set(token_layers)))
    bad = [l for l in token_layers if not 0 <= l < num_layers]
    if bad:
        raise StatsError(f"token_layers {bad} are outside the {num_layers} collected layers")
    if options.seq_len > config.max_position_embeddings:
        raise StatsError(f"seq_len {options.seq_len} exceeds the model's {config.max_position_embeddings} positions")
    if options.seq_len < 2:
        raise StatsError(f"seq_len must be at least 2 (BOS and one token), got {options.seq_len}")
    return st.Plan(config, num_layers, token_layers, options.seq_len)


def _identity(model_path: str, config, corpus: Corpus, plan: st.Plan, options: Options, source: dict | None) -> dict:
    flags = {k: getattr(options, k) for k in IDENTITY}
    flags["token_layers"] = list(plan.token_layers)
    flags["ngram_orders"] = list(options.ngram_orders)
    return {"model": os.path.abspath(model_path), "config": config.to_dict(), "ngram_candidates_source": source,
            "corpus": {"paths": list(corpus.files), "fingerprint": corpus.fingerprint(),
                       "text_key": options.text_key},
            "flags": flags, "process": {"index": options.process_index, "count": options.process_count}}


def _open_store(out_dir: str, identity: dict, plan: st.Plan, options: Options) -> StatsStore:
    if os.path.isfile(os.path.join(out_dir, "manifest.json")) and not options.overwrite:
        manifest = read_manifest(out_dir)
        for key in identity:
            if manifest.get(key) != identity[key]:
                raise StatsError(f"{out_dir}: holds statistics of a different {key} "
                                 f"({manifest.get(key)!r} there, {identity[key]!r} now); "
                                 "use another --out or pass --overwrite")
        return StatsStore.open(out_dir)
    if os.path.isdir(out_dir) and os.listdir(out_dir) and not options.overwrite:
        raise StatsError(f"{out_dir}: exists, is not empty and is not a statistics directory")
    layouts = array_layouts(plan.num_layers, len(plan.token_layers), plan.seq_len, plan.vocab, plan.ffn)
    start = identity | {"token_layers": list(plan.token_layers), "layers": plan.num_layers,
                        "ngram_orders": list(options.ngram_orders), "tokens": 0,
                        "sequences": 0, "full_length_sequences": 0, "cursor": {"next_batch": 0, "stream_tokens": 0},
                        "complete": False}
    return StatsStore.create(out_dir, start, layouts)


@dataclasses.dataclass
class Weights:
    """What a Runner computes with: the embedding parameters and a source of stacked layer groups."""

    embed: Params
    layers: object  # a layer source (`opt_jax.streaming`): num_layers, layer_bytes, read(group)

    @classmethod
    def from_checkpoint(cls, path: str, dtype: str | None = None, num_layers: int | None = None) -> "Weights":
        """The embedding read now; the layers read lazily, a group at a time, when they are needed."""
        embed = unflatten(ckpt.read_params(path, dtype, layers=slice(0, 0)))["embed"]
        return cls(embed, CheckpointLayers(path, dtype, num_layers))

    @classmethod
    def in_memory(cls, params: Params) -> "Weights":
        """Parameters a caller already holds ({'embed', 'layers'} as `opt_jax.init_params` makes them)."""
        return cls(params["embed"], StackedLayers(params["layers"]))


def working_bytes(plan: st.Plan, options: Options, itemsize: int) -> int:
    """An upper estimate of a step's temporaries: a layer's activations, masks and attention blocks, and in
    streamed mode the hidden states of every batch of the chunk (computed in `itemsize`-byte floats)."""
    config, tokens = plan.config, options.batch_size * plan.seq_len
    ffn = tokens * plan.ffn * (itemsize + 4 + 1)  # fc1 output, the int32 rows scattered into tok_act, the mask
    hidden = tokens * config.hidden_size * itemsize * 6  # residual, norms, q/k/v, attention and fc2 outputs
    attention = options.batch_size * config.num_attention_heads * min(plan.seq_len, 256) * plan.seq_len * 4 * 2
    chunk = options.chunk_batches * tokens * config.hidden_size * itemsize if options.offload else 0
    return ffn + hidden + attention + chunk


def flush_bytes() -> int:
    """Host memory of a commit: the blocks in flight, each at most one chunk (old, delta, sum) of int64."""
    return (WRITES_IN_FLIGHT + 3) * CHUNK_CELLS * 8


def check_memory(plan: st.Plan, groups: list[range], layer_bytes: int, options: Options, device,
                 host_available: int | None = None) -> None:
    """Refuse, before allocating anything, a run that cannot fit in the device's or the host's memory.

    On an accelerator: the counters, the weights on the device and a step's temporaries against its free
    memory, and the layer groups read ahead plus a commit's blocks against the host's. On the CPU the device
    is the host: all of it against the available host memory (`psutil`), where a run that does not fit
    would otherwise be killed by the kernel.
    """
    batch = options.batch_size if options.ngram_orders and plan.token_layers else None
    counters = st.accumulator_bytes(plan, groups, batch)
    streamed = options.offload and len(groups) > 2
    group = layer_bytes * max(len(g) for g in groups)
    weights = 2 * group if streamed else plan.num_layers * layer_bytes
    params = sum(int(np.prod(shape[1:])) for path, shape in param_shapes(plan.config).items()
                 if path.startswith("layers/"))
    working = working_bytes(plan, options, max(1, layer_bytes // params))
    host = (2 * group if streamed else 0) + flush_bytes()  # groups read ahead, a commit's blocks
    stats = device.memory_stats() if hasattr(device, "memory_stats") else None
    on_host = not stats or "bytes_limit" not in stats
    if host_available is None:
        host_available = psutil.virtual_memory().available
    if on_host:
        # Loading the weights holds one group twice (read, then copied) before the counters exist.
        needed = max(weights + counters + working + host, weights + group)
        free, where = host_available, f"{device} (host memory, shared with the device)"
    else:
        needed, free, where = weights + counters + working, stats["bytes_limit"] - stats.get("bytes_in_use", 0), device
    if needed > free:
        token_layer = plan.vocab * plan.ffn * 4
        raise StatsError(
            f"{where}: the counters ({counters / 1e9:.1f} GB, tok_act {len(plan.token_layers)} layers x "
            f"{token_layer / 1e9:.1f} GB of them), the weights on the device ({weights / 1e9:.1f} GB) and a step's "
            f"temporaries ({working / 1e9:.1f} GB)" + (f", the groups read ahead and a commit's blocks "
                                                        f"({host / 1e9:.1f} GB)" if on_host else "")
            + f" need {needed / 1e9:.1f} GB; {free / 1e9:.1f} GB are free. Collect fewer --token_layers per run "
            "(several runs, each with its own --out, cover them all), stream the weights in smaller groups "
            "(--offload --group_size), use a 16-bit --dtype, or a smaller --batch_size")
    if not on_host and host > host_available:
        raise StatsError(f"host memory: the layer groups read ahead and a commit's blocks need {host / 1e9:.1f} GB; "
                         f"{host_available / 1e9:.1f} GB are available. Use a smaller --group_size")


class Runner:
    """Holds the device state of one run: parameters (resident) or the group stream (streamed), and counters.

    Also the unit benchmarks time: `Runner(model_path or Weights, make_plan(config, options), options).run(batches)`.
    """

    def __init__(self, model: str | Weights, plan: st.Plan, options: Options):
        self.plan, self.options = plan, options
        devices = jax.local_devices()
        if options.batch_size % len(devices):
            raise StatsError(f"batch_size {options.batch_size} is not divisible by the {len(devices)} local devices")
        mesh = Mesh(np.array(devices), ("data",))
        self.replicated = NamedSharding(mesh, PartitionSpec())
        self.data = NamedSharding(mesh, PartitionSpec("data"))
        weights = model if isinstance(model, Weights) else \
            Weights.from_checkpoint(model, options.dtype, plan.num_layers)
        if weights.layers.num_layers < plan.num_layers:
            raise StatsError(f"the weights have {weights.layers.num_layers} layers; the plan needs {plan.num_layers}")
        self.embed_params = jax.device_put({"embed": weights.embed}, self.replicated)
        self.layers = weights.layers
        self.groups = plan.groups((options.group_size or group_size_for(self.layers)) if options.offload else None)
        check_memory(plan, self.groups, self.layers.layer_bytes, options, devices[0])
        self.stream = GroupStream(self.layers, self.groups, self.replicated) if options.offload else None
        if not options.offload:
            self.group_params = [jax.device_put(self.layers.read(g), self.replicated) for g in self.groups]
        self.ngrams = None  # an NgramTable when n-grams are counted: set by `collect` from the store
        self.ngram_neurons = None  # bool [token_layers, ffn]: the neurons n-grams are counted for (None: all)
        self.reset()

    def reset(self) -> None:
        """Empty the device counters (after a commit)."""
        batch = self.options.batch_size if self.options.ngram_orders and self.plan.token_layers else None
        self.accs = []  # the old counters go first: at 66b two sets would not fit on the device
        for g in self.groups:
            self.accs.append(jax.device_put(st.zero_accumulators(self.plan, g, batch), self.replicated))

    def run(self, chunk: list[tuple[np.ndarray, np.ndarray]]) -> None:
        """Add the activations of a list of batches into the device counters."""
        on_device = [(jax.device_put(ids, self.data), jax.device_put(mask, self.data)) for ids, mask in chunk]
        config = self.plan.config
        fired = [{} for _ in chunk]  # per batch: token layer index -> packed masks, for n-grams
        if not self.options.offload:
            for bi, (ids, mask) in enumerate(on_device):
                self.accs = st.resident_step(config, self.embed_params, self.group_params, ids, mask, self.accs)
                for gi in range(len(self.groups)):
                    self._keep_masks(gi, fired[bi])
        else:
            hidden = [st.embed_step(config, self.embed_params, ids, mask) for ids, mask in on_device]
            for gi in range(len(self.groups)):
                self._stream_group(gi, on_device, hidden, fired)
        if self.ngrams is not None:
            for (ids, mask), packed in zip(chunk, fired):
                active = {t: unpack_masks(m, self.plan.ffn) for t, m in packed.items()}  # [b, s, n] each
                if self.ngram_neurons is not None:
                    active = {t: a & self.ngram_neurons[t] for t, a in active.items()}  # [b, s, n] each
                self.ngrams.add(ids, mask, active)

    def _stream_group(self, gi: int, on_device: list, hidden: list, fired: list) -> None:
        """Run every batch of the chunk through group gi, then move the next group in once group gi-1 is done."""
        before = (tuple(hidden), self.accs[gi - 1])  # outputs of group gi-1 (gi = 0: of the previous chunk's last)
        group, params = self.stream.next()
        assert group == self.groups[gi], (group, self.groups[gi])
        for bi, (ids, mask) in enumerate(on_device):
            hidden[bi], self.accs[gi] = st.group_step(self.plan.config, params, hidden[bi], mask, ids, self.accs[gi])
            self._keep_masks(gi, fired[bi])
        # Group gi is dispatched: while it computes, group gi+1 crosses and gi+2 is read. Waiting for gi-1 first
        # keeps at most two groups on the device and two in host memory however far ahead the host runs.
        self.stream.advance(after=before)

    def _keep_masks(self, gi: int, into: dict) -> None:
        """Copy a token group's packed masks of the batch just run to the host (they are overwritten next)."""
        if self.ngrams is None or "masks" not in self.accs[gi]:
            return
        masks = np.asarray(self.accs[gi]["masks"])  # [g, b, s, n / 8]
        for j, layer in enumerate(self.groups[gi]):
            into[self.plan.token_layers.index(layer)] = masks[j]

    def close(self) -> None:
        """Stop reading layers ahead (streamed mode); the counters stay readable."""
        if self.stream is not None:
            self.stream.close()

    def wait(self) -> None:
        """Block until every dispatched step has finished (for timing)."""
        jax.block_until_ready(self.accs)

    def deltas(self) -> dict:
        """The device counters as store deltas: act whole; pos_act and tok_act one block at a time.

        A block (the store's chunk: one layer, some positions or token rows, some neurons) is sliced on the
        device and only it crosses to the host, so a flush holds at most a chunk of a [vocab, ffn] layer.
        """
        where = {layer: (gi, j) for gi, g in enumerate(self.groups) for j, layer in enumerate(g)}
        token_layers = self.plan.token_layers

        def block_of(name, layer_of):
            def read(block):  # (layers, rows, neurons) slices, one layer
                gi, j = where[layer_of(block[0].start)]
                return np.asarray(self.accs[gi][name][(j, *block[1:])], np.int64)[None]  # [1, r, n]
            return read

        return {
            "act": np.concatenate([np.asarray(a["act"], np.int64) for a in self.accs]),  # [l, n]
            "pos_act": block_of("pos_act", lambda l: l),
            "tok_act": block_of("tok_act", lambda t: token_layers[t]),
        }


    def layer_counts(self, name: str, layer: int) -> np.ndarray:
        """One layer's device counter (`pos_act` by layer, `tok_act` by token layer index) as int64 on the host."""
        layer = self.plan.token_layers[layer] if name == "tok_act" else layer
        gi = next(gi for gi, g in enumerate(self.groups) if layer in g)
        return np.asarray(self.accs[gi][name][layer - self.groups[gi].start], np.int64)


def collect(model_path: str, corpus_paths, out_dir: str, **flags) -> str:
    """Collect activation statistics of the model at model_path over the corpus into out_dir."""
    options = Options(**flags)
    config = ckpt.read_config(model_path)
    plan = make_plan(config, options)
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_path)
    corpus = Corpus(list(corpus_paths), tokenizer, options.seq_len, config.bos_token_id,
                    text_key=options.text_key, full_length_only=options.full_length_only)
    corpus.check_not_empty()
    tracked, source = _ngram_neurons(plan, options) if options.ngram_orders else (None, None)
    identity = _identity(model_path, config, corpus, plan, options, source)
    store = _open_store(out_dir, identity, plan, options)
    if store.manifest["complete"] and _reached(store.manifest, options):
        _say(options, f"{out_dir}: already complete ({store.manifest['tokens']:,} tokens)")
        return store.root
    runner = Runner(model_path, plan, options)
    try:
        if options.ngram_orders and plan.token_layers:
            runner.ngrams = open_stats(store.root).ngram_table(options.ngram_max_pairs)
            runner.ngram_neurons = tracked
        _run(runner, store, corpus, options, config.pad_token_id)
    finally:
        runner.close()
    return store.root


def _ngram_neurons(plan: st.Plan, options: Options) -> tuple[np.ndarray | None, dict | None]:
    """The neurons whose n-grams are counted, bool [token_layers, ffn] (None: all), and where they came from."""
    if not options.ngram_candidates_from:
        return None, None
    source = open_stats(options.ngram_candidates_from)
    where = options.ngram_candidates_from
    if source.manifest["config"] != plan.config.to_dict():
        raise StatsError(f"{where}: statistics of another model; n-gram candidates must come from the same one")
    if not source.manifest["complete"]:
        raise StatsError(f"{where}: the run is not complete; finish it before choosing n-gram candidates from it")
    missing = [l for l in plan.token_layers if l not in source.token_layers]
    if missing:
        raise StatsError(f"{where}: has no token statistics for layers {missing}")
    rows = [source.tok_act.view(source.token_layers.index(l)) for l in plan.token_layers]  # lazy [v, n] each
    tracked = ngram_candidates(rows, options.ngram_max_coverage, options.ngram_coverage_fraction)  # [t, n]
    return tracked, {"path": os.path.abspath(where), "corpus_fingerprint": source.manifest["corpus"]["fingerprint"],
                     "tokens": source.tokens, "tracked_neurons": int(tracked.sum())}


def _reached(manifest: dict, options: Options) -> bool:
    limit = options.max_tokens
    return manifest["cursor"].get("exhausted", False) or (limit is not None and
                                                          manifest["cursor"]["stream_tokens"] >= limit)


def _say(options: Options, message: str) -> None:
    if options.verbose:
        print(message, flush=True)


def _run(runner: Runner, store: StatsStore, corpus: Corpus, options: Options, pad_id: int) -> None:
    cursor = dict(store.manifest["cursor"])
    next_batch, stream_tokens = cursor["next_batch"], cursor["stream_tokens"]
    windows = corpus.windows(skip=next_batch * options.batch_size)
    stream = batches(windows, options.batch_size, options.seq_len, pad_id)
    host = _zero_host(runner.plan)
    progress = Progress("collect", options.max_tokens, " tokens", enabled=options.verbose, initial=stream_tokens)
    chunk_size = options.chunk_batches if options.offload else 1
    chunk, pending_tokens, batches_since_flush, last_flush = [], 0, 0, time.monotonic()
    exhausted = True
    for ids, mask in stream:
        if options.max_tokens is not None and stream_tokens >= options.max_tokens:
            exhausted = False
            break
        batch_tokens = int(mask.sum())
        stream_tokens += batch_tokens
        if next_batch % options.process_count == options.process_index:
            chunk.append((ids, mask))
            for name, value in st.host_counts(ids, mask, runner.plan.vocab).items():
                host[name] += value
            pending_tokens += batch_tokens
        next_batch += 1
        progress.update(batch_tokens)
        if len(chunk) == chunk_size:
            runner.run(chunk)
            chunk, batches_since_flush = [], batches_since_flush + 1
            due = (options.flush_every_batches and batches_since_flush >= options.flush_every_batches) or \
                time.monotonic() - last_flush >= options.flush_every_s or \
                pending_tokens + chunk_size * options.batch_size * options.seq_len > st.MAX_TOKENS_PER_FLUSH
            if due:
                _flush(runner, store, host, {"next_batch": next_batch, "stream_tokens": stream_tokens}, False)
                host, pending_tokens, batches_since_flush, last_flush = _zero_host(runner.plan), 0, 0, time.monotonic()
    if chunk:
        runner.run(chunk)
    _flush(runner, store, host, {"next_batch": next_batch, "stream_tokens": stream_tokens, "exhausted": exhausted},
           True)
    progress.update(0, force=True)


def _zero_host(plan: st.Plan) -> dict:
    return {"tokens": np.int64(0), "pos_tokens": np.zeros(plan.seq_len, np.int64),
            "token_occ": np.zeros(plan.vocab, np.int64), "sequences": np.int64(0),
            "full_length_sequences": np.int64(0)}


def _flush(runner: Runner, store: StatsStore, host: dict, cursor: dict, complete: bool) -> None:
    """Commit device and host counts with the cursor they reach, then empty the counters."""
    deltas = runner.deltas() | {"pos_tokens": host["pos_tokens"], "token_occ": host["token_occ"]}
    m = store.manifest
    store.commit(deltas, {
        "tokens": int(m["tokens"] + host["tokens"]), "sequences": int(m["sequences"] + host["sequences"]),
        "full_length_sequences": int(m["full_length_sequences"] + host["full_length_sequences"]),
        "cursor": cursor, "complete": complete,
    }, replacements=_ngram_arrays(runner))
    runner.reset()


def _ngram_arrays(runner: Runner) -> dict | None:
    """The n-gram tables as 1-D arrays, and `tracked_neurons` (flat t * ffn + n) when only some are tracked."""
    if runner.ngrams is None:
        return None
    arrays = runner.ngrams.to_arrays()
    if runner.ngram_neurons is not None:
        arrays["tracked_neurons"] = np.flatnonzero(runner.ngram_neurons)  # [m]
    return arrays
