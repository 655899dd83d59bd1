"""Streamed collection reads layers lazily: only the groups it needs, two ahead, with bounded host memory."""

import jax
import numpy as np
import pytest

import analyses
import opt_jax
from benchmarks import conversion as bench
from opt_jax import checkpoint as ckpt
from opt_jax.streaming import CheckpointLayers, GroupStream, StackedLayers, split_layers
from helpers import FakeDevice as _FakeDevice

SEQ = 12


class CountingSource(StackedLayers):
    """An in-memory layer source that records every group it is asked for."""

    def __init__(self, stacked):
        super().__init__(stacked)
        self.reads = []

    def read(self, group):
        self.reads.append(group)
        return super().read(group)


def test_group_stream_cycles_reading_at_most_two_groups_ahead():
    stacked = {"w": np.arange(7 * 3, dtype=np.float32).reshape(7, 3)}  # [l, 3]
    source = CountingSource(stacked)
    groups = split_layers(range(7), 2)  # [0, 2), [2, 4), [4, 6), [6, 7)
    stream = GroupStream(source, groups)
    returned = []
    for k in range(3 * len(groups)):  # three passes
        group, params = stream.next()
        assert group == groups[k % len(groups)]
        np.testing.assert_array_equal(np.asarray(params["w"]), stacked["w"][group.start:group.stop])
        stream.advance()
        assert len(source.reads) <= k + 3, "reads more than two groups ahead of the one computing"
        returned.append(group)
    stream.close()  # may cancel the last read ahead before it starts
    # Every group read once per pass, in order, and at most the next two groups beyond the last one returned.
    assert source.reads == [groups[k % len(groups)] for k in range(len(source.reads))]
    assert len(returned) + 1 <= len(source.reads) <= len(returned) + 2


def test_group_stream_keeps_one_or_two_groups_on_the_device():
    source = CountingSource({"w": np.ones((3, 2), np.float32)})
    stream = GroupStream(source, split_layers(range(3), 2))
    for _ in range(4):
        stream.next()
        stream.advance()
    stream.close()
    assert source.reads == [range(0, 2), range(2, 3)], "two groups are moved once and kept"


def test_checkpoint_layers_read_only_the_group(tiny_model):
    full = ckpt.read_params(tiny_model)
    source = CheckpointLayers(tiny_model, "bfloat16")
    group = source.read(range(1, 3))
    fc1 = group["ffn"]["fc1"]["weight"]  # [2, f, d]
    assert fc1.shape[0] == 2 and fc1.dtype == ckpt.DTYPES["bfloat16"]
    np.testing.assert_array_equal(fc1, full["layers/ffn/fc1/weight"][1:3].astype(fc1.dtype))
    assert source.num_layers == 3 and source.layer_bytes == bench.layer_bytes(ckpt.read_config(tiny_model), 2)
    with pytest.raises(ValueError, match="outside the 2 layers"):
        CheckpointLayers(tiny_model, num_layers=2).read(range(1, 3))


def test_a_corrupt_layer_chunk_is_reported_with_its_file(tiny_model, tmp_path):
    import shutil

    copy = str(tmp_path / "m")
    shutil.copytree(tiny_model, copy)
    chunk = tmp_path / "m" / "params" / "layers" / "ffn" / "fc1" / "weight" / "c" / "1" / "0" / "0"
    with open(chunk, "r+b") as f:
        f.truncate(10)
    source = CheckpointLayers(copy)
    source.read(range(0, 1))  # other layers' chunks are untouched
    with pytest.raises(opt_jax.CheckpointError,
                       match=r"the parameter 'layers/ffn/fc1/weight' has a damaged chunk \(.*/weight/c/1/0/0: "):
        source.read(range(1, 3))


def test_streamed_collection_reads_layer_groups_lazily_and_equals_resident(tiny_model, tiny_corpus, tmp_path,
                                                                           monkeypatch):
    eager, lazy = [], []
    read_params, read_group = ckpt.read_params, CheckpointLayers.read
    monkeypatch.setattr(ckpt, "read_params", lambda *a, **k: eager.append(k.get("layers")) or read_params(*a, **k))
    monkeypatch.setattr(CheckpointLayers, "read", lambda self, g: lazy.append(g) or read_group(self, g))
    kwargs = dict(seq_len=SEQ, batch_size=2, verbose=False, token_layers=(0, 2), ngram_orders=(2,))
    streamed = analyses.open_stats(analyses.collect(tiny_model, [tiny_corpus], str(tmp_path / "s"), offload=True,
                                                    group_size=1, chunk_batches=2, **kwargs))
    assert eager == [slice(0, 0)], "streamed mode reads no layer up front"
    batches = -(-streamed.sequences // 2)
    chunks = -(-batches // 2)
    assert chunks >= 3
    groups = [range(0, 1), range(1, 2), range(2, 3)]
    assert lazy == [groups[k % 3] for k in range(len(lazy))], "each pass reads the groups once, in order"
    assert 3 * chunks <= len(lazy) <= 3 * chunks + 2  # plus at most the next two groups read ahead
    resident = analyses.open_stats(analyses.collect(tiny_model, [tiny_corpus], str(tmp_path / "r"), **kwargs))
    for name in ("act", "pos_act", "tok_act", "pos_tokens", "token_occ"):
        np.testing.assert_array_equal(np.asarray(getattr(streamed, name)), np.asarray(getattr(resident, name)),
                                      err_msg=name)
    a, b = streamed.ngram_table().to_arrays(), resident.ngram_table().to_arrays()
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def test_parameters_held_in_memory_stream_like_the_checkpoint(tiny_model):
    from analyses.collection import Options, Runner, Weights, make_plan
    from opt_jax.model import unflatten

    config = ckpt.read_config(tiny_model)
    options = Options(seq_len=SEQ, batch_size=2, offload=True, group_size=1, chunk_batches=2, verbose=False)
    plan = make_plan(config, options)
    rng = np.random.default_rng(0)
    chunk = [(rng.integers(3, config.vocab_size, (2, SEQ), dtype=np.int32), np.ones((2, SEQ), bool)) for _ in range(2)]
    counts = []
    for model in (tiny_model, Weights.in_memory(unflatten(ckpt.read_params(tiny_model)))):
        runner = Runner(model, plan, options)
        assert len(runner.groups) == 3 and runner.stream.resident is None  # really streamed
        runner.run(chunk)
        runner.run(chunk)
        runner.close()
        deltas = runner.counters.deltas()
        counts.append((deltas["act"], np.stack([runner.counters.layer_counts("pos_act", l) for l in range(3)]),
                       runner.counters.layer_counts("tok_act", 0)))
    for lazy, held in zip(*counts):
        np.testing.assert_array_equal(lazy, held)
    assert counts[0][0].sum() > 0


# Layers of 50 MB (float32), a small embedding: the layers dominate what a full read costs.
LAYER_SHAPE = dict(hidden_size=1024, num_attention_heads=16, ffn_dim=4096, word_embed_proj_dim=1024, vocab_size=1000,
                   max_position_embeddings=64)

_RUN = """
from analyses.collection import Options, Runner, make_plan
config = checkpoint.read_config({path!r})
options = Options(seq_len=16, batch_size=2, offload=True, group_size=1, chunk_batches=2, token_layers=(),
                  verbose=False)
runner = Runner({path!r}, make_plan(config, options), options)
rng = np.random.default_rng(0)
for _ in range(2):  # two chunks: the stream wraps around to the first groups
    chunk = [(rng.integers(3, 1000, (2, 16), dtype=np.int32), np.ones((2, 16), bool)) for _ in range(2)]
    runner.run(chunk)
    runner.wait()
runner.close()
"""
_READ_ALL = "params = checkpoint.read_params({path!r})"
_SETUP = "import numpy as np\nfrom opt_jax import checkpoint"


def _write_random_checkpoint(root: str, layers: int) -> str:
    """A converted float32 checkpoint of LAYER_SHAPE with `layers` layers, written directly (no HF checkpoint, no
    conversion: what is measured is the reading). Every layer stores the same random values, one draw per
    parameter: each layer's chunks are still its own bytes on disk, read on their own."""
    config = opt_jax.OPTConfig(num_hidden_layers=layers, **LAYER_SHAPE)
    rng = np.random.default_rng(0)
    flat = {}
    for path, shape in ckpt.param_shapes(config).items():
        if path.startswith("layers/"):
            layer = 0.02 * rng.standard_normal(shape[1:], np.float32)  # HF's spread of weights
            flat[path] = lambda _, layer=layer: layer
        else:
            flat[path] = 0.02 * rng.standard_normal(shape, np.float32)
    return ckpt.write_checkpoint(root, config, flat, "float32", source="random (test_streaming_lazy)")


def test_streamed_peak_memory_grows_by_less_than_two_layers_from_4_to_16_layers(tmp_path, monkeypatch):
    """Groups of one layer: the stream holds a few (two on the device, two in host memory) whatever the depth."""
    # A fixed mmap threshold: freed arrays of 4 MB and more go back to the system at once, so peak RSS measures what
    # the code holds, not what glibc's heap retains (+-80 MB between runs without it; a 66b leaf is >= 170 MB anyway).
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", str(1 << 20))
    peaks, eager = {}, {}
    for layers in (4, 16):
        path = _write_random_checkpoint(str(tmp_path / f"m{layers}"), layers)
        peaks[layers] = bench.measure_in_subprocess(_RUN.format(path=path), _SETUP)["peak_rss"]
        eager[layers] = bench.measure_in_subprocess(_READ_ALL.format(path=path), _SETUP)["peak_rss"]
    layer = bench.layer_bytes(opt_jax.OPTConfig(num_hidden_layers=16, **LAYER_SHAPE))  # ~50 MB
    growth, eager_growth = peaks[16] - peaks[4], eager[16] - eager[4]
    assert eager_growth > 10 * layer, f"the measurement must see a full read (+{eager_growth / 1e6:.0f} MB)"
    assert growth < 2 * layer, (f"streamed peak RSS grew by {growth / 1e6:.0f} MB for 12 more layers "
                                f"(one layer is {layer / 1e6:.0f} MB; a full read grew by {eager_growth / 1e6:.0f} MB)")


H200_HOST = 128 * 10**9  # the host memory of the GPU machine


def test_66b_runs_that_cannot_fit_on_the_device_are_refused_before_allocating():
    from analyses.collection import values
    from analyses.collection.plan import Options, check_memory, make_plan
    from analyses.collection.statistics import accumulator_bytes

    config = opt_jax.for_size("66b")
    layer = bench.layer_bytes(config, 2)  # 2.04 GB in bf16
    h200 = _FakeDevice(141 * 10**9)
    every = Options(offload=True, group_size=4)  # tok_act for the first half, 32 layers
    plan = make_plan(config, every)
    groups = plan.groups(4)
    pos_act, tok_act = 64 * 2048 * 36864 * 4, 50272 * 36864 * 4
    examples = 64 * 36864 * 16 * 2 * (4 + 4 + 4)  # k = 16, two sets of (window, position, value): 0.91 GB
    assert values.num_bins(values.PER_OCTAVE) == 36
    value_hist = 64 * 36864 * 36 * 4  # int32 [layers, ffn, bins]: 0.34 GB
    assert accumulator_bytes(plan, groups) == (pos_act + 32 * tok_act + 64 * 36864 * 4 + examples
                                               + value_hist)  # 19.3 + 237.2 + 0.9 + 0.3 GB
    with pytest.raises(analyses.StatsError, match=r"fake H200: the counters .*tok_act 32 layers x 7.4 GB"):
        check_memory(plan, groups, layer, every, h200, H200_HOST)
    subset = Options(offload=True, group_size=4, token_layers=tuple(range(11)))  # one of three passes
    plan = make_plan(config, subset)
    check_memory(plan, plan.groups(4), layer, subset, h200, H200_HOST)  # 19.3 + 81.5 + 16.3 GB of weights: fits
    resident = Options(token_layers=tuple(range(11)))
    with pytest.raises(analyses.StatsError, match=r"weights on the device \(130.5 GB\)"):
        check_memory(plan, plan.groups(), layer, resident, h200, H200_HOST)


def test_on_the_cpu_a_run_that_cannot_fit_in_host_memory_is_refused_before_allocating():
    """Where the device is the host, weights + counters + temporaries are checked against psutil's available."""
    from analyses.collection.plan import Options, check_memory, make_plan

    config = opt_jax.for_size("66b").replace(num_hidden_layers=2)
    layer = bench.layer_bytes(config, 4)  # 4.08 GB in float32
    options = Options(offload=True, group_size=1, token_layers=(0, 1), seq_len=512, batch_size=1)
    plan = make_plan(config, options)
    cpu = jax.devices("cpu")[0]
    with pytest.raises(analyses.StatsError, match=r"host memory, shared with the device.*tok_act 2 layers x 7.4 GB.*"
                                                  r"weights on the device \(8.2 GB\).*--token_layers.*--dtype"):
        check_memory(plan, plan.groups(1), layer, options, cpu, host_available=20 * 10**9)
    one = Options(offload=True, group_size=1, token_layers=(0,), seq_len=512, batch_size=1)
    check_memory(make_plan(config, one), plan.groups(1), layer, one, cpu, host_available=20 * 10**9)  # 16 GB: fits
