"""Context activations: each example's neuron at every token of a span around the example (`add_contexts`).

A store with example sets (`--examples K`) keeps, for every neuron of every layer, its k strongest activations and
a uniform sample of k (`analyses.collection.examples`), and every window's token ids (`windows`). `add_contexts`
runs the model once more over the windows that hold an example, each window once, in batches of the run's
`batch_size` and in window order, every layer's every example gathered from that one forward: for an example at
`position` of its window, the neuron's fc1 output at positions `position - before .. position + after` (the part
inside the window, BOS excepted). The store then reads each example with its context (`Stats.examples`:
`context_tokens`, `context_values`, `context_index`).

Stored: `context_{kind}_value` float16 [layers, ffn, k, before + after + 1] for each example set of the store (top
and random, k slots, and with quantile examples `quantile`, bins x K slots: `store.example_slots`), slot j of an
example at `position` holding position `position - before + j` (0 outside the window, where the reader cuts the
span); the manifest's `contexts` entry says the span, what was run and `tokens`, the store's token count the sets
were computed for (collecting on into the store changes the sets: the contexts are then not read until run again).
float16 rounds to nearest: a relative error of at most 2^-11 (4.9e-4), 2^-25 absolute below 6.1e-5, +-inf beyond
+-65504; the example's own value is read from its record, exact.

On the device, per layer of the scan: which examples' windows are in the batch ([ffn, c] against the batch's
window indices, c the slots of every set: 2k, plus bins x K with quantile examples), then one gather of fc1 at
[ffn, c, span] places; every layer's spans stay on the device for the whole run (float16, [layers, ffn, c, span]:
6.2 GB at 66b with c = 2k = 32) with the examples' places. The model runs resident
(one jitted step per batch) or streamed (`offload`: layer groups read from the checkpoint two groups ahead, moved
one group ahead, each running a chunk of batches, layer-major, as collection streams). The center of each span is
checked against the example's stored value: a model that does not reproduce them (other weights of the same
config) is refused.

Several devices (`mesh`, "data=A,neurons=B", `opt_jax.sharding`; without it, one device): a batch's windows split
over A devices, each layer's weights stored split over B and gathered a layer at a time, the spans and the
examples' places split by neuron over B (each device gathers its neurons' spans from fc1 moved from tokens to
neurons), as collection splits its counters; the spans are those of one device, bit for bit, where XLA gives a
token the same fc1 whatever the rows beside it (docs/collection.md, "Several devices"). The memory check counts
each device's share on accelerators (`plan.mesh_shape`, `plan.device_weights`).

Resumable: a commit (every `flush_every_s` and at the end) writes the spans of the batches run so far, one block of
one layer at a time from the device (the host holds one block), with the next batch in the manifest; every other
array of the store is linked, not copied. A kill leaves the last commit, and the store readable; the same command
resumes from it (the spans committed go back to the device one layer at a time).
"""

from __future__ import annotations

import dataclasses
import functools
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from analyses.collection.plan import (RUNTIME_BYTES, Options, device_weights, free_memory, group_layers, mesh_shape,
                                      shares_host, working_bytes)
from analyses.collection.runner import Weights
from analyses.collection.statistics import Plan, embed_step
from analyses.collection.store import (CHUNK_CELLS, Stats, StatsStore, context_name, example_name, example_slots,
                                       open_stats)
from opt_jax import checkpoint as ckpt, heap
from opt_jax import lock
from opt_jax.errors import StatsError
from opt_jax.model import decoder_layers, embed
from opt_jax.progress import Progress
from opt_jax.sharding import constrain, run_mesh, within
from opt_jax.streaming import GroupStream, layer_bytes, layer_shardings_for, put_now, split_layers

DTYPE = "float16"
CENTER_TOLERANCE = 0.05  # |span center - stored value| / max(|value|, 1) above this: the model is another one


def context_layouts(num_layers: int, ffn: int, slots: dict, span: int) -> dict:
    """name -> (shape, chunk shape, dtype, fill value) of the context arrays: [layers, ffn, k, span] float16 for each
    kind of `slots` ({kind: k}, `store.example_slots`), chunks of one layer and a block of neurons."""
    def layout(k):
        block = max(1, min(ffn, CHUNK_CELLS // (k * span)))
        return (num_layers, ffn, k, span), (1, block, k, span), DTYPE, 0.0
    return {context_name(kind): layout(k) for kind, k in slots.items()}


@dataclasses.dataclass(frozen=True)
class MemoryUse:
    """What a context run needs (bytes): `device` against the device's free memory (on the CPU everything against
    the host's available memory), `host` beside it on an accelerator."""

    spans: int
    weights: int
    working: int
    host: int
    needed: int
    free: int
    where: str


def memory_use(config, layers: int, slots: int, span: int, batch_size: int, seq_len: int, itemsize: int,
               offload: bool, group: int, chunk_batches: int, device, host_available: int | None = None,
               mesh: str | None = None) -> MemoryUse:
    """What a run needs, computed without allocating: the spans and places on the device, the weights (all layers,
    or two groups streamed, and the embeddings), a step's temporaries (collection's `working_bytes` plus the
    gather), and on the host the groups read ahead, the windows' index and a commit's block. With `mesh`
    ("data=A,neurons=B") on accelerators, each device's share, as collection counts it (`plan.mesh_shape`,
    `plan.device_weights`): 1/B of the spans and places, 1/B of the layers plus two gathered whole, a step's
    temporaries for 1/A of the batch split B ways."""
    on_host = shares_host(device)
    data, split = mesh_shape(mesh, on_host)
    spans = -(-layers * config.ffn_dim * slots * (span * 2 + 12) // split)  # float16 spans; window, position, value
    layer = layer_bytes(config, itemsize)
    streamed = offload and -(-layers // group) > 2
    outer = (config.vocab_size * config.word_embed_proj_dim + (config.max_position_embeddings + 2)
             * config.hidden_size) * itemsize  # the embeddings, whole on every device
    weights = device_weights(config, layers, group, layer, streamed, split) + outer
    share = max(1, batch_size // data)
    options = Options(seq_len=seq_len, batch_size=share, offload=offload, chunk_batches=chunk_batches)
    gather = config.ffn_dim * slots * (span * 4 * 4 + batch_size)  # indices and values [n, 2k, span], matches
    working = -(-(working_bytes(Plan(config, layers, (), seq_len), options, itemsize) + gather) // split)
    block = CHUNK_CELLS * 4 * 3  # a commit's block, as float32 and float16 copies
    host = ((3 if streamed else 0) * group * layer + block + 2 * config.ffn_dim * slots * 12
            + 8 * batch_size * seq_len * 4)
    free, where = free_memory(device, split, host_available)
    if on_host:
        return MemoryUse(spans, weights, working, host, spans + weights + working + host + RUNTIME_BYTES, free, where)
    return MemoryUse(spans, weights, working, host, spans + weights + working, free, where)


def check_memory(use: MemoryUse, host_available: int | None = None) -> None:
    """Refuse, before anything is allocated, a run that does not fit."""
    if use.needed > use.free:
        raise StatsError(f"{use.where}: the context spans ({use.spans / 1e9:.1f} GB), the weights "
                         f"({use.weights / 1e9:.1f} GB) and a step's temporaries ({use.working / 1e9:.1f} GB) need "
                         f"{use.needed / 1e9:.1f} GB; {use.free / 1e9:.1f} GB are free. Stream the weights (--offload "
                         "--group_size), a smaller --batch_size, or a shorter span (--before, --after)")
    available = heap.host_available() if host_available is None else host_available
    if use.host > available and not use.where.endswith("with the device)"):
        raise StatsError(f"host memory: the groups read ahead and a commit's blocks need {use.host / 1e9:.1f} GB; "
                         f"{available / 1e9:.1f} GB are available. Use a smaller --group_size")


# The device side.

def _probe(batch_windows, mask, places, before: int, span: int):
    """The per-layer gather: layer i's examples whose window is in the batch get their span of fc1 (float16), and
    the largest relative difference of a span's center from the example's stored value is kept."""
    s = mask.shape[1]
    offsets = jnp.arange(span, dtype=jnp.int32) - before  # [w]

    def probe(active, i, state, fc1):  # [b, s, n], index in the group, {spans [g, n, c, w], deviation [g]}, [b, s, n]
        window, position, value = places["window"][i], places["position"][i], places["value"][i]  # [n, c] each
        n = window.shape[0]
        same = window[None] == batch_windows[:, None, None]  # [b, n, c]
        hit = jnp.any(same, axis=0) & (window >= 0)  # [n, c]
        row = jnp.argmax(same, axis=0)[..., None]  # [n, c, 1]
        at = position[..., None] + offsets  # [n, c, w]
        inside = (at >= 0) & (at < s)  # [n, c, w]
        at = jnp.clip(at, 0, s - 1)  # [n, c, w]
        neuron = jnp.arange(n)[:, None, None]  # [n, 1, 1]
        gathered = jnp.where(inside & mask[row, at], fc1[row, at, neuron], 0)  # [n, c, w]
        spans = jnp.where(hit[..., None], gathered.astype(jnp.float16), state["spans"][i])  # [n, c, w]
        center = fc1[row[..., 0], jnp.clip(position, 0, s - 1), neuron[..., 0]].astype(jnp.float32)  # [n, c]
        off = jnp.where(hit, jnp.abs(center - value) / jnp.maximum(jnp.abs(value), 1.0), 0.0)  # [n, c]
        every = constrain(state["spans"].at[i].set(spans), None, "neurons", None, None)  # [g, n, c, w]: on a mesh
        return {"spans": every,  # split by neuron, as they came
                "deviation": state["deviation"].at[i].max(jnp.max(off))}

    return probe


@functools.partial(jax.jit, static_argnums=(0, 1, 2), donate_argnums=(7,))
def resident_step(config, before: int, span: int, params, ids, mask, batch_windows, state, places):
    """Embed, then every layer's scan gathering the spans: (state, the last layer's output). The output is returned
    so that XLA computes the last layer whole, as collection's `resident_step` does."""
    x = embed(config, params["embed"], ids, mask)  # [b, s, d]
    probe = _probe(batch_windows, mask, places, before, span)
    x, state = decoder_layers(config, params["layers"], x, mask, probe, state, with_fc1=True)  # [b, s, d]
    return state, x


@functools.partial(jax.jit, static_argnums=(0, 1, 2), donate_argnums=(7,))
def group_step(config, before: int, span: int, layers, x, mask, batch_windows, state, places):
    """One streamed layer group over hidden states x [b, s, d]: (hidden, state)."""
    probe = _probe(batch_windows, mask, places, before, span)
    return decoder_layers(config, layers, x, mask, probe, state, with_fc1=True)


# The host side.

def windows_with_examples(stats: Stats) -> np.ndarray:
    """The sorted indices of the windows holding an example of some neuron, layer and kind (read a layer at a time)."""
    found = np.zeros(0, np.int64)
    for layer in range(stats.manifest["layers"]):
        for kind in example_slots(stats.manifest):
            w = stats.array(example_name(kind, "window"))[layer].read().result()  # [n, k]
            found = np.union1d(found, np.unique(w[w >= 0]))
    return found


def _places(stats: Stats, group: range, on: "_On") -> dict:
    """The examples of a layer group on the device, every kind side by side (`store.example_slots`' order):
    {window, position, value: [g, n, slots]} (read and moved a layer at a time; on a mesh split by neuron)."""
    kinds = example_slots(stats.manifest)

    def field(f):
        return on.stacked([np.concatenate([stats.array(example_name(kind, f))[layer].read().result()
                                           for kind in kinds], axis=-1) for layer in group])  # [g, n, slots]
    return {f: field(f) for f in ("window", "position", "value")}


def _committed_state(store: StatsStore, group: range, fresh: bool, shape: tuple, on: "_On") -> dict:
    """A group's spans: zeros for a fresh run, else those committed (a layer at a time), and no deviation yet
    (on a mesh the spans split by neuron)."""
    g, n, c, w = shape
    if fresh:
        spans = jax.jit(lambda: jnp.zeros(shape, jnp.float16), out_shardings=on.neurons)()  # [g, n, c, w]
    else:
        arrays = [store.array(context_name(kind)) for kind in example_slots(store.manifest)]
        spans = on.stacked([np.concatenate([a[layer].read().result() for a in arrays], axis=1)
                            for layer in group])  # [g, n, c, w]
    return {"spans": spans, "deviation": jax.device_put(np.zeros((g,), np.float32), on.replicated)}


@lock.writes("stats_dir")
def add_contexts(stats_dir: str, model: str | None = None, before: int = 32, after: int = 8,
                 offload: bool = False, group_size: int | None = None, batch_size: int | None = None,
                 chunk_batches: int = 4, flush_every_s: float = 300.0, verbose: bool = True,
                 host_available: int | None = None, mesh: str | None = None) -> dict:
    """Add every example's context activations to the store at stats_dir (see the module docstring); returns the
    manifest's `contexts` entry. `model`: the converted checkpoint (default: the one the manifest names), of the
    store's config; `batch_size`: windows per batch (default: the collection's); `mesh`: "data=A,neurons=B"
    (`opt_jax.sharding`), the batches over A devices, the layers' weights, the spans and the examples' places over
    B (without it, one device)."""
    if before < 0 or after < 0:
        raise StatsError(f"before and after are token counts >= 0, got {before} and {after}")
    stats = open_stats(stats_dir)
    if not stats.examples_per_neuron:
        raise StatsError(f"{stats.root}: holds no example activations (collected with --examples 0); collect again "
                         "with --examples K")
    model = model or stats.manifest["model"]
    config = ckpt.read_config(model)
    if config.to_dict() != stats.manifest["config"]:
        raise StatsError(f"{model}: a model of another config than the one {stats.root} was collected from "
                         f"({stats.manifest['model']}); pass that model's converted checkpoint with --model")
    windows = windows_with_examples(stats)
    if not len(windows):
        raise StatsError(f"{stats.root}: its example sets are empty (no neuron fired on a real token); there are no "
                         "contexts to add")
    flags = stats.manifest["flags"]
    slots, layers, seq_len, span = example_slots(stats.manifest), stats.manifest["layers"], flags["seq_len"], \
        before + after + 1
    batch_size = batch_size or flags["batch_size"]
    if batch_size < 1:
        raise StatsError(f"batch_size must be >= 1, got {batch_size}")
    dtype = flags.get("dtype")
    itemsize = 2 if dtype in ("bfloat16", "float16") else 4
    device = jax.local_devices()[0]
    on = _On(run_mesh(config, batch_size, mesh)) if mesh else _On(None)
    layer = layer_bytes(config, itemsize)
    groups = split_layers(range(layers), group_layers(layers, layer, group_size, device) if offload else layers)
    check_memory(memory_use(config, layers, sum(slots.values()), span, batch_size, seq_len, itemsize, offload,
                            max(len(g) for g in groups), chunk_batches, device, host_available, mesh), host_available)

    store = StatsStore.open(stats.root)
    identity = {"before": before, "after": after, "span": span, "dtype": DTYPE, "batch_size": batch_size,
                "tokens": stats.manifest["tokens"], "windows": int(len(windows)),
                "batches": -(-len(windows) // batch_size)}
    entry = store.manifest.get("contexts") or {}
    fresh = {key: entry.get(key) for key in identity} != identity
    if not fresh and entry.get("complete"):
        _say(verbose, f"{stats.root}: context activations already complete")
        return entry
    entry = identity | {"model": os.path.abspath(model), "next_batch": 0 if fresh else entry["next_batch"],
                        "complete": False, "center_deviation": 0.0 if fresh else entry["center_deviation"]}
    if fresh and store.manifest.get("contexts"):
        _say(verbose, f"{stats.root}: its context activations are of another span or of other example sets: "
                      "computed again")

    weights = Weights.from_checkpoint(model, dtype, layers)
    outer = put_now({"embed": weights.embed}, on.replicated)
    shape = lambda g: (len(g), config.ffn_dim, sum(slots.values()), span)  # noqa: E731
    places = [_places(stats, g, on) for g in groups]
    state = [_committed_state(store, g, fresh, shape(g), on) for g in groups]
    run = _Streamed(config, groups, weights, before, span, on) if offload else \
        _Resident(config, weights, before, span, on)
    pad = config.pad_token_id
    progress = Progress("contexts", len(windows), " windows", enabled=verbose,
                        initial=min(len(windows), entry["next_batch"] * batch_size))
    chunk_size = chunk_batches if offload else 1
    last_commit = time.monotonic()
    try:
        first = entry["next_batch"]
        for start in range(first, identity["batches"], chunk_size):
            chunk = [_batch(stats, windows[b * batch_size:(b + 1) * batch_size], batch_size, seq_len, pad, on)
                     for b in range(start, min(start + chunk_size, identity["batches"]))]
            state = run(outer, chunk, state, places)
            jax.block_until_ready(state)
            entry["next_batch"] = start + len(chunk)
            progress.update(sum(c[3] for c in chunk))
            deviation = max(entry["center_deviation"], *(float(jnp.max(s["deviation"])) for s in state))
            entry["center_deviation"] = deviation
            if deviation > CENTER_TOLERANCE:
                raise StatsError(f"{model}: does not reproduce the example values of {stats.root} (a span's center "
                                 f"is {deviation:.3g} of its example's value away): other weights than those "
                                 f"collected ({stats.manifest['model']})? pass that checkpoint with --model")
            done = entry["next_batch"] >= identity["batches"]
            if done or time.monotonic() - last_commit >= flush_every_s:
                entry["complete"] = done
                _commit(store, entry, state, groups, slots, fresh)
                fresh, last_commit = False, time.monotonic()
                stats = open_stats(store.root)  # the windows read from the new generation
    finally:
        run.close()
    progress.update(0, force=True)
    return entry


def _batch(stats: Stats, windows: np.ndarray, batch_size: int, seq_len: int, pad: int, on: "_On") -> tuple:
    """One batch of the store's windows on the device (with a mesh, its rows split over `data`): (ids, mask [b, s],
    the window indices [b] (-2 in padding rows), how many windows)."""
    rows = stats.window_rows(windows)  # [r, s]: -1 after each window's end
    ids = np.full((batch_size, seq_len), pad, np.int32)  # [b, s]
    mask = np.zeros((batch_size, seq_len), bool)  # [b, s]
    mask[:len(windows)] = rows >= 0
    ids[:len(windows)] = np.where(rows >= 0, rows, pad)
    numbers = np.full(batch_size, -2, np.int32)  # [b]
    numbers[:len(windows)] = windows
    return (jax.device_put(ids, on.data), jax.device_put(mask, on.data), jax.device_put(numbers, on.replicated),
            len(windows))


class _On:
    """Where a run's arrays lie: with a ("data", "neurons") mesh (`opt_jax.sharding`), a batch's rows split over
    data, the layers stored split (`layer_shardings_for`), the spans and the examples' places split by neuron, and
    the steps run under the mesh; without one (None), everything on the default device."""

    def __init__(self, mesh):
        self.mesh = mesh
        named = (lambda *axes: NamedSharding(mesh, PartitionSpec(*axes))) if mesh is not None else (lambda *a: None)
        self.replicated, self.data = named(), named("data")
        self.neurons, self.layer_neurons = named(None, "neurons"), named("neurons")  # [g, n, ...], [n, ...]

    def stacked(self, layers: list) -> jax.Array:
        """Host arrays [n, ...] of a group's layers stacked on the device [g, n, ...], moved a layer at a time."""
        return jax.device_put(jnp.stack([jax.device_put(a, self.layer_neurons) for a in layers]), self.neurons)

    def layers(self, config):
        """Where the stacked layers go (None: the default device)."""
        return None if self.mesh is None else layer_shardings_for(config, self.mesh)

    def within(self):
        return within(self.mesh)


class _Resident:
    """Every layer on the device; one jitted step per batch."""

    def __init__(self, config, weights: Weights, before: int, span: int, on: _On):
        self.config, self.before, self.span, self.on = config, before, span, on
        self.layers = put_now(weights.layers.read(range(weights.layers.num_layers)), on.layers(config))

    def __call__(self, outer, chunk, state, places):
        for ids, mask, numbers, _ in chunk:
            params = {"embed": outer, "layers": self.layers}
            with self.on.within():
                new, _ = resident_step(self.config, self.before, self.span, params, ids, mask, numbers, state[0],
                                       places[0])
            state = [new]
        return state

    def close(self) -> None:
        """Nothing runs ahead."""


class _Streamed:
    """Layer groups streamed from the checkpoint, each running the whole chunk (layer-major)."""

    def __init__(self, config, groups: list[range], weights: Weights, before: int, span: int, on: _On):
        self.config, self.groups, self.before, self.span, self.on = config, groups, before, span, on
        self.stream = GroupStream(weights.layers, groups, on.layers(config))

    def __call__(self, outer, chunk, state, places):
        with self.on.within():
            hidden = [embed_step(self.config, outer, ids, mask) for ids, mask, _, _ in chunk]  # [b, s, d] each
        state = list(state)
        for gi in range(len(self.groups)):
            before = (tuple(hidden), state[gi - 1])
            group, layers = self.stream.next()
            for bi, (_, mask, numbers, _) in enumerate(chunk):
                with self.on.within():
                    hidden[bi], state[gi] = group_step(self.config, self.before, self.span, layers, hidden[bi],
                                                       mask, numbers, state[gi], places[gi])
            self.stream.advance(after=before)
        return state

    def close(self) -> None:
        self.stream.close()


def _commit(store: StatsStore, entry: dict, state: list, groups: list[range], slots: dict, fresh: bool) -> None:
    """Write the spans as the store's next generation with `entry` (every other array linked as it is); a block of
    one layer crosses from the device at a time."""
    _, ffn, _, span = state[0]["spans"].shape
    layouts = context_layouts(groups[-1].stop, ffn, slots, span)
    starts = dict(zip(slots, np.cumsum([0, *slots.values()])))  # kind -> its first slot in the state

    def place(layer):
        gi = next(gi for gi, g in enumerate(groups) if layer in g)
        return gi, layer - groups[gi].start

    def block_of(kind):
        def read(block):  # (layer, neurons, slots, span) slices, one layer
            gi, j = place(block[0].start)
            first = starts[kind]
            return np.asarray(state[gi]["spans"][j, block[1], first:first + slots[kind]])[None]  # [1, n, k, w]
        return read

    values = {name: (lambda block: None) for name in store.manifest["arrays"]}
    values |= {context_name(kind): block_of(kind) for kind in slots}
    store.commit({}, {"contexts": dict(entry)}, values=values, new=layouts if fresh else None)


def _say(verbose: bool, message: str) -> None:
    if verbose:
        print(message, flush=True)
