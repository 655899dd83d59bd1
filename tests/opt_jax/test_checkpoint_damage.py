"""A damaged converted checkpoint is a clear error, never other weights: every chunk carries a crc32c checksum
and the manifest records the chunk files (checkpoint format version 2); version 1 checkpoints keep loading."""

import json
import os
import shutil

import numpy as np
import pytest

import opt_jax
from helpers import run_script
from opt_jax import checkpoint
from opt_jax.errors import CheckpointError
from opt_jax.streaming import CheckpointLayers

FC1 = "layers/ffn/fc1/weight"


@pytest.fixture(scope="module")
def converted(pre_ln_dir, tmp_path_factory):
    return opt_jax.convert(pre_ln_dir, str(tmp_path_factory.mktemp("converted") / "m"), verbose=False)


def _copy(converted, tmp_path) -> str:
    out = str(tmp_path / "m")
    shutil.copytree(converted, out)
    return out


def _layer_chunk(root: str, layer: int) -> str:
    return os.path.join(root, checkpoint.PARAMS_DIR, FC1, "c", str(layer), "0", "0")


def test_chunks_carry_checksums_and_the_manifest_lists_them(converted):
    manifest = checkpoint.read_manifest(converted)
    assert manifest["version"] == 2
    assert set(manifest["chunks"]) == set(manifest["params"])
    assert manifest["chunks"][FC1] == [f"{l}/0/0" for l in range(manifest["params"][FC1][0])]
    with open(os.path.join(converted, checkpoint.PARAMS_DIR, FC1, "zarr.json")) as f:
        assert json.load(f)["codecs"][-1]["name"] == "crc32c"


@pytest.mark.parametrize("damage", ["checksum byte", "data byte", "truncated"])
def test_a_damaged_chunk_is_an_error_naming_the_parameter_and_the_file(converted, tmp_path, damage):
    """The last byte is the checksum: flipped, the weights themselves still read as they were."""
    root = _copy(converted, tmp_path)
    chunk = _layer_chunk(root, 1)
    data = bytearray(open(chunk, "rb").read())
    if damage == "truncated":
        data = data[:len(data) // 2]
    else:
        data[-1 if damage == "checksum byte" else len(data) // 2] ^= 0x10
    with open(chunk, "wb") as f:
        f.write(bytes(data))
    for read in (lambda: checkpoint.read_params(root), lambda: CheckpointLayers(root).read(range(0, 2)),
                 lambda: opt_jax.load(root)):
        with pytest.raises(CheckpointError) as e:
            read()
        assert repr(FC1) in str(e.value) and chunk in str(e.value) and "convert the checkpoint again" in str(e.value)
    np.testing.assert_array_equal(CheckpointLayers(root).read(range(0, 1))["ffn"]["fc1"]["weight"],
                                  checkpoint.read_params(converted)[FC1][:1])  # other layers read as ever


def test_a_deleted_chunk_is_an_error_not_zeros(converted, tmp_path):
    root = _copy(converted, tmp_path)
    chunk = _layer_chunk(root, 0)
    os.remove(chunk)
    for read in (lambda: checkpoint.read_params(root), lambda: CheckpointLayers(root)):
        with pytest.raises(CheckpointError, match="missing") as e:
            read()
        assert chunk in str(e.value)


def test_scripts_print_the_damage_without_a_traceback(converted, tiny_corpus, tmp_path):
    root = _copy(converted, tmp_path)
    chunk = _layer_chunk(root, 0)
    with open(chunk, "r+b") as f:
        f.truncate(5)
    result = run_script("scripts/collect.py", "--model", root, "--corpus", tiny_corpus, "--out",
                        str(tmp_path / "stats"), "--seq_len", "16", "--batch_size", "2")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "error:" in result.stderr and repr(FC1) in result.stderr and chunk in result.stderr


def test_a_version_1_checkpoint_keeps_loading(converted, tmp_path):
    """As written before checksums: no crc32c codec, no inventory, version 1 (the shipped twins are such)."""
    params = checkpoint.read_params(converted)
    root = str(tmp_path / "v1")
    for path, value in params.items():
        store = checkpoint.ts.open(checkpoint._spec(root, path) | {"metadata": {
            "shape": list(value.shape), "data_type": value.dtype.name, "chunk_grid": {"name": "regular",
            "configuration": {"chunk_shape": [1, *value.shape[1:]] if path.startswith("layers/") else
                              list(value.shape)}}}, "create": True}).result()
        store.write(value).result()
    manifest = checkpoint.read_manifest(converted)
    manifest = {k: v for k, v in manifest.items() if k != "chunks"} | {"version": 1}
    with open(os.path.join(root, checkpoint.MANIFEST), "w") as f:
        json.dump(manifest, f)
    for path, value in checkpoint.read_params(root).items():
        np.testing.assert_array_equal(value, params[path])
    assert opt_jax.load(root).config == opt_jax.load(converted).config
