"""End to end on a model whose neurons were planted by hand: HF checkpoint -> convert -> collect -> analyze.

Each step runs its script, as a user would. The report must recover exactly the planted sets
(`tests/planted.py` says how each neuron was made).
"""

import csv
import json
import os

import numpy as np
import pytest
from matplotlib import image

import analyses
import planted
from helpers import check_claims

@pytest.fixture(scope="module")
def analyzed(planted_run):
    """The planted pipeline (tests/study/conftest.py): the report's entry, the report folder, analyze's output."""
    return planted_run.report, planted_run.root / "report", planted_run.stdout


def test_dead_neurons_per_layer(analyzed):
    report, _, _ = analyzed
    ffn = planted.FFN
    # layer 0: two dead by bias, one detector of a word the corpus never holds; layer 1 all dead
    assert report["dead"]["fraction_per_layer"] == [len(planted.DEAD) / ffn, 1.0, 0.0, 0.0]
    frequency = report["dead"]["alive_mean_frequency_per_layer"]
    assert frequency[1] is None, "a layer with no alive neuron has no mean frequency"
    assert frequency[2] == frequency[3] == 1.0, "always-on layers fire at every token, BOS included"
    assert 0 < frequency[0] < 1


def test_token_detectors_are_exactly_the_planted_ones(analyzed):
    report, _, _ = analyzed
    found = {(d["layer"], d["neuron"]): d for d in report["token_detectors"]}
    assert set(found) == {(0, n) for n in planted.DETECTORS}  # not neuron 14: its word is never seen
    for n, (words, _) in planted.DETECTORS.items():
        d = found[0, n]
        assert sorted(d["tokens"]) == sorted(planted.token_id(planted.TRIGGERS[w]) for w in words)
        assert sorted(d["token_strings"]) == sorted(planted.word(planted.TRIGGERS[w]) for w in words)
        assert d["covered_fraction"] == 1.0


def test_trigram_detectors(analyzed):
    """A layer-0 neuron sees only the current token, so each token detector is also a trigram detector:
    the trigrams it covers are all the corpus's trigrams ending in its triggers (6 strides -> 6 per word)."""
    report, _, _ = analyzed
    found = {(d["layer"], d["neuron"]): {tuple(g) for g in d["ngrams"]} for d in report["trigram_detectors"]}
    assert set(found) == {(0, n) for n in planted.DETECTORS}
    for n, (words, _) in planted.DETECTORS.items():
        assert found[0, n] == planted.trigger_trigrams(words)


def test_suppression_separates_suppressors_from_the_control(analyzed):
    report, _, _ = analyzed
    s = report["suppression"]
    suppressors = [n for n, (_, sign) in planted.DETECTORS.items() if sign < 0]
    assert s["fraction_all_triggers_negative"] == len(suppressors) / len(planted.DETECTORS)
    by_neuron = {d["neuron"]: d for d in s["detectors"]}
    for n, (words, sign) in planted.DETECTORS.items():
        d = by_neuron[n]
        triggers = {planted.token_id(planted.TRIGGERS[w]) for w in words}
        if sign < 0:  # the triggers are the most suppressed tokens (tied lowest, all other scores are 0)
            assert all(v < 0 for v in d["trigger_scores"]) and d["trigger_ranks_among_suppressed"] == [1] * len(words)
            assert set(d["top_suppressed"][:len(words)]) == triggers
        else:
            assert all(v > 0 for v in d["trigger_scores"])
            assert set(d["top_promoted"][:len(words)]) == triggers
            assert min(d["trigger_ranks_among_suppressed"]) == planted.VOCAB - len(words) + 1


def test_positional_neurons_and_their_types(analyzed):
    report, _, _ = analyzed
    found = {p["neuron"]: (p["type"], p["strength"]) for p in report["positional"]}
    assert {p["layer"] for p in report["positional"]} == {0}
    assert found == planted.POSITIONAL
    assert all(p["mi"] > 0.05 for p in report["positional"])
    assert not set(planted.ALWAYS_ON) & set(found), "a neuron active everywhere carries no position"


def test_coverage_histograms(analyzed):
    report, _, _ = analyzed
    unigrams = report["coverage"]["1"]["per_layer"]
    layer0 = dict(zip(unigrams[0]["bins"], unigrams[0]["counts"]))
    assert layer0["1"] == 3 and layer0["2"] == 1  # detectors of one word, and of two
    alive = planted.FFN - len(planted.DEAD)
    assert sum(unigrams[0]["counts"]) == alive and unigrams[0]["no_item"] == 0
    assert sum(unigrams[1]["counts"]) == 0, "layer 1 has no alive neuron"
    trigrams = dict(zip(report["coverage"]["3"]["bins"], report["coverage"]["3"]["per_layer"][0]["counts"]))
    assert trigrams["6-10"] == 3 and trigrams["11-20"] == 1  # 6 trigrams end in each trigger word


def test_claims_known_by_construction(analyzed):
    """Layer 1 dead, layers 2, 3 always on; 3 of 4 detectors suppress; all positional neurons in layer 0."""
    report, out_dir, stdout = analyzed
    claims = check_claims(report, hidden=planted.HIDDEN)
    holds = {key: c["holds"] for key, c in claims.items()}
    assert claims["second_half_alive"]["measured"] == 0.0 and holds["second_half_alive"]
    assert claims["first_half_sparse"]["measured"] == 1.0 and holds["first_half_sparse"]
    assert claims["dead_rarer_alive"]["measured"] == pytest.approx(-1.0) and holds["dead_rarer_alive"]
    assert claims["detectors_suppress"]["measured"] == 0.75 and holds["detectors_suppress"] is False
    assert claims["detectors_one_word"]["measured"] == 0.75  # w1 and w2 are two words
    assert claims["oscillatory_most_common"]["measured"] == 0.25 and holds["oscillatory_most_common"] is False
    assert claims["positional_two_stages"]["measured"] == 0.0 and holds["positional_two_stages"] is False
    for key in ("nopos_strong_positional", "nopos_no_oscillatory", "post_ln_no_dead", "post_ln_positional"):
        assert holds[key] is None and claims[key]["note"], key
    with open(out_dir / "claims.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["id"] for r in rows] == list(claims) and rows[3]["holds"] == "False"
    assert "the paper's claims:" in stdout and "[fails] token detectors suppress their triggers" in stdout


def test_figs_10_and_11_draw_a_panel_per_model(analyzed, monkeypatch, tmp_path):
    from analyses import figures, open_stats, positional

    _, out_dir, _ = analyzed
    result = positional.analyze_positional(open_stats(str(out_dir.parent / "stats")))
    counted = {}
    save = figures.save

    def counting(fig, path, **kwargs):
        counted[os.path.basename(path)] = sum(ax.get_visible() for ax in fig.axes)
        return save(fig, path, **kwargs)

    monkeypatch.setattr(figures, "save", counting)
    figures.positional_with_without({"with": result, "without": result, "again": result},
                                    {"with": True, "without": False, "again": False}, str(tmp_path / "f10.png"))
    figures.positional_by_checkpoint({"a": [(1, "a1", result), (2, "a2", result)], "b": [(5, "b5", result)]},
                                     str(tmp_path / "f11.png"))
    assert counted == {"f10.png": 3, "f11.png": 3}, "a panel per model and per checkpoint (empty grid cells hidden)"
    for name in counted:
        pixels = image.imread(tmp_path / name)
        assert pixels.shape[0] >= 250 and pixels.shape[1] >= 600 and np.std(pixels[..., :3]) > 0.01, name


def test_outputs_a_person_reads(analyzed):
    report, out_dir, stdout = analyzed
    assert "token detectors: 4" in stdout and "positional neurons: 8" in stdout
    with open(out_dir / "token_detectors.csv") as f:
        rows = list(csv.DictReader(f))
    assert {int(r["neuron"]) for r in rows} == set(planted.DETECTORS)
    with open(out_dir / "positional_neurons.csv") as f:
        assert {int(r["neuron"]): (r["type"], r["strength"]) for r in csv.DictReader(f)} == planted.POSITIONAL
    with open(out_dir / "report.json") as f:
        figures = json.load(f)["figures"]
    expected = {"fig1a_dead_neurons", "fig1b_alive_frequency", "fig2_coverage_n1", "fig12_coverage_n2",
                "fig13_coverage_n3", "fig3a_token_detectors", "fig3b_detected_tokens", "fig4_new_tokens",
                "fig14a_trigram_detectors", "fig14b_detected_trigrams", "fig15_new_trigrams",
                "fig5_suppression_planted", "fig7_positional_examples_planted", "fig8_positional_types",
                "fig9_oscillatory_ranges_planted"}
    assert sorted(figures) == sorted(f"{name}.png" for name in expected)
    for name in figures:
        pixels = image.imread(out_dir / name)  # [h, w, channels]
        assert pixels.shape[0] >= 250 and pixels.shape[1] >= 600, name
        assert np.std(pixels[..., :3]) > 0.01, f"{name} is blank"
    per_layer = image.imread(out_dir / "fig1a_dead_neurons.png")
    assert per_layer.shape[:2] == (495, 1320)  # 12 x 4.5 inches at 110 dpi


def test_a_neuron_firing_equally_on_two_tokens_samples_both(analyzed):
    """Detector 1 fires on t2 and t3, equally often in the Latin square: its uniform sample holds both."""
    _, report_dir, _ = analyzed
    stats = analyses.open_stats(str(report_dir.parent / "stats"))
    sample = stats.examples(0, 1, "random")
    assert len(sample) == 16
    triggers = {planted.token_id(planted.TRIGGERS[t]) for t in ("t2", "t3")}
    assert {e.token for e in sample} == triggers
    assert {e.token for e in stats.examples(0, 0, "top")} == {planted.token_id(planted.TRIGGERS["t1"])}


def test_the_summary_shows_where_detectors_fire(analyzed):
    from analyses.study import example_contexts

    report_dir = analyzed[1]
    with open(report_dir / "report.json") as f:
        text = example_contexts(json.load(f))
    assert "planted: strongest example contexts" in text
    block = text.split("layer 0 neuron 0 (token detector):\n")[1].split("\n  layer")[0].splitlines()
    assert len(block) == 3 and all("[[w0]]" in line for line in block), block
    assert "(positional, I = " in text
