"""benchmarks/atlas_synthetic.py with today's content: its records are the builder's own (`atlas.neuron_records` of
synthetic facts), consistent with the layer summaries and the value edges, bounded by the size options as a build
is, their sizes added up right, and the page shows every part of them (headless Chromium from file://)."""

import os

import numpy as np
import pytest

from analyses.collection import quantile_bands, values
from analyses.neurons import facts as nf
from analyses.neurons import related
from analyses.neurons.data_files import read_js
from benchmarks import atlas_synthetic
from benchmarks.atlas_synthetic import read_data, write_atlas
from benchmarks.browser import chromium, page_url, wait_ready

LAYERS, FFN, BLOCK, K, TOKENS = 3, 96, 32, 3, 200_000


def records(atlas: str, layer: int) -> list[dict]:
    folder = os.path.join(atlas, "data", "m0", f"L{layer}")
    return [r for name in sorted(os.listdir(folder)) if name.startswith("B")
            for r in read_js(os.path.join(folder, name))[1]["neurons"]]


@pytest.fixture(scope="module")
def atlases(tmp_path_factory):
    root = tmp_path_factory.mktemp("synthetic")
    common = dict(layers=LAYERS, ffn=FFN, block=BLOCK, vocab=300, seq_len=64, examples=4, content=True,
                  quantile_examples=K, tokens=TOKENS)
    return {"full": write_atlas(str(root / "full"), **common),
            "small": write_atlas(str(root / "small"), **common, before=2, after=1, per_band=1, curve_points=16),
            "nobands": write_atlas(str(root / "nobands"), **common, per_band=0)}


def test_records_carry_todays_content_consistent_with_the_summary(atlases):
    atlas = atlases["full"]
    manifest = read_data(atlas, "atlas")
    model = manifest["models"][0]
    assert manifest["version"] == 2 and model["quantile"] == {"bands": nf.QUANTILE_BANDS, "per_band": K}
    edges = np.array([0.0, *model["value_edges"], np.inf])  # [bins + 1]
    assert len(edges) - 1 == values.num_bins(values.PER_OCTAVE)
    banded = 0
    for layer in range(LAYERS):
        summary = read_data(atlas, f"m0/L{layer}/summary")
        got = records(atlas, layer)
        assert [r["n"] for r in got] == list(range(FFN))
        for r in got:
            n = r["n"]
            assert (r["freq"], r["dead"], r["label"]) == (summary["freq"][n], bool(summary["dead"][n]),
                                                          summary["label"][n])
            hist = np.array(r["value_hist"] + [0] * (len(edges) - 1 - len(r["value_hist"])))  # [bins]
            assert hist.sum() == round(summary["freq"][n] * TOKENS)  # a neuron's histogram sums to its activations
            bands = quantile_bands(hist, edges, nf.QUANTILE_BANDS)
            assert [(q["bins"], q["count"]) for q in r["quantile"]] == [(list(b.bins), b.count) for b in bands]
            banded += len(bands) > 3
            for q, band in zip(r["quantile"], bands):
                assert len(q["examples"]) == min(K, band.count)
            down = [l for l in range(layer + 1, layer + 1 + related.DEPTH) if l < LAYERS]
            up = [l for l in range(layer - related.DEPTH, layer) if l >= 0]
            for kind, layers in (("excites", down), ("inhibits", down), ("excited_by", up), ("inhibited_by", up)):
                assert len(r["related"][kind]) == (related.K if layers else 0)
                assert {l for l, _, _ in r["related"][kind]} <= set(layers)
            if r["dead"]:
                assert r["examples"] == {"top": [], "random": []} and r["quantile"] == [] and r["rate_bound"] > 0
                continue
            shown = r["examples"]["top"] + r["examples"]["random"] + [e for q in r["quantile"] for e in q["examples"]]
            assert len(r["examples"]["top"]) == 4
            for e in shown:  # 12 before and 4 after at most, never BOS; the heat at the example's token its value
                assert len(e["values"]) == len(e["tokens"]) <= nf.BEFORE + nf.AFTER + 1
                assert e["fire"] == min(nf.BEFORE, e["position"] - 1) and e["values"][e["fire"]] == e["value"]
    assert banded > FFN


def test_size_options_shrink_the_records_as_a_build_does(atlases):
    for full, small, nobands in zip(records(atlases["full"], 1), records(atlases["small"], 1),
                                    records(atlases["nobands"], 1)):
        assert "quantile" not in nobands
        assert len(small["curve"]["freq"]) == 16 and small["curve"]["binned"] == 4  # 63 positions in bins of 4
        np.testing.assert_allclose(small["curve"]["freq"][0], np.mean(full["curve"]["freq"][:4]), rtol=1e-3)
        assert [len(q["examples"]) for q in small["quantile"]] == [min(1, len(q["examples"])) for q in full["quantile"]]
        for e in small["examples"]["top"] + [e for q in small["quantile"] for e in q["examples"]]:
            assert e["fire"] <= 2 and len(e["tokens"]) - e["fire"] - 1 <= 1
    assert "quantile" not in read_data(atlases["nobands"], "atlas")["models"][0]
    assert read_data(atlases["small"], "atlas")["context"] == {"before": 2, "after": 1}
    full, small, nobands = (atlas_synthetic.sizes(atlases[k]) for k in ("full", "small", "nobands"))
    assert full["per_neuron"] > nobands["per_neuron"] and full["per_neuron"] > small["per_neuron"]


def test_sizes_add_up_the_files(atlases):
    atlas = atlases["full"]
    found = atlas_synthetic.sizes(atlas)
    blocks = [os.path.join(d, f) for d, _, fs in os.walk(atlas) for f in fs if f.startswith("B")]
    everything = [os.path.join(d, f) for d, _, fs in os.walk(atlas) for f in fs]
    assert found["block_bytes"] == sum(map(os.path.getsize, blocks))
    assert found["bytes"] == sum(map(os.path.getsize, everything))
    assert found["neurons_written"] == LAYERS * FFN
    assert found["projected"] == pytest.approx(found["bytes"])  # every block written: nothing to project
    alive = sum(not r["dead"] for layer in range(LAYERS) for r in records(atlas, layer))
    assert found["per_alive"] * alive + found["per_dead"] * (LAYERS * FFN - alive) == pytest.approx(found["block_bytes"])
    assert found["per_alive"] > 5 * found["per_dead"]


def test_the_page_shows_every_part(atlases):
    atlas = atlases["full"]
    neuron = max(records(atlas, 1), key=lambda r: len(r["quantile"]))
    driver = chromium(1200, 1000)
    try:
        driver.get(page_url(atlas, f"L1N{neuron['n']}"))
        wait_ready(driver)
        bars = driver.find_elements("css selector", "#value-hist-chart rect.bar")
        assert [int(b.get_attribute("data-count")) for b in bars][:len(neuron["value_hist"])] == neuron["value_hist"]
        assert len(driver.find_elements("css selector", "#quantile-tabs [role=tab]")) == len(neuron["quantile"])
        heat = driver.find_elements("css selector", "#examples-top li.example")[0].find_elements(
            "css selector", ".t.heat")
        assert [float(t.get_attribute("data-value")) for t in heat] == neuron["examples"]["top"][0]["values"]
        assert len(driver.find_elements("css selector", "#related-excites tbody tr")) == related.K
        errors = [e for e in driver.get_log("browser") if e["level"] in ("SEVERE", "ERROR")]
        assert not errors
    finally:
        driver.quit()


def test_a_section_screenshot_shows_the_chosen_band(atlases, tmp_path):
    from matplotlib import image

    from benchmarks.atlas_screenshot import section_screenshot

    atlas = atlases["full"]
    neuron = max(records(atlas, 1), key=lambda r: len(r["quantile"]))
    path = section_screenshot(atlas, f"L1N{neuron['n']}", str(tmp_path / "bands.png"), tab=1, width=900)
    pixels = image.imread(path)  # [h, w, channels]
    assert pixels.shape[1] <= 900 and pixels.shape[0] > 100 and pixels.std() > 0
    with pytest.raises(SystemExit, match="no tab 99"):
        section_screenshot(atlas, f"L1N{neuron['n']}", str(tmp_path / "none.png"), tab=99)
