"""Quantile examples in the atlas: each neuron's bands of activation strength and their examples in context.

A planted-model store collected with `--quantile_examples 2` and given context activations: the facts and the data
files against the store's own `Stats.quantile_bands` and `Stats.examples(layer, neuron, "quantile")` (which
tests/collection/test_quantile_examples.py checks against numpy and torch), and the page in a real browser
(headless Chromium through Selenium, from file://): a tab per band with its value range and count, its examples'
highlighted tokens and heatmaps. At OPT-125m's widths (real-marked) the layer-wide choice of each band's examples
against the store's own per-neuron choice.
"""

import json
import os
import types

import numpy as np
import pytest

import analyses
import planted
from analyses.collection.contexts import add_contexts
from analyses.collection.store import Stats, quantile_bands
from analyses.neurons import facts as nf
from analyses.neurons.data_files import read_js
from benchmarks.browser import chromium, page_url, wait_ready

K = 2  # --quantile_examples


@pytest.fixture(scope="module")
def store(planted_run, tmp_path_factory):
    """The planted model's statistics with quantile examples and context activations, and an atlas of layer 0."""
    root = tmp_path_factory.mktemp("quantile_atlas")
    stats = analyses.collect(planted_run.model, [str(planted_run.root / "corpus.jsonl")], str(root / "stats"),
                             seq_len=planted.SEQ, batch_size=16, quantile_examples=K, verbose=False)
    add_contexts(stats, verbose=False)
    atlas = analyses.atlas([stats], str(root / "atlas"), names=["quantile"], layers=[0], related_depth=0,
                           verbose=False)
    return {"stats": analyses.open_stats(stats), "atlas": str(atlas)}


@pytest.fixture(scope="module")
def browser():
    driver = chromium(1200, 1000)
    yield driver
    driver.quit()


def records(atlas: str, layer: int = 0) -> list[dict]:
    out = []
    for b in range(len(os.listdir(os.path.join(atlas, "data", "m0", f"L{layer}"))) - 1):  # B*.js and summary.js
        out += read_js(os.path.join(atlas, "data", "m0", f"L{layer}", f"B{b}.js"))[1]["neurons"]
    return out


def test_facts_choose_the_stores_quantile_examples(store):
    """Every layer: the bands are `Stats.quantile_bands`, the chosen slots (in order) the records of
    `Stats.examples(..., "quantile")`, read neuron by neuron."""
    stats = store["stats"]
    source = nf.open_source(stats.root, scores=False)
    banded = 0
    for layer in range(planted.LAYERS):
        facts = nf.layer_facts(source, layer, related_depth=0)
        q = facts.examples["quantile"]
        for n in range(planted.FFN):
            assert facts.bands[n] == stats.quantile_bands(layer, n)
            want = stats.examples(layer, n, "quantile")
            got = [(int(w), int(p), float(v), int(b)) for w, p, v, b, ok in
                   zip(q.window[n], q.position[n], q.value[n], q.band[n], q.valid[n]) if ok]
            assert got == [(e.window, e.position, e.value, e.band.index) for e in want], (layer, n)
            banded += len(facts.bands[n]) > 1
    assert banded >= 6, "the planted positional neurons spread their values over several bands"


def test_data_files_hold_each_bands_range_count_and_contexts(store):
    stats = store["stats"]
    texts = nf.open_source(stats.root, scores=False).texts
    manifest = read_js(os.path.join(store["atlas"], "data", "atlas.js"))[1]
    assert manifest["models"][0]["quantile"] == {"bands": nf.QUANTILE_BANDS, "per_band": K}
    shown = 0
    for record in records(store["atlas"]):
        n = record["n"]
        bands = stats.quantile_bands(0, n)
        examples = stats.examples(0, n, "quantile")
        assert len(record["quantile"]) == len(bands)
        for got, band in zip(record["quantile"], bands):
            assert got["bins"] == list(band.bins) and got["count"] == band.count
            assert got["low"] == pytest.approx(band.low, rel=1e-5)
            assert got["high"] is None if band.high == np.inf else got["high"] == pytest.approx(band.high, rel=1e-5)
            want = [e for e in examples if e.band == band]
            assert [(e["window"], e["position"]) for e in got["examples"]] == [(e.window, e.position) for e in want]
            for e, w in zip(got["examples"], want):
                assert e["value"] == pytest.approx(w.value, rel=1e-3)
                first = w.position - e["fire"]  # the context's first token in the window
                assert e["tokens"] == [texts[i] for i in w.tokens[first:first + len(e["tokens"])]]
                assert e["tokens"][e["fire"]] == texts[w.token]
                start = w.context_index - e["fire"]
                np.testing.assert_allclose(e["values"], w.context_values[start:start + len(e["values"])],
                                           rtol=1e-3, atol=1e-6)
                shown += 1
        if record["dead"]:
            assert record["quantile"] == []
    assert shown > planted.FFN


def open_page(driver, atlas_dir, fragment):
    driver.get("about:blank")
    driver.get(page_url(atlas_dir, fragment))
    return wait_ready(driver)


def test_the_page_shows_each_band_with_its_examples(browser, store):
    stats = store["stats"]
    texts = nf.open_source(stats.root, scores=False).texts
    neuron = max(range(planted.FFN), key=lambda n: len(stats.quantile_bands(0, n)))
    bands = stats.quantile_bands(0, neuron)
    examples = stats.examples(0, neuron, "quantile")
    assert len(bands) >= 4
    open_page(browser, store["atlas"], f"L0N{neuron}")
    section = browser.find_element("id", "quantile")
    total = sum(b.count for b in bands)
    assert f"Its {total:,} activations" in section.text and "drawn uniformly at random" in section.text
    tabs = browser.find_elements("css selector", "#quantile-tabs [role=tab]")
    assert len(tabs) == len(bands)
    for i, (tab, band) in enumerate(zip(tabs, bands)):
        tab.click()
        panels = [p for p in browser.find_elements("css selector", "#quantile [role=tabpanel]") if p.is_displayed()]
        assert [p.get_attribute("id") for p in panels] == [f"quantile-panel-{i}"]
        assert tab.get_attribute("aria-selected") == "true"
        panel = panels[0]
        assert int(panel.get_attribute("data-count")) == band.count
        assert float(panel.get_attribute("data-low")) == pytest.approx(band.low, rel=1e-5)
        if band.high != np.inf:
            assert float(panel.get_attribute("data-high")) == pytest.approx(band.high, rel=1e-5)
        assert f"Band {i + 1} of {len(bands)}" in panel.text and f"{band.count:,} activations" in panel.text
        want = [e for e in examples if e.band == band]
        items = panel.find_elements("css selector", "li.example")
        assert len(items) == len(want) > 0
        for item, e in zip(items, want):
            mark = item.find_element("css selector", "mark.fire")
            assert mark.find_element("css selector", ".t").get_attribute("title") == json.dumps(texts[e.token],
                                                                                       ensure_ascii=False)
            assert float(mark.find_element("css selector", ".val").text) == pytest.approx(e.value, rel=5e-3)
            assert f"window {e.window}, position {e.position}" in item.text
            assert band.low <= e.value < band.high
            heat = [float(v) for v in browser.execute_script(
                "return [...arguments[0].querySelectorAll('.t')].map((t) => t.dataset.value)", item)]
            start = e.context_index - [t.get_attribute("class") for t in item.find_elements(
                "css selector", ".strip > *")].index("fire")
            np.testing.assert_allclose(heat, e.context_values[start:start + len(heat)], rtol=1e-3, atol=1e-6)
    tabs[0].click()
    tabs[0].send_keys("\ue014")  # ArrowRight moves to the next band
    assert tabs[1].get_attribute("aria-selected") == "true" and browser.switch_to.active_element == tabs[1]
    errors = [e for e in browser.get_log("browser") if e["level"] in ("SEVERE", "ERROR")]
    assert not errors


def test_a_dead_neuron_says_it_has_no_band(browser, store):
    open_page(browser, store["atlas"], f"L0N{planted.DEAD[0]}")
    assert browser.find_element("id", "no-quantile").text == "None: the neuron never fired."
    assert not browser.find_elements("css selector", "#quantile [role=tab]")


@pytest.mark.real
def test_band_order_at_125m_widths_is_the_stores_per_neuron_choice():
    """3072 neurons, 4 examples per bin over the store's default bins, windows of 2048 positions: `band_order`'s
    choice for the whole layer against `Stats._band_slots` called neuron by neuron on the same rows."""
    from analyses.collection import values

    rng = np.random.default_rng(0)
    ffn, k, layer = 3072, 4, 5
    edges = np.concatenate([[0.0], values.edges(values.PER_OCTAVE), [np.inf]]).astype(np.float32)
    bins = len(edges) - 1
    counts = rng.integers(0, 50, (ffn, bins)) * (rng.uniform(size=(ffn, bins)) < 0.4)  # [n, bins]
    counts[:7] = 0  # dead neurons
    held = np.minimum(counts, k)  # [n, bins]: slots filled in each bin
    filled = (np.arange(k) < held[..., None]).reshape(ffn, bins * k)  # [n, slots]
    window = np.where(filled, rng.integers(0, 6, filled.shape), -1).astype(np.int32)  # [n, slots]
    position = np.where(filled, rng.integers(1, 2048, filled.shape), -1).astype(np.int32)
    sets = {"window": window, "position": position, "value": np.zeros(filled.shape, np.float32)}
    bands = [quantile_bands(c, edges, nf.QUANTILE_BANDS) for c in counts]
    stats = types.SimpleNamespace(manifest={"quantile_examples": k},
                                  quantile_bands=lambda layer, n, count: bands[n])
    order, band = nf.band_order(stats, layer, sets, bands)  # [n, slots] each
    assert order.shape == band.shape == (ffn, bins * k)
    for n in range(ffn):
        want = Stats._band_slots(stats, layer, n, {f: a[n] for f, a in sets.items()}, nf.QUANTILE_BANDS)
        chosen = band[n] >= 0
        assert order[n][chosen].tolist() == [int(j) for _, slots in want for j in slots], n
        assert band[n][chosen].tolist() == [b.index for b, slots in want for _ in slots]


@pytest.fixture(scope="module")
def small(store):
    """Atlases of the same store with the size options (build_atlas's before / after / per_band, scripts/atlas.py's
    --context and --band_examples): 3 tokens before and 1 after each example, 1 example per band; and no bands."""
    root = os.path.dirname(store["atlas"])
    bounded = analyses.atlas([store["stats"].root], os.path.join(root, "small"), names=["quantile"], layers=[0],
                             related_depth=0, before=3, after=1, per_band=1, verbose=False)
    nobands = analyses.atlas([store["stats"].root], os.path.join(root, "nobands"), names=["quantile"], layers=[0],
                             related_depth=0, per_band=0, verbose=False)
    return {"bounded": str(bounded), "nobands": str(nobands)}


def block_bytes(atlas: str) -> int:
    folder = os.path.join(atlas, "data", "m0", "L0")
    return sum(os.path.getsize(os.path.join(folder, f)) for f in os.listdir(folder) if f.startswith("B"))


def test_size_options_keep_the_first_examples_of_each_band_and_the_tokens_nearest_each_example(store, small):
    full, bounded = records(store["atlas"]), records(small["bounded"])
    manifest = read_js(os.path.join(small["bounded"], "data", "atlas.js"))[1]
    assert manifest["context"] == {"before": 3, "after": 1}
    assert manifest["models"][0]["quantile"] == {"bands": nf.QUANTILE_BANDS, "per_band": 1}
    cut = 0
    for want, got in zip(full, bounded):
        assert got["n"] == want["n"] and len(got["quantile"]) == len(want["quantile"])
        pairs = [(a, b) for kind in ("top", "random") for a, b in zip(want["examples"][kind], got["examples"][kind])]
        assert all(len(want["examples"][k]) == len(got["examples"][k]) for k in ("top", "random"))
        for wb, gb in zip(want["quantile"], got["quantile"]):
            assert {k: v for k, v in gb.items() if k != "examples"} == {k: v for k, v in wb.items() if k != "examples"}
            assert len(gb["examples"]) == min(1, len(wb["examples"]))  # the band's first: a uniform sample of one
            pairs += list(zip(wb["examples"], gb["examples"]))
            cut += len(wb["examples"]) > 1
        for a, b in pairs:  # the same example, its context cut to 3 tokens before and 1 after its token
            assert (a["window"], a["position"], a["value"]) == (b["window"], b["position"], b["value"])
            first = a["fire"] - b["fire"]
            assert b["fire"] == min(3, a["fire"]) and b["tokens"] == a["tokens"][first:first + len(b["tokens"])]
            assert len(b["tokens"]) == b["fire"] + 1 + min(1, len(a["tokens"]) - a["fire"] - 1)
            assert b["values"] == a["values"][first:first + len(b["values"])]
    assert cut > 0
    assert block_bytes(small["bounded"]) < block_bytes(store["atlas"])


def test_no_bands_is_the_atlas_of_a_store_without_quantile_examples(store, small):
    full, nobands = records(store["atlas"]), records(small["nobands"])
    manifest = read_js(os.path.join(small["nobands"], "data", "atlas.js"))[1]
    assert "quantile" not in manifest["models"][0]
    for want, got in zip(full, nobands):
        assert "quantile" not in got
        assert got == {k: v for k, v in want.items() if k != "quantile"}
    assert block_bytes(small["nobands"]) < block_bytes(store["atlas"])


def test_the_page_shows_what_the_size_options_keep(browser, store, small):
    stats = store["stats"]
    neuron = max(range(planted.FFN), key=lambda n: len(stats.quantile_bands(0, n)))
    bands = stats.quantile_bands(0, neuron)
    open_page(browser, small["bounded"], f"L0N{neuron}")
    tabs = browser.find_elements("css selector", "#quantile-tabs [role=tab]")
    assert len(tabs) == len(bands)
    for i, tab in enumerate(tabs):
        tab.click()
        panel = browser.find_element("id", f"quantile-panel-{i}")
        assert len(panel.find_elements("css selector", "li.example")) == 1
    for item in browser.find_elements("css selector", "#examples-top li.example"):
        strip = [t.get_attribute("class") for t in item.find_elements("css selector", ".strip > *")]
        fire = strip.index("fire")
        assert fire <= 3 and len(strip) - fire - 1 <= 1
    open_page(browser, small["nobands"], f"L0N{neuron}")
    assert not browser.find_elements("id", "quantile")
    assert browser.find_elements("css selector", "#examples-top li.example")
    errors = [e for e in browser.get_log("browser") if e["level"] in ("SEVERE", "ERROR")]
    assert not errors


def test_the_scripts_flags_build_the_same_bounded_atlas(store, small, tmp_path):
    """scripts/atlas.py --context 3,1 --band_examples 1 writes the records build_atlas(before=3, after=1,
    per_band=1) writes; a malformed --context is refused with its value."""
    from conftest import run_step
    from helpers import run_script

    out = tmp_path / "cli"
    run_step("atlas.py", "--stats", f"quantile={store['stats'].root}", "--out", str(out), "--layers", "0",
             "--related_depth", "0", "--context", "3,1", "--band_examples", "1")
    assert records(str(out)) == records(small["bounded"])
    bad = run_script("scripts/atlas.py", "--stats", store["stats"].root, "--out", str(tmp_path / "bad"),
                     "--context", "3")
    assert bad.returncode == 1 and "--context takes BEFORE,AFTER" in bad.stderr and not (tmp_path / "bad").exists()
