"""Bad checkpoints and names: a clear error naming the file and the problem, nothing that loads."""

import json
import os
import shutil

import pytest

import hf_models
import opt_jax
from opt_jax import checkpoint


@pytest.fixture
def sharded(pre_ln_model, tmp_path):
    """A sharded safetensors copy of the pre-LN model, for breaking."""
    return hf_models.save(pre_ln_model, str(tmp_path / "hf"), "sharded_safetensors")


def _shards(directory, ext=".safetensors"):
    return sorted(f for f in os.listdir(directory) if f.endswith(ext))


def _assert_refused(source, out, match):
    with pytest.raises((opt_jax.CheckpointError, opt_jax.ConfigError), match=match) as err:
        opt_jax.convert(source, out, verbose=False)
    with pytest.raises(opt_jax.CheckpointError):
        opt_jax.load(out)
    return str(err.value)


def test_missing_shard(sharded, tmp_path):
    victim = _shards(sharded)[1]
    os.remove(os.path.join(sharded, victim))
    message = _assert_refused(sharded, str(tmp_path / "out"), "do not exist")
    assert victim in message and "model.safetensors.index.json" in message


def test_truncated_safetensors(sharded, tmp_path):
    victim = os.path.join(sharded, _shards(sharded)[-1])
    with open(victim, "r+b") as f:
        f.truncate(os.path.getsize(victim) - 100)
    message = _assert_refused(sharded, str(tmp_path / "out"), "truncated")
    assert victim in message
    assert not os.path.exists(tmp_path / "out"), "the checks run before anything is written"


def test_truncated_bin(pre_ln_model, tmp_path):
    hf_dir = hf_models.save(pre_ln_model, str(tmp_path / "hf"), "sharded_bin")
    victim = os.path.join(hf_dir, _shards(hf_dir, ".bin")[0])
    with open(victim, "r+b") as f:
        f.truncate(os.path.getsize(victim) // 2)
    message = _assert_refused(hf_dir, str(tmp_path / "out"), "truncated or corrupt")
    assert victim in message


def test_wrong_tensor_shape(pre_ln_model, tmp_path):
    hf_dir = hf_models.save(pre_ln_model, str(tmp_path / "hf"), "safetensors")
    with open(os.path.join(hf_dir, "config.json")) as f:
        config = json.load(f)
    config["ffn_dim"] = 48  # the weights say 64
    with open(os.path.join(hf_dir, "config.json"), "w") as f:
        json.dump(config, f)
    message = _assert_refused(hf_dir, str(tmp_path / "out"), "has shape")
    assert "model.safetensors" in message and "fc1" in message and "[48, 32]" in message


def test_missing_tensor(pre_ln_model, tmp_path):
    from safetensors.torch import load_file, save_file

    hf_dir = hf_models.save(pre_ln_model, str(tmp_path / "hf"), "safetensors")
    path = os.path.join(hf_dir, "model.safetensors")
    state = load_file(path)
    del state["model.decoder.layers.1.fc2.bias"]
    save_file(state, path, metadata={"format": "pt"})
    _assert_refused(hf_dir, str(tmp_path / "out"), r"missing tensors \['decoder.layers.1.fc2.bias'\]")


def test_unknown_size_name(tmp_path):
    _assert_refused("77b", str(tmp_path / "out"), "known OPT size")


@pytest.mark.parametrize("change, match", [
    ({"model_type": "gpt2"}, "model_type is 'gpt2', expected 'opt'"),
    ({"activation_function": "gelu"}, "activation_function='gelu' is not supported"),
    ({"num_attention_heads": 5}, "not divisible"),
    ({"tie_word_embeddings": False}, "tie_word_embeddings"),
])
def test_config_that_is_not_a_supported_opt(pre_ln_dir, tmp_path, change, match):
    hf_dir = str(tmp_path / "hf")
    shutil.copytree(pre_ln_dir, hf_dir)
    with open(os.path.join(hf_dir, "config.json")) as f:
        config = json.load(f)
    with open(os.path.join(hf_dir, "config.json"), "w") as f:
        json.dump(config | change, f)
    message = _assert_refused(hf_dir, str(tmp_path / "out"), match)
    assert os.path.join(hf_dir, "config.json") in message


def test_directory_without_weights(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "config.json").write_text(json.dumps({"model_type": "opt", "num_hidden_layers": 1, "hidden_size": 8,
                                                  "num_attention_heads": 2, "ffn_dim": 16}))
    _assert_refused(str(empty), str(tmp_path / "out"), "no weights found")


def test_refuses_to_write_into_a_foreign_directory(pre_ln_dir, tmp_path):
    out = tmp_path / "somebody_elses"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    with pytest.raises(opt_jax.CheckpointError, match="not an opt_jax conversion"):
        opt_jax.convert(pre_ln_dir, str(out), verbose=False)
    assert (out / "notes.txt").read_text() == "keep me"


def test_failure_mid_conversion_leaves_nothing_that_loads(sharded, tmp_path, monkeypatch):
    """A shard that turns out corrupt while reading (after the header checks) stops the run unloadable."""
    real_fromfile = checkpoint.np.fromfile
    count = {"n": 0}

    def failing_fromfile(*args, **kwargs):
        count["n"] += 1
        if count["n"] == 20:
            raise OSError("simulated I/O error")
        return real_fromfile(*args, **kwargs)

    monkeypatch.setattr("opt_jax.hf.weights.np.fromfile", failing_fromfile)
    out = str(tmp_path / "out")
    with pytest.raises(OSError):
        opt_jax.convert(sharded, out, verbose=False)
    with pytest.raises(opt_jax.CheckpointError, match="interrupted"):
        opt_jax.load(out)
