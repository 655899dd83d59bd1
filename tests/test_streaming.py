"""Layer groups streamed host -> device."""

import jax
import numpy as np
import pytest

from opt_jax.streaming import group_size_for, layer_bytes, split_layers, stream_groups


def test_split_layers_respects_size_and_boundaries():
    groups = split_layers(range(10), 4, boundaries=[3])
    assert groups == [range(0, 3), range(3, 7), range(7, 10)]
    assert [l for g in groups for l in g] == list(range(10))
    assert split_layers(range(5), 10) == [range(0, 5)]
    with pytest.raises(ValueError):
        split_layers(range(5), 0)


def test_stream_groups_yields_each_group_on_the_device():
    stacked = {"w": np.arange(6 * 4, dtype=np.float32).reshape(6, 4), "b": {"c": np.ones((6, 2), np.int32)}}
    seen = []
    for group, params in stream_groups(stacked, split_layers(range(6), 4)):
        assert isinstance(params["w"], jax.Array)
        np.testing.assert_array_equal(np.asarray(params["w"]), stacked["w"][group.start:group.stop])
        seen.append(group)
    assert seen == [range(0, 4), range(4, 6)]


class _FakeDevice:
    def __init__(self, limit, in_use):
        self.stats = {"bytes_limit": limit, "bytes_in_use": in_use}

    def memory_stats(self):
        return self.stats


def test_group_size_from_device_memory():
    stacked = {"w": np.zeros((64, 1000), np.float32)}  # 4000 bytes a layer
    assert layer_bytes(stacked) == 4000
    # 0.3 of 100 kB free, two groups in flight: 30000 // 8000 = 3 layers.
    assert group_size_for(stacked, _FakeDevice(110_000, 10_000)) == 3
    assert group_size_for(stacked, _FakeDevice(1_000, 999)) == 1
    assert group_size_for(stacked, _FakeDevice(10**12, 0)) == 64
