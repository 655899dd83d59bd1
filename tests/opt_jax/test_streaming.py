"""Layer groups streamed host -> device."""

import jax
import numpy as np
import pytest

from opt_jax.streaming import GroupStream, StackedLayers, group_size_for, layer_bytes, split_layers
from helpers import FakeDevice as _FakeDevice


def test_split_layers_respects_size_and_boundaries():
    groups = split_layers(range(10), 4, boundaries=[3])
    assert groups == [range(0, 3), range(3, 7), range(7, 10)]
    assert [l for g in groups for l in g] == list(range(10))
    assert split_layers(range(5), 10) == [range(0, 5)]
    with pytest.raises(ValueError):
        split_layers(range(5), 0)


def test_group_stream_yields_each_group_on_the_device_in_order():
    stacked = {"w": np.arange(9 * 4, dtype=np.float32).reshape(9, 4), "b": {"c": np.ones((9, 2), np.int32)}}
    groups = split_layers(range(9), 4)
    stream = GroupStream(StackedLayers(stacked), groups)
    seen = []
    for _ in range(2 * len(groups)):
        group, params = stream.next()
        stream.advance(after=jax.numpy.zeros(3))
        assert isinstance(params["w"], jax.Array) and isinstance(params["b"]["c"], jax.Array)
        np.testing.assert_array_equal(np.asarray(params["w"]), stacked["w"][group.start:group.stop])
        seen.append(group)
    stream.close()
    assert seen == 2 * [range(0, 4), range(4, 8), range(8, 9)]


def test_group_size_from_device_memory():
    stacked = StackedLayers({"w": np.zeros((64, 1000), np.float32)})  # 4000 bytes a layer
    assert layer_bytes(stacked.stacked) == stacked.layer_bytes == 4000 and stacked.num_layers == 64
    # 0.3 of 100 kB free, two groups in flight: 30000 // 8000 = 3 layers.
    assert group_size_for(stacked, _FakeDevice(110_000, 10_000)) == 3
    assert group_size_for(stacked, _FakeDevice(1_000, 999)) == 1
    assert group_size_for(stacked, _FakeDevice(10**12, 0)) == 64


def test_group_stream_staged_through_pinned_memory_gives_the_same_device_params():
    """The accelerator path (staging each group in page-locked host memory) forced on the CPU."""
    stacked = {"w": np.random.default_rng(0).normal(size=(7, 5)).astype(np.float32)}
    groups = split_layers(range(7), 3)
    stream = GroupStream(StackedLayers(stacked), groups, pinned=True)
    assert stream.pinned is not None and stream.pinned.memory_kind == "pinned_host"
    for _ in range(2 * len(groups)):
        group, params = stream.next()
        stream.advance()
        assert params["w"].sharding.memory_kind == "device"
        np.testing.assert_array_equal(np.asarray(params["w"]), stacked["w"][group.start:group.stop])
    stream.close()
    assert GroupStream(StackedLayers(stacked), groups).pinned is None  # the CPU default: no staging
