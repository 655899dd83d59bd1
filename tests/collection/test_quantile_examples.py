"""Quantile examples (`--quantile_examples K`): K activations of each neuron and value bin, the bin's smallest
`random` ranks, read as `Stats.examples(layer, neuron, "quantile")` band by band.

References: a plain numpy selection over the whole stream of planted fc1 values (each bin's activations sorted by
(rank, window, position), the first K); for a collected store, transformers' torch `OPTForCausalLM` fc1 outputs
(forward hooks) of each window, binned by numpy against the manifest's edges. Uniformity: over many neurons of
planted values, how often each token of a band is drawn, against a chi-square bound. Resume, processes, devices and
joins compare the quantile set with the others through `helpers.assert_same_stats` (test_collect_runs.py,
test_join.py).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from transformers import AutoTokenizer

import analyses
from analyses.collection import examples as ex
from analyses.collection import statistics as st
from analyses.collection import values
from analyses.collection.contexts import add_contexts
from analyses.collection.plan import Options, make_plan, working_bytes
from analyses.collection.store import quantile_bands
from opt_jax.errors import StatsError

from conftest import DOCS
from hf_models import torch_fc1

SEQ, K = 12, 2
_update = jax.jit(ex.update_quantile, static_argnums=6)


def _planted(rng, windows: int, seq: int, n: int, per_octave: int, bins_used) -> np.ndarray:
    """fc1 [windows, seq, n]: each value inside a bin drawn from `bins_used` (strictly between its edges), a third of
    them negative (not firing)."""
    edges = np.concatenate([[2.0 ** (values.LOWEST - 1)], values.edges(per_octave), [2.0 ** (values.HIGHEST + 1)]])
    j = rng.choice(bins_used, (windows, seq, n))  # [w, s, n]
    low, high = edges[j], edges[j + 1]
    x = low + (high - low) * rng.uniform(0.05, 0.95, j.shape)  # [w, s, n]
    return np.where(rng.uniform(size=j.shape) < 1 / 3, -x, x).astype(np.float32)


def _device_sets(fc1, counted, layer: int, per_octave: int, k: int, batch: int) -> dict:
    """The quantile set after the stream fc1 [w, s, n] in batches of `batch` windows: {field: [n, bins * k]}."""
    w, s, n = fc1.shape
    sets = {f: a[0] for f, a in ex.zero_sets(1, n, 1, values.num_bins(per_octave) * k)[ex.QUANTILE].items()}
    sets = {f: a[None] for f, a in sets.items()}  # [1, n, slots]
    for first in range(0, w, batch):
        sets = _update(sets, 0, jnp.int32(layer), jnp.asarray(fc1[first:first + batch]),
                       jnp.asarray(counted[first:first + batch]), jnp.int32(first), per_octave)
    return {f: np.asarray(a[0]) for f, a in sets.items()}


def _reference(fc1, counted, layer: int, per_octave: int, k: int, neurons=None) -> dict:
    """numpy: for each neuron and bin, its activations (fc1 > 0 where counted) sorted by (rank, window, position),
    the first k; -1 and 0 after them. {field: [n, bins * k]}."""
    w, s, n = fc1.shape
    bins, edges = values.num_bins(per_octave), values.edges(per_octave)
    window, position = np.meshgrid(np.arange(w), np.arange(s), indexing="ij")  # [w, s]
    token_h = ex.token_hash(np, window, position).reshape(-1)  # [t]
    neurons = range(n) if neurons is None else neurons
    out = {"window": np.full((n, bins * k), -1, np.int32), "position": np.full((n, bins * k), -1, np.int32),
           "value": np.zeros((n, bins * k), np.float32)}
    for m in neurons:
        v = fc1[..., m].reshape(-1)  # [t]
        fired = np.flatnonzero(counted.reshape(-1) & (v > 0))
        rank = ex.sample_rank(np, token_h[fired], ex.neuron_hash(np, np.uint32(layer), np.uint32(m)))
        j = np.searchsorted(edges, v[fired], side="right")
        order = np.lexsort((fired, rank, j))  # by bin, then rank, then token (window-major: window, position)
        for b in np.unique(j):
            take = fired[order[j[order] == b][:k]]
            slots = slice(b * k, b * k + len(take))
            out["window"][m, slots], out["position"][m, slots] = take // s, take % s
            out["value"][m, slots] = v[take]
    return out


def test_planted_sets_are_each_bins_smallest_ranks_over_the_stream():
    """Batches of 3 windows merged on the device equal numpy's selection over the whole stream, field by field;
    every sample lies in the bin of its slots."""
    rng = np.random.default_rng(0)
    fc1 = _planted(rng, 9, 16, 24, 2, [0, 3, 4, 5, 20, 21, 35])  # bins 0 and 35 are the open-ended ones
    counted = np.ones(fc1.shape[:2], bool)
    counted[:, 0] = False  # BOS
    counted[8, 10:] = False  # a short last window
    got = _device_sets(fc1, counted, 5, 2, 3, batch=3)
    want = _reference(fc1, counted, 5, 2, 3)
    for f in ("window", "position", "value"):
        np.testing.assert_array_equal(got[f], want[f], err_msg=f)
    filled = got["window"] >= 0
    bins = np.broadcast_to(np.arange(values.num_bins(2)).repeat(3), filled.shape)
    np.testing.assert_array_equal(np.searchsorted(values.edges(2), got["value"][filled], side="right"),
                                  bins[filled])
    assert filled.sum() > 100 and not filled.all(), "some bins full, some empty"


def _band_sample(sets: dict, band, layer: int, neuron: int, k: int) -> list:
    """The documented band rule on one neuron's slots: the k of its bins' samples with the smallest rank."""
    window, position = sets["window"][neuron], sets["position"][neuron]
    held = np.arange(band.bins[0] * k, band.bins[1] * k)
    held = held[window[held] >= 0]
    rank = ex.sample_rank(np, ex.token_hash(np, window[held], position[held]),
                          ex.neuron_hash(np, np.uint32(layer), np.uint32(neuron)))
    order = np.lexsort((position[held], window[held], rank))[:k]
    return [(int(window[held][i]), int(position[held][i])) for i in order]


def test_band_samples_are_uniform_within_their_bands():
    """2048 neurons, each with its own planted values over bins 4, 5, 6 of unequal mass (60%, 10%, 30%) and bin 12;
    each draws K of the band of bins 4..6 through its bins' samples (the documented rule). Pooled over neurons, the
    draws fall in each bin as often as a uniform sample of the band's activations would (chi-square, 2 degrees of
    freedom), and their places among the band's values sorted are uniform (chi-square over 10 equal parts, 9
    degrees of freedom); nothing outside the band is drawn. Both bounds are about the 0.999 quantiles."""
    rng = np.random.default_rng(1)
    n, k, w, s = 2048, 3, 2, 64
    edges = values.edges(1)
    j = rng.choice([4, 5, 6, 12], (w, s, n), p=[0.45, 0.075, 0.225, 0.25])  # [w, s, n]
    low, high = edges[j - 1], edges[j]
    fc1 = (low + (high - low) * rng.uniform(0.05, 0.95, j.shape)).astype(np.float32)  # [w, s, n]: all fire
    counted = np.ones((w, s), bool)
    counted[:, 0] = False
    sets = _device_sets(fc1, counted, 0, 1, k, batch=1)
    band = quantile_bands(np.array([0, 0, 0, 0, 1, 1, 1]), np.concatenate([[0], edges[:6], [np.inf]]), 1)[0]
    assert band.bins == (4, 7)
    by_bin, expected_bin, places = np.zeros(3), np.zeros(3), []
    for m in range(n):
        inside = counted & (j[..., m] >= 4) & (j[..., m] <= 6)  # [w, s]
        members = sorted(fc1[..., m][inside])
        expected_bin += k * np.bincount(j[..., m][inside] - 4, minlength=3) / inside.sum()
        for win, pos in _band_sample(sets, band, 0, m, k):
            assert inside[win, pos]
            by_bin[j[win, pos, m] - 4] += 1
            places.append((members.index(fc1[win, pos, m]) + 0.5) / len(members))
    assert by_bin.sum() == n * k
    chi2_bins = ((by_bin - expected_bin) ** 2 / expected_bin).sum()
    assert chi2_bins < 13.8, (by_bin, expected_bin)
    counts = np.bincount((np.array(places) * 10).astype(int), minlength=10)
    chi2_places = ((counts - n * k / 10) ** 2 / (n * k / 10)).sum()
    assert chi2_places < 27.9, counts


def test_bands_are_whole_bins_nearest_the_deciles():
    """A histogram with one value per bin over 20 bins: 10 bands of 2 bins, each 10%; a heavy bin is a band of its
    own (fewer bands); empty bins are trimmed off a band's range; a silent neuron has none."""
    edges = np.concatenate([[0], values.edges(2), [np.inf]])  # 36 bins
    even = np.zeros(len(edges) - 1, np.int64)
    even[:20] = 5
    bands = quantile_bands(even, edges, 10)
    assert [b.bins for b in bands] == [(2 * i, 2 * i + 2) for i in range(10)]
    assert all(b.count == 10 for b in bands) and bands[3].low == edges[6] and bands[3].high == edges[8]
    heavy = even.copy()
    heavy[7] = 500
    bands = quantile_bands(heavy, edges, 10)
    assert any(b.bins == (7, 8) for b in bands) and len(bands) < 10
    assert sum(b.count for b in bands) == heavy.sum() and [b.index for b in bands] == list(range(len(bands)))
    gaps = np.zeros_like(even)
    gaps[[3, 9]] = 7
    assert [b.bins for b in quantile_bands(gaps, edges, 10)] == [(3, 4), (9, 10)]
    assert quantile_bands(np.zeros_like(even), edges, 10) == []


@pytest.fixture(scope="module")
def store(tiny_model, tiny_corpus, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("quantile") / "stats")
    return analyses.open_stats(analyses.collect(tiny_model, [tiny_corpus], out, seq_len=SEQ, batch_size=4,
                                                quantile_examples=K, verbose=False))


@pytest.fixture(scope="module")
def torch_windows(tiny_model, pre_ln_model):
    """torch's fc1 outputs of every window of the corpus (cut as docs/collection.md says): [windows, l, s, f] with
    the windows' lengths."""
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    out = []
    for doc in DOCS:
        ids = tokenizer(doc, add_special_tokens=False)["input_ids"]
        for s in range(0, len(ids), SEQ - 1):
            out.append(torch_fc1(pre_ln_model, np.array([2] + ids[s:s + SEQ - 1])))  # [l, s, f]
    return out


def test_collected_bands_hold_uniform_samples_of_their_activations(store, torch_windows):
    """Every neuron's quantile records against torch: each record's value is torch's fc1 there and lies in its
    band; each band's records are the K activations of the band with the smallest rank (numpy over torch's values);
    the bands' counts sum to act. Neurons with a value within float32 rounding of an edge are left out."""
    edges = store.value_edges
    act = np.asarray(store.act)
    checked = 0
    for layer in range(store.manifest["layers"]):
        for neuron in range(store.config.ffn_dim):
            cells = [(w, p, float(x[layer, p, neuron])) for w, x in enumerate(torch_windows)
                     for p in range(1, x.shape[1]) if x[layer, p, neuron] > -1e-6]
            near = any(abs(v) < 1e-6 or np.isclose(v, edges[1:-1], rtol=1e-5, atol=0).any() for _, _, v in cells)
            bands = store.quantile_bands(layer, neuron)
            assert sum(b.count for b in bands) == act[layer, neuron]
            records = store.examples(layer, neuron, "quantile")
            if near:
                continue
            checked += 1
            nh = ex.neuron_hash(np, np.uint32(layer), np.uint32(neuron))
            for band in bands:
                inside = [(w, p) for w, p, v in cells if v > 0 and band.low <= v < band.high]
                ranks = [int(ex.sample_rank(np, ex.token_hash(np, np.int64(w), np.int64(p)), nh)) for w, p in inside]
                want = [inside[i] for i in np.lexsort((np.array([p for _, p in inside]),
                                                       np.array([w for w, _ in inside]), np.array(ranks)))[:K]]
                got = [r for r in records if r.band == band]
                assert [(r.window, r.position) for r in got] == want, (layer, neuron, band)
                for r in got:
                    assert band.low <= r.value < band.high
                    np.testing.assert_allclose(r.value, torch_windows[r.window][layer, r.position, neuron],
                                               rtol=1e-4, atol=1e-5)
    assert checked > store.manifest["layers"] * store.config.ffn_dim // 2


def test_streamed_sets_equal_resident(store, tiny_model, tiny_corpus, tmp_path):
    streamed = analyses.open_stats(analyses.collect(tiny_model, [tiny_corpus], str(tmp_path / "s"), seq_len=SEQ,
                                                    batch_size=4, quantile_examples=K, offload=True, group_size=1,
                                                    chunk_batches=2, verbose=False))
    for f in ("window", "position", "value"):
        np.testing.assert_array_equal(np.asarray(streamed.array(f"examples_quantile_{f}").read().result()),
                                      np.asarray(store.array(f"examples_quantile_{f}").read().result()))


def test_context_values_of_quantile_examples(store, tiny_model, tmp_path, torch_windows):
    """add_contexts covers the quantile set: each record's span against torch's fc1 at those positions, its center
    the record's value; layer_examples and layer_contexts read it when asked."""
    import shutil

    root = str(tmp_path / "ctx")
    shutil.copytree(store.root, root, symlinks=True)
    add_contexts(root, before=3, after=2, verbose=False)
    stats = analyses.open_stats(root)
    seen = 0
    for layer in range(stats.manifest["layers"]):
        for neuron in range(0, stats.config.ffn_dim, 3):
            for r in stats.examples(layer, neuron, "quantile"):
                start = r.position - r.context_index
                want = torch_windows[r.window][layer, start:start + len(r.context_values), neuron]
                np.testing.assert_allclose(r.context_values, want, rtol=2e-3, atol=1e-4)
                assert r.context_values[r.context_index] == np.float32(r.value)
                seen += 1
    assert seen > 50
    sets = stats.layer_examples(0, kinds=("top", "random", "quantile"))
    bins = len(stats.value_edges) - 1
    assert sets["quantile"]["window"].shape == (stats.config.ffn_dim, bins * K)
    assert stats.layer_contexts(0, kinds=("quantile",))["quantile"].shape == (stats.config.ffn_dim, bins * K, 6)
    assert set(stats.layer_examples(0)) == {"top", "random"}


def test_refusals_and_the_memory_check(store, tiny_model, tiny_corpus, tmp_path):
    with pytest.raises(StatsError, match="needs --examples > 0 and --value_bins_per_octave > 0"):
        analyses.collect(tiny_model, [tiny_corpus], str(tmp_path / "a"), seq_len=SEQ, quantile_examples=2,
                         value_bins_per_octave=0, verbose=False)
    with pytest.raises(StatsError, match="quantile_examples must be 0"):
        analyses.collect(tiny_model, [tiny_corpus], str(tmp_path / "b"), seq_len=SEQ, quantile_examples=-1,
                         verbose=False)
    plain = analyses.open_stats(analyses.collect(tiny_model, [tiny_corpus], str(tmp_path / "plain"), seq_len=SEQ,
                                                 batch_size=4, verbose=False))
    with pytest.raises(StatsError, match="holds no quantile examples"):
        plain.examples(0, 0, "quantile")
    with pytest.raises(StatsError, match="unknown example kind"):
        store.examples(0, 0, "deciles")
    with pytest.raises(StatsError, match="bands must be"):
        store.quantile_bands(0, 0, bands=0)
    with pytest.raises(StatsError, match="other flags"):
        analyses.collect(tiny_model, [tiny_corpus], store.root, seq_len=SEQ, batch_size=4, verbose=False)
    config = analyses.open_stats(store.root).config
    options = Options(seq_len=SEQ, batch_size=4)
    without = make_plan(config, options)
    with_q = make_plan(config, Options(seq_len=SEQ, batch_size=4, quantile_examples=4))
    bins = values.num_bins(values.PER_OCTAVE)
    layers = without.num_layers
    grown = st.accumulator_bytes(with_q, with_q.groups()) - st.accumulator_bytes(without, without.groups())
    assert grown == layers * config.ffn_dim * bins * 4 * 12  # window, position, value per slot
    assert working_bytes(with_q, options, 4) > working_bytes(without, options, 4)


@pytest.mark.real
def test_opt_125m_widths_sets_equal_numpy():
    """OPT-125m's width (3072 neurons), 2048 positions, 4 per bin: two windows merged on the device against numpy
    (all neurons' sets, field by field)."""
    rng = np.random.default_rng(2)
    n, s, k = 3072, 2048, 4
    fc1 = (rng.lognormal(-1.5, 1.5, (2, s, n)) * np.where(rng.uniform(size=(2, s, n)) < 0.7, -1, 1)) \
        .astype(np.float32)  # [w, s, n]: 30% fire, over about 12 octaves
    counted = np.ones((2, s), bool)
    counted[:, 0] = False
    got = _device_sets(fc1, counted, 11, 2, k, batch=1)
    want = _reference(fc1, counted, 11, 2, k)
    for f in ("window", "position", "value"):
        np.testing.assert_array_equal(got[f], want[f], err_msg=f)
    assert (got["window"] >= 0).mean() > 0.3


MESH_RUN = """
import sys
import analyses
model, corpus, out = sys.argv[1], sys.argv[2], sys.argv[3]
analyses.collect(model, [corpus], out, mesh="data=2,neurons=2", seq_len=32, batch_size=8, quantile_examples=2,
                 verbose=False)
"""


@pytest.mark.real
def test_neurons_split_over_a_mesh_equal_one_device(tiny_corpus, tmp_path):
    """--mesh data=2,neurons=2 on 4 simulated devices (the quantile set split by neuron, `COUNTER_AXES`): the three
    example sets, value_hist and act equal to one device's, bit for bit. The model is 128 wide, as in
    test_mesh.py (narrower ones round LayerNorm differently for another number of rows)."""
    import subprocess
    import sys

    import hf_models
    import opt_jax
    from helpers import ROOT, devices_env

    wide = dict(num_hidden_layers=2, hidden_size=128, num_attention_heads=4, ffn_dim=256, vocab_size=97,
                max_position_embeddings=40)
    directory = str(tmp_path / "hf")
    hf_models.save(hf_models.random_model(hf_models.hf_config(**wide), seed=3), directory, "safetensors")
    hf_models.save_tokenizer(directory, wide["vocab_size"])
    model = opt_jax.convert(directory, str(tmp_path / "m"), verbose=False)
    single = analyses.open_stats(analyses.collect(model, [tiny_corpus], str(tmp_path / "single"), seq_len=32,
                                                  batch_size=8, quantile_examples=2, verbose=False))
    out = str(tmp_path / "mesh")
    result = subprocess.run([sys.executable, "-c", MESH_RUN, model, tiny_corpus, out], cwd=ROOT, env=devices_env(4),
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    meshed = analyses.open_stats(out)
    assert (np.asarray(meshed.array("examples_quantile_window").read().result()) >= 0).sum() > 100
    for kind in ("quantile", "top", "random"):
        for f in ("window", "position", "value"):
            np.testing.assert_array_equal(np.asarray(meshed.array(f"examples_{kind}_{f}").read().result()),
                                          np.asarray(single.array(f"examples_{kind}_{f}").read().result()),
                                          err_msg=f"{kind} {f}")
    np.testing.assert_array_equal(np.asarray(meshed.value_hist), np.asarray(single.value_hist))
    np.testing.assert_array_equal(np.asarray(meshed.act), np.asarray(single.act))
