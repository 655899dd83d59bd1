"""The atlas's per-neuron facts and data files, on the planted model (tests/planted.py says how each neuron was
made), against plain numpy recomputations from the statistics arrays and the converted weights."""

import glob
import json
import math
import os

import numpy as np
import pytest

import analyses
import planted
import rewired
from analyses import suppression
from analyses.neurons import facts as nf
from analyses.neurons import token_index as ti
from analyses.neurons.atlas import neuron_records
from opt_jax import checkpoint as ckpt
from opt_jax.errors import AnalysisError, InputError, OptJaxError


@pytest.fixture(scope="module")
def source(planted_run):
    return nf.open_source(planted_run.stats, "planted")


@pytest.fixture(scope="module")
def layers(source):
    return [nf.layer_facts(source, layer) for layer in range(planted.LAYERS)]


@pytest.fixture(scope="module")
def arrays(planted_run):
    """The statistics arrays, read whole with tensorstore (the reference side)."""
    stats = analyses.open_stats(planted_run.stats)
    return {name: np.asarray(getattr(stats, name)) for name in ("act", "pos_act", "pos_tokens", "token_occ",
                                                                 "tok_act")} | {"tokens": stats.tokens}


@pytest.fixture(scope="module")
def built(planted_run, tmp_path_factory):
    out = tmp_path_factory.mktemp("atlas") / "atlas"
    return analyses.atlas([planted_run.stats], str(out), names=["planted"], block=10, verbose=False)


def word_id(name):
    return planted.token_id(planted.TRIGGERS[name])


def test_frequency_rank_and_dead(layers, arrays):
    for layer, facts in enumerate(layers):
        act = arrays["act"][layer]
        np.testing.assert_allclose(facts.freq, act / arrays["tokens"], rtol=0, atol=0)
        for n in range(planted.FFN):
            assert facts.rank[n] == 1 + sum(a > act[n] for a in act), (layer, n)
        assert (facts.dead == (act == 0)).all()
    assert set(np.flatnonzero(layers[0].dead)) == set(planted.DEAD) and layers[1].dead.all()
    assert (layers[2].rank == 1).all(), "always-on neurons tie for the first rank"


def test_a_dead_neurons_rate_bound_in_facts_and_records(layers, arrays, built):
    """1 - 0.05^(1/N), N the tokens counted; the dead neurons' records hold it rounded up to 3 significant digits
    (null for the alive)."""
    want = 1 - 0.05 ** (1 / arrays["tokens"])
    step = 10.0 ** (math.floor(math.log10(want)) - 2)
    shown = math.ceil(want / step) * step
    for layer, facts in enumerate(layers):
        assert facts.rate_bound == pytest.approx(want, rel=1e-9)
        _, block = parse(os.path.join(built, "data", "m0", f"L{layer}", "B0.js"))
        for record in block["neurons"]:
            if record["dead"]:
                assert record["rate_bound"] == pytest.approx(shown, rel=1e-12) and record["rate_bound"] >= want
            else:
                assert record["rate_bound"] is None


def test_curves_and_mutual_information(layers, arrays):
    """fr(p) over positions 1..63 and I(act; pos), from the plain formula, neuron by neuron."""
    tokens = arrays["pos_tokens"]
    kept = [p for p in range(1, len(tokens)) if tokens[p] > 0]
    for layer, facts in enumerate(layers):
        assert facts.positions.tolist() == kept
        for n in range(planted.FFN):
            fr = [arrays["pos_act"][layer, p, n] / tokens[p] for p in kept]
            np.testing.assert_allclose(facts.curves[:, n], fr, rtol=1e-6)
            overall = sum(arrays["pos_act"][layer, p, n] for p in kept) / sum(tokens[p] for p in kept)
            mi = 0.0
            for p, f in zip(kept, fr):
                weight = tokens[p] / sum(tokens[q] for q in kept)
                for a, b in ((f, overall), (1 - f, 1 - overall)):
                    mi += weight * a * math.log(a / b) if a > 0 else 0.0
            assert facts.mi[n] == pytest.approx(max(mi, 0.0), abs=1e-12), (layer, n)


def test_positional_types_are_the_planted_ones_and_the_reports(layers, planted_run):
    facts = layers[0]
    found = {n: (nf.positional.TYPES[facts.pos_type[n]], "strong" if facts.strong[n] else "weak")
             for n in np.flatnonzero(facts.pos_type >= 0)}
    assert found == planted.POSITIONAL
    assert all((f.pos_type < 0).all() for f in layers[1:])
    report = {p["neuron"]: p["mi"] for p in planted_run.report["positional"]}
    assert {n: facts.mi[n] for n in report} == pytest.approx(report, abs=1e-12), "the study's MI"


def test_top_triggers_from_tok_act(layers, arrays):
    """Token layers 0, 1: the 10 tokens with most activations (ties: lower id), share and rate, per neuron."""
    for t, layer in enumerate((0, 1)):
        facts = layers[layer]
        assert facts.token_layer
        counts = arrays["tok_act"][t]  # [v, n]
        for n in range(planted.FFN):
            column = counts[:, n]
            order = sorted((i for i in range(len(column)) if column[i] > 0), key=lambda i: (-column[i], i))[:10]
            got = [int(i) for i in facts.trigger_ids[n] if i >= 0]
            assert got == order, (layer, n)
            for j, i in enumerate(order):
                assert facts.trigger_counts[n, j] == column[i]
                assert facts.trigger_shares()[n, j] == pytest.approx(column[i] / column.sum())
                assert facts.trigger_rates[n, j] == pytest.approx(column[i] / arrays["token_occ"][i])
    assert not layers[2].token_layer and (layers[2].trigger_ids == -1).all()
    for n, (words, _) in planted.DETECTORS.items():  # a detector fires on every occurrence of its triggers
        assert sorted(layers[0].trigger_ids[n][layers[0].trigger_ids[n] >= 0]) == sorted(map(word_id, words))
        assert (layers[0].trigger_rates[n][:len(words)] == 1.0).all()


def test_detectors_and_labels_name_the_planted_triggers(layers, source, planted_run):
    facts = layers[0]
    assert set(facts.token_items) == set(planted.DETECTORS) == set(facts.trigram_items)
    for n, (words, _) in planted.DETECTORS.items():
        assert sorted(facts.token_items[n]) == sorted(map(word_id, words))
        assert {tuple(g) for g in facts.trigram_items[n]} == planted.trigger_trigrams(words)
        label = nf.label(facts, n, source)
        assert label == "detector of " + ", ".join(repr(planted.word(planted.TRIGGERS[w])) for w in words), label
    for n, (kind, strength) in planted.POSITIONAL.items():
        assert nf.label(facts, n, source) == f"positional, {kind} {strength}"
    assert nf.label(facts, planted.DEAD[0], source) == "dead"
    assert all(nf.label(layers[1], n, source) == "dead" for n in range(planted.FFN))
    assert nf.label(layers[0], planted.ALWAYS_ON[0], source).startswith("fires on 'w")
    reported = {d["neuron"] for d in planted_run.report["token_detectors"]}
    assert reported == set(facts.token_items), "the study's detectors"


def test_promoted_and_suppressed_tokens_from_the_weights(layers, planted_run):
    """E @ fc2[:, n] by numpy from the converted weights; ties at equal scores may list either token."""
    params = ckpt.read_params(planted_run.model)
    embedding = params["embed/tokens"].astype(np.float64)  # [v, d]
    for layer, facts in enumerate(layers):
        fc2 = params["layers/ffn/fc2/weight"][layer].astype(np.float64)  # [d, n]
        for n in range(planted.FFN):
            if facts.dead[n]:
                assert (facts.promoted[n] == -1).all() and (facts.suppressed[n] == -1).all()
                continue
            scores = embedding @ fc2[:, n]  # [v]
            top, bottom = np.sort(scores)[::-1][:10], np.sort(scores)[:10]
            np.testing.assert_allclose(facts.promoted_scores[n], top, atol=1e-5)
            np.testing.assert_allclose(facts.suppressed_scores[n], bottom, atol=1e-5)
            np.testing.assert_allclose(scores[facts.promoted[n]], facts.promoted_scores[n], atol=1e-5)
            np.testing.assert_allclose(scores[facts.suppressed[n]], facts.suppressed_scores[n], atol=1e-5)
    facts = layers[0]
    for n, (words, sign) in planted.DETECTORS.items():
        scores = embedding @ params["layers/ffn/fc2/weight"][0].astype(np.float64)[:, n]
        values, ranks = facts.trigger_scores[n]
        ids = facts.token_items[n]
        np.testing.assert_allclose(values, scores[ids], atol=1e-5)
        tie = suppression.TIE_TOLERANCE * np.abs(scores).max()  # the documented rounding of a tie
        assert ranks.tolist() == [1 + int((scores < scores[i] - tie).sum()) for i in ids]
        listed = facts.suppressed[n] if sign < 0 else facts.promoted[n]
        assert set(listed[:len(words)]) == set(map(word_id, words)), "its triggers head the list"


def test_examples_are_the_stores_decoded(layers, source, planted_run):
    stats = analyses.open_stats(planted_run.stats)
    for layer in (0, 2):
        for n in (0, 1, 6, 15):
            for kind in ("top", "random"):
                e = layers[layer].examples[kind]
                stored = stats.examples(layer, n, kind)
                assert int(e.valid[n].sum()) == len(stored) == 16
                for j, ex in enumerate(stored):
                    start, stop = max(1, ex.position - 12), min(len(ex.tokens), ex.position + 5)
                    ids = e.ids[n, j][e.ids[n, j] >= 0]
                    assert ids.tolist() == ex.tokens[start:stop].tolist()
                    assert ids[e.fire[n, j]] == ex.token and e.value[n, j] == pytest.approx(ex.value)
                    assert (e.window[n, j], e.position[n, j]) == (ex.window, ex.position)
    top = layers[0].examples["top"]
    assert {int(top.ids[0, j][top.ids[0, j] >= 0][top.fire[0, j]]) for j in range(16)} == {word_id("t1")}


def test_layer_out_of_range_is_refused(source, planted_run, tmp_path):
    with pytest.raises(InputError, match=r"layer 4 is out of range; the store holds layers 0\.\.3"):
        nf.layer_facts(source, 4)
    with pytest.raises(InputError, match=r"layers \[7\] are out of range"):
        analyses.atlas([planted_run.stats], str(tmp_path / "a"), layers=[7], verbose=False)
    assert not os.path.exists(tmp_path / "a")


def parse(path) -> tuple[str, object]:
    """A data file the way a test reads it, independently of read_js: strip `atlasData("key", ` and `);`, and
    around a summary's or a block's JSON string `JSON.parse(` and `)`."""
    with open(path, encoding="utf-8") as f:
        text = f.read()
    assert text.startswith('atlasData("') and text.rstrip().endswith(");")
    key, rest = text[len('atlasData("'):].split('", ', 1)
    payload = rest.rstrip()[:-2]
    if key.endswith("/summary") or "/B" in key:
        assert payload.startswith("JSON.parse(") and payload.endswith(")")
        return key, json.loads(json.loads(payload[len("JSON.parse("):-1]))
    return key, json.loads(payload)


def test_the_written_files_parse_and_hold_the_facts(built, layers, source):
    root = built
    for path in glob.glob(os.path.join(root, "data", "**", "*.js"), recursive=True):
        key, _ = parse(path)
        assert key == os.path.relpath(path, os.path.join(root, "data"))[:-3].replace(os.sep, "/")
    _, manifest = parse(os.path.join(root, "data", "atlas.js"))
    model = manifest["models"][0]
    assert (model["name"], model["layers"], model["built"], model["ffn"], model["examples"]) == \
        ("planted", 4, [0, 1, 2, 3], planted.FFN, 16)
    assert model["counts"][0]["dead"] == len(planted.DEAD) and model["counts"][1]["dead"] == planted.FFN
    assert model["counts"][0]["token_detectors"] == len(planted.DETECTORS)
    assert model["counts"][0]["positional"] == {"oscillatory": 2, "both extremes": 2, "one extreme": 2, "other": 2}
    assert model["note"] == "" and os.path.isfile(os.path.join(root, "index.html"))
    for layer, facts in enumerate(layers):
        _, summary = parse(os.path.join(root, "data", "m0", f"L{layer}", "summary.js"))
        assert summary["freq"] == pytest.approx(facts.freq.tolist(), rel=1e-5)
        assert summary["rank"] == facts.rank.tolist() and summary["dead"] == facts.dead.astype(int).tolist()
        assert summary["label"] == [nf.label(facts, n, source) for n in range(planted.FFN)]
        blocks = sorted(glob.glob(os.path.join(root, "data", "m0", f"L{layer}", "B*.js")))
        assert len(blocks) == math.ceil(planted.FFN / 10)
        records = [r for b in range(len(blocks))
                   for r in parse(os.path.join(root, "data", "m0", f"L{layer}", f"B{b}.js"))[1]["neurons"]]
        assert [r["n"] for r in records] == list(range(planted.FFN))
        for r in records:
            n = r["n"]
            assert r["curve"]["positions"] == facts.positions.tolist() and r["curve"]["binned"] == 1
            assert r["curve"]["freq"] == pytest.approx(facts.curves[:, n].tolist(), rel=1e-3)
            assert [t["token"] for t in r["triggers"]] == [int(i) for i in facts.trigger_ids[n] if i >= 0]
            assert len(r["examples"]["top"]) == len(r["examples"]["random"]) == (0 if facts.dead[n] else 16)
    _, block = parse(os.path.join(root, "data", "m0", "L0", "B0.js"))
    detector = block["neurons"][0]
    assert detector["detector"] == {"kind": "token", "items": ["w0"], "tokens": [word_id("t1")]}
    assert [d["kind"] for d in detector["detectors"]] == ["token", "trigram"]
    trigrams = {tuple(g) for g in detector["detectors"][1]["tokens"]}
    assert trigrams == planted.trigger_trigrams(("t1",))
    assert sorted(detector["detectors"][1]["items"]) == sorted(" ".join(planted.word(i - 4) for i in g)
                                                               for g in trigrams), "decoded as the report does"
    assert detector["triggers"][0] | {"share": 1.0} == {"token": word_id("t1"), "text": "w0", "count":
                                                        detector["triggers"][0]["count"], "share": 1.0,
                                                        "rate": 1.0, "always": True}
    assert detector["trigger_scores"][0]["rank"] == 1 and detector["trigger_scores"][0]["score"] < 0
    assert detector["suppressed"][0]["text"] == "w0"
    example = detector["examples"]["top"][0]
    assert example["tokens"][example["fire"]] == "w0" and example["value"] > 0
    positional = block["neurons"][6]
    assert positional["positional"] == {"type": "oscillatory", "strong": True} and positional["mi"] > 0.05


def test_related_neurons_are_the_weights_cosines(built, planted_run, tmp_path):
    """Each neuron record's related neurons against float64 numpy cosines of fc1 / fc2 (the planted model's are
    zero past layer 0, so `rewired`'s random ones): the best scores of the layers within 2, each listed neuron
    with its own cosine (equal scores may list either neuron here; the order of ties is test_related.py's)."""
    _, manifest = parse(os.path.join(built, "data", "atlas.js"))
    assert manifest["version"] == 2 and manifest["related"] == {"depth": 2, "k": 10}
    _, block = parse(os.path.join(built, "data", "m0", "L0", "B0.js"))
    assert set(block["neurons"][0]["related"]) == {"excites", "inhibits", "excited_by", "inhibited_by"}
    model = rewired.rewire(planted_run.model, str(tmp_path / "model"))
    source = nf.open_source(planted_run.stats, "rewired", model_dir=model)
    params = ckpt.read_params(model)
    norm = lambda a: np.linalg.norm(a, axis=-1, keepdims=True)  # noqa: E731
    unit = lambda a: a / np.where(norm(a) > 0, norm(a), np.inf)  # noqa: E731  (a zero vector's cosines are 0)
    w_in = unit(params["layers/ffn/fc1/weight"].astype(np.float64))  # [L, n, d]
    w_out = unit(np.swapaxes(params["layers/ffn/fc2/weight"].astype(np.float64), 1, 2))  # [L, n, d]
    checked = 0
    for layer in (0, 1, 3):
        facts = nf.layer_facts(source, layer, examples=False)
        for record in neuron_records(facts, source, 0, planted.FFN):
            n, got = record["n"], record["related"]
            for (high, low), others, cos in ((("excites", "inhibits"), range(layer + 1, layer + 3),
                                              lambda l: w_in[l] @ w_out[layer, n]),
                                             (("excited_by", "inhibited_by"), range(layer - 2, layer),
                                              lambda l: w_out[l] @ w_in[layer, n])):
                scores = {(l, m): c for l in others if 0 <= l < planted.LAYERS for m, c in enumerate(cos(l))}
                ranked = sorted(scores.values())
                for listed, best in ((got[high], ranked[::-1][:10]), (got[low], ranked[:10])):
                    values = [s for _, _, s in listed]
                    assert values == pytest.approx(best, abs=1e-4), (layer, n, high)
                    assert values == pytest.approx([scores[(l, m)] for l, m, _ in listed], abs=1e-4)
                    checked += sum(abs(v) > 0.1 for v in values)
    assert checked > 100, "the cosines compared are not all 0"


def test_the_token_index_finds_the_detector(built):
    assert ti.fnv1a32("") == 0x811C9DC5 and ti.fnv1a32("a") == 0xE40C292C  # FNV-1a's published test vectors
    assert ti.token_key(" The\n") == "the" and ti.token_key("\n") == "\n"
    root = built
    _, bucket = parse(os.path.join(root, "data", "m0", "tokens", f"{ti.fnv1a32('w0') % 256}.js"))
    entry = bucket["w0"]
    assert entry["texts"] == ["w0"]
    assert entry["triggers"][0] == [0, 0, 1.0], "detector 0 owes all its activations to w0"
    assert [0, 0] in entry["detects"]
    assert entry["suppresses"][0][:2] == [0, 0] and entry["suppresses"][0][2] < 0
    _, promoted = parse(os.path.join(root, "data", "m0", "tokens", f"{ti.fnv1a32('w3') % 256}.js"))
    assert promoted["w3"]["promotes"][0][:2] == [0, 2], "neuron 2 promotes its own trigger"
    keys = 0
    for h in range(256):
        _, bucket = parse(os.path.join(root, "data", "m0", "tokens", f"{h}.js"))
        assert all(ti.fnv1a32(k) % 256 == h for k in bucket)
        assert all(len(e[kind]) <= 50 for e in bucket.values() for kind in ti.INDEX_KINDS)
        keys += len(bucket)
    assert keys > planted.WORDS // 2


def test_a_store_without_examples_or_model_builds_and_says_so(tmp_path):
    """A synthetic store (no examples, no model, no token layers): the atlas builds, its note says what is missing."""
    from benchmarks.scale import write_synthetic_stats
    from opt_jax.config import OPTConfig

    config = OPTConfig(num_hidden_layers=2, hidden_size=16, num_attention_heads=2, ffn_dim=40,
                       word_embed_proj_dim=16, vocab_size=64, max_position_embeddings=256)
    stats = write_synthetic_stats(str(tmp_path / "stats"), config, seq_len=256, sequences=50, positional=4,
                                  verbose=False)
    out = analyses.atlas([stats], str(tmp_path / "atlas"), verbose=False)
    _, manifest = parse(os.path.join(out, "data", "atlas.js"))
    model = manifest["models"][0]
    assert model["examples"] == 0 and "no example contexts were collected" in model["note"]
    assert "no model" in model["note"] and model["model"] is None
    assert [c["positional"]["oscillatory"] for c in model["counts"]] == [4, 4], "the planted square waves"
    _, block = parse(os.path.join(out, "data", "m0", "L1", "B0.js"))
    record = block["neurons"][0]
    assert record["examples"] == {"top": [], "random": []} and record["promoted"] == []
    assert record["curve"]["binned"] == 1 and len(record["curve"]["positions"]) == 255
    slim = analyses.atlas([stats], str(tmp_path / "slim"), curve_points=100, verbose=False)
    _, block = parse(os.path.join(slim, "data", "m0", "L1", "B0.js"))
    curve = block["neurons"][5]["curve"]
    assert curve["binned"] == 3 and curve["positions"][:3] == [1, 4, 7] and len(curve["freq"]) == 85
    _, full = parse(os.path.join(out, "data", "m0", "L1", "B0.js"))
    assert curve["freq"][0] == pytest.approx(np.mean(full["neurons"][5]["curve"]["freq"][:3]), rel=1e-3)


def assert_same_atlas(out, built) -> None:
    """Every data file of the atlas at `out` holds what `built`'s does (but the manifest's creation time)."""
    for path in glob.glob(os.path.join(built, "data", "**", "*.js"), recursive=True):
        rel = os.path.relpath(path, built)
        got, want = parse(os.path.join(out, rel))[1], parse(path)[1]
        if rel.endswith("atlas.js"):
            got.pop("created"), want.pop("created")
        assert got == want, rel


def test_a_killed_build_resumes_and_leaves_the_old_atlas(built, planted_run, monkeypatch, tmp_path):
    import shutil

    out = tmp_path / "atlas"
    shutil.copytree(built, out)
    computed = []
    real = nf.layer_facts

    def dies_at_layer_2(source, layer, *args, **kwargs):
        if layer == 2 and not computed.count("resume"):
            raise KeyboardInterrupt
        computed.append(layer)
        return real(source, layer, *args, **kwargs)

    monkeypatch.setattr(nf, "layer_facts", dies_at_layer_2)
    with pytest.raises(KeyboardInterrupt):
        analyses.atlas([planted_run.stats], str(out), names=["planted"], block=10, verbose=False)
    assert computed == [0, 1]
    assert os.path.isfile(out / "data" / "atlas.js"), "the earlier atlas is still whole"
    computed.append("resume")
    analyses.atlas([planted_run.stats], str(out), names=["planted"], block=10, verbose=False)
    assert computed == [0, 1, "resume", 2, 3], "the finished layers were not computed again"
    assert not os.path.exists(f"{out}.partial")
    assert_same_atlas(out, built)
    assert sorted(glob.glob(os.path.join(out, "**"), recursive=True)) == sorted(
        p.replace(str(built), str(out)) for p in glob.glob(os.path.join(built, "**"), recursive=True))


def test_bad_names_are_refused(planted_run, tmp_path):
    with pytest.raises(OptJaxError, match="one distinct name per statistics directory"):
        analyses.atlas([planted_run.stats, planted_run.stats], str(tmp_path / "a"), verbose=False)


def test_a_full_disk_stops_the_build_clearly_and_the_same_call_finishes_it(built, planted_run, tmp_path):
    """The atlas's disk fills mid-build: an AnalysisError naming the directory and the reason; the layers built
    are kept in `.partial`, and with room the same call ends with the atlas of an uninterrupted build."""
    from helpers import small_disk
    from opt_jax import disk

    size = disk.used_bytes(built)
    with small_disk(tmp_path / "disk", size * 3) as mount:
        out = mount / "atlas"
        ballast = mount / "ballast"
        ballast.write_bytes(b"\0" * (disk.free_bytes(str(mount)) - size // 2))
        with pytest.raises(AnalysisError, match=r"building the atlas failed: No space left on device"):
            analyses.atlas([planted_run.stats], str(out), names=["planted"], block=10, verbose=False)
        assert not out.exists() and os.path.isdir(f"{out}.partial")
        ballast.unlink()
        analyses.atlas([planted_run.stats], str(out), names=["planted"], block=10, verbose=False)
        assert_same_atlas(out, built)
