"""The scale benchmark's synthetic store and passes, at a tiny shape (figures checked, never timings)."""

import numpy as np
import pytest

from benchmarks import scale
from analyses.dead import analyze_dead
from analyses.collection.store import open_stats
from opt_jax.config import for_size


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    config = for_size("125m").replace(num_hidden_layers=6, ffn_dim=400)
    return scale.write_synthetic_stats(str(tmp_path_factory.mktemp("scale") / "s"), config, seq_len=256,
                                       sequences=40, positional=5, verbose=False), config


def test_synthetic_store_is_consistent(store):
    root, config = store
    stats = open_stats(root)
    pos_act = np.asarray(stats.pos_act)  # [l, p, n]
    np.testing.assert_array_equal(np.asarray(stats.act), pos_act.sum(axis=1))
    assert stats.full_length_sequences == 40 and stats.tokens == 256 * 40
    assert (pos_act <= 40).all()
    dead = analyze_dead(stats).fraction_per_layer
    for layer in range(6):  # the planted positional neurons are never dead
        assert dead[layer] == pytest.approx(scale.dead_share(layer, 6), abs=0.08)
    # from mid-depth on only the rarest template neurons (frequency ~1e-4) happen to stay silent, alike per layer
    assert dead[0] > 0.5 and np.ptp(dead[3:]) == 0 and dead[3] < 0.05


def test_measure_runs_each_pass_and_finds_the_planted_neurons(store):
    root, _ = store
    results = scale.measure(root)
    assert set(results) == set(scale.PHASES)
    assert results["analyze"]["positional_neurons"] == 5 * 6
    assert all(r["peak_rss"] > 0 and r["seconds"] > 0 for r in results.values())
    text = scale.table(results, root)
    assert "| analyze |" in text and "positional neurons found: 30" in text


def test_commit_speed_table_and_store_contents(tmp_path):
    text = scale.commit_speed(str(tmp_path / "c"), layers=2, positions=16, neurons=32, in_flight=(0, 2), rounds=1)
    assert "| 0 |" in text and "| 2 |" in text and text.count("\n") == 3
    stats = open_stats(str(tmp_path / "c"))
    counts = np.random.default_rng(0).binomial(1000, 0.05, (16, 32))
    # two commits (one per setting) each added the same counts: both ways write the same data
    np.testing.assert_array_equal(np.asarray(stats.pos_act), np.stack([2 * counts] * 2))
