"""Activation-value histograms (`value_hist`, `analyses.collection.values`): counted on the device, each neuron's
activations by the bin of their fc1 value.

The reference is `transformers`' torch `OPTForCausalLM` with forward hooks on every fc1, run on each window of the
corpus alone (tokenised here, independently of the store), binned with numpy's `searchsorted` against the edges
the manifest records. Resident and streamed runs must count alike; the simulated devices, the processes merged, the
runs killed and resumed (`test_collect_runs.py`) and the joins (`test_join.py`) compare `value_hist` through
`helpers.assert_same_stats`.
"""

import json
import os

import jax.numpy as jnp
import numpy as np
import pytest
from transformers import AutoTokenizer

import analyses
from analyses.collection import statistics as st
from analyses.collection import values
from analyses.collection.plan import Options, make_plan
from opt_jax.errors import StatsError

from conftest import DOCS
from hf_models import torch_fc1

SEQ = 12


def _collect(model, corpus, out, **flags):
    return analyses.open_stats(analyses.collect(model, [corpus], out, seq_len=SEQ, batch_size=4, examples=0,
                                                verbose=False, **flags))


@pytest.fixture(scope="module")
def resident(tiny_model, tiny_corpus, tmp_path_factory):
    return _collect(tiny_model, tiny_corpus, str(tmp_path_factory.mktemp("resident") / "stats"))


@pytest.fixture(scope="module")
def torch_values(tiny_model, pre_ln_model):
    """torch's fc1 outputs at every position of every window (cut as docs/collection.md says): [l, positions, f]."""
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    outputs = []
    for doc in DOCS:
        ids = tokenizer(doc, add_special_tokens=False)["input_ids"]
        for s in range(0, len(ids), SEQ - 1):
            outputs.append(torch_fc1(pre_ln_model, np.array([2] + ids[s:s + SEQ - 1])))  # [l, s, f]
    return np.concatenate(outputs, axis=1)  # [l, p, f]


def test_the_bins_are_the_float32_edges():
    """Every bin by `searchsorted` on the edges: the edges themselves, their float32 neighbours, the extremes."""
    for p in values.CHOICES[1:]:
        edges = values.edges(p)
        assert len(edges) == values.num_bins(p) - 1 and values.per_octave(values.num_bins(p)) == p
        assert edges[0] == 2.0 ** values.LOWEST and edges[-1] == 2.0 ** values.HIGHEST
        ratios = edges[1:] / edges[:-1]
        assert np.all(ratios > 1) and ratios.max() <= 1 + 1 / p + 1e-6  # log-spaced within the octave's steps
        rng = np.random.default_rng(p)
        x = np.concatenate([edges, np.nextafter(edges, np.float32(0)), np.nextafter(edges, np.float32(np.inf)),
                            np.float32([1e-45, 1e-30, 3e38, np.inf]),
                            np.exp(rng.uniform(-12, 7, 10_000)).astype(np.float32)])
        np.testing.assert_array_equal(np.asarray(values.bin_index(jnp.asarray(x), p)),
                                      np.searchsorted(edges, x, side="right"))
        halves = np.asarray(values.bin_index(jnp.asarray(x, jnp.bfloat16), p))  # bf16 values bin as their float32
        np.testing.assert_array_equal(halves, np.searchsorted(edges, np.asarray(jnp.asarray(x, jnp.bfloat16),
                                                                                np.float32), side="right"))


def test_sums_equal_act_exactly(resident):
    hist, act = np.asarray(resident.value_hist), np.asarray(resident.act)
    assert hist.shape == (*act.shape, values.num_bins(values.PER_OCTAVE))
    np.testing.assert_array_equal(hist.sum(-1), act)
    assert act.sum() > 0 and (hist.sum((0, 1)) > 0).sum() >= 10, "the activations spread over many bins"
    edges = resident.value_edges
    assert edges[0] == 0 and edges[-1] == np.inf
    np.testing.assert_array_equal(edges[1:-1], values.edges(values.PER_OCTAVE))
    assert resident.manifest["flags"]["value_bins_per_octave"] == values.PER_OCTAVE


def test_counts_equal_torch_binned_by_numpy(resident, torch_values):
    """Each neuron's counts equal torch's fc1 outputs > 0 binned by `searchsorted`; a value within float32 rounding
    of an edge may fall on either side of it (XLA and torch round differently), and nothing else may differ."""
    edges = resident.value_edges[1:-1]
    ours = np.asarray(resident.value_hist)  # [l, f, j]
    bins = ours.shape[-1]
    for layer in range(ours.shape[0]):
        fc1 = torch_values[layer]  # [p, f]
        fired = fc1 > 0
        index = np.searchsorted(edges, fc1, side="right")  # [p, f]
        want = np.stack([np.bincount(index[fired[:, n], n], minlength=bins) for n in range(fc1.shape[1])])  # [f, j]
        near = np.isclose(fc1[..., None], edges, rtol=1e-5, atol=0).any(-1) | (np.abs(fc1) < 1e-6)  # [p, f]
        slack = (near & (fc1 > -1e-6)).sum(0)  # [f]: values that may change bins (or fire or not)
        difference = np.abs(ours[layer] - want).sum(-1)  # [f]
        assert np.all(difference <= 2 * slack), (layer, np.flatnonzero(difference > 2 * slack))
        assert (difference == 0).mean() > 0.9, "almost every neuron matches exactly"


def test_streamed_counts_equal_resident(resident, tiny_model, tiny_corpus, tmp_path):
    streamed = _collect(tiny_model, tiny_corpus, str(tmp_path / "streamed"), offload=True, group_size=1,
                        chunk_batches=2)
    np.testing.assert_array_equal(np.asarray(streamed.value_hist), np.asarray(resident.value_hist))


def test_bins_per_octave_flag_and_stores_without_a_histogram(resident, tiny_model, tiny_corpus, tmp_path):
    """--value_bins_per_octave 4: finer bins that sum to the coarser ones; 0: no array, a clear error only when asked
    for it, as for a store written before value_hist existed; a value outside the choices is refused."""
    fine = _collect(tiny_model, tiny_corpus, str(tmp_path / "fine"), value_bins_per_octave=4)
    hist = np.asarray(fine.value_hist)
    assert hist.shape[-1] == values.num_bins(4) == 70
    coarse = np.asarray(resident.value_hist)
    # Every coarse edge is a fine edge: the coarse bins are sums of fine ones.
    fine_edges, coarse_edges = values.edges(4), values.edges(2)
    group = np.searchsorted(coarse_edges, np.concatenate([[0], fine_edges]), side="right")  # [70]: coarse bin
    regrouped = np.stack([hist[..., group == j].sum(-1) for j in range(coarse.shape[-1])], -1)
    np.testing.assert_array_equal(regrouped, coarse)
    none = _collect(tiny_model, tiny_corpus, str(tmp_path / "none"), value_bins_per_octave=0)
    assert "value_hist" not in none.manifest["arrays"] and "value_edges" not in none.manifest
    np.testing.assert_array_equal(np.asarray(none.act), np.asarray(resident.act))
    with pytest.raises(StatsError, match="holds no activation-value histogram"):
        none.value_hist
    with pytest.raises(StatsError, match="holds no activation-value histogram"):
        none.value_edges
    with pytest.raises(StatsError, match="value_bins_per_octave must be one of 0, 1, 2, 4, 8"):
        analyses.collect(tiny_model, [tiny_corpus], str(tmp_path / "bad"), seq_len=SEQ, value_bins_per_octave=3,
                         verbose=False)


def test_a_store_written_before_value_hist_opens_and_continues_only_without_it(resident, tiny_model, tiny_corpus,
                                                                            tmp_path):
    """An older store: no array, no edges, no flag in its manifest. It opens and reads; collecting on into it with
    the default bins is refused naming the flag, with --value_bins_per_octave 0 accepted."""
    import shutil

    old = tmp_path / "old"
    shutil.copytree(resident.root, old, symlinks=True)
    with open(old / "manifest.json") as f:
        manifest = json.load(f)
    generation = old / f"data-{manifest['generation']:06d}"
    shutil.rmtree(generation / "value_hist")
    os.remove(old / "value_hist")
    del manifest["arrays"]["value_hist"], manifest["value_edges"], manifest["flags"]["value_bins_per_octave"]
    manifest["chunks"] = {k: v for k, v in manifest["chunks"].items() if k != "value_hist"}
    with open(old / "manifest.json", "w") as f:
        json.dump(manifest, f)
    stats = analyses.open_stats(str(old))
    np.testing.assert_array_equal(np.asarray(stats.act), np.asarray(resident.act))
    with pytest.raises(StatsError, match="holds no activation-value histogram"):
        stats.value_hist
    # Collecting on into it: the flag that did not exist then reads as 0 (no histogram), which the message names.
    with pytest.raises(StatsError, match=r"--value_bins_per_octave 0 there \(it was written before that flag "
                                         r"existed\), 2 now\)"):
        analyses.collect(tiny_model, [tiny_corpus], str(old), seq_len=SEQ, batch_size=4, examples=0, verbose=False)
    analyses.collect(tiny_model, [tiny_corpus], str(old), seq_len=SEQ, batch_size=4, examples=0, verbose=False,
                     value_bins_per_octave=0)  # accepted: the run it continues counted no histogram
    again = analyses.open_stats(str(old))
    assert again.tokens == stats.tokens and "value_bins_per_octave" not in again.manifest["flags"]
    np.testing.assert_array_equal(np.asarray(again.act), np.asarray(resident.act))


def test_the_memory_check_counts_the_histogram(tiny_model):
    """`accumulator_bytes` (the memory check's counters) grows by layers x ffn x bins int32 counters."""
    import opt_jax

    config = opt_jax.for_size("125m")
    with_hist, without = (make_plan(config, Options(seq_len=SEQ, value_bins_per_octave=p)) for p in (2, 0))
    groups = with_hist.groups()
    extra = st.accumulator_bytes(with_hist, groups) - st.accumulator_bytes(without, groups)
    assert extra == config.num_hidden_layers * config.ffn_dim * values.num_bins(2) * 4


@pytest.mark.real
def test_opt_125m_widths_counts_equal_torch(tmp_path):
    """OPT-125m's widths (768 x 3072 neurons, vocab 50272, 2048-token windows), two layers: the sums equal `act`
    exactly and the counts equal torch's fc1 outputs binned by numpy, but for values within 1e-3 of an edge."""
    import hf_models
    import opt_jax
    import scale_data as sd

    model = sd.sparse_random_model(sd.OPT_125M | {"num_hidden_layers": 2}, seed=4)
    hf_dir = hf_models.save(model, str(tmp_path / "hf"), "safetensors")
    vocab_words = sd.write_word_tokenizer(hf_dir)
    converted = opt_jax.convert(hf_dir, str(tmp_path / "converted"), verbose=False)
    docs = sd.zipf_documents(2, (4100, 4200), len(vocab_words), seed=6)  # 2 full windows each
    corpus = sd.write_corpus(str(tmp_path / "corpus.jsonl"), docs, vocab_words)
    windows = sd.full_windows(docs, 2048)  # [w, s]
    stats = analyses.open_stats(analyses.collect(converted, [corpus], str(tmp_path / "stats"), seq_len=2048,
                                                 batch_size=2, full_length_only=True, token_layers=(), examples=0,
                                                 verbose=False))
    assert stats.sequences == len(windows) == 4
    hist, act = np.asarray(stats.value_hist), np.asarray(stats.act)
    assert hist.shape == (2, 3072, values.num_bins(values.PER_OCTAVE))
    np.testing.assert_array_equal(hist.sum(-1), act)
    fc1 = np.concatenate([hf_models.torch_fc1(model, w) for w in windows], axis=1)  # [l, p, f]
    edges = stats.value_edges[1:-1]
    for layer in range(2):
        x = fc1[layer]  # [p, f]
        index = np.searchsorted(edges, x, side="right")  # [p, f]
        flat = (np.arange(x.shape[1]) * (hist.shape[-1] + 1) + np.where(x > 0, index, hist.shape[-1])).reshape(-1)
        want = np.bincount(flat, minlength=x.shape[1] * (hist.shape[-1] + 1)).reshape(x.shape[1], -1)[:, :-1]
        # torch and XLA sum 768 products in other orders: up to about 1e-4 apart (`scale_data.torch_counts`' bracket)
        below, above = edges[np.maximum(index - 1, 0)], edges[np.minimum(index, len(edges) - 1)]  # [p, f] each
        near = (np.minimum(np.abs(x - below), np.abs(x - above)) < 1e-3) | (np.abs(x) < 1e-3)  # [p, f]
        difference = np.abs(hist[layer] - want).sum(-1)  # [f]
        assert np.all(difference <= 2 * near.sum(0)), layer
        assert want.sum() > 10**5 and (want.sum((0)) > 0).sum() >= 10, "many activations over many bins"
        assert (difference == 0).mean() > 0.99
