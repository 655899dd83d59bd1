"""A real browser for the atlas page: Debian's headless Chromium driven by Selenium, offline.

Selenium is pointed at the system's `/usr/bin/chromium` and `/usr/bin/chromedriver` (packages `chromium`
and `chromium-driver`; `make test` installs them), so Selenium Manager never downloads a browser or a
driver. Shared by the browser tests, the timing benchmark (`benchmarks/atlas_open.py`) and the atlas page's
screenshot.
"""

from __future__ import annotations

import os
import pathlib
import shutil

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"


class BrowserMissing(RuntimeError):
    """Chromium or its driver is not installed."""


def chromium(width: int = 1200, height: int = 1000):
    """A headless Chromium session (Selenium WebDriver) that keeps the console log (`get_log('browser')`)."""
    os.environ["SE_OFFLINE"] = "true"  # Selenium Manager must not look anything up
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    for path, package in ((CHROMIUM, "chromium"), (CHROMEDRIVER, "chromium-driver")):
        if not (os.path.exists(path) or shutil.which(os.path.basename(path))):
            raise BrowserMissing(f"{path} not found: install Debian's {package} "
                                 "(apt-get install -y chromium chromium-driver; `make test` does it)")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                 f"--window-size={width},{height}", "--allow-file-access-from-files", "--no-first-run",
                 "--disable-extensions", "--disable-background-networking", "--hide-scrollbars"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))


def page_url(atlas_dir: str, fragment: str = "") -> str:
    """The file:// URL of an atlas folder's page, with a route (`L3N12`, `search=the`, ...)."""
    url = pathlib.Path(os.path.abspath(atlas_dir), "index.html").as_uri()
    return url + ("#" + fragment if fragment else "")


def routes_done(driver) -> int:
    """How many routes the page has rendered so far (0 before its first)."""
    return driver.execute_script("return (window.atlasTimings || []).length")


def wait_ready(driver, after: int = 0, timeout: float = 60.0) -> dict:
    """Wait until the page has rendered more than `after` routes and is idle; its last route's timing
    ({hash, start, end, ms}: performance.now() at the route's start and at its content rendered)."""
    from selenium.webdriver.support.ui import WebDriverWait

    script = ("const t = window.atlasTimings || []; return document.body && document.body.dataset.state === 'ready'"
              " && t.length > arguments[0] ? t[t.length - 1] : null")
    return WebDriverWait(driver, timeout, poll_frequency=0.02).until(lambda d: d.execute_script(script, after))


def go(driver, fragment: str, timeout: float = 60.0) -> dict:
    """Route the open page to `#fragment` (as a click on a link would) and wait for it to render."""
    done = routes_done(driver)
    driver.execute_script("location.hash = arguments[0]", fragment)
    return wait_ready(driver, done, timeout)


def screenshot(atlas_dir: str, fragment: str, path: str, width: int = 1000, height: int = 1400) -> str:
    """Save a PNG of the atlas page at `#fragment` (the browser window's size, width x height)."""
    driver = chromium(width, height)
    try:
        driver.get(page_url(atlas_dir, fragment))
        wait_ready(driver)
        driver.save_screenshot(path)
    finally:
        driver.quit()
    return path


if __name__ == "__main__":  # python -m benchmarks.browser ATLAS_DIR FRAGMENT OUT.png [WIDTH HEIGHT]
    import sys

    args = sys.argv[1:]
    if len(args) not in (3, 5):
        raise SystemExit("usage: python -m benchmarks.browser ATLAS_DIR FRAGMENT OUT.png [WIDTH HEIGHT]")
    print(screenshot(*args[:3], *(int(a) for a in args[3:])))
