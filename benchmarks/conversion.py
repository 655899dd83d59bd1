"""Measurements behind BENCHMARKS.md: conversion speed and peak memory, mask agreement across dtypes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile

import numpy as np

from opt_jax.config import OPTConfig
from opt_jax.hf.export import export_hf
from opt_jax.model import init_params, param_shapes
from opt_jax.streaming import layer_bytes

_MEASURE = """
import json, sys, time
from benchmarks.conversion import peak_rss
import opt_jax
{setup}
start = time.perf_counter()
{work}
print(json.dumps({{"seconds": time.perf_counter() - start,
                  "peak_rss": peak_rss()}}))
"""


def peak_rss() -> int:
    """This process's peak resident memory in bytes (VmHWM: unlike ru_maxrss, not inherited over fork)."""
    return _status_bytes("VmHWM")


def rss() -> int:
    """This process's resident memory now, in bytes (VmRSS)."""
    return _status_bytes("VmRSS")


def _status_bytes(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def measure_in_subprocess(work: str, setup: str = "") -> dict:
    """Run Python `work` in a fresh interpreter after `setup`: {'seconds', 'peak_rss' (bytes)}."""
    code = _MEASURE.format(setup=setup, work=work)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    if result.returncode:
        raise RuntimeError(f"measurement failed:\n{result.stderr[-4000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def model_bytes(config: OPTConfig, itemsize: int = 4) -> int:
    """Bytes of all parameters."""
    return sum(int(np.prod(s)) for s in param_shapes(config).values()) * itemsize


def write_random_hf(config: OPTConfig, directory: str, seed: int = 0) -> str:
    """A random-weight float32 HF checkpoint of this config (single safetensors file)."""
    return export_hf(config, init_params(config, seed), directory)


def conversion_run(hf_dir: str, out_dir: str, dtype: str | None = None) -> dict:
    """Convert in a fresh interpreter: seconds and peak RSS."""
    return measure_in_subprocess(f"opt_jax.convert({hf_dir!r}, {out_dir!r}, dtype={dtype!r}, verbose=False)")


def naive_load_run(hf_dir: str) -> dict:
    """Baseline: what a converter without streaming does, reading the whole checkpoint into memory."""
    return measure_in_subprocess(f"state = load_file({os.path.join(hf_dir, 'model.safetensors')!r})",
                                 setup="from safetensors.numpy import load_file")


def conversion_benchmark(config: OPTConfig, name: str, workdir: str | None = None) -> dict:
    """Streaming conversion against the whole-checkpoint load, both in fresh interpreters."""
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        hf_dir = write_random_hf(config, os.path.join(tmp, "hf"))
        naive = naive_load_run(hf_dir)
        stream = conversion_run(hf_dir, os.path.join(tmp, "out"))
        stream_bf16 = conversion_run(hf_dir, os.path.join(tmp, "out_bf16"), "bfloat16")
        baseline = measure_in_subprocess("pass")
    size = model_bytes(config)
    return {
        "model": name, "model_mb": size / 1e6, "layer_mb": layer_bytes(config) / 1e6,
        "interpreter_rss_mb": baseline["peak_rss"] / 1e6,
        "convert_f32_s": stream["seconds"], "convert_f32_mb_per_s": size / 1e6 / stream["seconds"],
        "convert_bf16_s": stream_bf16["seconds"],
        "convert_peak_rss_mb": stream["peak_rss"] / 1e6,
        "naive_load_s": naive["seconds"], "naive_peak_rss_mb": naive["peak_rss"] / 1e6,
    }


def mask_agreement(config: OPTConfig, batch: int, seq: int, seed: int = 0) -> dict:
    """Fraction of mask bits (real tokens) on which bfloat16 / float16 forwards agree with float32."""
    from opt_jax.bits import unpack_masks
    from opt_jax.runtime import Model

    params = init_params(config, seed)
    ids = np.random.default_rng(seed).integers(3, config.vocab_size, (batch, seq))  # [b, s]
    ids[:, 0] = config.bos_token_id
    masks = {}
    for dtype in ("float32", "bfloat16", "float16"):
        import jax

        cast = jax.tree.map(lambda a: np.asarray(a).astype(dtype), params)
        masks[dtype] = unpack_masks(Model(config, cast).forward(ids).masks, config.ffn_dim)  # [l, b, s, f]
    agreement = {d: float((masks[d] == masks["float32"]).mean()) for d in ("bfloat16", "float16")}
    per_layer = {d: [float(x) for x in (masks[d] == masks["float32"]).mean(axis=(1, 2, 3))]
                 for d in ("bfloat16", "float16")}
    return {"agreement": agreement, "per_layer": per_layer, "active_fraction": float(masks["float32"].mean())}
