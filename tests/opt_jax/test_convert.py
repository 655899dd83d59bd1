"""Conversion: every layout transformers writes, tokenizer files, dtypes, resume, the hub cache."""

import json
import os
import shutil

import numpy as np
import pytest

import hf_models
from kill import kill_when
import opt_jax
from opt_jax import atomic, checkpoint
from opt_jax.hf import conversion as convert_module
from opt_jax.model import flatten

LAYOUTS = ["safetensors", "sharded_safetensors", "bin", "sharded_bin"]


@pytest.fixture(scope="module")
def batch():
    return hf_models.padded_batch(hf_models.PRE_LN["vocab_size"], [11, 6, 3], 11, left=True, seed=11)


@pytest.fixture(scope="module")
def reference(pre_ln_dir, tmp_path_factory, batch):
    """The forward of the single-file safetensors conversion."""
    out = opt_jax.convert(pre_ln_dir, str(tmp_path_factory.mktemp("ref") / "converted"), verbose=False)
    return opt_jax.load(out).forward(*batch)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_every_layout_converts_to_the_same_model(layout, pre_ln_model, tmp_path, batch, reference):
    hf_dir = hf_models.save(pre_ln_model, str(tmp_path / "hf"), layout)
    files = os.listdir(hf_dir)
    if layout.startswith("sharded"):
        assert sum(f.endswith((".bin", ".safetensors")) for f in files) >= 3, files
        assert any(f.endswith(".index.json") for f in files)
    model = opt_jax.load(opt_jax.convert(hf_dir, str(tmp_path / "out"), verbose=False))
    state = {k: v.numpy() for k, v in pre_ln_model.state_dict().items()}
    flat = flatten(model.params)
    np.testing.assert_array_equal(flat["embed/tokens"], state["model.decoder.embed_tokens.weight"])
    np.testing.assert_array_equal(flat["layers/ffn/fc2/weight"][2], state["model.decoder.layers.2.fc2.weight"])
    np.testing.assert_array_equal(flat["layers/attn/q_proj/weight"][1].reshape(32, 32),
                                  state["model.decoder.layers.1.self_attn.q_proj.weight"])
    out = model.forward(*batch)
    np.testing.assert_array_equal(np.asarray(out.logits), np.asarray(reference.logits))
    np.testing.assert_array_equal(np.asarray(out.masks), np.asarray(reference.masks))


def test_bin_checkpoint_without_model_prefix(pre_ln_model, tmp_path, batch, reference):
    """An OPTModel-style state dict (keys start at `decoder.`) converts the same."""
    hf_dir = tmp_path / "hf"
    hf_models.save(pre_ln_model, str(hf_dir), "bin")
    import torch

    state = torch.load(hf_dir / "pytorch_model.bin", weights_only=True)
    torch.save({k.removeprefix("model."): v for k, v in state.items() if k != "lm_head.weight"},
               hf_dir / "pytorch_model.bin")
    out = opt_jax.load(opt_jax.convert(str(hf_dir), str(tmp_path / "out"), verbose=False)).forward(*batch)
    np.testing.assert_array_equal(np.asarray(out.logits), np.asarray(reference.logits))


def test_config_and_tokenizer_travel_with_the_weights(pre_ln_dir, tmp_path):
    from transformers import AutoTokenizer

    out = opt_jax.convert(pre_ln_dir, str(tmp_path / "out"), verbose=False)
    manifest = checkpoint.read_manifest(out)
    assert manifest["config"]["num_hidden_layers"] == 3 and manifest["dtype"] == "float32"
    assert opt_jax.read_hf_config(out) == opt_jax.read_hf_config(pre_ln_dir)
    text = "the dead neurons"
    assert AutoTokenizer.from_pretrained(out)(text)["input_ids"] == \
        AutoTokenizer.from_pretrained(pre_ln_dir)(text)["input_ids"]
    assert not os.path.exists(os.path.join(out, checkpoint.PROGRESS))


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_stored_dtype(pre_ln_dir, tmp_path, dtype):
    out = opt_jax.convert(pre_ln_dir, str(tmp_path / "out"), dtype=dtype, verbose=False)
    model = opt_jax.load(out)
    assert model.dtype == checkpoint.DTYPES[dtype]
    store = checkpoint.open_array(out, "layers/ffn/fc1/weight")
    assert store.dtype.name == dtype and store.chunk_layout.read_chunk.shape[0] == 1
    f32 = opt_jax.load(opt_jax.convert(pre_ln_dir, str(tmp_path / "f32"), verbose=False))
    want = f32.params["layers"]["ffn"]["fc1"]["weight"].astype(checkpoint.DTYPES[dtype])
    np.testing.assert_array_equal(model.params["layers"]["ffn"]["fc1"]["weight"], want)
    np.testing.assert_array_equal(opt_jax.load(out, dtype="float32").params["layers"]["ffn"]["fc1"]["weight"],
                                  want.astype(np.float32))


def test_layers_are_read_one_at_a_time(pre_ln_dir, tmp_path):
    out = opt_jax.convert(pre_ln_dir, str(tmp_path / "out"), verbose=False)
    full = checkpoint.read_params(out)
    one = checkpoint.read_params(out, layers=slice(1, 2))
    assert one["layers/ffn/fc1/weight"].shape == (1, 64, 32)
    np.testing.assert_array_equal(one["layers/ffn/fc1/weight"], full["layers/ffn/fc1/weight"][1:2])
    np.testing.assert_array_equal(one["embed/tokens"], full["embed/tokens"])
    # layer 1 of fc1 is its own chunk file: deleting it breaks layer 1 only.
    chunk_dir = os.path.join(out, "params", "layers", "ffn", "fc1", "weight", "c", "1")
    assert os.path.isdir(chunk_dir)


def test_interrupted_conversion_never_loads_and_resumes(pre_ln_model, tmp_path, monkeypatch, batch, reference):
    hf_dir = hf_models.save(pre_ln_model, str(tmp_path / "hf"), "sharded_safetensors")
    out = str(tmp_path / "out")
    real_write = atomic.write_json
    calls = []

    def crash_after_two_files(path, data):
        real_write(path, data)
        if path.endswith(checkpoint.PROGRESS) and len(data["done_files"]) == 2:
            calls.append(list(data["done_files"]))
            raise KeyboardInterrupt("simulated kill")

    monkeypatch.setattr(atomic, "write_json", crash_after_two_files)
    with pytest.raises(KeyboardInterrupt):
        opt_jax.convert(hf_dir, out, verbose=False)
    monkeypatch.setattr(atomic, "write_json", real_write)
    with pytest.raises(opt_jax.CheckpointError, match="interrupted"):
        opt_jax.load(out)
    # Resuming must not rewrite the files already done: make their tensors unreadable to prove it.
    reads = []
    real_read = convert_module.HFCheckpoint.read_file
    monkeypatch.setattr(convert_module.HFCheckpoint, "read_file",
                        lambda self, path: reads.append(os.path.basename(path)) or real_read(self, path))
    opt_jax.convert(hf_dir, out, verbose=False)
    assert not set(reads) & set(calls[0]) and reads
    out_model = opt_jax.load(out).forward(*batch)
    np.testing.assert_array_equal(np.asarray(out_model.logits), np.asarray(reference.logits))


def test_rerun_of_a_finished_conversion_is_a_no_op_and_other_sources_are_refused(pre_ln_dir, pre_ln_model,
                                                                                  tmp_path):
    out = opt_jax.convert(pre_ln_dir, str(tmp_path / "out"), verbose=False)
    stamp = os.stat(os.path.join(out, checkpoint.MANIFEST)).st_mtime_ns
    opt_jax.convert(pre_ln_dir, out, verbose=False)
    assert os.stat(os.path.join(out, checkpoint.MANIFEST)).st_mtime_ns == stamp
    with pytest.raises(opt_jax.CheckpointError, match="another source or dtype"):
        opt_jax.convert(pre_ln_dir, out, dtype="float16", verbose=False)
    opt_jax.convert(pre_ln_dir, out, dtype="float16", overwrite=True, verbose=False)
    assert opt_jax.load(out).dtype == np.float16


def _fake_hub_cache(cache: str, repo_id: str, source_dir: str) -> None:
    """The layout huggingface_hub gives a downloaded repo: blobs, a snapshot of links, refs/main."""
    repo = os.path.join(cache, "models--" + repo_id.replace("/", "--"))
    revision = "0123456789abcdef0123456789abcdef01234567"
    snapshot = os.path.join(repo, "snapshots", revision)
    os.makedirs(os.path.join(repo, "blobs"))
    os.makedirs(snapshot)
    os.makedirs(os.path.join(repo, "refs"))
    with open(os.path.join(repo, "refs", "main"), "w") as f:
        f.write(revision)
    for i, name in enumerate(sorted(os.listdir(source_dir))):
        blob = os.path.join(repo, "blobs", f"blob{i:04d}")
        shutil.copyfile(os.path.join(source_dir, name), blob)
        os.symlink(os.path.relpath(blob, snapshot), os.path.join(snapshot, name))


def test_size_name_resolves_in_the_local_hub_cache(pre_ln_dir, tmp_path, batch, reference):
    cache = str(tmp_path / "hub")
    _fake_hub_cache(cache, "facebook/opt-125m", pre_ln_dir)
    out = opt_jax.convert("125m", str(tmp_path / "out"), cache_dir=cache, verbose=False)
    np.testing.assert_array_equal(np.asarray(opt_jax.load(out).forward(*batch).logits),
                                  np.asarray(reference.logits))


def test_size_missing_from_cache_fails_at_once_offline(tmp_path, monkeypatch):
    from opt_jax.hf import hub

    def no_network(*args, **kwargs):
        raise AssertionError("offline resolution must not touch the network")

    monkeypatch.setattr(hub, "_hub_reachable", no_network)
    cache = str(tmp_path / "empty_hub")
    os.makedirs(cache)
    with pytest.raises(opt_jax.CheckpointError) as err:
        opt_jax.convert("66b", str(tmp_path / "out"), cache_dir=cache, verbose=False)
    assert "facebook/opt-66b" in str(err.value) and cache in str(err.value) and "HF_HUB_OFFLINE" in str(err.value)
    assert not os.path.exists(tmp_path / "out")


def test_unreachable_hub_fails_with_where_it_looked(tmp_path, monkeypatch):
    from opt_jax.hf import hub

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(hub, "_hub_reachable", lambda endpoint, timeout=3.0: False)
    with pytest.raises(opt_jax.CheckpointError, match="is unreachable") as err:
        opt_jax.convert("125m", str(tmp_path / "out"), cache_dir=str(tmp_path), verbose=False)
    assert str(tmp_path) in str(err.value)


def test_manifest_describes_every_array(pre_ln_dir, tmp_path):
    out = opt_jax.convert(pre_ln_dir, str(tmp_path / "out"), verbose=False)
    with open(os.path.join(out, checkpoint.MANIFEST)) as f:
        manifest = json.load(f)
    for path, shape in manifest["params"].items():
        assert list(checkpoint.open_array(out, path).shape) == shape


def test_sigkill_mid_conversion_then_rerun(tmp_path):
    """A conversion killed with SIGKILL leaves nothing loadable; the same command then finishes it."""
    import subprocess
    import sys

    from benchmarks import conversion as bench

    config = opt_jax.OPTConfig(num_hidden_layers=16, hidden_size=256, num_attention_heads=4, ffn_dim=1024,
                               word_embed_proj_dim=256, vocab_size=500, max_position_embeddings=64)
    model = hf_models.random_model(hf_models.hf_config(**opt_jax.config.to_hf_dict(config)), seed=2)
    hf_dir = hf_models.save(model, str(tmp_path / "hf"), "sharded_safetensors", max_shard_size="600KB")
    out = str(tmp_path / "out")
    code = f"import opt_jax; opt_jax.convert({hf_dir!r}, {out!r}, verbose=False)"
    proc = subprocess.Popen([sys.executable, "-c", code])
    kill_when(proc, os.path.join(out, checkpoint.PROGRESS), lambda progress: progress["done_files"])
    with pytest.raises(opt_jax.CheckpointError, match="interrupted"):
        opt_jax.load(out)
    opt_jax.convert(hf_dir, out, verbose=False)
    ids = np.arange(3, 43).reshape(2, 20)
    want = opt_jax.load(opt_jax.convert(hf_dir, str(tmp_path / "clean"), verbose=False)).forward(ids)
    got = opt_jax.load(out).forward(ids)
    np.testing.assert_array_equal(np.asarray(got.logits), np.asarray(want.logits))
    assert bench.model_bytes(config) > 10e6


def test_a_disk_too_small_is_refused_before_writing_and_the_same_command_then_converts(pre_ln_dir, tmp_path):
    """The conversion's size is known beforehand (every parameter at the stored dtype): with less free, it stops
    at once, naming both sizes and writing nothing; with room, the same call converts."""
    from helpers import small_disk
    from opt_jax import disk

    reference = checkpoint.read_params(opt_jax.convert(pre_ln_dir, str(tmp_path / "ref"), verbose=False))
    mount = tmp_path / "disk"
    with small_disk(mount, 4 << 20):
        ballast = mount / "ballast"
        ballast.write_bytes(b"\0" * (disk.free_bytes(str(mount)) - 64 * 1024))
        out = str(mount / "m")
        with pytest.raises(opt_jax.CheckpointError, match=r"the conversion needs about .* and only 6\d kB is free"):
            opt_jax.convert(pre_ln_dir, out, verbose=False)
        assert not os.path.exists(out)
        ballast.unlink()
        converted = checkpoint.read_params(opt_jax.convert(pre_ln_dir, out, verbose=False))
    assert converted.keys() == reference.keys()
    for path, value in reference.items():
        np.testing.assert_array_equal(converted[path], value)
