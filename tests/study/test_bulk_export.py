"""Bulk export (analyses.neurons.export, scripts/export.py) of the planted store: every row read back with
pyarrow and compared with the store (its arrays, its per-neuron example records and windows), the tokenizer,
the weights and the planted truth, recomputed here with numpy; jsonl equal to parquet; the atlas's share;
stored context activations; resume; clear errors."""

import json
import os
import shutil

import numpy as np
import pyarrow as pa
import pyarrow.json as pj
import pyarrow.parquet as pq
import pytest
import tensorstore as ts

import analyses
import planted
from analyses.neurons import export as ex
from analyses.neurons.data_files import read_js, write_js
from helpers import run_script
from opt_jax import checkpoint as ckpt
from opt_jax.errors import InputError, MissingError, OptJaxError, StatsError


@pytest.fixture(scope="module")
def tokenizer(planted_run):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(planted_run.model)


@pytest.fixture(scope="module")
def atlas(planted_run, tmp_path_factory):
    out = tmp_path_factory.mktemp("export-atlas") / "atlas"
    return analyses.atlas([planted_run.stats], str(out), names=["planted"], block=10, verbose=False,
                          related_depth=0)


@pytest.fixture(scope="module")
def exported(planted_run, atlas, tmp_path_factory):
    """The planted store exported by the script as parquet (with its atlas) and as jsonl (without)."""
    root = tmp_path_factory.mktemp("export")
    result = run_script("scripts/export.py", "--stats", planted_run.stats, "--out", str(root / "parquet"),
                        "--atlas", atlas)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "export: 4/4 layers" in result.stderr, "a progress line per layer"
    analyses.attribute(planted_run.model, [str(planted_run.root / "corpus.jsonl")], str(root / "attribution"),
                       seq_len=planted.SEQ, batch_size=16, max_tokens=4096, dtype="float32", verbose=False)
    ex.export(planted_run.stats, str(root / "jsonl"), "jsonl", attribution=str(root / "attribution"), verbose=False)
    return root


def parquet(root, table):
    """A table's files read in the order export.json lists them (each one row group a block of neurons)."""
    with open(os.path.join(root, "export.json")) as f:
        files = json.load(f)["files"][table]
    return pa.concat_tables([pq.read_table(os.path.join(root, p)) for p in files])


def decode(tokenizer, ids):
    return tokenizer.decode([int(i) for i in ids], clean_up_tokenization_spaces=False)


def test_facts_rows_are_the_stores_neurons(exported, planted_run, tokenizer):
    stats = analyses.open_stats(planted_run.stats)
    rows = parquet(exported / "parquet", "facts").to_pylist()
    assert [(r["layer"], r["neuron"]) for r in rows] == [(l, n) for l in range(planted.LAYERS)
                                                        for n in range(planted.FFN)]
    act = np.asarray(stats.act, np.int64)  # [layers, ffn]
    tok_act = np.asarray(stats.tok_act, np.int64)  # [token layers, v, ffn]
    tokens = stats.tokens
    for r in rows:
        layer, n = r["layer"], r["neuron"]
        a = act[layer]
        assert r["activations"] == a[n] and r["frequency"] == pytest.approx(a[n] / tokens, rel=1e-12)
        assert r["rank"] == 1 + int((a > a[n]).sum())
        assert r["dead"] == (a[n] == 0)
        assert r["rate_bound"] == (pytest.approx(1 - 0.05 ** (1 / tokens), rel=1e-9) if a[n] == 0 else None)
        if layer in stats.token_layers:
            column = tok_act[stats.token_layers.index(layer), :, n]  # [v]
            want = sorted(np.flatnonzero(column), key=lambda i: (-column[i], i))[:10]
            assert r["triggers"] == [int(i) for i in want] and r["trigger_counts"] == column[want].tolist()
            assert r["trigger_texts"] == [decode(tokenizer, [i]) for i in want]
        else:
            assert r["triggers"] is None
    layer0 = {r["neuron"]: r for r in rows if r["layer"] == 0}
    for n in planted.DEAD:
        assert layer0[n]["dead"] and layer0[n]["label"] == "dead"
    assert all(r["dead"] for r in rows if r["layer"] == 1)
    for n, (words, _) in planted.DETECTORS.items():
        ids = [planted.token_id(planted.TRIGGERS[w]) for w in words]
        assert sorted(layer0[n]["token_detector"]) == sorted(ids)
        assert sorted(layer0[n]["token_detector_texts"]) == sorted(planted.word(planted.TRIGGERS[w]) for w in words)
        assert {tuple(g) for g in layer0[n]["trigram_detector"]} == planted.trigger_trigrams(words)
        assert layer0[n]["trigram_detector_texts"] == [decode(tokenizer, g) for g in layer0[n]["trigram_detector"]]
    others = set(range(planted.FFN)) - set(planted.DETECTORS)
    assert all(layer0[n]["token_detector"] is None and layer0[n]["trigram_detector"] is None for n in others)
    reported = {p["neuron"]: p["mi"] for p in planted_run.report["positional"] if p["layer"] == 0}
    for n, (kind, strength) in planted.POSITIONAL.items():
        assert (layer0[n]["positional"], layer0[n]["positional_strong"]) == (kind, strength == "strong")
        assert layer0[n]["mi"] == pytest.approx(reported[n], rel=1e-6)
    assert all(layer0[n]["positional"] is None and layer0[n]["positional_strong"] is None
               for n in range(planted.FFN) if n not in planted.POSITIONAL)


def test_facts_take_the_atlas_labels_and_update_tokens(exported, planted_run, atlas):
    """Labels as the atlas's summaries show them; promoted / suppressed tokens those of E @ fc2[:, n] (numpy);
    without an atlas the labels are the same (the same thresholds) and there are no update tokens."""
    rows = parquet(exported / "parquet", "facts").to_pylist()
    params = ckpt.read_params(planted_run.model)
    embedding = params["embed/tokens"].astype(np.float64)  # [v, d]
    for layer in range(planted.LAYERS):
        _, summary = read_js(os.path.join(atlas, "data", "m0", f"L{layer}", "summary.js"))
        fc2 = params["layers/ffn/fc2/weight"][layer].astype(np.float64)  # [d, n]
        for r in rows[layer * planted.FFN:(layer + 1) * planted.FFN]:
            n = r["neuron"]
            assert r["label"] == summary["label"][n] and r["effect"] is None
            if r["dead"]:
                assert r["promoted"] is None and r["suppressed"] is None
                continue
            scores = embedding @ fc2[:, n]  # [v]
            np.testing.assert_allclose(scores[r["promoted"]], np.sort(scores)[::-1][:10], atol=1e-5)
            np.testing.assert_allclose(scores[r["suppressed"]], np.sort(scores)[:10], atol=1e-5)
    plain = pj.read_json(exported / "jsonl" / "facts" / "layer-000.jsonl").to_pylist()
    assert [r["label"] for r in plain] == [r["label"] for r in rows[:planted.FFN]]
    assert all(r["promoted"] is None for r in plain)


def test_facts_carry_the_attributions_effects(exported):
    effect = np.asarray(ts.open({"driver": "zarr3", "kvstore": f"file://{exported}/attribution/effect"}).result())
    for layer in range(planted.LAYERS):
        rows = pj.read_json(exported / "jsonl" / "facts" / f"layer-{layer:03d}.jsonl").to_pylist()
        assert [r["effect"] for r in rows] == effect[layer].tolist()
    assert np.abs(effect[0]).max() > 0


def test_examples_rows_are_the_stores_records(exported, planted_run, tokenizer):
    """Every example of every neuron and kind, in (layer, neuron, kind, slot) order, equal to the store's
    per-neuron records (`Stats.examples`, their windows); contexts as the atlas shows them (12 before, 4 after,
    never BOS), decoded by the tokenizer; no context values without stored context activations."""
    stats = analyses.open_stats(planted_run.stats)
    rows = parquet(exported / "parquet", "examples").to_pylist()
    want = []
    for layer in range(planted.LAYERS):
        for n in range(planted.FFN):
            for kind in ("top", "random"):
                for slot, e in enumerate(stats.examples(layer, n, kind)):
                    start, stop = max(1, e.position - 12), min(len(e.tokens), e.position + 5)
                    context = e.tokens[start:stop]
                    want.append({"layer": layer, "neuron": n, "kind": kind, "slot": slot, "window": e.window,
                                 "position": e.position, "token": e.token, "value": e.value,
                                 "text": decode(tokenizer, [e.token]), "context_tokens": context.tolist(),
                                 "context_index": e.position - start, "context_text": decode(tokenizer, context),
                                 "context_values": None})
    assert len(rows) == len(want) > 0
    for got, expected in zip(rows, want):
        assert got == pytest.approx(expected, rel=1e-7)
    with open(exported / "parquet" / "export.json") as f:
        manifest = json.load(f)
    assert manifest["contexts"] == "window" and set(manifest["columns"]["examples"]) == set(ex.EXAMPLES.names)
    groups = pq.ParquetFile(exported / "parquet" / "examples" / "layer-002.parquet").metadata.num_row_groups
    assert groups == 1, "one row group per block of neurons"


def test_jsonl_equals_parquet(exported):
    for table, schema in (("facts", ex.FACTS), ("examples", ex.EXAMPLES)):
        with open(exported / "jsonl" / "export.json") as f:
            files = json.load(f)["files"][table]
        lines = []
        for p in files:
            with open(exported / "jsonl" / p) as f:
                lines += [json.loads(line) for line in f]
        rows = parquet(exported / "parquet", table).to_pylist()
        assert len(lines) == len(rows)
        for line, row in zip(lines, rows):
            assert list(line) == schema.names
            if table == "facts":  # the parquet export has the atlas's update tokens, the jsonl one an attribution
                row = row | {k: None for k in ("promoted", "promoted_texts", "suppressed", "suppressed_texts")}
                row["effect"] = line["effect"]
            assert line == pytest.approx(row, rel=1e-7)


def test_stored_context_activations_fill_the_context_columns(planted_run, tmp_path, tokenizer):
    """A store with context activations (`analyses.collection.contexts.add_contexts` on a copy of the planted
    store): every example row carries its record's span, values and index (`Stats.examples`, read per neuron)."""
    contexts = pytest.importorskip("analyses.collection.contexts")
    root = str(tmp_path / "stats")
    shutil.copytree(planted_run.stats, root, symlinks=True)
    contexts.add_contexts(root, before=5, after=2, verbose=False)
    stats = analyses.open_stats(root)
    out = ex.export(root, str(tmp_path / "out"), layers=[0, 2], verbose=False)
    rows = parquet(out, "examples").to_pylist()
    with open(os.path.join(out, "export.json")) as f:
        manifest = json.load(f)
    assert manifest["contexts"] == "store" and manifest["context"] == {"before": 5, "after": 2}
    records = {(layer, n, kind): stats.examples(layer, n, kind) for layer in (0, 2) for n in range(planted.FFN)
               for kind in ("top", "random")}
    assert len(rows) == sum(map(len, records.values()))
    for r in rows:
        e = records[r["layer"], r["neuron"], r["kind"]][r["slot"]]
        assert (e.window, e.position, e.token) == (r["window"], r["position"], r["token"])
        assert r["context_tokens"] == e.context_tokens.tolist() and r["context_index"] == e.context_index
        assert r["context_values"] == e.context_values.tolist()
        assert r["context_values"][r["context_index"]] == r["value"]
        assert r["context_text"] == decode(tokenizer, e.context_tokens)


def test_a_killed_export_resumes_from_its_layers(planted_run, tmp_path, monkeypatch):
    out = str(tmp_path / "out")
    table = ex.facts_table

    def failing(facts, *args):
        if facts.layer == 2:
            raise KeyboardInterrupt
        return table(facts, *args)

    monkeypatch.setattr(ex, "facts_table", failing)
    with pytest.raises(KeyboardInterrupt):
        ex.export(planted_run.stats, out, verbose=False)
    assert not os.path.exists(out), "nothing under the final name before the export is complete"
    done = os.path.join(f"{out}.partial", "examples", "layer-001.parquet")
    stamp = os.stat(done).st_mtime_ns
    monkeypatch.setattr(ex, "facts_table", table)
    ex.export(planted_run.stats, out, verbose=False)
    assert os.stat(os.path.join(out, "examples", "layer-001.parquet")).st_mtime_ns == stamp, "layer 1 kept"
    assert parquet(out, "facts").num_rows == planted.LAYERS * planted.FFN


def test_clear_errors(planted_run, atlas, tmp_path):
    with pytest.raises(StatsError, match="not a statistics directory"):
        ex.export(str(tmp_path), str(tmp_path / "out"), verbose=False)
    with pytest.raises(MissingError, match="not an atlas"):
        ex.export(planted_run.stats, str(tmp_path / "out"), atlas=str(tmp_path), verbose=False)
    with pytest.raises(InputError, match="unknown export format"):
        ex.export(planted_run.stats, str(tmp_path / "out"), "csv", verbose=False)
    with pytest.raises(InputError, match="out of range"):
        ex.export(planted_run.stats, str(tmp_path / "out"), layers=[9], verbose=False)
    other = tmp_path / "other-atlas"
    shutil.copytree(atlas, other)
    _, manifest = read_js(str(other / "data" / "atlas.js"))
    manifest["models"][0]["tokens"] += 1  # the same path, collected again
    write_js(str(other), "atlas", manifest)
    with pytest.raises(InputError, match="atlas of another store.*tokens"):
        ex.export(planted_run.stats, str(tmp_path / "out"), atlas=str(other), verbose=False)
    manifest["models"] += [dict(manifest["models"][0], stats="/elsewhere", name="second")]
    manifest["models"][0]["stats"] = "/somewhere"
    write_js(str(other), "atlas", manifest)
    with pytest.raises(InputError, match="atlas of other stores"):
        ex.export(planted_run.stats, str(tmp_path / "out"), atlas=str(other), verbose=False)
    result = run_script("scripts/export.py", "--stats", str(tmp_path), "--out", str(tmp_path / "out"))
    assert result.returncode == 1 and result.stderr.strip().splitlines()[-1].startswith("error: ")
    assert not os.path.exists(tmp_path / "out")
    assert issubclass(StatsError, OptJaxError)


@pytest.mark.real
def test_export_at_opt_125m_dimensions(tmp_path):
    """A synthetic store of OPT-125m's dimensions (3 of its layers: 3072 neurons, 2048 positions, vocab 50272,
    16 + 16 examples per neuron over 200 windows) and OPT's 50272-entry word tokenizer: every row against the
    store's arrays opened with tensorstore as docs/formats.md says, the contexts and texts recomputed with numpy
    and the tokenizer; row groups of `block` neurons."""
    import sys

    sys.path.insert(0, os.path.dirname(os.path.dirname(__file__)))
    import scale_data as sd
    from transformers import AutoTokenizer

    import opt_jax
    from benchmarks.scale import write_synthetic_stats

    config = opt_jax.for_size("125m").replace(num_hidden_layers=3)
    stats = write_synthetic_stats(str(tmp_path / "stats"), config, sequences=200, examples=16, verbose=False)
    sd.write_word_tokenizer(str(tmp_path / "tok"))
    tokenizer = AutoTokenizer.from_pretrained(str(tmp_path / "tok"))
    out = ex.export(stats, str(tmp_path / "out"), model_dir=str(tmp_path / "tok"), block=1024, verbose=False)

    def array(name):
        return np.asarray(ts.open({"driver": "zarr3", "kvstore": f"file://{stats}/{name}"}).result())

    with open(os.path.join(stats, "manifest.json")) as f:
        tokens = json.load(f)["tokens"]
    act, windows = array("act"), array("windows")  # [3, 3072], [200, 2048]
    facts = parquet(out, "facts")
    assert facts.num_rows == 3 * 3072
    layer, neuron = facts["layer"].to_numpy(), facts["neuron"].to_numpy()
    np.testing.assert_array_equal(layer, np.repeat(np.arange(3), 3072))
    np.testing.assert_array_equal(neuron, np.tile(np.arange(3072), 3))
    a = act[layer, neuron]
    np.testing.assert_array_equal(facts["activations"].to_numpy(), a)
    np.testing.assert_allclose(facts["frequency"].to_numpy(), a / tokens, rtol=1e-12)
    np.testing.assert_array_equal(facts["rank"].to_numpy(), [1 + (act[l] > x).sum() for l, x in zip(layer, a)])
    np.testing.assert_array_equal(facts["dead"].to_numpy(), a == 0)
    bound = facts["rate_bound"].to_numpy(zero_copy_only=False)
    np.testing.assert_allclose(bound[a == 0], 1 - 0.05 ** (1 / tokens), rtol=1e-9)
    assert np.isnan(bound[a > 0]).all() and (a == 0).sum() > 1000
    assert facts["positional"].to_pylist()[:64] == ["oscillatory"] * 64, "the planted square waves"
    for lay in range(3):
        examples = pq.ParquetFile(os.path.join(out, "examples", f"layer-{lay:03d}.parquet"))
        assert examples.metadata.num_row_groups == 3
        rows = examples.read()
        sets = {kind: {f: array(f"examples_{kind}_{f}")[lay] for f in ("window", "position", "value")}
                for kind in ("top", "random")}  # [3072, 16] each
        order = np.stack([np.stack([sets[kind][f] for kind in ("top", "random")], 1).reshape(-1)
                          for f in ("window", "position")])  # [2, 3072 * 2 * 16] in (neuron, kind, slot) order
        filled = order[0] >= 0
        np.testing.assert_array_equal(rows["window"].to_numpy(), order[0][filled])
        np.testing.assert_array_equal(rows["position"].to_numpy(), order[1][filled])
        values = np.stack([sets[kind]["value"] for kind in ("top", "random")], 1).reshape(-1)[filled]
        np.testing.assert_array_equal(rows["value"].to_numpy(), values)
        w, p = rows["window"].to_numpy(), rows["position"].to_numpy()
        np.testing.assert_array_equal(rows["token"].to_numpy(), windows[w, p])
        at = p[:, None] + np.arange(-12, 5)  # [m, 17]
        inside = (at >= 1) & (at < 2048)
        want = np.where(inside, windows[w[:, None], np.clip(at, 0, 2047)], -1)  # [m, 17]
        got = rows["context_tokens"]
        np.testing.assert_array_equal(got.combine_chunks().flatten().to_numpy(), want[inside])
        np.testing.assert_array_equal(rows["context_index"].to_numpy(), p - np.maximum(1, p - 12))
        sample = np.random.default_rng(lay).choice(rows.num_rows, 200, replace=False)
        text, context = rows["text"].to_pylist(), rows["context_text"].to_pylist()
        for i in sample:
            assert text[i] == tokenizer.decode([int(windows[w[i], p[i]])])
            assert context[i] == tokenizer.decode(want[i][want[i] >= 0].tolist(), clean_up_tokenization_spaces=False)
        assert rows["context_values"].null_count == rows.num_rows
