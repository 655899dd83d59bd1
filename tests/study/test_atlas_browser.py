"""The atlas page in a real browser (Debian's headless Chromium through Selenium, from file://).

A synthetic atlas in the documented format (benchmarks/atlas_synthetic.py: two models, several blocks,
whitespace and non-ASCII token texts) drives the page; every expectation is read back from the data
files themselves, never typed here.
"""

import io
from urllib.parse import quote

import numpy as np
import pytest
from matplotlib import image

from benchmarks.atlas_synthetic import fnv1a32, read_data, token_key, write_atlas
from benchmarks.browser import chromium, go, page_url, routes_done, wait_ready

LAYERS, FFN, BLOCK = 3, 300, 128


@pytest.fixture(scope="module")
def browser():
    driver = chromium(1200, 1000)
    yield driver
    driver.quit()


@pytest.fixture(scope="module")
def atlas(tmp_path_factory):
    return write_atlas(str(tmp_path_factory.mktemp("atlas") / "atlas"), layers=LAYERS, ffn=FFN, block=BLOCK,
                       vocab=300, seq_len=32, examples=3, models=("alpha", "beta"))


@pytest.fixture(scope="module")
def bare_atlas(tmp_path_factory):
    """An atlas whose statistics kept no example contexts (--examples 0)."""
    return write_atlas(str(tmp_path_factory.mktemp("bare") / "atlas"), layers=1, ffn=40, vocab=50, seq_len=16,
                       examples=0, token_layers=1)


def visible(text: str) -> str:
    """A token text as the page shows it (whitespace made visible)."""
    return text.replace(" ", "\u00b7").replace("\n", "\u21b5").replace("\t", "\u21e5") or "\u2205"


def open_page(driver, atlas_dir, fragment=""):
    driver.get("about:blank")
    driver.get(page_url(atlas_dir, fragment))
    return wait_ready(driver)


def text_of(driver, css):
    return driver.find_element("css selector", css).text


def console_errors(driver):
    return [e for e in driver.get_log("browser") if e["level"] in ("SEVERE", "ERROR")]


def test_neuron_page_shows_the_facts_of_its_block(browser, atlas):
    layer, neuron = 1, 133  # block 1, not the first
    facts = next(d for d in read_data(atlas, f"m0/L{layer}/B1")["neurons"] if d["n"] == neuron)
    assert not facts["dead"] and facts["triggers"] and facts["examples"]["top"]
    open_page(browser, atlas, f"L{layer}N{neuron}")
    assert browser.find_element("tag name", "h1").text == f"Layer {layer}, neuron {neuron}"
    assert float(browser.find_element("id", "fact-freq").get_attribute("data-value")) == facts["freq"]
    assert text_of(browser, "#fact-rank").startswith(f"{facts['rank']} of {FFN}")
    shown = [td.text for td in browser.find_elements("css selector", "#triggers tbody tr td:first-child")]
    assert shown == [visible(t["text"]) for t in facts["triggers"]]
    strips = browser.find_elements("css selector", "#examples-top li .strip")
    assert len(strips) == len(facts["examples"]["top"])
    for strip, example in zip(strips, facts["examples"]["top"]):
        tokens = strip.find_elements("css selector", ".t")
        assert [t.text for t in tokens] == [visible(t) for t in example["tokens"]]
        fired = strip.find_element("css selector", "mark.fire")
        assert fired.find_element("css selector", ".t").text == visible(example["tokens"][example["fire"]])
        assert float(fired.find_element("css selector", ".val").text) == pytest.approx(example["value"], rel=1e-2)
    points = browser.find_element("css selector", "svg.curve polyline").get_attribute("points").split()
    assert len(points) == len(facts["curve"]["positions"])
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


def test_enter_in_the_search_box_jumps_to_layer_colon_neuron(browser, atlas):
    open_page(browser, atlas)
    box = browser.find_element("id", "q")
    assert browser.find_element("css selector", "label[for=q]").text
    done = routes_done(browser)
    box.send_keys("2:7\n")
    wait_ready(browser, done)
    assert browser.execute_script("return location.hash") == "#L2N7"
    assert browser.find_element("tag name", "h1").text == "Layer 2, neuron 7"


def test_model_switcher_keeps_the_neuron(browser, atlas):
    from selenium.webdriver.support.ui import Select

    open_page(browser, atlas, "L0N3")
    done = routes_done(browser)
    Select(browser.find_element("id", "model")).select_by_value("1")
    wait_ready(browser, done)
    assert browser.execute_script("return location.hash") == "#M1/L0N3"
    facts = next(d for d in read_data(atlas, "m1/L0/B0")["neurons"] if d["n"] == 3)
    assert float(browser.find_element("id", "fact-freq").get_attribute("data-value")) == facts["freq"]


def test_out_of_range_neuron_and_layer_say_so(browser, atlas):
    open_page(browser, atlas, f"L1N{FFN}")
    assert f"Neuron {FFN} is out of range" in text_of(browser, "#out-of-range")
    go(browser, f"L{LAYERS}N0")
    assert f"Layer {LAYERS} is out of range" in text_of(browser, "#out-of-range")
    assert not console_errors(browser), "no data file of a missing neuron is requested"


def test_atlas_without_examples_says_none_were_collected(browser, bare_atlas):
    open_page(browser, bare_atlas, "L0N1")
    assert "No example contexts were collected" in text_of(browser, "#no-examples")


def test_next_link_then_back_and_a_screenshot_that_is_not_blank(browser, atlas):
    open_page(browser, atlas, f"L0N{FFN - 1}")
    done = routes_done(browser)
    browser.find_element("id", "next-neuron").click()
    wait_ready(browser, done)
    assert browser.find_element("tag name", "h1").text == "Layer 1, neuron 0", "next crosses into the next layer"
    done = routes_done(browser)
    browser.back()
    wait_ready(browser, done)
    assert browser.find_element("tag name", "h1").text == f"Layer 0, neuron {FFN - 1}"
    pixels = image.imread(io.BytesIO(browser.get_screenshot_as_png()), format="png")
    assert pixels.shape[0] > 500 and np.std(pixels[..., :3]) > 0.05
