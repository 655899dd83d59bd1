"""Every place that walks arrays in groups or blocks, at sizes that are multiples of nothing.

Layer groups whose size does not divide the layer count, the last partial batch of a corpus, and a whole
collection whose store chunks cut every axis short: streamed with such groups, it equals the resident run.
"""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as hs

import analyses
from analyses.collection import store as store_module
from analyses.collection.statistics import Plan
from opt_jax.config import OPTConfig
from opt_jax.corpus import batches
from opt_jax.streaming import split_layers


@settings(max_examples=200, deadline=None)
@given(layers=hs.integers(1, 70), size=hs.integers(1, 17), token=hs.sets(hs.integers(0, 69), max_size=20))
def test_layer_groups_cover_every_layer_once(layers, size, token):
    config = OPTConfig(num_hidden_layers=layers, hidden_size=8, num_attention_heads=2, ffn_dim=8,
                            vocab_size=11, max_position_embeddings=8, word_embed_proj_dim=8)
    plan = Plan(config, layers, tuple(sorted(t for t in token if t < layers)), 4)
    groups = plan.groups(size)
    assert [l for g in groups for l in g] == list(range(layers))
    assert all(1 <= len(g) <= size for g in groups)
    assert all(len({l in plan.token_layers for l in g}) == 1 for g in groups)  # wholly token layers or not
    assert split_layers(range(layers), size) == [range(i, min(i + size, layers)) for i in range(0, layers, size)]


@settings(max_examples=100, deadline=None)
@given(lengths=hs.lists(hs.integers(1, 9), max_size=23), batch=hs.integers(1, 7), seq=hs.integers(9, 12))
def test_batches_keep_every_window_and_pad_the_last(lengths, batch, seq):
    windows = [np.arange(n) + 3 for n in lengths]
    out = list(batches(iter(windows), batch, seq, pad_id=1))
    assert len(out) == -(-len(windows) // batch)
    for ids, mask in out:
        assert ids.shape == mask.shape == (batch, seq)
    rows = [(ids[r], mask[r]) for ids, mask in out for r in range(batch)]
    for i, (ids, mask) in enumerate(rows):
        n = lengths[i] if i < len(lengths) else 0
        assert mask.sum() == n and (ids[:n] == windows[i]).all() if n else not mask.any()
        assert (ids[~mask] == 1).all()


@pytest.mark.parametrize("group_size", [2, 3])
def test_streamed_groups_that_do_not_divide_the_layers_with_short_chunks(tiny_model, tiny_corpus, tmp_path,
                                                                         monkeypatch, group_size):
    """3 layers in groups of 2 (2 + 1) or 3, store chunks of 5 cells (every axis cut short): equal to resident."""
    monkeypatch.setattr(store_module, "CHUNK_CELLS", 5 * 64)  # tok_act: 5 of 97 rows a chunk; pos_act: 53 of 64 neurons
    common = dict(seq_len=6, batch_size=3, token_layers=(0, 2), ngram_orders=(2,), verbose=False)
    resident = analyses.open_stats(analyses.collect(tiny_model, [tiny_corpus], str(tmp_path / "r"), **common))
    streamed = analyses.open_stats(analyses.collect(tiny_model, [tiny_corpus], str(tmp_path / "s"), offload=True,
                                                    group_size=group_size, chunk_batches=2, **common))
    assert resident.tok_act.chunk_shape == (1, 5, 64)
    assert resident.tokens == streamed.tokens > 0
    for name in ("act", "pos_act", "pos_tokens", "token_occ", "tok_act"):
        np.testing.assert_array_equal(np.asarray(getattr(resident, name)), np.asarray(getattr(streamed, name)), name)
    assert np.asarray(resident.tok_act).sum() > 0
