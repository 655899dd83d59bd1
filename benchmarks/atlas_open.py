"""How fast the atlas page opens a neuron, a token search and a filter over every layer, in a real browser.

    python -m benchmarks.atlas_open ATLAS_DIR [ATLAS_DIR ...] [--repeats 5]

Each atlas is opened from file:// in Debian's headless Chromium (benchmarks/browser.py); the times are
the page's own (performance.now()): from the navigation (cold) or the hash change (warm) to the route's
content rendered. The steps, run for each atlas in turn within each repeat (interleaved):
- cold: a fresh page load of `#L<l>N<n>` with the browser's cache cleared (the manifest, then the block);
- warm, new block: from that page, a neuron of another block (one more data file);
- warm, loaded block: back to the first neuron (no file);
- token search: a fresh page load of `#search=<a token of the index>` to its lists shown (the manifest and
  one bucket; the summaries of the layers the lists name fill their labels in afterwards);
- filter: a fresh page load of `#search=&pos=any&sort=mi` to every layer's summary loaded, filtered and
  the matches sorted by MI and shown ("first rows": to the first matches shown, while it goes on).
Medians are printed, with each atlas's ratio to the first one's (the baseline: a small atlas shows what a
large one costs on top). Size on disk and file counts too. The neurons are the middle layer's, in the
first and the last block the atlas holds (a synthetic atlas may hold only a few blocks per layer): the first
neuron of each block, or with `--richest` the neuron of each block with the largest record (the most example
contexts and quantile bands to draw: a dead first neuron shows little of what a page can hold).
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import re
import statistics
from urllib.parse import quote

from benchmarks.atlas_synthetic import read_data
from benchmarks.browser import chromium, go, page_url, wait_ready

STEPS = ("cold", "warm, new block", "warm, loaded block", "token search", "filter: first rows", "filter")


def size_on_disk(atlas_dir: str) -> tuple[int, int]:
    """(bytes, files) of an atlas folder."""
    total = files = 0
    for root, _, names in os.walk(atlas_dir, followlinks=True):
        for name in names:
            total += os.path.getsize(os.path.join(root, name))
            files += 1
    return total, files


def targets(atlas_dir: str, richest: bool = False) -> dict:
    """What to open in an atlas: two neurons of the middle layer in different blocks (each block's first, or with
    `richest` its neuron with the longest record), a token to search."""
    manifest = read_data(atlas_dir, "atlas")
    model = manifest["models"][0]
    layer = model["counts"][len(model["counts"]) // 2]["layer"]
    blocks = sorted(int(re.search(r"B(\d+)\.js$", p).group(1))
                    for p in glob.glob(os.path.join(atlas_dir, "data", "m0", f"L{layer}", "B*.js")))
    if not blocks:
        raise SystemExit(f"{atlas_dir}: no neuron block of layer {layer} under data/m0/L{layer}/")
    first, last = blocks[0] * manifest["block"], blocks[-1] * manifest["block"] + 1
    if richest:
        first, last = (richest_neuron(atlas_dir, f"m0/L{layer}/B{b}") for b in (blocks[0], blocks[-1]))
    token = None
    for h in range(manifest["token_buckets"]):
        bucket = read_data(atlas_dir, f"m0/tokens/{h}")
        token = next((key for key, entry in bucket.items() if key and entry.get("triggers")), None)
        if token:
            break
    return {"layer": layer, "neurons": (first, last), "token": token, "shape": (len(model["counts"]), model["ffn"])}


def richest_neuron(atlas_dir: str, key: str) -> int:
    """The neuron of a block file whose record is the longest as JSON."""
    neurons = read_data(atlas_dir, key)["neurons"]
    return max(neurons, key=lambda r: len(json.dumps(r)))["n"]


def fresh(driver, atlas_dir: str, fragment: str, timeout: float = 600) -> dict:
    """The page's timing of a fresh load of `#fragment` (browser cache cleared): `ms` to its content rendered,
    `first_ms` to a progressive filter's first rows."""
    driver.get("about:blank")
    driver.execute_cdp_cmd("Network.clearBrowserCache", {})
    driver.get(page_url(atlas_dir, fragment))
    return wait_ready(driver, timeout=timeout)


def measure(driver, atlas_dir: str, target: dict) -> dict:
    """One pass of every step on one atlas: milliseconds per step."""
    layer, (first, second) = target["layer"], target["neurons"]
    out = {"cold": fresh(driver, atlas_dir, f"L{layer}N{first}")["ms"]}
    out["warm, new block"] = go(driver, f"L{layer}N{second}")["ms"]
    out["warm, loaded block"] = go(driver, f"L{layer}N{first}")["ms"]
    if target["token"]:
        out["token search"] = fresh(driver, atlas_dir, "search=" + quote(target["token"]))["ms"]
    timing = fresh(driver, atlas_dir, "search=&pos=any&sort=mi")
    out["filter"] = timing["ms"]
    if timing["first_ms"] is not None:
        out["filter: first rows"] = timing["first_ms"]
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("atlases", nargs="+", help="atlas folders (the first is the baseline of the ratios)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--richest", action="store_true", help="open each block's neuron with the largest record")
    args = parser.parse_args(argv)
    found = {a: targets(a, args.richest) for a in args.atlases}
    times = {a: {s: [] for s in STEPS} for a in args.atlases}
    driver = chromium()
    try:
        for _ in range(args.repeats):
            for atlas in args.atlases:  # interleaved: each repeat visits every atlas
                for step, ms in measure(driver, atlas, found[atlas]).items():
                    times[atlas][step].append(ms)
    finally:
        driver.quit()
    base = args.atlases[0]
    print(f"median of {args.repeats} (ms); x: ratio to {base}")
    for atlas in args.atlases:
        size, files = size_on_disk(atlas)
        t = found[atlas]
        print(f"{atlas}: {t['shape'][0]} layers x {t['shape'][1]} neurons, {size / 2**20:.1f} MiB in {files} files; "
              f"neurons L{t['layer']}N{t['neurons'][0]}, L{t['layer']}N{t['neurons'][1]}; token {t['token']!r}")
        for step in STEPS:
            if not times[atlas][step]:
                continue
            median = statistics.median(times[atlas][step])
            ratio = f"x{median / statistics.median(times[base][step]):.2f}" if times[base][step] else "(no baseline)"
            print(f"  {step:<20} {median:9.1f} ms   {ratio}")


if __name__ == "__main__":
    main()
