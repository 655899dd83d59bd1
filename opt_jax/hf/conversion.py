"""HF OPT checkpoint -> converted opt_jax checkpoint, streamed one tensor at a time, resumable.

Peak host memory is about one tensor (plus its dtype-converted copy), never a shard or the
model. Every input file is checked (present, not truncated, expected keys and shapes) before
anything is written. Progress is recorded after each weight file; a rerun with the same
source and dtype continues from there, a rerun with another source restarts.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import shutil

import numpy as np

from opt_jax import atomic
from opt_jax import disk
from opt_jax import lock
from opt_jax import checkpoint as ckpt
from opt_jax.config import OPTConfig
from opt_jax.errors import CheckpointError
from opt_jax.hf.config import read_hf_config
from opt_jax.hf.hub import resolve_checkpoint
from opt_jax.hf.weights import IGNORED_KEYS, HFCheckpoint
from opt_jax.model import param_shapes
from opt_jax.progress import Progress

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.json",
                   "merges.txt", "added_tokens.json", "generation_config.json")

# HF name (after the `model.` prefix) -> our '/'-path, for the non-layer and per-layer parameters.
_GLOBAL_KEYS = {
    "decoder.embed_tokens.weight": "embed/tokens",
    "decoder.embed_positions.weight": "embed/positions",
    "decoder.project_in.weight": "embed/project_in/weight",
    "decoder.project_out.weight": "head/project_out/weight",
    "decoder.final_layer_norm.weight": "head/final_norm/weight",
    "decoder.final_layer_norm.bias": "head/final_norm/bias",
}
_LAYER_MODULES = {
    "self_attn.q_proj": "attn/q_proj", "self_attn.k_proj": "attn/k_proj", "self_attn.v_proj": "attn/v_proj",
    "self_attn.out_proj": "attn/o_proj", "self_attn_layer_norm": "attn_norm", "final_layer_norm": "ffn_norm",
    "fc1": "ffn/fc1", "fc2": "ffn/fc2",
}
_LAYER_KEY = re.compile(r"decoder\.layers\.(\d+)\.(.+)\.(weight|bias)$")


@dataclasses.dataclass(frozen=True)
class Target:
    """Where one HF tensor goes: our parameter path, its layer (or None) and its shape there."""

    path: str
    layer: int | None
    shape: tuple[int, ...]  # our shape for this tensor (without the layer axis)
    hf_shape: tuple[int, ...]  # the shape HF stores


def _hf_shape(path: str, shape: tuple[int, ...]) -> tuple[int, ...]:
    """HF keeps attention heads fused: [h, k, d] -> [h*k, d], [d, h, k] -> [d, h*k]."""
    if re.search(r"attn/[qkv]_proj/", path):
        return (shape[0] * shape[1], *shape[2:])
    if path == "layers/attn/o_proj/weight":
        return (shape[0], shape[1] * shape[2])
    return shape


def key_plan(config: OPTConfig) -> dict[str, Target]:
    """Every HF key the config implies, with its destination."""
    shapes = param_shapes(config)
    plan = {}
    for hf_key, path in _GLOBAL_KEYS.items():
        if path in shapes:
            plan[hf_key] = Target(path, None, shapes[path], _hf_shape(path, shapes[path]))
    for i in range(config.num_hidden_layers):
        for module, ours in _LAYER_MODULES.items():
            for kind in ("weight", "bias"):
                path = f"layers/{ours}/{kind}"
                if path in shapes:
                    shape = shapes[path][1:]
                    plan[f"decoder.layers.{i}.{module}.{kind}"] = Target(path, i, shape, _hf_shape(path, shape))
    return plan


def check_tensors(source: HFCheckpoint, plan: dict[str, Target]) -> None:
    """Refuse missing, unexpected or mis-shaped tensors, naming the file and key."""
    present = {k: i for k, i in source.tensors.items() if k not in IGNORED_KEYS}
    missing = sorted(set(plan) - set(present))
    if missing:
        more = f" (and {len(missing) - 5} more)" if len(missing) > 5 else ""
        raise CheckpointError(f"{source.directory}: missing tensors {missing[:5]}{more}")
    unexpected = sorted(set(present) - set(plan))
    if unexpected:
        info = present[unexpected[0]]
        raise CheckpointError(f"{info.file}: unexpected tensors for this config: {unexpected[:5]}")
    for key, target in plan.items():
        info = present[key]
        if info.shape != target.hf_shape:
            raise CheckpointError(f"{info.file}: tensor {info.key} has shape {list(info.shape)}, "
                                  f"config.json implies {list(target.hf_shape)}")


# Changes when a conversion of the same source would hold other numbers (not with the checkpoint format's version:
# a version 1 conversion is still complete and right, only without checksums).
_OUTPUT_REVISION = 1


def _fingerprint(source: HFCheckpoint, dtype: str) -> str:
    data = json.dumps([_OUTPUT_REVISION, dtype, source.directory, source.fingerprint()])
    return hashlib.sha256(data.encode()).hexdigest()[:16]


def _prepare_output(out_dir: str, fingerprint: str, overwrite: bool) -> list[str] | None:
    """Files already converted into out_dir (resume), [] for a fresh start, None when already complete."""
    manifest_path = os.path.join(out_dir, ckpt.MANIFEST)
    progress_path = os.path.join(out_dir, ckpt.PROGRESS)
    if os.path.isfile(manifest_path) and not overwrite:
        try:
            if ckpt.read_manifest(out_dir).get("fingerprint") == fingerprint:
                return None
        except CheckpointError:
            pass  # another format: refused below like any other source
        raise CheckpointError(f"{out_dir}: already holds a converted checkpoint of another source or dtype; "
                              "choose another output directory or pass overwrite")
    if os.path.isfile(progress_path) and not overwrite:
        with open(progress_path) as f:
            progress = json.load(f)
        if progress.get("fingerprint") == fingerprint:
            return list(progress["done_files"])
    elif os.path.isdir(out_dir) and lock.entries(out_dir) and not overwrite and not os.path.isfile(progress_path):
        raise CheckpointError(f"{out_dir}: exists, is not empty and is not an opt_jax conversion; "
                              "refusing to write there")
    # A fresh start: our own unfinished (or overwritten) output is cleared.
    for name in (ckpt.MANIFEST, ckpt.PARAMS_DIR):
        atomic.remove(os.path.join(out_dir, name))
    os.makedirs(out_dir, exist_ok=True)
    return []


@lock.writes("out_dir")
def convert(source: str, out_dir: str, dtype: str | None = None, cache_dir: str | None = None,
            overwrite: bool = False, verbose: bool = True) -> str:
    """Convert an HF OPT checkpoint (directory, size name like '66b', or hub repo id) into out_dir."""
    hf_dir = resolve_checkpoint(source, cache_dir)
    config = read_hf_config(hf_dir)
    source_ckpt = HFCheckpoint(hf_dir)
    plan = key_plan(config)
    check_tensors(source_ckpt, plan)
    dtype = ckpt.dtype_name(dtype or source_ckpt.tensors["decoder.embed_tokens.weight"].dtype)
    out_dir = os.path.abspath(out_dir)
    fingerprint = _fingerprint(source_ckpt, dtype)
    done = _prepare_output(out_dir, fingerprint, overwrite)
    if done is None:
        if verbose:
            print(f"{out_dir}: already converted from {hf_dir}", flush=True)
        return out_dir

    target_dtype = ckpt.DTYPES[dtype]
    total = sum(int(np.prod(source_ckpt.tensors[k].shape)) * target_dtype.itemsize
                for k in plan if os.path.basename(source_ckpt.tensors[k].file) not in done)
    then = "what was converted is kept: make room and run the same command again to resume"
    disk.check_free(out_dir, total, CheckpointError, "the conversion", then)
    with disk.writing(out_dir, CheckpointError, "the conversion", then, total):
        return _convert(source_ckpt, hf_dir, config, plan, out_dir, dtype, fingerprint, done, total, verbose)


def _convert(source_ckpt: HFCheckpoint, hf_dir: str, config, plan: dict, out_dir: str, dtype: str, fingerprint: str,
             done: list[str], total: int, verbose: bool) -> str:
    """`convert`'s writing: every weight file not yet `done`, then the manifest."""
    shapes = param_shapes(config)
    stores = {}
    for path, shape in shapes.items():
        stacked = path.startswith("layers/")
        if done and os.path.isdir(os.path.join(out_dir, ckpt.PARAMS_DIR, path)):
            stores[path] = ckpt.open_array(out_dir, path)
        else:
            stores[path] = ckpt.create_array(out_dir, path, shape, dtype, stacked)
    progress_path = os.path.join(out_dir, ckpt.PROGRESS)
    atomic.write_json(progress_path, {"fingerprint": fingerprint, "source": hf_dir, "done_files": done})

    todo = [f for f in source_ckpt.files if os.path.basename(f) not in done]
    target_dtype = ckpt.DTYPES[dtype]
    bar = Progress(f"convert {os.path.basename(hf_dir.rstrip('/'))}", total, " MB", 1e6, enabled=verbose)
    for path in todo:
        for key, array in source_ckpt.read_file(path):
            target = plan[key]
            value = array.astype(target_dtype, copy=False).reshape(target.shape)
            store = stores[target.path]
            destination = store[target.layer] if target.layer is not None else store
            # `value` is never modified afterwards, so tensorstore may write from it without a copy.
            destination.write(value, can_reference_source_data_indefinitely=True).result()
            bar.update(value.nbytes)
            del array, value
        done.append(os.path.basename(path))
        atomic.write_json(progress_path, {"fingerprint": fingerprint, "source": hf_dir, "done_files": done})

    for name in ("config.json", *TOKENIZER_FILES):
        if os.path.isfile(os.path.join(hf_dir, name)):
            shutil.copyfile(os.path.join(hf_dir, name), os.path.join(out_dir, name))
    ckpt.write_manifest(out_dir, config, dtype, shapes, hf_dir, fingerprint=fingerprint)
    atomic.remove(progress_path)
    return out_dir
