"""Positional neurons: MI against a plain loop, types of hand-built curves, a planted store, the figures."""

import math
import warnings

import numpy as np
import pytest
from matplotlib import image

import opt_jax
from analyses import open_stats
from analyses import positional as pn
from analyses import figures
from analyses.figures import DPI
from analyses.collection.store import StatsStore, array_layouts

N = 1000  # sequences: tokens at every position
P = 129  # positions, BOS included
X = np.arange(1, P)  # the positions after BOS


def loop_mi(counts, tokens, include_bos):
    """The paper's formula, one neuron at a time, one position at a time, in plain Python."""
    out = []
    for n in range(counts.shape[1]):
        kept = [p for p in range(len(tokens)) if tokens[p] > 0 and (include_bos or p > 0)]
        total = sum(int(tokens[p]) for p in kept)
        fr = sum(int(counts[p, n]) for p in kept) / total
        mi = 0.0
        for p in kept:
            f = int(counts[p, n]) / int(tokens[p])
            term = 0.0
            if f > 0:
                term += f * math.log(f / fr)
            if f < 1:
                term += (1 - f) * math.log((1 - f) / (1 - fr))
            mi += int(tokens[p]) / total * term
        out.append(mi)
    return np.array(out)


@pytest.mark.parametrize("include_bos", [False, True])
def test_mutual_information_matches_a_loop(include_bos, monkeypatch):
    monkeypatch.setattr(pn, "NEURON_BLOCK", 7)  # several blocks, the last one partial
    rng = np.random.default_rng(0)
    tokens = rng.integers(1, 50, size=20)
    tokens[[3, 11]] = 0  # positions no window reaches
    rates = rng.uniform(0, 1, size=(20, 30)) ** rng.uniform(0.2, 3, size=30)  # [p, n], some near 0 and 1
    counts = rng.binomial(tokens[:, None], rates)  # [p, n]
    counts[:, 0] = 0  # dead
    counts[:, 1] = tokens  # always on
    counts[:, 2] = np.where(np.arange(20) < 10, 0, tokens)  # a step: 0 then 1
    got = pn.mutual_information(counts, tokens, include_bos=include_bos)
    np.testing.assert_allclose(got, loop_mi(counts, tokens, include_bos), rtol=1e-10, atol=1e-12)
    assert got[0] == 0 and got[1] == 0 and got[2] > 0.5


def test_bos_only_matters_with_include_bos():
    tokens = np.full(10, 100)
    counts = np.full((10, 1), 40)
    counts[0] = 100  # fires on BOS, flat elsewhere
    assert pn.mutual_information(counts, tokens)[0] == 0
    assert pn.mutual_information(counts, tokens, include_bos=True)[0] > 0


def curve_counts(*curves):
    """Counts [P, neurons] of frequency curves over positions 1..P-1 (BOS fires for every neuron)."""
    freq = np.stack(curves, axis=1)  # [P - 1, n]
    return np.concatenate([np.full((1, freq.shape[1]), N), np.rint(freq * N).astype(np.int64)])


def square(low, high, period=32):
    return np.where((X // (period // 2)) % 2 == 0, low, high)


def step(low, high, at=64):
    return np.where(X < at, low, high)


def noisy(curve, seed=1):
    return np.clip(curve + np.random.default_rng(seed).normal(0, 0.1, len(X)), 0.1, 0.9)


RAMP = 0.3 + 0.4 * (X - 1) / (len(X) - 1)
SPIKED_STEP = np.where(X == 20, 1.0, step(0.0, 1.0))  # one stray high position inside the low range
HAND_BUILT = {  # name: (curve, type, strong)
    "square 0/1": (square(0.0, 1.0), "oscillatory", True),
    "square 0.03/0.97": (square(0.03, 0.97), "oscillatory", False),
    "step 0/1": (step(0.0, 1.0), "both extremes", True),
    "step 0/1 with a spike": (SPIKED_STEP, "both extremes", True),
    "step 0.02/0.98": (step(0.02, 0.98), "both extremes", False),
    "0.5 then 1": (step(0.5, 1.0), "one extreme", True),
    "0.5 then 0.97": (step(0.5, 0.97), "one extreme", False),
    "0.4 then 0": (step(0.4, 0.0), "one extreme", True),
    "ramp": (RAMP, "other", True),
    "noisy ramp": (noisy(RAMP), "other", False),
}


def test_classify_hand_built_curves():
    names = list(HAND_BUILT)
    counts = curve_counts(*(HAND_BUILT[k][0] for k in names), np.full(len(X), 0.4))
    tokens = np.full(P, N)
    with warnings.catch_warnings(), np.errstate(all="raise"):
        warnings.simplefilter("error")
        types, strong = pn.classify(counts, tokens, pn.PositionalThresholds())
    assert types.dtype == np.int8 and strong.dtype == bool
    got = {k: (pn.TYPES[t], bool(s)) for k, t, s in zip(names + ["flat"], types, strong)}
    assert got == {k: v[1:] for k, v in HAND_BUILT.items()} | {"flat": ("other", True)}
    mi = pn.mutual_information(counts, tokens)
    assert mi[-1] < 1e-12  # the flat neuron is not positional


def test_min_switches_and_min_range():
    two_switches = np.where((X >= 40) & (X < 80), 1.0, 0.0)  # off, on, off
    short = np.where(X % 6 < 3, 0.0, 1.0)  # ranges of 3 positions
    counts = curve_counts(two_switches, short)
    tokens = np.full(P, N)
    types, _ = pn.classify(counts, tokens, pn.PositionalThresholds())
    assert [pn.TYPES[t] for t in types] == ["both extremes", "other"]
    types, strong = pn.classify(counts, tokens, pn.PositionalThresholds(min_switches=2, min_range=3))
    assert [pn.TYPES[t] for t in types] == ["oscillatory", "oscillatory"] and strong.all()


def test_edge_cases_give_zero_and_no_warnings():
    tokens = np.full(P, N)
    tokens[-5:] = 0  # positions no window reached
    dead = np.zeros((P, 4), np.int64)
    always = np.tile(tokens[:, None], (1, 4))
    with warnings.catch_warnings(), np.errstate(all="raise"):
        warnings.simplefilter("error")
        for counts in (dead, always):
            assert (pn.mutual_information(counts, tokens) == 0).all()
            assert (pn.mutual_information(counts, tokens, include_bos=True) == 0).all()
            types, strong = pn.classify(counts, tokens)
            assert set(types.tolist()) == {pn.ONE_EXTREME} and strong.all()
        assert (pn.mutual_information(dead, np.zeros(P, np.int64)) == 0).all()
        assert (pn.mutual_information(dead[:1], tokens[:1]) == 0).all()  # only BOS


# --- a planted statistics store ------------------------------------------------------------------------------

FFN = 40
LAYERS = 4
PLANTED = {  # (layer, neuron): (curve, type, strength)
    (1, 3): (square(0.0, 1.0), "oscillatory", "strong"),
    (1, 9): (step(0.02, 0.98), "both extremes", "weak"),
    (1, 17): (0.1 + 0.8 * (X - 1) / (len(X) - 1), "other", "strong"),
    (2, 0): (square(0.0, 1.0, period=16), "oscillatory", "strong"),
    (2, 5): (np.roll(square(0.0, 1.0), 8), "oscillatory", "strong"),
    (2, 6): (square(0.03, 0.97), "oscillatory", "weak"),
    (2, 30): (step(0.5, 1.0), "one extreme", "strong"),
    (2, 39): (noisy(0.15 + 0.7 * (X - 1) / (len(X) - 1), seed=3), "other", "weak"),
}


def planted_counts(seed=0):
    """pos_act [layers, P, ffn]: layer 0 dead, flat random neurons elsewhere, one always-on, the planted curves."""
    rng = np.random.default_rng(seed)
    pos_act = rng.binomial(N, rng.uniform(0.02, 0.98, size=(LAYERS, 1, FFN)), size=(LAYERS, P, FFN))
    pos_act[:, 0] = rng.integers(0, 2, size=(LAYERS, FFN)) * N  # BOS: 0 or 1 for every neuron
    pos_act[0] = 0
    pos_act[3, :, 7] = N
    for (layer, neuron), (curve, _, _) in PLANTED.items():
        pos_act[layer, 1:, neuron] = np.rint(curve * N)
    return pos_act.astype(np.int64)


def make_store(root, pos_act, full_length=N, sequences=N):
    config = opt_jax.for_size("125m", num_hidden_layers=LAYERS + 2, ffn_dim=FFN, vocab_size=8)
    layouts = array_layouts(LAYERS, 0, P, 8, FFN)
    manifest = {"config": config.to_dict(), "token_layers": [], "layers": LAYERS, "ngram_orders": [],
                "tokens": 0, "sequences": 0, "full_length_sequences": 0, "complete": False}
    store = StatsStore.create(str(root), manifest, layouts)
    store.commit({"pos_act": pos_act, "act": pos_act.sum(axis=1), "pos_tokens": np.full(P, N)},
                 {"tokens": N * P, "sequences": sequences, "full_length_sequences": full_length, "complete": True})
    return open_stats(str(root))


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    stats = make_store(tmp_path_factory.mktemp("positional"), planted_counts())
    with warnings.catch_warnings(), np.errstate(all="raise"):
        warnings.simplefilter("error")
        return pn.analyze_positional(stats, example_layer=2)


def test_analysis_recovers_the_planted_neurons(planted):
    got = {(r["layer"], r["neuron"]): (r["type"], r["strength"]) for r in planted.neurons}
    assert got == {k: v[1:] for k, v in PLANTED.items()}
    assert planted.note is None and planted.num_layers == LAYERS and planted.model_layers == LAYERS + 2
    for row in pn.to_rows(planted):
        assert set(row) == {"layer", "neuron", "mi", "type", "strength"}
        assert all(type(row[k]) is t for k, t in (("layer", int), ("neuron", int), ("mi", float),
                                                   ("type", str), ("strength", str)))
        assert row["mi"] > 0.05


def test_counts_match_the_neuron_list(planted):
    expected = np.zeros((LAYERS, len(pn.TYPES), len(pn.STRENGTHS)), np.int64)
    for r in planted.neurons:
        expected[r["layer"], pn.TYPES.index(r["type"]), pn.STRENGTHS.index(r["strength"])] += 1
    np.testing.assert_array_equal(planted.counts, expected)
    assert planted.counts[0].sum() == 0  # the dead layer


def test_curves_for_the_figures(planted):
    mi = {(r["layer"], r["neuron"]): r["mi"] for r in planted.neurons}
    for name, curve in planted.examples.items():
        best = max(v for k, v in mi.items() if PLANTED[k][1] == name)
        assert curve.type == name and curve.mi == best
        np.testing.assert_array_equal(curve.positions, X)
        np.testing.assert_allclose(curve.frequency, np.rint(PLANTED[curve.layer, curve.neuron][0] * N) / N)
    assert set(planted.examples) == set(pn.TYPES)
    assert planted.oscillatory_layer == 2
    assert sorted(c.neuron for c in planted.oscillatory) == [0, 5]


def test_blocks_and_layer_subset_agree(tmp_path, planted, monkeypatch):
    monkeypatch.setattr(pn, "NEURON_BLOCK", 6)
    stats = make_store(tmp_path, planted_counts())
    small = pn.analyze_positional(stats, layers=[2], example_layer=99)
    assert small.neurons == [r for r in planted.neurons if r["layer"] == 2]
    assert small.oscillatory_layer == LAYERS - 1 and small.oscillatory == []
    assert_png(figures.oscillatory_ranges(small, str(tmp_path / "fig9.png"), "small"), figures.RANGES_SIZE)
    with pytest.raises(ValueError, match="collected layers"):
        pn.analyze_positional(stats, layers=[LAYERS])


def test_shorter_windows_are_noted(tmp_path):
    stats = make_store(tmp_path, planted_counts(), sequences=N + 5)
    assert "5 of 1005 windows are shorter" in pn.analyze_positional(stats, layers=[1]).note


def test_no_full_length_sequences_skips(tmp_path):
    stats = make_store(tmp_path, planted_counts(), full_length=0)
    result = pn.analyze_positional(stats)
    assert result.note == "no full-length sequences: positional analysis skipped"
    assert result.neurons == [] and result.counts.sum() == 0 and result.examples == {}


def assert_png(path, size):
    pixels = image.imread(path)
    assert pixels.shape[:2] == (round(size[1] * DPI), round(size[0] * DPI))
    assert pixels[..., :3].std() > 0


def test_figures(planted, tmp_path):
    skipped = pn.analyze_positional(make_store(tmp_path / "empty", planted_counts(), full_length=0))
    path = figures.positional_types_per_layer({"planted": planted, "again": planted}, str(tmp_path / "fig8.png"))
    assert_png(path, (figures.TYPES_WIDTH, 2 * figures.TYPES_ROW_HEIGHT))
    path = figures.positional_types_per_layer({"planted": planted, "skipped": skipped, "x": planted},
                                                  str(tmp_path / "fig8b.png"))
    assert_png(path, (figures.TYPES_WIDTH, 3 * figures.TYPES_ROW_HEIGHT))
    path = figures.positional_example_curves(planted, str(tmp_path / "fig7.png"), "planted")
    assert_png(path, (figures.CURVE_PANEL[0] * 4, figures.CURVE_PANEL[1]))
    path = figures.positional_example_curves(skipped, str(tmp_path / "fig7-none.png"), "skipped")
    assert_png(path, figures.CURVE_PANEL)
    assert_png(figures.oscillatory_ranges(planted, str(tmp_path / "fig9.png"), "planted"), figures.RANGES_SIZE)
    assert_png(figures.oscillatory_ranges(skipped, str(tmp_path / "fig9-none.png"), "skipped"), figures.RANGES_SIZE)
