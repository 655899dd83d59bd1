"""Conversion streams: peak RSS grows with one layer, not with the model (measured in fresh interpreters)."""

import os
import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import opt_jax
from benchmarks import conversion as bench

LAYER_SHAPE = dict(hidden_size=512, num_attention_heads=8, ffn_dim=2048, word_embed_proj_dim=512, vocab_size=1000,
                   max_position_embeddings=64)


def _to_sharded_bin(source: str, hf_dir: str) -> str:
    """A single safetensors checkpoint written into hf_dir as two .bin shards with an index, as transformers 4
    did (its config beside them); returns hf_dir."""
    import json

    os.makedirs(hf_dir)
    shutil.copy(os.path.join(source, "config.json"), hf_dir)
    state = load_file(os.path.join(source, "model.safetensors"))
    keys = sorted(state)
    shards = {"pytorch_model-00001-of-00002.bin": keys[: len(keys) // 2],
              "pytorch_model-00002-of-00002.bin": keys[len(keys) // 2:]}
    for name, names in shards.items():
        torch.save({k: state[k] for k in names}, os.path.join(hf_dir, name))
    with open(os.path.join(hf_dir, "pytorch_model.bin.index.json"), "w") as f:
        json.dump({"metadata": {}, "weight_map": {k: n for n, ks in shards.items() for k in ks}}, f)
    return hf_dir


@pytest.fixture(scope="module")
def hf_checkpoints(tmp_path_factory):
    """{layers: a random float32 HF checkpoint (one safetensors file)} for 2 and 16 layers, written once for both
    layouts from numpy draws (normal(0, 0.02): HF's spread; what conversion reads is bytes, whatever their values)."""
    from opt_jax.hf.export import export_hf
    from opt_jax.model import param_shapes, unflatten

    root = tmp_path_factory.mktemp("hf")
    checkpoints = {}
    for layers in (2, 16):
        config = opt_jax.OPTConfig(num_hidden_layers=layers, **LAYER_SHAPE)
        rng = np.random.default_rng(layers)
        params = unflatten({path: 0.02 * rng.standard_normal(shape, np.float32)
                            for path, shape in param_shapes(config).items()})
        checkpoints[layers] = export_hf(config, params, str(root / f"hf{layers}"))
    return checkpoints


@pytest.mark.parametrize("layout", ["safetensors", "sharded_bin"])
def test_peak_memory_scales_with_a_layer_not_the_model(tmp_path, layout, hf_checkpoints):
    peaks = {}
    for layers in (2, 16):
        hf_dir = hf_checkpoints[layers]
        if layout == "sharded_bin":
            hf_dir = _to_sharded_bin(hf_dir, str(tmp_path / f"hf{layers}"))
        peaks[layers] = bench.conversion_run(hf_dir, str(tmp_path / f"out{layers}"))["peak_rss"]
    small = opt_jax.OPTConfig(num_hidden_layers=2, **LAYER_SHAPE)
    large = opt_jax.OPTConfig(num_hidden_layers=16, **LAYER_SHAPE)
    model_growth = bench.model_bytes(large) - bench.model_bytes(small)  # 14 layers, ~177 MB
    layer = bench.layer_bytes(large)  # ~12.6 MB
    growth = peaks[16] - peaks[2]
    assert growth < 2 * layer, (f"peak RSS grew by {growth / 1e6:.0f} MB for {model_growth / 1e6:.0f} MB more "
                                f"model (one layer is {layer / 1e6:.0f} MB)")
