"""Every OPT size as data; HF config.json reading and refusal."""

import numpy as np
import pytest

import hf_models
import opt_jax
from benchmarks import conversion as bench
from opt_jax.hf.config import from_hf_dict, to_hf_dict

# Parameter counts of the published models, in billions (HF model cards), and PAPER.md's shapes.
PUBLISHED = {"125m": 0.125, "350m": 0.331, "1.3b": 1.316, "2.7b": 2.652, "6.7b": 6.658, "13b": 12.853,
             "30b": 29.975, "66b": 65.718}


@pytest.mark.parametrize("size", opt_jax.SIZES)
def test_size_table_matches_the_published_parameter_counts(size):
    config = opt_jax.for_size(size)
    billions = bench.model_bytes(config, itemsize=1) / 1e9
    assert abs(billions - PUBLISHED[size]) / PUBLISHED[size] < 0.01, billions
    assert config.vocab_size == 50272 and config.max_position_embeddings == 2048
    assert config.do_layer_norm_before == (size != "350m")
    assert config.has_projections == (size == "350m")


def test_66b_shape_and_fp16_size():
    c = opt_jax.for_size("66b")
    assert (c.num_hidden_layers, c.hidden_size, c.num_attention_heads, c.ffn_dim) == (64, 9216, 72, 36864)
    assert 120 < bench.model_bytes(c, itemsize=2) / 2**30 < 125  # "about 123 GiB" in fp16


@pytest.mark.parametrize("size", ["125m", "350m"])
def test_hf_transformers_agrees_on_the_shapes(size):
    """transformers' own model of a config built from our table has the parameter count we compute."""
    import transformers

    ours = opt_jax.for_size(size, num_hidden_layers=2)
    hf = transformers.OPTConfig(**{k: v for k, v in to_hf_dict(ours).items() if k not in ("model_type",)})
    with __import__("torch").device("meta"):
        model = transformers.OPTForCausalLM(hf)
    hf_count = sum(p.numel() for n, p in model.named_parameters() if n != "lm_head.weight")
    assert hf_count == bench.model_bytes(ours, itemsize=1)
    assert from_hf_dict(hf.to_dict()) == ours


def test_hf_config_options_are_read(tmp_path):
    hf = hf_models.hf_config(**hf_models.POST_LN_350M, enable_bias=False, layer_norm_elementwise_affine=False)
    hf.save_pretrained(tmp_path)
    config = opt_jax.read_hf_config(str(tmp_path))
    assert config.word_embed_proj_dim == 16 and config.hidden_size == 48 and config.has_projections
    assert not config.do_layer_norm_before and not config.has_final_layer_norm
    assert not config.enable_bias and not config.layer_norm_elementwise_affine


@pytest.mark.parametrize("fields, match", [
    ({"model_type": "llama"}, "expected 'opt'"),
    ({"activation_function": "gelu"}, "activation_function"),
    ({"hidden_size": 30}, "not divisible"),
    ({"ffn_dim": 0}, "positive integer"),
    ({"tie_word_embeddings": False}, "tie_word_embeddings"),
])
def test_inconsistent_configs_are_refused(fields, match):
    base = dict(model_type="opt", num_hidden_layers=2, hidden_size=32, num_attention_heads=4, ffn_dim=64)
    with pytest.raises(opt_jax.ConfigError, match=match):
        from_hf_dict(base | fields, source="x/config.json")


def test_missing_fields_and_unknown_sizes_are_refused():
    with pytest.raises(opt_jax.ConfigError, match=r"missing required fields \['ffn_dim'\]"):
        from_hf_dict(dict(model_type="opt", num_hidden_layers=2, hidden_size=32, num_attention_heads=4))
    with pytest.raises(opt_jax.ConfigError, match="known sizes: 125m, 350m"):
        opt_jax.for_size("7b")


def test_mask_packing_is_numpy_little_bit_order():
    rng = np.random.default_rng(0)
    active = rng.random((3, 5, 21)) > 0.5  # [b, s, f], f not a multiple of 8
    packed = np.asarray(opt_jax.pack_masks(active))
    np.testing.assert_array_equal(packed, np.packbits(active, axis=-1, bitorder="little"))
    np.testing.assert_array_equal(opt_jax.unpack_masks(packed, 21), active)
    assert packed[0, 0, 0] == sum(int(active[0, 0, j]) << j for j in range(8))
