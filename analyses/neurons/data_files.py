"""The atlas's data files (docs/atlas-format.md): each one call of the page's `atlasData`, so that a page opened
from `file://` loads it with a `<script>` element; and the number formats they use."""

from __future__ import annotations

import hashlib
import json
import math
import os

import numpy as np

from opt_jax import atomic
from opt_jax.errors import AnalysisError


def js_text(key: str, data, as_string: bool = False) -> str:
    """The text of a data file: `atlasData("<key>", <json>);`, or with `as_string` the JSON as a string literal
    the page parses, `atlasData("<key>", JSON.parse("<json>"));` (Chromium parses a large payload faster so)."""
    payload = json.dumps(data, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    if as_string:
        payload = f"JSON.parse({json.dumps(payload, ensure_ascii=False)})"
    return f"atlasData({json.dumps(key)}, {payload});\n"


def write_js(root: str, key: str, data, as_string: bool = False) -> str:
    """Write the data file of `key` (its path: root/data/<key>.js), atomically."""
    return atomic.write_text(os.path.join(root, "data", f"{key}.js"), js_text(key, data, as_string))


def read_js(path: str) -> tuple[str, object]:
    """(key, data) of a data file written by `write_js` (either form)."""
    with open(path, encoding="utf-8") as f:
        text = f.read().strip()
    head = "atlasData("
    if not text.startswith(head) or not text.endswith(");"):
        raise AnalysisError(f"{path}: not an atlas data file (expected atlasData(\"key\", {{...}});)")
    key, _, payload = text[len(head):-2].partition(", ")
    if payload.startswith("JSON.parse(") and payload.endswith(")"):
        payload = json.loads(payload[len("JSON.parse("):-1])
    return json.loads(key), json.loads(payload)


def significant(x, digits: int = 6):
    """A float with `digits` significant digits (None for None / NaN)."""
    if x is None or not math.isfinite(float(x)):
        return None
    return float(f"{float(x):.{digits}g}")


def significant_up(x: float, digits: int = 3) -> float:
    """A positive float rounded up to `digits` significant digits (an upper bound stays one when shown)."""
    step = 10.0 ** (math.floor(math.log10(x)) - digits + 1)
    return float(f"{math.ceil(x / step - 1e-9) * step:.{digits}g}")


def round_significant(values: np.ndarray, digits: int = 4) -> np.ndarray:
    """Values rounded to `digits` significant digits (0 stays 0), elementwise."""
    values = np.asarray(values, np.float64)
    magnitude = np.floor(np.log10(np.where(values != 0, np.abs(values), 1.0)))  # [...]
    scale = 10.0 ** (digits - 1 - magnitude)
    return np.round(values * scale) / scale


def code_digest(*paths: str) -> str:
    """A digest of the source files that write a folder (16 hex digits): a resumable build keeps it in its state,
    so that a changed writer rewrites everything instead of mixing its output with the old writer's."""
    digest = hashlib.sha256()
    for path in paths:
        with open(path, "rb") as f:
            digest.update(f.read())
    return digest.hexdigest()[:16]
