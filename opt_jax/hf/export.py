"""opt_jax parameters -> an HF checkpoint directory that `transformers.OPTForCausalLM` loads."""

from __future__ import annotations

import json
import os

import numpy as np
from safetensors.numpy import save_file

from opt_jax.config import OPTConfig
from opt_jax.hf.config import to_hf_dict
from opt_jax.hf.conversion import key_plan
from opt_jax.model import Params, flatten


def export_hf(config: OPTConfig, params: Params, out_dir: str, dtype=np.float32) -> str:
    """Write `config.json` and `model.safetensors` (float32 or float16) in transformers' layout."""
    hf = to_hf_dict(config) | {"torch_dtype": np.dtype(dtype).name, "dtype": np.dtype(dtype).name}  # refuses first
    flat = flatten(params)
    tensors = {}
    for hf_key, target in key_plan(config).items():
        value = np.asarray(flat[target.path])
        if target.layer is not None:
            value = value[target.layer]
        tensors[f"model.{hf_key}"] = np.ascontiguousarray(value.astype(dtype).reshape(target.hf_shape))
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "config.json"), "w") as f:
        json.dump(hf, f, indent=2)
    save_file(tensors, os.path.join(out_dir, "model.safetensors"), metadata={"format": "pt"})
    return out_dir
