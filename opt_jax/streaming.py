"""Stream stacked layers to the device a group at a time, host reads and device transfers running ahead.

A layer source gives the stacked parameters of a range of layers: `StackedLayers` slices a tree
already in memory, `CheckpointLayers` reads only those layers' chunks of a converted checkpoint.
`GroupStream` cycles through the groups of a run: while group i computes, group i+1 is on its way
to the device and group i+2 is being read in a background thread, so host memory holds about two
groups, never the whole model.

On an accelerator the reader thread also copies each group into page-locked ("pinned") host memory, from
which the transfer is a direct DMA: measured on an H200 (BENCHMARKS.md), 55 GB/s against 7.4 GB/s from
ordinary pageable memory, which took 66b streaming from 33% to 58% of the matmul rate. The cost is host
memory: a group read ahead is held twice while it is staged (`check_memory` counts three groups).
"""

from __future__ import annotations

import collections
import functools
import itertools
from concurrent.futures import ThreadPoolExecutor
from typing import Sequence

import jax
import numpy as np

from opt_jax import checkpoint as ckpt
from opt_jax.config import OPTConfig
from opt_jax.errors import InputError
from opt_jax.model import Params, param_shapes, unflatten
from opt_jax.sharding import layer_shardings, split_axis


def split_layers(layers: Sequence[int], group_size: int, boundaries: Sequence[int] = ()) -> list[range]:
    """Consecutive ranges of at most `group_size` layers that never cross one of `boundaries`."""
    if group_size < 1:
        raise InputError(f"group_size must be >= 1, got {group_size}")
    start, stop = layers[0], layers[-1] + 1
    cuts = sorted({start, stop, *(b for b in boundaries if start < b < stop)})
    groups = []
    for a, b in zip(cuts[:-1], cuts[1:]):
        groups += [range(i, min(i + group_size, b)) for i in range(a, b, group_size)]
    return groups


def layer_bytes(layers, itemsize: int = 4, neurons: int = 1) -> int:
    """Bytes of one decoder layer: of a stacked parameter tree (host or device arrays; nothing is sliced), or of
    a model of this `OPTConfig` at `itemsize` bytes per value (the one place layer sizes are computed), then on
    each device of a neurons axis of size `neurons` (`opt_jax.sharding`)."""
    if isinstance(layers, OPTConfig):
        return _config_layer_bytes(layers, itemsize, neurons)
    return sum(leaf.nbytes // leaf.shape[0] for leaf in jax.tree.leaves(layers))


@functools.lru_cache(maxsize=64)
def _config_layer_bytes(config: OPTConfig, itemsize: int, neurons: int) -> int:
    """`layer_bytes` of a config, remembered: each answer traces the model's shapes (0.2 s), and a memory plan
    asks many times (`analyses.collection.plan.plan_runs` bisects)."""
    return itemsize * sum(int(np.prod(shape[1:])) // (1 if split_axis(shape, neurons) is None else neurons)
                          for path, shape in param_shapes(config).items() if path.startswith("layers/"))


def layer_shardings_for(config: OPTConfig, mesh) -> Params:
    """Where each stacked layer parameter of a model of this config lies on a ("data", "neurons") mesh
    (`opt_jax.sharding.layer_specs`), as a tree like the stacked layers, from the shapes alone."""
    shapes = {p: jax.ShapeDtypeStruct(s, np.float32) for p, s in param_shapes(config).items() if p.startswith("layers/")}
    return layer_shardings(mesh, unflatten(shapes)["layers"])


def slice_layers(stacked: Params, group: range) -> Params:
    """The slice [group.start, group.stop) of every stacked leaf (a view of host arrays, no copy)."""
    return jax.tree.map(lambda a: a[group.start:group.stop], stacked)


class StackedLayers:
    """A layer source over a stacked parameter tree already in memory (host or device)."""

    def __init__(self, stacked: Params):
        self.stacked = stacked
        self.num_layers = jax.tree.leaves(stacked)[0].shape[0]
        self.layer_bytes = layer_bytes(stacked)

    def read(self, group: range) -> Params:
        """The layers of `group`, stacked (views of the tree)."""
        return slice_layers(self.stacked, group)


class CheckpointLayers:
    """A layer source reading a converted checkpoint lazily: each read touches only its layers' chunks."""

    def __init__(self, root: str, dtype: str | None = None, num_layers: int | None = None):
        manifest = ckpt.read_manifest(root)
        ckpt.check_chunks(root, manifest)
        self.root = root
        self.shapes = {p: tuple(s) for p, s in manifest["params"].items() if p.startswith("layers/")}
        self.stores = {p: ckpt.open_array(root, p) for p in self.shapes}  # tensorstore handles, nothing read
        stored = next(iter(self.shapes.values()))[0]
        self.num_layers = min(num_layers or stored, stored)
        self.target = ckpt.DTYPES[ckpt.dtype_name(dtype)] if dtype else None
        itemsize = (self.target or ckpt.DTYPES[manifest["dtype"]]).itemsize
        self.layer_bytes = layer_bytes(OPTConfig.from_dict(manifest["config"]), itemsize)

    def read(self, group: range) -> Params:
        """The layers of `group` in host memory, stacked, cast to the source's dtype."""
        if not 0 <= group.start < group.stop <= self.num_layers:
            raise InputError(f"{self.root}: layers {group.start}..{group.stop - 1} are outside "
                             f"the {self.num_layers} layers read")
        pending = {p: s[group.start:group.stop].read() for p, s in self.stores.items()}  # all reads in flight
        # Each raw array is dropped once cast: a group costs its cast size plus one raw parameter, not both whole.
        flat = {p: self._cast(p, group, pending.pop(p)) for p in list(pending)}
        return unflatten(flat)["layers"]

    def _cast(self, path: str, group: range, future) -> np.ndarray:
        value = future.result()  # a damaged chunk: CheckpointError (ckpt.open_array)
        return value.astype(self.target, copy=False) if self.target is not None else value


def put_now(host: Params, sharding=None) -> Params:
    """Move parameters to the device and wait until they are there, so the host copy is freed on return.

    `jax.device_put` is asynchronous and keeps the host arrays alive until the copy is done: loading
    several groups in a row without waiting can hold all their host copies at once (on the CPU, where the
    device is the host, that is twice the weights).
    """
    return jax.block_until_ready(jax.device_put(host, sharding))


def group_size_for(source, device=None, fraction: float = 0.3) -> int:
    """Layers per group so that two groups in flight use at most `fraction` of the device's memory."""
    device = device or jax.local_devices()[0]
    stats = device.memory_stats() if hasattr(device, "memory_stats") else None
    if not stats or "bytes_limit" not in stats:
        return source.num_layers  # no separate device memory (the CPU): one group
    free = stats["bytes_limit"] - stats.get("bytes_in_use", 0)
    return int(max(1, min(source.num_layers, fraction * free // (2 * source.layer_bytes))))


class GroupStream:
    """The groups in order, cycling: `next()` gives the next group on the device, `advance()` moves the ones after.

    Use: `group, params = stream.next()`, dispatch its compute, then `stream.advance(after=outputs of the group
    before)`. `advance` waits for those outputs, issues the following group's transfer and starts reading the
    one after it in a background thread: while group i computes, group i+1 crosses to the device and group
    i+2 is read, so at most two groups are on the device and two in host memory, however far ahead of the
    device the host runs, across passes too. With at most two groups they are moved once and kept (both would
    be on the device anyway). `close()` stops the reader.
    """

    def __init__(self, source, groups: Sequence[range], sharding=None, pinned: bool | None = None):
        """`sharding`: where a group goes (None: the default device), or a tree of them like its params."""
        self.source, self.groups, self.sharding = source, list(groups), sharding
        self.pinned = _pinned_sharding(sharding) if (_accelerator(sharding) if pinned is None else pinned) else None
        self.resident = [put_now(source.read(g), sharding) for g in groups] if len(groups) <= 2 else None
        self._order = itertools.cycle(range(len(groups)))
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="opt_jax-layer-reader")
        self._reads = collections.deque()  # (group index, future of its host params)
        self._moving = collections.deque()  # (group index, its params on the device)

    def next(self) -> tuple[range, Params]:
        """The next group and its params on the device (moved now if `advance` has not moved it yet)."""
        if self.resident is not None:
            i = next(self._order)
            return self.groups[i], self.resident[i]
        if not self._moving:
            self._transfer()
        i, params = self._moving.popleft()
        return self.groups[i], params

    def advance(self, after=None) -> None:
        """Once `after` (arrays, or None) is ready: move the next group to the device, start reading the one after."""
        if self.resident is not None:
            return
        if after is not None:
            jax.block_until_ready(after)
        if not self._moving:
            self._transfer()
        if not self._reads:
            self._read_next()

    def close(self) -> None:
        """Stop the background reader (cancelling a read not yet started) and drop the groups ahead."""
        self._pool.shutdown(wait=True, cancel_futures=True)
        self._reads.clear()
        self._moving.clear()

    def _read_next(self) -> None:
        i = next(self._order)
        self._reads.append((i, self._pool.submit(self._read, self.groups[i])))

    def _read(self, group: range) -> Params:
        """(In the reader thread.) The group's host params, copied into pinned host memory when staging."""
        host = self.source.read(group)
        if self.pinned is None or not all(isinstance(a, np.ndarray) for a in jax.tree.leaves(host)):
            return host  # no staging, or a source that already gives device arrays
        return jax.block_until_ready(jax.device_put(host, self.pinned))

    def _transfer(self) -> None:
        if not self._reads:
            self._read_next()
        i, future = self._reads.popleft()
        self._moving.append((i, self._put(future.result())))

    def _put(self, host: Params) -> Params:
        if self.pinned is not None and self.sharding is None:
            return jax.device_put(host, self.pinned.with_memory_kind("device"))
        return jax.device_put(host, self.sharding)


def _target(sharding) -> jax.Device:
    """A device of the stream's sharding (one, or a tree of them like the group's params)."""
    leaves = jax.tree.leaves(sharding)
    return next(iter(leaves[0].device_set)) if leaves else jax.local_devices()[0]


def _accelerator(sharding) -> bool:
    """Whether the stream's device is an accelerator with page-locked host memory to stage through."""
    device = _target(sharding)
    return device.platform != "cpu" and "pinned_host" in {m.kind for m in device.addressable_memories()}


def _pinned_sharding(sharding):
    """The stream's sharding, in pinned host memory."""
    if sharding is None:
        return jax.sharding.SingleDeviceSharding(_target(None), memory_kind="pinned_host")
    return jax.tree.map(lambda s: s.with_memory_kind("pinned_host"), sharding)
