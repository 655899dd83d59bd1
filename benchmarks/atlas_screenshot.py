"""A screenshot of one section of a neuron's atlas page, e.g. its quantile bands ("Examples by activation strength").

    python -m benchmarks.atlas_screenshot ATLAS_DIR L1N862 OUT.png [--section quantile] [--tab 5] [--width 1100]

Opens `#<route>` from file:// in Debian's headless Chromium (benchmarks/browser.py), selects the section's tab
`--tab` (0 = the first: the lowest band) when the section has tabs, and saves a PNG of that section alone, at its
full height (`benchmarks.browser`'s whole-window screenshot shows the top of the page: docs/atlas.md's detector).
"""

from __future__ import annotations

import argparse

from benchmarks.browser import chromium, page_url, wait_ready


def section_screenshot(atlas_dir: str, route: str, path: str, section: str = "quantile", tab: int | None = None,
                       width: int = 1100) -> str:
    """Save a PNG of the element `#section` of the atlas page at `#route`, after clicking its tab `tab`."""
    driver = chromium(width, 1000)
    try:
        driver.get(page_url(atlas_dir, route))
        wait_ready(driver)
        found = driver.find_elements("id", section)
        if not found:
            raise SystemExit(f"{atlas_dir}: the page of {route} has no section #{section}")
        if tab is not None:
            tabs = found[0].find_elements("css selector", "[role=tab]")
            if not 0 <= tab < len(tabs):
                raise SystemExit(f"{atlas_dir}: #{section} of {route} has {len(tabs)} tabs, no tab {tab}")
            tabs[tab].click()
        height = driver.execute_script("return document.documentElement.scrollHeight")
        driver.set_window_size(width, height + 200)  # the whole section within the window
        driver.execute_script("arguments[0].scrollIntoView()", found[0])
        found[0].screenshot(path)
    finally:
        driver.quit()
    return path


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("atlas")
    parser.add_argument("route", help="the page's fragment without '#', e.g. L1N862")
    parser.add_argument("out", help="the PNG to write")
    parser.add_argument("--section", default="quantile", help="the id of the page's section")
    parser.add_argument("--tab", type=int, default=None, help="the section's tab to select (0: the first)")
    parser.add_argument("--width", type=int, default=1100)
    args = parser.parse_args(argv)
    print(section_screenshot(args.atlas, args.route, args.out, args.section, args.tab, args.width))


if __name__ == "__main__":
    main()
