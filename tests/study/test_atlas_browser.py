"""The atlas page in a real browser (Debian's headless Chromium through Selenium, from file://).

The atlas is a real build (`build_atlas`) of the planted model's statistics (tests/planted.py), side by side
with a second store of the same model collected with `--examples 0`. Expectations come from the planted
construction and from the statistics themselves (numpy, the tokenizer), never from the page's own data.
A synthetic atlas in the documented format (benchmarks/atlas_synthetic.py) covers what the small planted
model cannot: hundreds of rows to filter, cap and sort, and non-ASCII token texts (and, written as format version
1, an old atlas's pages). The related neurons need weights that are not zero past layer 0: the planted statistics
built with `tests/rewired.py`'s model, against numpy cosines of its weights.
"""

import io
import math
import re
from urllib.parse import quote

import numpy as np
import pytest
from matplotlib import image
from selenium.webdriver.support.ui import Select, WebDriverWait

import analyses
import planted
import rewired
from analyses.neurons.token_index import fnv1a32, token_key
from analyses.tokens import TokenStrings
from benchmarks.atlas_synthetic import read_data, write_atlas
from benchmarks.browser import chromium, go, page_url, routes_done, wait_ready
from conftest import run_step
from opt_jax import checkpoint as ckpt

DETECTOR = 1  # planted layer-0 detector of two words (t2, t3)


@pytest.fixture(scope="module")
def browser():
    driver = chromium(1200, 1000)
    yield driver
    driver.quit()


@pytest.fixture(scope="module")
def built(planted_run, tmp_path_factory):
    """The atlas of the planted model's statistics (the session's `planted_run`) and of a second collection
    of the same model without examples: models M0 "planted" (with an attribution: scripts/attribute.py) and
    M1 "bare" (without)."""
    root = tmp_path_factory.mktemp("planted_atlas")
    corpus = str(planted_run.root / "corpus.jsonl")
    run_step("collect.py", "--model", planted_run.model, "--corpus", corpus,
             "--out", str(root / "bare"), "--seq_len", str(planted.SEQ), "--batch_size", "16", "--examples", "0",
             "--max_tokens", "4096")
    run_step("attribute.py", "--model", planted_run.model, "--corpus", corpus, "--out", str(root / "attribution"),
             "--seq_len", str(planted.SEQ), "--batch_size", "16", "--max_tokens", "4096", "--dtype", "float32")
    atlas = analyses.atlas([planted_run.stats, str(root / "bare")], str(root / "atlas"), names=["planted", "bare"],
                           attributions={"planted": str(root / "attribution")})
    return {"atlas": str(atlas), "stats": analyses.open_stats(planted_run.stats), "tokens": TokenStrings(planted_run.model),
            "effect": analyses.read_attribution(str(root / "attribution")).effect}


@pytest.fixture(scope="module")
def atlas(tmp_path_factory):
    """A synthetic atlas: 3 layers of 300 neurons, token texts with whitespace and non-ASCII letters."""
    return write_atlas(str(tmp_path_factory.mktemp("atlas") / "atlas"), layers=LAYERS, ffn=FFN, block=BLOCK,
                       vocab=300, seq_len=32, examples=3)


LAYERS, FFN, BLOCK = 3, 300, 128


def visible(text: str) -> str:
    """A token text as the page shows it (whitespace made visible)."""
    return text.replace(" ", "\u00b7").replace("\n", "\u21b5").replace("\t", "\u21e5") or "\u2205"


def open_page(driver, atlas_dir, fragment=""):
    driver.get("about:blank")
    driver.get(page_url(atlas_dir, fragment))
    return wait_ready(driver)


def click(driver, element_id):
    done = routes_done(driver)
    driver.find_element("id", element_id).click()
    return wait_ready(driver, done)


def text_of(driver, css):
    return driver.find_element("css selector", css).text


def heading(driver):
    return driver.find_element("tag name", "h1").text


def console_errors(driver):
    return [e for e in driver.get_log("browser") if e["level"] in ("SEVERE", "ERROR")]


def test_detector_page_names_its_triggers_frequency_and_an_example(browser, built):
    stats, decode = built["stats"], built["tokens"]
    words, _ = planted.DETECTORS[DETECTOR]
    triggers = {planted.word(planted.TRIGGERS[w]) for w in words}
    open_page(browser, built["atlas"], f"L0N{DETECTOR}")
    assert heading(browser) == f"Layer 0, neuron {DETECTOR}"
    shown = {td.text for td in browser.find_elements("css selector", "#triggers tbody tr td:first-child")}
    assert shown == triggers
    frequency = np.asarray(stats.act[0])[DETECTOR] / stats.manifest["tokens"]
    assert float(browser.find_element("id", "fact-freq").get_attribute("data-value")) == pytest.approx(frequency, rel=1e-5)
    assert text_of(browser, "#fact-freq .v") == f"{100 * frequency:.3g}%"
    kinds = browser.find_elements("css selector", "#fact-detector .detector")
    assert kinds[0].text.startswith("token detector of")
    assert {t.text for t in kinds[0].find_elements("css selector", ".tok")} == triggers
    # the strongest example: a run of the window's decoded tokens, the firing one marked with its fc1 value
    best = stats.examples(0, DETECTOR, "top")[0]
    strip = browser.find_element("css selector", "#examples-top li .strip")
    tokens = [t.text for t in strip.find_elements("css selector", ".t")]
    fired = [t.text for t in strip.find_elements("css selector", "mark.fire .t")]
    assert fired == [visible(decode([best.token])[0])] and fired[0] in triggers
    k = browser.execute_script("return [...arguments[0].querySelectorAll('.t')].findIndex((t) => t.closest('mark'))", strip)
    window = [visible(t) for t in decode(best.tokens)]
    assert tokens == window[best.position - k: best.position - k + len(tokens)]
    value = float(strip.find_element("css selector", "mark.fire .val").text)
    assert value == pytest.approx(best.value, rel=1e-2)
    assert not console_errors(browser)


def js_num(x: float, digits: int = 3) -> str:
    """The page's `num`: x to `digits` significant digits, as JavaScript prints the number."""
    return f"{float(f'{x:.{digits}g}'):g}"


def test_the_histogram_of_activation_values_shows_the_store_counts(browser, built):
    stats = built["stats"]
    want = np.asarray(stats.value_hist[0])[DETECTOR]  # [bins]: the store's counts, summing to act
    edges = stats.value_edges  # [bins + 1]: 0 first, inf last
    assert want.sum() == np.asarray(stats.act[0])[DETECTOR] > 0
    open_page(browser, built["atlas"], f"L0N{DETECTOR}")
    bars = browser.find_elements("css selector", "#value-hist-chart rect.bar")
    assert [int(b.get_attribute("data-count")) for b in bars] == want.tolist()
    heights = np.array([float(b.get_attribute("height")) for b in bars])  # [bins]: log counts
    top = int(np.argmax(want))
    np.testing.assert_allclose(heights, heights[top] * np.log10(1 + want) / np.log10(1 + want[top]), rtol=1e-6,
                               atol=1e-6)
    for j in np.flatnonzero(want):  # each bar's title: its value range and count
        title = bars[j].find_element("css selector", "title").get_attribute("textContent")
        assert title.endswith(f": {want[j]:,} activations")
        if 0 < j < len(want) - 1:
            assert title.startswith(f"{js_num(edges[j])} to {js_num(edges[j + 1])}")
    rows = browser.find_elements("css selector", "#value-hist-table tbody tr")  # the screen readers' table
    assert len(rows) == np.count_nonzero(want)
    counts = [int(r.find_elements("css selector", "td")[1].get_attribute("textContent").replace(",", "")) for r in rows]
    assert counts == want[want > 0].tolist()
    dead = int(np.flatnonzero(np.asarray(stats.act[0]) == 0)[0])
    open_page(browser, built["atlas"], f"L0N{dead}")
    assert browser.find_element("id", "no-values").text == "None: the neuron never fired."
    assert not console_errors(browser)


def test_an_atlas_without_value_histograms_has_no_such_section(browser, atlas):
    open_page(browser, atlas, "L0N0")
    assert heading(browser) == "Layer 0, neuron 0"
    assert not browser.find_elements("id", "value-hist") and not console_errors(browser)


def test_positional_neurons_show_their_planted_type(browser, built):
    open_page(browser, built["atlas"], "")
    for n, (kind, strength) in planted.POSITIONAL.items():
        go(browser, f"L0N{n}")
        assert text_of(browser, "#fact-pos .v") == f"{kind}, {strength}", n
        points = browser.find_element("css selector", "svg.curve polyline").get_attribute("points").split()
        assert len(points) > planted.SEQ // 2, "the curve is drawn over the positions"
    assert not console_errors(browser)


@pytest.mark.parametrize("typed", [" W{}", "w{}"])
def test_token_search_lists_the_detector(browser, built, typed):
    words, _ = planted.DETECTORS[DETECTOR]
    word = planted.word(planted.TRIGGERS[words[0]])
    open_page(browser, built["atlas"], "search=" + quote(typed.format(word[1:])))
    for group in ("triggers", "detects"):
        links = [a.text for a in browser.find_elements("css selector", f"#group-{group} a.neuron")]
        assert f"L0 N{DETECTOR}" in links, group
    detects = [a.text for a in browser.find_elements("css selector", "#group-detects a.neuron")]
    assert len(detects) == len(set(detects)), "a neuron once per list (detector of the token and of its trigrams)"
    assert not console_errors(browser)


def test_next_neuron_link_then_back_and_a_screenshot_that_is_not_blank(browser, built):
    open_page(browser, built["atlas"], "search=" + quote(planted.word(planted.TRIGGERS["t2"])))
    done = routes_done(browser)
    browser.find_element("css selector", f"#group-detects a[href='#L0N{DETECTOR}']").click()
    wait_ready(browser, done)
    assert heading(browser) == f"Layer 0, neuron {DETECTOR}"
    click(browser, "next-neuron")
    assert heading(browser) == f"Layer 0, neuron {DETECTOR + 1}"
    assert browser.execute_script("return location.hash") == f"#L0N{DETECTOR + 1}"
    for expected in (f"Layer 0, neuron {DETECTOR}", "planted: search the neurons"):
        done = routes_done(browser)
        browser.back()
        wait_ready(browser, done)
        assert heading(browser) == expected
    done = routes_done(browser)
    browser.forward()
    wait_ready(browser, done)
    assert heading(browser) == f"Layer 0, neuron {DETECTOR}"
    pixels = image.imread(io.BytesIO(browser.get_screenshot_as_png()), format="png")
    assert pixels.shape[0] > 500 and np.std(pixels[..., :3]) > 0.05
    assert not console_errors(browser)


def test_last_neuron_of_a_layer_links_to_the_next_layer(browser, built):
    open_page(browser, built["atlas"], f"L0N{planted.FFN - 1}")
    click(browser, "next-neuron")
    assert heading(browser) == "Layer 1, neuron 0"
    assert text_of(browser, "#fact-status .v") == "dead"
    tokens = built["stats"].manifest["tokens"]
    bound = 1 - 0.05 ** (1 / tokens)  # never fired in N tokens: (1 - p)^N = 0.05 at the 95% bound
    status = browser.find_element("id", "fact-status")
    assert f"never fired in {tokens:,} tokens: its rate is below " in status.text and "(95%)" in status.text
    step = 10.0 ** (math.floor(math.log10(bound)) - 2)
    shown = math.ceil(bound / step) * step  # rounded up to 3 significant digits: still an upper bound
    assert float(status.get_attribute("data-bound")) == pytest.approx(shown, rel=1e-12)
    assert f"its rate is below {100 * shown:.3g}% (95%), fewer than 1 in {math.floor(1 / shown):,} tokens" in status.text


def test_out_of_range_neuron_and_layer_say_so(browser, built):
    open_page(browser, built["atlas"], f"L0N{planted.FFN}")
    assert f"Neuron {planted.FFN} is out of range" in text_of(browser, "#out-of-range")
    go(browser, f"L{planted.LAYERS}N0")
    assert f"Layer {planted.LAYERS} is out of range" in text_of(browser, "#out-of-range")
    assert not console_errors(browser), "no data file of a missing neuron is requested"


def test_statistics_without_examples_say_none_were_collected(browser, built):
    open_page(browser, built["atlas"], f"M1/L0N{DETECTOR}")
    assert heading(browser) == f"Layer 0, neuron {DETECTOR}"
    assert "No example contexts were collected" in text_of(browser, "#no-examples")
    assert not browser.find_elements("css selector", ".example")
    go(browser, "M1/")
    assert "example" in text_of(browser, "#model-note")


def test_enter_in_the_search_box_jumps_to_layer_colon_neuron(browser, built):
    open_page(browser, built["atlas"])
    assert browser.find_element("css selector", "label[for=q]").text
    done = routes_done(browser)
    browser.find_element("id", "q").send_keys(f"0:{DETECTOR}\n")
    wait_ready(browser, done)
    assert browser.execute_script("return location.hash") == f"#L0N{DETECTOR}"
    assert heading(browser) == f"Layer 0, neuron {DETECTOR}"


def test_model_switcher_keeps_the_neuron(browser, built):
    open_page(browser, built["atlas"], f"L0N{DETECTOR}")
    done = routes_done(browser)
    Select(browser.find_element("id", "model")).select_by_visible_text("M1: bare")
    wait_ready(browser, done)
    assert browser.execute_script("return location.hash") == f"#M1/L0N{DETECTOR}"
    assert "bare" in browser.title


def test_effect_of_ablating_is_shown_and_sorts_the_list(browser, built):
    """The attribution's effects (read from its store, not from the page's data) on a neuron's page and as the
    order of the filtered list; the model without an attribution shows neither."""
    effect = built["effect"]  # [layers, ffn]
    alive = np.flatnonzero(np.asarray(built["stats"].act[0]) > 0)
    n = int(alive[np.argmax(np.abs(effect[0, alive]))])
    open_page(browser, built["atlas"], f"L0N{n}")
    shown = browser.find_element("id", "fact-effect")
    assert float(shown.get_attribute("data-value")) == pytest.approx(effect[0, n], rel=1e-3)
    assert text_of(browser, "#fact-effect .v").endswith("nats/token")
    assert "Effect of ablating it (estimate)" in browser.find_element("css selector", "dl.facts").text
    open_page(browser, built["atlas"], "search=&layer=0&sort=effect")
    order = Select(browser.find_element("id", "sort"))
    assert order.first_selected_option.text == "effect of ablating it (estimate), largest first"
    rows = browser.find_elements("css selector", "#filter-results tbody tr")
    want = np.argsort(-effect[0], kind="stable")[:5]
    assert [r.find_element("css selector", "a").text for r in rows[:5]] == [f"L0 N{i}" for i in want]
    headers = [th.text for th in browser.find_elements("css selector", "#filter-results thead th")]
    assert "Effect of ablating (est.)" in headers
    open_page(browser, built["atlas"], "search=&layer=0&sort=effect-asc")
    rows = browser.find_elements("css selector", "#filter-results tbody tr")
    assert rows[0].find_element("css selector", "a").text == f"L0 N{int(np.argmin(effect[0]))}"
    open_page(browser, built["atlas"], f"M1/L0N{n}")
    assert not browser.find_elements("id", "fact-effect")
    go(browser, "M1/search=&layer=0")
    values = [o.get_attribute("value") for o in Select(browser.find_element("id", "sort")).options]
    assert "effect" not in values
    assert not console_errors(browser)


@pytest.fixture(scope="module")
def rewired_atlas(planted_run, tmp_path_factory):
    """The planted statistics built with `rewired`'s weights (random fc1 / fc2 past layer 0: the planted model's
    are zero there, so all its related neurons score 0): (atlas folder, model folder)."""
    root = tmp_path_factory.mktemp("rewired")
    model = rewired.rewire(planted_run.model, str(root / "model"))
    return str(analyses.atlas([planted_run.stats], str(root / "atlas"), names=["rewired"], model_dirs=[model],
                              verbose=False)), model


def test_related_neurons_link_to_their_pages_with_labels_and_scores(browser, rewired_atlas):
    """The detector's related neurons: each list's cosines are numpy's from the converted weights, each link names
    and opens its neuron, layer 1's neurons are labelled dead (the planted layer 1 never fires)."""
    atlas, model = rewired_atlas
    params = ckpt.read_params(model)
    fc1 = params["layers/ffn/fc1/weight"].astype(np.float64)  # [L, n, d]
    w_out = params["layers/ffn/fc2/weight"][0][:, DETECTOR].astype(np.float64)  # [d]
    cosines = {(l, m): float(fc1[l][m] @ w_out / np.linalg.norm(fc1[l][m]) / np.linalg.norm(w_out))
               for l in (1, 2) for m in range(planted.FFN)}
    open_page(browser, atlas, f"L0N{DETECTOR}")
    WebDriverWait(browser, 30).until(lambda d: not [c for c in d.find_elements("css selector", "#related .rlabel")
                                                    if c.text == "\u2026"])
    assert "none: no earlier layer" in text_of(browser, "#related")
    for kind, best in (("excites", sorted(cosines.values())[::-1][:10]), ("inhibits", sorted(cosines.values())[:10])):
        shown = []
        for row in browser.find_elements("css selector", f"#related-{kind} tbody tr"):
            link, label, score = row.find_elements("css selector", "td")
            l, m = map(int, re.fullmatch(r"L(\d+) N(\d+)", link.text).groups())
            assert link.find_element("tag name", "a").get_attribute("href").endswith(f"#L{l}N{m}")
            assert float(score.text) == pytest.approx(cosines[(l, m)], abs=2e-3)
            assert label.text == "dead" if l == 1 else label.text not in ("", "\u2026")
            shown.append(float(score.text))
        assert shown == pytest.approx(best, abs=2e-3), kind
        assert max(map(abs, shown)) > 0.1
    first = browser.find_element("css selector", "#related-excites tbody tr a.related")
    l, m = map(int, re.fullmatch(r"L(\d+) N(\d+)", first.text).groups())
    done = routes_done(browser)
    first.click()
    wait_ready(browser, done)
    assert heading(browser) == f"Layer {l}, neuron {m}"
    assert browser.execute_script("return location.hash") == f"#L{l}N{m}"
    assert browser.find_elements("css selector", "#related-excited_by a.related"), "its own upstream list"
    assert not console_errors(browser)


def test_an_atlas_of_format_version_1_has_no_related_neurons_and_says_so(browser, atlas):
    assert read_data(atlas, "atlas")["version"] == 1
    open_page(browser, atlas, "L0N3")
    assert heading(browser) == "Layer 0, neuron 3"
    assert "format version 1" in text_of(browser, "#no-related")
    assert not console_errors(browser)


def test_token_search_finds_each_group_through_the_hashed_bucket(browser, atlas):
    """The page hashes the text (FNV-1a in JavaScript) to the bucket Python wrote it in, in any letter case."""
    key = token_key(" na\u00efve6")  # vocabulary() word 6: a space, then non-ASCII letters
    entry = read_data(atlas, f"m0/tokens/{fnv1a32(key) % 256}")[key]
    open_page(browser, atlas, "search=" + quote(" " + key.upper()))
    for group in ("triggers", "promotes", "suppresses"):
        links = [a.text for a in browser.find_elements("css selector", f"#group-{group} a.neuron")]
        assert links == [f"L{e[0]} N{e[1]}" for e in entry[group]], group
    assert not console_errors(browser)


def test_filters_load_every_layer_cap_the_rows_and_sort(browser, atlas):
    summaries = [read_data(atlas, f"m0/L{l}/summary") for l in range(LAYERS)]
    alive = [(s["freq"][n], l, n) for l, s in enumerate(summaries) for n in range(FFN) if not s["dead"][n]]
    assert len(alive) > 200
    open_page(browser, atlas, "search=&status=alive&sort=freq")
    rows = browser.find_elements("css selector", "#filter-results tbody tr")
    assert len(rows) == 200, "the first 200 rows, then a button"
    best = sorted(alive, key=lambda x: -x[0])[:5]
    assert [r.find_element("css selector", "a").text for r in rows[:5]] == [f"L{l} N{n}" for _, l, n in best]
    more = browser.find_element("css selector", "#filter-results button.more")
    more.click()
    assert len(browser.find_elements("css selector", "#filter-results tbody tr")) == min(400, len(alive))
    assert str(len(alive)) in text_of(browser, "#search-status")
