"""Reading Hugging Face OPT checkpoints tensor by tensor: safetensors or `.bin`, single or sharded.

Nothing here loads a whole shard into memory: safetensors tensors are read by offset,
`.bin` shards are memory-mapped by torch and copied out one tensor at a time.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import dataclasses
import functools
import json
import mmap
import os
import struct
import sys
from typing import Iterator

import ml_dtypes
import numpy as np

from opt_jax.errors import CheckpointError


SAFETENSORS_DTYPES = {
    "F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": ml_dtypes.bfloat16,
    "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_,
}
SINGLE_FILES = ("model.safetensors", "pytorch_model.bin")
INDEX_FILES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")
# Keys that exist in some checkpoints but carry nothing opt_jax needs (the LM head is tied).
IGNORED_KEYS = ("lm_head.weight",)


@dataclasses.dataclass(frozen=True)
class TensorInfo:
    key: str  # as stored in the file
    file: str  # absolute path
    dtype: np.dtype
    shape: tuple[int, ...]
    offset: int = 0  # safetensors: absolute byte offset of the data


def normalize_key(key: str) -> str:
    """Strip the `model.` prefix that OPTForCausalLM adds, so both layouts map alike."""
    return key.removeprefix("model.")


def weight_files(directory: str) -> list[str]:
    """The checkpoint's weight files in order, from its index if sharded; checks that each exists."""
    for index_name in INDEX_FILES:
        index_path = os.path.join(directory, index_name)
        if os.path.isfile(index_path):
            try:
                with open(index_path) as f:
                    weight_map = json.load(f)["weight_map"]
            except (json.JSONDecodeError, KeyError, TypeError, UnicodeDecodeError) as e:
                raise CheckpointError(f"{index_path}: not a valid shard index ({type(e).__name__}: {e})") from None
            names = sorted(set(weight_map.values()))
            missing = [n for n in names if not os.path.isfile(os.path.join(directory, n))]
            if missing:
                raise CheckpointError(f"{index_path}: names shard(s) that do not exist: {', '.join(missing)}")
            return [os.path.join(directory, n) for n in names]
    for name in SINGLE_FILES:
        path = os.path.join(directory, name)
        if os.path.isfile(path):
            return [path]
    raise CheckpointError(f"{directory}: no weights found (looked for {', '.join(INDEX_FILES + SINGLE_FILES)})")


def _safetensors_infos(path: str) -> list[TensorInfo]:
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        raw = f.read(8)
        if len(raw) < 8:
            raise CheckpointError(f"{path}: truncated safetensors file ({size} bytes, no header)")
        (header_len,) = struct.unpack("<Q", raw)
        if 8 + header_len > size:
            raise CheckpointError(f"{path}: truncated safetensors file (header of {header_len} bytes, "
                                  f"file of {size})")
        try:
            header = json.loads(f.read(header_len))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise CheckpointError(f"{path}: corrupt safetensors header ({e})") from None
    infos = []
    for key, entry in header.items():
        if key == "__metadata__":
            continue
        if entry["dtype"] not in SAFETENSORS_DTYPES:
            raise CheckpointError(f"{path}: tensor {key} has unsupported dtype {entry['dtype']}")
        dtype = np.dtype(SAFETENSORS_DTYPES[entry["dtype"]])
        begin, end = entry["data_offsets"]
        shape = tuple(entry["shape"])
        if end - begin != int(np.prod(shape)) * dtype.itemsize:
            raise CheckpointError(f"{path}: tensor {key} has {end - begin} bytes for shape {shape}")
        if 8 + header_len + end > size:
            raise CheckpointError(f"{path}: truncated (tensor {key} ends at byte {8 + header_len + end}, "
                                  f"file has {size})")
        infos.append(TensorInfo(key, path, dtype, shape, 8 + header_len + begin))
    return infos


def _release_pages(address: int, nbytes: int) -> None:
    """Drop the mapped pages of a tensor already copied out of an mmap'd `.bin`, so RSS stays one tensor.

    The mapping is private and never written, so MADV_DONTNEED only discards clean file pages: a later
    access would read them from the file again.
    """
    libc = _libc()
    if libc is None or nbytes <= 0:
        return
    page = mmap.PAGESIZE
    start = address - address % page
    end = address + nbytes
    libc.madvise(ctypes.c_void_p(start), ctypes.c_size_t(end - start), 4)  # 4 = MADV_DONTNEED


@functools.cache
def _libc():
    try:
        return ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True) if sys.platform == "linux" else None
    except OSError:
        return None


def _torch_to_numpy(tensor) -> np.ndarray:
    import torch

    tensor = tensor.detach().cpu().contiguous()
    if tensor.dtype == torch.bfloat16:
        return tensor.view(torch.int16).numpy().view(ml_dtypes.bfloat16).copy()
    return tensor.numpy().copy()


def _torch(path: str):
    """torch, which only `.bin` checkpoints need: an optional dependency (the `torch` extra)."""
    try:
        import torch
    except ImportError:
        raise CheckpointError(f"{path}: a PyTorch .bin checkpoint is read with torch, which is not installed: "
                              f"pip install 'opt_jax[torch]' (or torch itself), or convert a safetensors copy of "
                              f"the checkpoint") from None
    return torch


def _load_bin(path: str) -> dict:
    torch = _torch(path)
    try:
        state = torch.load(path, map_location="cpu", mmap=True, weights_only=True)
    except Exception as e:  # torch raises many types for corrupt zips/pickles
        raise CheckpointError(f"{path}: cannot read PyTorch checkpoint, truncated or corrupt? "
                              f"({type(e).__name__}: {e})") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: expected a state dict, found {type(state).__name__}")
    return state


def _bin_infos(path: str) -> list[TensorInfo]:
    torch = _torch(path)
    state = _load_bin(path)
    infos = []
    for key, tensor in state.items():
        dtype = ml_dtypes.bfloat16 if tensor.dtype == torch.bfloat16 else torch.empty(0, dtype=tensor.dtype).numpy().dtype
        infos.append(TensorInfo(key, path, np.dtype(dtype), tuple(tensor.shape)))
    return infos


class HFCheckpoint:
    """The tensors of an HF checkpoint directory, indexed from file headers without reading data."""

    def __init__(self, directory: str):
        self.directory = os.path.abspath(directory)
        self.files = weight_files(self.directory)
        self.tensors: dict[str, TensorInfo] = {}
        for path in self.files:
            infos = _safetensors_infos(path) if path.endswith(".safetensors") else _bin_infos(path)
            for info in infos:
                key = normalize_key(info.key)
                if key in self.tensors and key not in IGNORED_KEYS:
                    raise CheckpointError(f"{path}: tensor {info.key} also stored in {self.tensors[key].file}")
                self.tensors[key] = info

    def fingerprint(self) -> list:
        """(name, size, mtime) of each weight file: changes when the checkpoint does."""
        return [[os.path.basename(p), os.path.getsize(p), os.stat(p).st_mtime_ns] for p in self.files]

    def read_file(self, path: str) -> Iterator[tuple[str, np.ndarray]]:
        """Yield (normalized key, array) for each tensor of one weight file, one at a time."""
        infos = [(k, i) for k, i in self.tensors.items() if i.file == path and k not in IGNORED_KEYS]
        if path.endswith(".safetensors"):
            for key, info in infos:
                count = int(np.prod(info.shape))
                data = np.fromfile(path, dtype=info.dtype, count=count, offset=info.offset)
                if data.size != count:
                    raise CheckpointError(f"{path}: truncated while reading {info.key}")
                yield key, data.reshape(info.shape)
        else:
            state = _load_bin(path)
            try:
                for key, info in infos:
                    tensor = state[info.key]
                    array = _torch_to_numpy(tensor)
                    storage = tensor.untyped_storage()
                    _release_pages(storage.data_ptr(), storage.nbytes())
                    del tensor, storage
                    yield key, array
            except RuntimeError as e:
                raise CheckpointError(f"{path}: failed reading tensor data ({e})") from None
            finally:
                del state
