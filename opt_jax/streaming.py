"""Stream stacked layers from host memory to the device a group at a time, prefetching the next group."""

from __future__ import annotations

from typing import Iterator, Sequence

import jax

from opt_jax.model import Params


def split_layers(layers: Sequence[int], group_size: int, boundaries: Sequence[int] = ()) -> list[range]:
    """Consecutive ranges of at most `group_size` layers that never cross one of `boundaries`."""
    if group_size < 1:
        raise ValueError(f"group_size must be >= 1, got {group_size}")
    start, stop = layers[0], layers[-1] + 1
    cuts = sorted({start, stop, *(b for b in boundaries if start < b < stop)})
    groups = []
    for a, b in zip(cuts[:-1], cuts[1:]):
        groups += [range(i, min(i + group_size, b)) for i in range(a, b, group_size)]
    return groups


def layer_bytes(stacked: Params) -> int:
    """Bytes of one layer of a stacked parameter tree."""
    return sum(leaf[0].nbytes for leaf in jax.tree.leaves(stacked))


def group_size_for(stacked: Params, device=None, fraction: float = 0.3) -> int:
    """Layers per group so that two groups in flight use at most `fraction` of the device's memory."""
    device = device or jax.local_devices()[0]
    stats = device.memory_stats() if hasattr(device, "memory_stats") else None
    num_layers = jax.tree.leaves(stacked)[0].shape[0]
    if not stats or "bytes_limit" not in stats:
        return num_layers  # no separate device memory (the CPU): one group
    free = stats["bytes_limit"] - stats.get("bytes_in_use", 0)
    return int(max(1, min(num_layers, fraction * free // (2 * layer_bytes(stacked)))))


def slice_layers(stacked: Params, group: range) -> Params:
    """The host slice [group.start, group.stop) of every stacked leaf (a view, no copy)."""
    return jax.tree.map(lambda a: a[group.start:group.stop], stacked)


def stream_groups(stacked: Params, groups: Sequence[range], sharding=None) -> Iterator[tuple[range, Params]]:
    """Yield (group, its params on the device); the next group's transfer starts before this one is used."""
    def put(group):
        return jax.device_put(slice_layers(stacked, group), sharding)

    pending = put(groups[0]) if groups else None
    for i, group in enumerate(groups):
        current = pending
        pending = put(groups[i + 1]) if i + 1 < len(groups) else None
        yield group, current

