"""The converted checkpoint: one zarr3 array per parameter, layer-stacked and chunked one layer per chunk.

Layout of a converted directory (format version 1):

    opt_jax.json          manifest, written last: format, version, config, dtype, shapes, source
    params/<path>/        zarr3 array per parameter, e.g. params/layers/ffn/fc1/weight [L, ffn, hidden]
    config.json, tokenizer files   copied from the HF checkpoint
    conversion.json       only while a conversion is unfinished (the resume record)

A directory without `opt_jax.json` is never loaded: an interrupted conversion cannot pass for a
complete one. Layer l of any stacked array is its own chunk, so reading layers [a, b) reads
only those chunks.

Version 2 checksums every chunk (crc32c) and records the chunk files in the manifest (`chunks`), so a damaged
or deleted chunk is a `CheckpointError` naming the parameter and the file (`opt_jax.arrays`); version 1
checkpoints (no checksums, no inventory) keep loading.
"""

from __future__ import annotations

import json
import os

import ml_dtypes
import numpy as np
import tensorstore as ts

from opt_jax import arrays
from opt_jax import atomic
from opt_jax.config import OPTConfig
from opt_jax.errors import CheckpointError
from opt_jax.errors import InputError
from opt_jax.model import param_shapes

FORMAT = "opt_jax.checkpoint"
VERSION = 2
VERSIONS = (1, 2)  # loaded; new checkpoints are VERSION
CODECS = [{"name": "bytes", "configuration": {"endian": "little"}}, arrays.CHECKSUM]
MANIFEST = "opt_jax.json"
PROGRESS = "conversion.json"  # present only while a conversion is unfinished
PARAMS_DIR = "params"
DTYPES = {"float32": np.dtype(np.float32), "float16": np.dtype(np.float16),
          "bfloat16": np.dtype(ml_dtypes.bfloat16)}


def dtype_name(dtype) -> str:
    """Canonical name ('float32', 'bfloat16', 'float16') of a supported parameter dtype."""
    name = np.dtype(dtype).name if not isinstance(dtype, str) else dtype
    if name not in DTYPES:
        raise InputError(f"unsupported dtype {dtype!r}; choose one of {', '.join(DTYPES)}")
    return name


def _spec(root: str, path: str) -> dict:
    return {"driver": "zarr3", "kvstore": {"driver": "file", "path": os.path.join(root, PARAMS_DIR, path)}}


def create_array(root: str, path: str, shape: tuple[int, ...], dtype: str, stacked: bool) -> ts.TensorStore:
    """Create (replacing) the zarr3 array of one parameter; stacked arrays get one chunk per layer."""
    chunk = (1, *shape[1:]) if stacked else shape
    spec = _spec(root, path) | {
        "metadata": {"shape": list(shape), "data_type": dtype, "codecs": CODECS,
                     "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": list(chunk)}}},
        "create": True, "delete_existing": True,
    }
    return ts.open(spec).result()


def open_array(root: str, path: str) -> arrays.Checked:
    """Open one parameter's array for reading or writing; a damaged chunk read is a `CheckpointError`."""
    where = os.path.join(root, PARAMS_DIR, path)
    try:
        store = ts.open(_spec(root, path), open=True).result()
    except ValueError as e:
        raise CheckpointError(f"{where}: cannot open parameter array ({e})") from None

    def damaged(chunk: str | None, cause: str) -> CheckpointError:
        return CheckpointError(f"{root}: the parameter {path!r} has a damaged chunk ({chunk or where}: {cause}); "
                               "convert the checkpoint again (scripts/convert.py --overwrite)")

    return arrays.Checked(store, damaged)


def check_chunks(root: str, manifest: dict | None = None) -> None:
    """Refuse a checkpoint that has lost chunk files its manifest records (a version 2 checkpoint)."""
    manifest = manifest or read_manifest(root)
    gone = arrays.missing_chunks(os.path.join(root, PARAMS_DIR), manifest.get("chunks", {}))
    if gone:
        raise CheckpointError(f"{root}: {len(gone)} chunk file(s) of its parameters are missing ({gone[0]}"
                              f"{', ...' if len(gone) > 1 else ''}); convert the checkpoint again "
                              "(scripts/convert.py --overwrite)")


def write_checkpoint(root: str, config: OPTConfig, flat: dict[str, np.ndarray], dtype: str, source: str,
                     **extra) -> str:
    """Write parameters (by '/'-joined path) into root as a complete checkpoint, the manifest last.

    A stacked parameter (`layers/...`) may be given as a function of the layer index returning that layer, so
    that a checkpoint larger than memory is written one layer at a time.
    """
    dtype = dtype_name(dtype)
    expected = param_shapes(config)
    shapes = {path: expected.get(path) if callable(value) and path.startswith("layers/") else tuple(np.shape(value))
              for path, value in flat.items()}
    if shapes != expected:
        wrong = sorted(set(shapes.items()) ^ set(expected.items()))[:5]
        raise CheckpointError(f"{root}: parameters do not match the config (differences: {wrong})")
    for path, value in flat.items():
        store = create_array(root, path, shapes[path], dtype, path.startswith("layers/"))
        if callable(value):
            for layer in range(shapes[path][0]):
                store[layer].write(np.asarray(value(layer)).astype(DTYPES[dtype], copy=False)).result()
        else:
            store.write(np.asarray(value).astype(DTYPES[dtype], copy=False)).result()
    return write_manifest(root, config, dtype, shapes, source, **extra)


def write_manifest(root: str, config: OPTConfig, dtype: str, shapes: dict, source: str, **extra) -> str:
    """Commit a converted checkpoint: its manifest, written last (atomically), once every array is complete."""
    atomic.write_json(os.path.join(root, MANIFEST), {
        "format": FORMAT, "version": VERSION, "config": config.to_dict(), "dtype": dtype_name(dtype),
        "params": {path: list(shape) for path, shape in shapes.items()}, "source": source, **extra,
        "chunks": arrays.inventory(os.path.join(root, PARAMS_DIR), shapes)})
    return root


def read_manifest(root: str) -> dict:
    """The manifest of a complete converted checkpoint; a clear error for anything else."""
    path = os.path.join(root, MANIFEST)
    if not os.path.isfile(path):
        hint = (" (a conversion was interrupted: rerun it to finish)"
                if os.path.exists(os.path.join(root, PROGRESS)) else "")
        raise CheckpointError(f"{root}: not a complete opt_jax checkpoint, {MANIFEST} is missing{hint}")
    with open(path) as f:
        manifest = json.load(f)
    if manifest.get("format") != FORMAT or manifest.get("version") not in VERSIONS:
        raise CheckpointError(f"{path}: unsupported checkpoint format {manifest.get('format')!r} "
                              f"version {manifest.get('version')!r} (expected {FORMAT} "
                              f"v{'/'.join(map(str, VERSIONS))})")
    return manifest


def read_config(root: str) -> OPTConfig:
    """The config of a converted checkpoint."""
    return OPTConfig.from_dict(read_manifest(root)["config"])


def read_params(root: str, dtype: str | None = None, layers: slice | None = None) -> dict[str, np.ndarray]:
    """Host-memory parameters by '/'-joined path; `layers` selects a range of the stacked layers."""
    manifest = read_manifest(root)
    check_chunks(root, manifest)
    target = DTYPES[dtype_name(dtype)] if dtype else None
    out = {}
    for path in manifest["params"]:
        store = open_array(root, path)
        if layers is not None and path.startswith("layers/"):
            store = store[layers]
        value = store.read().result()
        out[path] = value.astype(target, copy=False) if target is not None else value
    return out
