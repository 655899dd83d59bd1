"""The atlas page's context heatmaps in a real browser (headless Chromium through Selenium, from file://).

The planted model's statistics (tests/planted.py) copied and given context activations (`add_contexts`), beside
the same statistics without them: an example's every token is colored by the store's fc1 value there (read with
`Stats.examples`, whose values tests/collection/test_contexts.py checks against torch), its value on hover and as
text for screen readers; an atlas of statistics without contexts shows the plain strip.
"""

import os
import shutil

import numpy as np
import pytest

import analyses
from analyses.collection.contexts import add_contexts
from analyses.neurons.data_files import read_js
from benchmarks.browser import chromium, page_url, wait_ready

DETECTOR = 1  # planted layer-0 detector of two words


@pytest.fixture(scope="module")
def browser():
    driver = chromium(1200, 1000)
    yield driver
    driver.quit()


@pytest.fixture(scope="module")
def built(planted_run, tmp_path_factory):
    """M0 "contexts": the planted statistics with context activations; M1 "plain": the same without. Layer 0."""
    root = tmp_path_factory.mktemp("contexts_atlas")
    stats = shutil.copytree(planted_run.stats, str(root / "stats"), symlinks=True)
    add_contexts(stats, model=planted_run.model, verbose=False)
    atlas = analyses.atlas([stats, planted_run.stats], str(root / "atlas"), names=["contexts", "plain"], layers=[0],
                           related_depth=0, verbose=False)
    return {"atlas": str(atlas), "stats": analyses.open_stats(stats)}


def open_page(driver, atlas_dir, fragment):
    driver.get("about:blank")
    driver.get(page_url(atlas_dir, fragment))
    return wait_ready(driver)


def shown(strip) -> list[dict]:
    """Each token of a strip as the page shows it: its value, background, title and screen-reader text."""
    return strip.parent.execute_script(
        "return [...arguments[0].querySelectorAll('.t')].map((t) => ({value: t.dataset.value ?? null, "
        "background: t.style.background, title: t.title, sr: t.querySelector('.sr')?.textContent ?? null, "
        "fire: !!t.closest('mark')}))", strip)


def test_every_token_of_an_example_is_colored_by_its_value(browser, built):
    stats = built["stats"]
    open_page(browser, built["atlas"], f"L0N{DETECTOR}")
    assert "colored by the neuron's fc1 output" in browser.find_element("id", "heat-legend").text
    for kind in ("top", "random"):
        strips = browser.find_elements("css selector", f"#examples-{kind} li .strip")
        examples = stats.examples(0, DETECTOR, kind)
        assert len(strips) == len(examples) > 0
        for strip, e in zip(strips, examples):
            tokens = shown(strip)
            fire = next(i for i, t in enumerate(tokens) if t["fire"])
            first = e.context_index - fire  # the page's first token in the record's span
            assert first >= 0 and first + len(tokens) <= len(e.context_values)
            want = e.context_values[first:first + len(tokens)]  # [t]
            got = np.array([float(t["value"]) for t in tokens])
            np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-6)
            assert got[fire] == pytest.approx(e.value, rel=1e-3)
            scale = np.abs(want).max()
            for t, v in zip(tokens, want):
                color = "255, 140, 0" if v >= 0 else "70, 110, 230"
                assert color in t["background"], (t, v)
                alpha = float(t["background"].rsplit(",", 1)[1].rstrip(")"))
                assert alpha == pytest.approx(0.08 + 0.52 * abs(v) / scale, abs=2e-3)
                if not t["fire"]:
                    assert t["title"].endswith(f"fc1 = {float(f'{v:.4g}'):g}") or \
                        float(t["title"].rsplit("= ", 1)[1]) == pytest.approx(v, rel=1e-3)
                    assert t["sr"].startswith(" (fc1 ") and float(t["sr"][6:-1]) == pytest.approx(v, rel=5e-3)
            assert (want < 0).any(), "a context holds tokens where the neuron is below zero"
    errors = [e for e in browser.get_log("browser") if e["level"] in ("SEVERE", "ERROR")]
    assert not errors


def test_statistics_without_contexts_show_the_plain_strip(browser, built):
    open_page(browser, built["atlas"], f"M1/L0N{DETECTOR}")
    assert browser.find_elements("css selector", "#examples-top li .strip")
    assert not browser.find_elements("css selector", ".heat, .strip .sr, #heat-legend")
    assert browser.find_element("css selector", "#examples-top mark.fire .val").text


def test_statistics_without_quantile_examples_have_no_band_section(browser, built):
    """The planted statistics hold no quantile examples: no `quantile` in the data files, no section on the page."""
    manifest = read_js(os.path.join(built["atlas"], "data", "atlas.js"))[1]
    assert all("quantile" not in m for m in manifest["models"])
    block = read_js(os.path.join(built["atlas"], "data", "m0", "L0", "B0.js"))[1]
    assert block["neurons"] and all("quantile" not in r for r in block["neurons"])
    open_page(browser, built["atlas"], f"L0N{DETECTOR}")
    assert browser.find_elements("css selector", "#examples-top li") and not browser.find_elements("id", "quantile")
