"""The small trained models that ship inside the package, so the study runs with no download.

Two 4-layer twins trained on the Python standard library by `scripts/train.py` (the exact commands
are in docs/twins.md), one with learned positional embeddings and one without; converted checkpoints
(float16) with their tokenizer, loadable by `opt_jax.load` and `scripts/collect.py`.
"""

from __future__ import annotations

import os

from opt_jax.errors import InputError, MissingError

DIRECTORY = os.path.join(os.path.dirname(os.path.abspath(__file__)), "shipped_models")
NAMES = ("stdlib-4l", "stdlib-4l-nopos")


def path(name: str) -> str:
    """The directory of the shipped model `name` (one of NAMES)."""
    if name not in NAMES:
        raise InputError(f"no shipped model {name!r}; the shipped models are {', '.join(NAMES)}")
    where = os.path.join(DIRECTORY, name)
    if not os.path.isfile(os.path.join(where, "opt_jax.json")):
        raise MissingError(f"{where}: the shipped model is missing (a partial checkout?)")
    return where
