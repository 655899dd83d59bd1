"""The device side of a collection run: weights in, batches through, counters out.

`Runner` holds what one run keeps on the device (the embedding, the counters, the mesh) and runs chunks of
batches through an executor, one of two behind the same small interface (`run(chunk, fired)`, `close()`):
`Resident` (every collected layer on the device, one jitted step per batch) and `Streamed` (layer groups
read from a layer source two groups ahead and moved to the device one group ahead, layer-major over the
chunk). Both give identical counters. When n-grams are counted, the runner keeps the token layers'
packed masks of each batch before the next step overwrites them (resident: a copy on the device; streamed:
on the host) and adds them to its `NgramTable`, by default in a background thread while the next batches
run (`Options.background_ngrams`; `settle()` waits for it).

A commit reads the counters as `Counters`: the live ones (`Runner.counters`), or a snapshot taken with
`take_counters()`, which hands the run fresh counters at once so that the commit can be written behind it
(`Runner.snapshot` says where the snapshot lives: on the device, copied to the host, or nowhere when
neither has room for a second set; see `check_memory`). Fresh counters are zero, except the running example
sets: those are the run's since the store's first batch (`prime_examples` on a resume), carried across commits.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from analyses.collection import statistics as st
from analyses.collection.background import Behind
from analyses.collection.plan import Options, check_memory
from opt_jax import checkpoint as ckpt
from opt_jax.bits import unpack_masks
from opt_jax.errors import StatsError
from opt_jax.model import Params, unflatten
from opt_jax.sharding import run_mesh, within
from opt_jax.streaming import (CheckpointLayers, GroupStream, StackedLayers, group_size_for, layer_shardings_for,
                               put_now)


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


class Resident:
    """Every collected layer group on the device for the whole run; one jitted step per batch."""

    stream = None

    def __init__(self, runner: "Runner"):
        self.runner = runner
        self.group_params = [put_now(runner.layers.read(g), runner.layer_sharding) for g in runner.groups]

    def run(self, on_device: list, fired: list) -> None:
        """Each batch through the whole model in one step, counting into the runner's counters."""
        r = self.runner
        for bi, (ids, mask, first_window) in enumerate(on_device):
            with r.on_mesh():
                r.accs, _ = st.resident_step(r.plan.config, r.embed_params, self.group_params, ids, mask, r.accs,
                                             first_window)
            for gi in range(len(r.groups)):
                r.keep_masks(gi, fired[bi], on_device=r.options.background_ngrams)

    def close(self) -> None:
        """Nothing runs ahead."""


class Streamed:
    """Layer groups streamed from the source: each crosses to the device once per chunk of batches."""

    def __init__(self, runner: "Runner"):
        self.runner = runner
        self.stream = GroupStream(runner.layers, runner.groups, runner.layer_sharding)

    def run(self, on_device: list, fired: list) -> None:
        """The whole chunk through group 0, then group 1, ... (layer-major)."""
        r = self.runner
        with r.on_mesh():
            hidden = [st.embed_step(r.plan.config, r.embed_params, ids, mask) for ids, mask, _ in on_device]
        for gi in range(len(r.groups)):
            self._group(gi, on_device, hidden, fired)

    def _group(self, gi: int, on_device: list, hidden: list, fired: list) -> None:
        """Run every batch of the chunk through group gi, then move the next group in once group gi-1 is done."""
        r = self.runner
        before = (tuple(hidden), r.accs[gi - 1])  # outputs of group gi-1 (gi = 0: of the previous chunk's last)
        group, params = self.stream.next()
        assert group == r.groups[gi], (group, r.groups[gi])
        first_layer = np.int32(group.start)
        for bi, (ids, mask, first_window) in enumerate(on_device):
            with r.on_mesh():
                hidden[bi], r.accs[gi] = st.group_step(r.plan.config, params, hidden[bi], mask, ids, r.accs[gi],
                                                       first_layer, first_window)
            r.keep_masks(gi, fired[bi])
        # Group gi is dispatched: while it computes, group gi+1 crosses and gi+2 is read. Waiting for gi-1 first
        # keeps at most two groups on the device and two in host memory however far ahead the host runs.
        self.stream.advance(after=before)

    def close(self) -> None:
        """Stop reading layers ahead."""
        self.stream.close()


class Runner:
    """Holds the device state of one run: the executor (resident or streamed) and the counters.

    Also the unit benchmarks time: `Runner(model_path or Weights, make_plan(config, options), options).run(batches)`.
    `ngrams` (an `NgramTable`) counts n-grams of the token layers' masks; `ngram_neurons` (bool
    [token_layers, ffn]) restricts them to some neurons (None: all).
    """

    def __init__(self, model: str | Weights, plan: st.Plan, options: Options, ngrams=None,
                 ngram_neurons: np.ndarray | None = None):
        self.plan, self.options = plan, options
        self.ngrams, self.ngram_neurons = ngrams, ngram_neurons
        mesh = self.mesh = run_mesh(plan.config, options.batch_size, options.mesh)  # ("data",) without --mesh
        devices = list(mesh.devices.flat)
        self.replicated = NamedSharding(mesh, PartitionSpec())
        self.data = NamedSharding(mesh, PartitionSpec("data"))
        self.layer_sharding = self.replicated if options.mesh is None else layer_shardings_for(plan.config, mesh)
        weights = model if isinstance(model, Weights) else \
            Weights.from_checkpoint(model, options.dtype, plan.num_layers)
        if weights.layers.num_layers < plan.num_layers:
            raise StatsError(f"the weights have {weights.layers.num_layers} layers; the plan needs {plan.num_layers}")
        self.embed_params = jax.device_put({"embed": weights.embed}, self.replicated)
        self.layers = weights.layers
        self.groups = plan.groups((options.group_size or group_size_for(self.layers)) if options.offload else None)
        self.snapshot = check_memory(plan, self.groups, self.layers.layer_bytes, options, devices[0])
        self.counting = Behind("ngrams")
        self.executor = Streamed(self) if options.offload else Resident(self)
        self.accs: list[dict] = []
        self.reset()

    @property
    def stream(self) -> GroupStream | None:
        """The group stream of a streamed run (None when resident)."""
        return self.executor.stream

    def on_mesh(self):
        """The context the steps are traced and run in: with `--mesh`, its mesh (the model's `constrain` marks
        then split the work, `opt_jax.sharding`); without, none (the steps as they always were)."""
        return within(None if self.options.mesh is None else self.mesh)

    def reset(self, examples: list | None = None, fresh: bool = False) -> None:
        """Empty the device counters (after a commit); the running example sets go on as they are, or as
        `examples` (one per group) gives them: they are not counts of the batches since a commit but the run's
        sets, which a commit writes whole (`prime_examples`). `fresh`: empty sets too, as a new run's."""
        batch = self.options.batch_size if self.options.ngram_orders and self.plan.token_layers else None
        if examples is None and not fresh and self.plan.examples and self.accs:
            examples = [acc["examples"] for acc in self.accs]
        self.accs = []  # the old counters go first, unless a snapshot holds them (`take_counters`)
        for gi, g in enumerate(self.groups):
            acc = st.zero_accumulators(self.plan, g, batch, with_examples=examples is None)
            sharding = self.replicated if self.options.mesh is None else st.counter_shardings(self.mesh, acc)
            acc = jax.device_put(acc, sharding)
            if examples is not None:
                acc["examples"] = examples[gi]
            self.accs.append(acc)

    def prime_examples(self, stored) -> None:
        """Start the running example sets from a store's committed ones (`store.stored_examples`): a function of a
        layer giving {kind: {window, position, value: [ffn, slots]}}. A resumed run then goes on with the sets
        and thresholds it had (few tokens of a late batch enter them, `analyses.collection.examples`), and its
        sets hold every example since the store's first batch, which is what a commit writes."""
        for gi, g in enumerate(self.groups):
            live = self.accs[gi]["examples"]
            layers = [stored(layer) for layer in g]
            sets = {kind: {f: np.stack([layer[kind][f] for layer in layers]) for f in fields}
                    for kind, fields in live.items()}  # [g, ffn, slots]
            self.accs[gi]["examples"] = jax.device_put(sets, jax.tree.map(lambda a: a.sharding, live))

    @property
    def counters(self) -> "Counters":
        """The live counters, as a commit reads them (valid until the next `run` or `reset`)."""
        return Counters(self.accs, self.groups, self.plan)

    def take_counters(self) -> "Counters":
        """The counters so far, for a commit written behind the run, and fresh zero counters for the run.

        The snapshot stays on the device (`snapshot == "device"`: the old arrays, no copy) or is copied to the
        host first (`"host"`: the step loop waits for the copy, not for the commit); with no room for it
        (`snapshot is None`) this is refused: commit `counters` and `reset` instead."""
        if self.snapshot is None:
            raise StatsError("no room for a snapshot of the counters: commit them before counting on")
        kept = [{name: a for name, a in acc.items() if name != "masks"} for acc in self.accs]
        if self.snapshot == "host":
            kept = jax.device_get(kept)
            self.reset()
        else:  # the run goes on with copies of the sets: each step donates the arrays it is given
            self.reset([jax.tree.map(lambda a: a.copy(), acc["examples"]) for acc in kept] if self.plan.examples
                       else None)
        return Counters(kept, self.groups, self.plan)

    def run(self, chunk: list[tuple[np.ndarray, np.ndarray]], first_windows: list[int] | None = None) -> None:
        """Add the activations of a list of batches into the device counters; batch j's row 0 is window
        `first_windows[j]` of the run's window stream (default: 0 for every batch, when no example matters)."""
        first_windows = first_windows or [0] * len(chunk)
        on_device = [(jax.device_put(ids, self.data), jax.device_put(mask, self.data), np.int32(w))
                     for (ids, mask), w in zip(chunk, first_windows)]
        fired = [{} for _ in chunk]  # per batch: token layer index -> packed masks, for n-grams
        self.executor.run(on_device, fired)
        if self.ngrams is None:
            return
        count = functools.partial(self._count_ngrams, chunk, fired)
        if self.options.background_ngrams:  # behind the next batches; waits for the previous chunk's count
            self.counting.submit(f"counting the n-grams of {len(chunk)} batch(es)", count)
        else:
            count()

    def _count_ngrams(self, chunk: list, fired: list) -> None:
        """Add a chunk's n-grams to the table, batch by batch (`NgramTable.add`: a batch counts whole or not)."""
        for (ids, mask), packed in zip(chunk, fired):
            active = {t: unpack_masks(np.asarray(m), self.plan.ffn) for t, m in packed.items()}  # [b, s, n] each
            if self.ngram_neurons is not None:
                active = {t: a & self.ngram_neurons[t] for t, a in active.items()}  # [b, s, n] each
            self.ngrams.add(ids, mask, active)

    def settle(self) -> None:
        """Wait until the n-grams of every batch run so far are counted; raise a counting error here."""
        self.counting.wait()

    def keep_masks(self, gi: int, into: dict, on_device: bool = False) -> None:
        """Keep a token group's packed masks of the batch just run (the next step overwrites them): copied to
        the host now, or `on_device` as a copy there that the counting thread reads once the step is done."""
        if self.ngrams is None or "masks" not in self.accs[gi]:
            return
        masks = self.accs[gi]["masks"]  # [g, b, s, n / 8]
        if not on_device:  # a copy: on the CPU np.asarray may alias the buffer the next step overwrites
            masks = np.array(masks, copy=True)
        for j, layer in enumerate(self.groups[gi]):
            into[self.plan.token_layers.index(layer)] = masks[j]  # [b, s, n / 8]: on the device a new array

    def close(self, error: BaseException | None = None) -> None:
        """Stop reading layers ahead (streamed mode) and counting n-grams; the counters stay readable.
        With the caller's `error` being raised, a counting error is noted on it rather than raised."""
        try:
            self.counting.close(error)
        finally:
            self.executor.close()

    def wait_steps(self) -> None:
        """Block until every dispatched step has finished (their n-grams may still be counting behind)."""
        jax.block_until_ready(self.accs)

    def wait(self) -> None:
        """Block until every dispatched step has finished and its n-grams are counted (for timing)."""
        self.wait_steps()
        self.settle()


class Counters:
    """One set of a run's counters by layer group (device or host arrays alike), read as a commit needs them."""

    def __init__(self, accs: list[dict], groups: list[range], plan: st.Plan):
        self.accs, self.groups, self.plan = accs, groups, plan

    def deltas(self) -> dict:
        """The counters as store deltas: act (and value_hist) whole; pos_act and tok_act one block at a time.

        A block (the store's chunk: one layer, some positions or token rows, some neurons) is sliced on the
        device and only it crosses to the host, so a flush holds at most a chunk of a [vocab, ffn] layer.
        """
        token_layers = self.plan.token_layers

        def block_of(name, layer_of):
            def read(block):  # (layers, rows, neurons) slices, one layer
                gi, j = self._place(layer_of(block[0].start))
                return np.asarray(self.accs[gi][name][(j, *block[1:])], np.int64)[None]  # [1, r, n]
            return read

        deltas = {
            "act": np.concatenate([np.asarray(a["act"], np.int64) for a in self.accs]),  # [l, n]
            "pos_act": block_of("pos_act", lambda l: l),
            "tok_act": block_of("tok_act", lambda t: token_layers[t]),
        }
        if self.plan.value_bins:
            deltas["value_hist"] = np.concatenate([np.asarray(a["value_hist"], np.int64)
                                                   for a in self.accs])  # [l, n, bins]
        return deltas

    def example_sets(self, layer: int) -> dict:
        """One layer's running example sets on the host: {kind: {window, position, value: [ffn, k]}}."""
        gi, j = self._place(layer)
        return {kind: {f: np.asarray(a[j]) for f, a in fields.items()}
                for kind, fields in self.accs[gi]["examples"].items()}

    def layer_counts(self, name: str, layer: int) -> np.ndarray:
        """One layer's counter (`pos_act` by layer, `tok_act` by token layer index) as int64 on the host."""
        gi, j = self._place(self.plan.token_layers[layer] if name == "tok_act" else layer)
        return np.asarray(self.accs[gi][name][j], np.int64)

    def _place(self, layer: int) -> tuple[int, int]:
        """(group index, index within the group) of a collected layer: where its counters are."""
        gi = next(gi for gi, g in enumerate(self.groups) if layer in g)
        return gi, layer - self.groups[gi].start
