"""The planted model (tests/planted.py) with random fc1 and fc2 in layers 1-3: the planted model's own are zero
there, so every related neuron through its weights scores 0. Layer 0 and everything else are the planted model's,
so its statistics (collected with the planted model) go with it in an atlas."""

import os
import shutil

import numpy as np

from opt_jax import checkpoint as ckpt


def rewire(planted_model: str, out: str, seed: int = 0) -> str:
    """A converted copy of the planted model at `out` (tokenizer included) with random fc1 / fc2 in layers 1-3."""
    shutil.copytree(planted_model, out, ignore=shutil.ignore_patterns("params", ckpt.MANIFEST))
    params = ckpt.read_params(planted_model)
    rng = np.random.default_rng(seed)
    for name in ("layers/ffn/fc1/weight", "layers/ffn/fc2/weight"):
        params[name][1:] = rng.standard_normal(params[name][1:].shape).astype(params[name].dtype)
    ckpt.write_checkpoint(out, ckpt.read_config(planted_model), params, "float32", "tests/rewired.py")
    assert os.path.isfile(os.path.join(out, ckpt.MANIFEST))
    return out
