"""Each analysis against a plain-Python recomputation from unpacked `Model.forward` masks on a tiny corpus.

The reference below never reads the statistics store: it runs each window alone, collects the
(token, n-gram, position) of every activation and applies the paper's definitions neuron by neuron.
"""

import collections
import math

import numpy as np
import pytest
from transformers import AutoTokenizer

import analyses
import opt_jax
from analyses import coverage, detectors, report, suppression
from analyses.positional import PositionalThresholds

from conftest import DOCS
import hf_models
from helpers import check_claims

SEQ = 12
TOKEN_LAYERS = (0, 1)
# Looser than the paper's, so that a random tiny model has detectors to compare (and non-detectors).
LOOSE = detectors.DetectorThresholds(max_tokens=20, max_trigrams=30, coverage=0.8, item_fraction=0.5,
                                     covered_fraction=0.6)


def windows(model_dir, seq_len):
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    for doc in DOCS:
        ids = tokenizer(doc, add_special_tokens=False)["input_ids"]
        for start in range(0, len(ids), seq_len - 1):
            yield [2] + ids[start:start + seq_len - 1]


def activations(model_dir, seq_len):
    """Per window: (ids, bool [layers, seq, ffn]) from the model run on that window alone."""
    model = opt_jax.load(model_dir)
    for window in windows(model_dir, seq_len):
        masks = model.forward(np.array([window])).masks
        yield window, opt_jax.unpack_masks(masks, model.config.ffn_dim)[:, 0]


def covering(counter, fraction):
    total, running = sum(counter.values()), 0
    for k, c in enumerate(sorted(counter.values(), reverse=True), start=1):
        running += c
        if running >= fraction * total:
            return k
    return 0


def reference(model_dir):
    """Dead fractions, covering counts, detectors and MI, neuron by neuron."""
    config = opt_jax.load(model_dir).config
    layers, ffn = config.num_hidden_layers, config.ffn_dim
    fired = np.zeros((layers, ffn), np.int64)
    tokens = 0
    items = {(order, l, n): collections.Counter() for order in (1, 2, 3) for l in TOKEN_LAYERS for n in range(ffn)}
    occurrences = {order: collections.Counter() for order in (1, 2, 3)}
    at_position = np.zeros((layers, SEQ, ffn), np.int64)
    per_position = np.zeros(SEQ, np.int64)
    for window, active in activations(model_dir, SEQ):
        tokens += len(window)
        fired += active.sum(axis=1)
        at_position[:, :len(window)] += active
        per_position[:len(window)] += 1
        for p in range(1, len(window)):
            for order in (1, 2, 3):
                if p >= order:  # n-grams wholly after BOS
                    gram = tuple(window[p - order + 1:p + 1])
                    occurrences[order][gram] += 1
                    for l in TOKEN_LAYERS:
                        for n in np.flatnonzero(active[l, p]):
                            items[order, l, n][gram] += 1
    return dict(fired=fired, tokens=tokens, items=items, occurrences=occurrences, at_position=at_position,
                per_position=per_position, ffn=ffn)


def reference_detectors(ref, order, max_items, t):
    found = {}
    for (o, l, n), counter in ref["items"].items():
        if o != order or not counter:
            continue
        c = covering(counter, t.coverage)
        covered = {g for g, k in counter.items() if k >= t.item_fraction * ref["occurrences"][order][g]}
        share = sum(counter[g] for g in covered) / sum(counter.values())
        if 1 <= c <= max_items and share >= t.covered_fraction:
            found[l, n] = covered
    return found


def reference_mi(at_position, per_position, include_bos):
    out = {}
    start = 0 if include_bos else 1
    for l in range(at_position.shape[0]):
        for n in range(at_position.shape[2]):
            kept = [p for p in range(start, len(per_position)) if per_position[p] > 0]
            total = sum(per_position[p] for p in kept)
            fr = sum(at_position[l, p, n] for p in kept) / total
            mi = 0.0
            for p in kept:
                f = at_position[l, p, n] / per_position[p]
                for a, b in ((f, fr), (1 - f, 1 - fr)):
                    if a > 0:
                        mi += per_position[p] / total * a * math.log(a / b)
            out[l, n] = mi
    return out


@pytest.fixture(scope="module")
def run(tiny_model, tiny_corpus, tmp_path_factory):
    stats = analyses.collect(tiny_model, [tiny_corpus], str(tmp_path_factory.mktemp("s") / "stats"), seq_len=SEQ,
                             batch_size=4, token_layers=TOKEN_LAYERS, ngram_orders=(2, 3), verbose=False)
    out = str(tmp_path_factory.mktemp("report"))
    thresholds = report.Thresholds(detectors=LOOSE, positional=PositionalThresholds(mi_threshold=0.0))
    result = report.analyze([stats], out, names=["tiny"], thresholds=thresholds, verbose=False)
    return result["models"]["tiny"], reference(tiny_model), thresholds


def test_dead_fraction_and_alive_frequency(run):
    got, ref, _ = run
    alive = ref["fired"] > 0
    np.testing.assert_allclose(got["dead"]["fraction_per_layer"], 1 - alive.mean(axis=1))
    for l, value in enumerate(got["dead"]["alive_mean_frequency_per_layer"]):
        assert value == pytest.approx(ref["fired"][l][alive[l]].mean() / ref["tokens"])
    assert ref["tokens"] == got["tokens"]


@pytest.mark.parametrize("order", [1, 2, 3])
def test_coverage_histograms(run, order):
    got, ref, thresholds = run
    edges = list(thresholds.bin_edges) + [math.inf]
    for t, l in enumerate(TOKEN_LAYERS):
        codes = [covering(ref["items"][order, l, n], thresholds.coverage_fraction) for n in range(ref["ffn"])
                 if ref["fired"][l, n] > 0]
        want = [sum(lo <= c < hi for c in codes) for lo, hi in zip(edges, edges[1:])]
        row = got["coverage"][str(order)]["per_layer"][t]
        assert row["counts"] == want
        assert row["no_item"] == sum(c == 0 for c in codes)
        assert sum(want) > 0


@pytest.mark.parametrize("order,key,limit", [(1, "token_detectors", LOOSE.max_tokens),
                                             (3, "trigram_detectors", LOOSE.max_trigrams)])
def test_detectors(run, order, key, limit):
    got, ref, _ = run
    want = reference_detectors(ref, order, limit, LOOSE)
    assert want, "the loose thresholds should find detectors in the tiny model"
    alive = int((ref["fired"][list(TOKEN_LAYERS)] > 0).sum())
    assert len(want) < alive, "... and alive neurons that are not detectors"
    field = "tokens" if order == 1 else "ngrams"
    found = {(d["layer"], d["neuron"]): {(i,) if order == 1 else tuple(i) for i in d[field]} for d in got[key]}
    assert found == want


def test_suppression_scores_against_the_torch_weights(run, pre_ln_model):
    got, _, _ = run
    embedding = pre_ln_model.model.decoder.embed_tokens.weight.detach().double().numpy()  # [v, d]
    assert got["suppression"]["detectors"]
    negative = []
    for d in got["suppression"]["detectors"]:
        update = pre_ln_model.model.decoder.layers[d["layer"]].fc2.weight[:, d["neuron"]].detach().double().numpy()
        scores = embedding @ update  # [v]
        want = scores[d["triggers"]]
        np.testing.assert_allclose(d["trigger_scores"], want, rtol=1e-4, atol=1e-5)
        # The documented rank: 1 + the tokens scoring lower by more than TIE_TOLERANCE of the row's largest
        # |score|. float32 rounding (far below the tolerance) may move a token lying right at that margin.
        tie = suppression.TIE_TOLERANCE * np.abs(scores).max()
        for rank, s in zip(d["trigger_ranks_among_suppressed"], want):
            assert int((scores < s - 1.5 * tie).sum()) + 1 <= rank <= int((scores < s - 0.5 * tie).sum()) + 1
        # The top lists: the k lowest (highest) scores in order; near-ties may come in either order.
        for ids, signed in ((d["top_suppressed"], scores), (d["top_promoted"], -scores)):
            np.testing.assert_allclose(signed[ids], np.sort(signed)[:len(ids)], rtol=0, atol=tie)
            assert len(set(ids)) == len(ids)
        negative.append(bool((want < 0).all()))
    assert got["suppression"]["fraction_all_triggers_negative"] == pytest.approx(np.mean(negative))


def test_positional_mutual_information(run):
    got, ref, _ = run
    want = reference_mi(ref["at_position"], ref["per_position"], include_bos=False)
    found = {(p["layer"], p["neuron"]): p["mi"] for p in got["positional"]}
    assert set(found) == {k for k, v in want.items() if v > 1e-12}
    for k, v in found.items():
        assert v == pytest.approx(want[k], rel=1e-9, abs=1e-12)


def test_claims_against_a_plain_recomputation(run):
    got, ref, _ = run
    claims = check_claims(got, hidden=hf_models.PRE_LN["hidden_size"])
    assert claims["detectors_suppress"]["measured"] is not None, "the tiny model has detectors"
    alive = ref["fired"] > 0
    assert claims["post_ln_no_dead"]["holds"] is None and claims["nopos_no_oscillatory"]["holds"] is None
    second = [1 - alive[l].mean() for l in range(alive.shape[0]) if l >= alive.shape[0] / 2]
    assert claims["second_half_alive"]["measured"] == pytest.approx(max(second))


def test_suppression_goes_through_project_out(tmp_path):
    """350m-style: the update lives in the hidden space and reaches the embedding space through project_out."""
    model = hf_models.random_model(hf_models.hf_config(**hf_models.POST_LN_350M), seed=4)
    path = opt_jax.convert(hf_models.save(model, str(tmp_path / "hf")), str(tmp_path / "m"), verbose=False)
    found = [detectors.LayerDetectors(1, np.array([3, 7]), [np.array([5]), np.array([9, 11])], np.ones(2))]
    s = suppression.analyze_suppression(path, found, top_k=4)
    decoder = model.model.decoder
    embedding = decoder.embed_tokens.weight.detach().double().numpy()  # [v, e]
    project_out = decoder.project_out.weight.detach().double().numpy()  # [e, d]
    for i, (neuron, triggers) in enumerate([(3, [5]), (7, [9, 11])]):
        scores = embedding @ (project_out @ decoder.layers[1].fc2.weight[:, neuron].detach().double().numpy())
        np.testing.assert_allclose(s.trigger_scores[i], scores[triggers], rtol=1e-4, atol=1e-5)
        assert s.top_suppressed[i].tolist() == np.argsort(scores)[:4].tolist()


def test_trigger_ranks_treat_float32_rounding_as_a_tie():
    """Two triggers of equal score in exact arithmetic come out of a float32 product a few ulps apart, in an
    order that depends on the BLAS kernel: both rank 1, while a score lower by more than the tolerance counts."""
    scores = np.zeros((1, 12), np.float32)
    scores[0, 3] = -2.5
    scores[0, 7] = np.nextafter(np.float32(-2.5), np.float32(0))  # one ulp above: a rounding apart
    scores[0, 9] = np.float32(-2.5) * (1 + 50 * suppression.TIE_TOLERANCE)  # clearly lower than both
    values, ranks = suppression.trigger_scores_and_ranks(scores, [np.array([7, 3]), np.array([9])])
    assert ranks[0].tolist() == [2, 2] and ranks[1].tolist() == [1]
    np.testing.assert_array_equal(values[0], scores[0, [7, 3]])


def test_no_full_length_sequences(tiny_model, tmp_path):
    """Positional analysis says it was skipped instead of dividing by zero."""
    short = tmp_path / "short.jsonl"
    short.write_text('{"text": "models"}\n{"text": "the dead"}\n')
    stats = analyses.collect(tiny_model, [str(short)], str(tmp_path / "stats"), seq_len=SEQ, batch_size=2,
                             verbose=False)
    assert analyses.open_stats(stats).full_length_sequences == 0
    with np.errstate(all="raise"):
        got = report.analyze([stats], str(tmp_path / "r"), analyses=["positional", "dead"], verbose=False)
    model = got["models"]["stats"]
    assert model["positional"] == [] and "no full-length sequences" in model["notes"]["positional"]
    assert (tmp_path / "r" / "fig8_positional_types.png").exists()


def test_item_counts_and_coverage_of_sparse_triples():
    """Coverage from (item, neuron, count) triples equals coverage from the same counts laid out densely."""
    rng = np.random.default_rng(3)
    dense = rng.integers(0, 6, (50, 9)) * (rng.random((50, 9)) < 0.25)  # [items, neurons]
    dense[:, 2] = 0
    item, neuron = np.nonzero(dense)
    order = rng.permutation(len(item))
    sparse = coverage.ItemCounts.from_triples(item[order], neuron[order], dense[item, neuron][order], 9)
    for fraction in (0.5, 0.95, 1.0):
        want = [covering(collections.Counter({i: c for i, c in enumerate(dense[:, n]) if c}), fraction)
                for n in range(9)]
        assert coverage.covering_counts_of(sparse, fraction).tolist() == want
        assert coverage.covering_counts_of(coverage.ItemCounts.from_dense(dense), fraction).tolist() == want


def test_new_items_per_layer():
    layer = lambda l, *sets: detectors.LayerDetectors(l, np.arange(len(sets)), [np.array(s) for s in sets],  # noqa
                                                       np.ones(len(sets)))
    per_layer = [layer(0, [1, 2], [2]), layer(1, [2, 3]), layer(2), layer(3, [1, 4])]
    detected, cumulative, new_overall, new_vs_previous = detectors.new_items(per_layer)
    assert detected.tolist() == [2, 2, 0, 2]
    assert cumulative.tolist() == [2, 3, 3, 4]
    assert new_overall.tolist() == [2, 1, 0, 1]  # layer 3: 4 is new, 1 was seen in layer 0
    assert new_vs_previous.tolist() == [2, 1, 0, 2]


def test_unknown_analysis_and_duplicate_names(run, tmp_path):
    got, _, _ = run
    with pytest.raises(ValueError, match="unknown analyses"):
        report.analyze([got["stats"]], str(tmp_path), analyses=["dead", "neurons"])
    with pytest.raises(ValueError, match="distinct name"):
        report.analyze([got["stats"], got["stats"]], str(tmp_path))


def test_token_strings_of_ids_the_tokenizer_lacks(tiny_model):
    from analyses.tokens import TokenStrings

    strings = TokenStrings(tiny_model)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    assert strings([5, 10_000]) == [tokenizer.decode([5]), "<id 10000>"]
    with pytest.raises(FileNotFoundError, match="--model"):
        TokenStrings(tiny_model + "-missing")


def test_several_models_share_the_size_comparing_figures(run, tmp_path):
    from matplotlib import image

    got, _, _ = run
    both = report.analyze([got["stats"], got["stats"]], str(tmp_path), names=["small", "same again"],
                          analyses=["dead", "detectors", "positional"], verbose=False)
    assert list(both["models"]) == ["small", "same again"]
    assert both["models"]["small"]["dead"] == both["models"]["same again"]["dead"]
    shared = ["fig1a_dead_neurons.png", "fig1b_alive_frequency.png", "fig3a_token_detectors.png",
              "fig3b_detected_tokens.png", "fig8_positional_types.png"]
    assert set(shared) <= set(both["figures"])
    assert {"fig7_positional_examples_small.png", "fig7_positional_examples_same again.png"} <= set(both["figures"])
    one = image.imread(tmp_path / "fig8_positional_types.png")
    alone = report.analyze([got["stats"]], str(tmp_path / "one"), names=["small"], analyses=["positional"],
                           verbose=False)
    assert alone["figures"] == ["fig8_positional_types.png", "fig7_positional_examples_small.png",
                                "fig9_oscillatory_ranges_small.png"]
    assert one.shape[0] > image.imread(tmp_path / "one" / "fig8_positional_types.png").shape[0], \
        "one row of bars per model"
