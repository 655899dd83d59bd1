"""Logits and masks against transformers' torch OPTForCausalLM, in float32."""

import jax
import numpy as np
import pytest

import hf_models
import opt_jax

SHAPES = {
    "pre_ln_4_heads": hf_models.PRE_LN,
    "post_ln_350m_style_6_heads": hf_models.POST_LN_350M,
    "pre_ln_8_heads_no_bias_no_affine": dict(hf_models.PRE_LN, num_attention_heads=8, enable_bias=False,
                                             layer_norm_elementwise_affine=False),
    "pre_ln_no_final_norm_2_heads": dict(hf_models.PRE_LN, num_attention_heads=2, _remove_final_layer_norm=True,
                                         word_embed_proj_dim=24),
}


@pytest.fixture(scope="module", params=sorted(SHAPES))
def pair(request, tmp_path_factory):
    """(torch model, opt_jax model converted from its saved checkpoint)."""
    model = hf_models.random_model(hf_models.hf_config(**SHAPES[request.param]), seed=len(request.param))
    root = tmp_path_factory.mktemp(request.param)
    hf_models.save(model, str(root / "hf"), "safetensors")
    return model, opt_jax.load(opt_jax.convert(str(root / "hf"), str(root / "converted"), verbose=False))


@pytest.mark.parametrize("left", [True, False], ids=["left_padded", "right_padded"])
def test_logits_and_masks_match_torch(pair, left):
    torch_model, model = pair
    ids, mask = hf_models.padded_batch(model.config.vocab_size, [17, 9, 4, 1], 17, left=left, seed=3)
    want_logits, want_masks = hf_models.torch_reference(torch_model, ids, mask)
    out = model.forward(ids, mask)
    real = mask.astype(bool)  # [b, s]
    got_logits = np.asarray(out.logits)
    assert got_logits.shape == want_logits.shape
    assert np.abs(got_logits - want_logits)[real].max() <= 1e-4
    got_masks = opt_jax.unpack_masks(out.masks, model.config.ffn_dim)  # [l, b, s, f]
    assert out.masks.dtype == np.uint8
    assert out.masks.shape == (model.config.num_hidden_layers, *ids.shape, model.config.mask_bytes)
    np.testing.assert_array_equal(got_masks[:, real], want_masks[:, real])
    assert not got_masks[:, ~real].any(), "masks must be zero at padded positions"
    assert 0.2 < want_masks[:, real].mean() < 0.8, "the reference must exercise both bit values"


def test_no_attention_mask_means_all_tokens(pair):
    torch_model, model = pair
    ids, mask = hf_models.padded_batch(model.config.vocab_size, [12, 12], 12, left=False, seed=5)
    want_logits, want_masks = hf_models.torch_reference(torch_model, ids, mask)
    out = model.forward(ids)
    assert np.abs(np.asarray(out.logits) - want_logits).max() <= 1e-4
    np.testing.assert_array_equal(opt_jax.unpack_masks(out.masks, model.config.ffn_dim), want_masks)


def test_layers_one_at_a_time_equal_the_scan(pair):
    """decoder_layer is a pure function of one layer's params: streamed layer by layer == scanned."""
    _, model = pair
    c = model.config
    ids, mask = hf_models.padded_batch(c.vocab_size, [10, 6], 10, left=True, seed=7)
    mask = mask.astype(bool)
    x = opt_jax.embed(c, model.params, ids, mask)  # [b, s, d]
    masks = []
    for layer in range(c.num_hidden_layers):
        layer_params = jax.device_put(jax.tree.map(lambda a: a[layer], model.params["layers"]))
        x, active = jax.jit(opt_jax.decoder_layer, static_argnums=0)(c, layer_params, x, mask)
        masks.append(opt_jax.pack_masks(active))
    logits = opt_jax.head(c, model.params, x)  # [b, s, v]
    out = model.forward(ids, mask)
    np.testing.assert_array_equal(np.stack(masks), np.asarray(out.masks))
    np.testing.assert_allclose(np.asarray(logits)[mask], np.asarray(out.logits)[mask], atol=1e-5)


def test_rejects_sequences_longer_than_positions(pair):
    _, model = pair
    too_long = np.full((1, model.config.max_position_embeddings + 1), 5)
    with pytest.raises(ValueError, match="exceeds"):
        model.forward(too_long)


@pytest.mark.parametrize("attention, block", [("blocked", 4), ("blocked", 128), ("blocked", 256), ("fused", 128)])
def test_each_attention_implementation_matches_torch(pair, attention, block):
    """Both attention paths; blocks of 4 make sequences span several query blocks. Padding left and right."""
    from opt_jax import model as model_module

    torch_model, model = pair
    config = model.config.replace(attention=attention, query_block=block)  # static: a trace of its own
    forward = jax.jit(model_module.forward, static_argnums=0)
    for left in (True, False):
        ids, mask = hf_models.padded_batch(model.config.vocab_size, [17, 10, 2], 17, left=left, seed=9)
        want_logits, want_masks = hf_models.torch_reference(torch_model, ids, mask)
        logits, masks = forward(config, model.params, ids, mask.astype(bool))
        real = mask.astype(bool)
        assert np.abs(np.asarray(logits) - want_logits)[real].max() <= 1e-4
        np.testing.assert_array_equal(opt_jax.unpack_masks(masks, model.config.ffn_dim)[:, real],
                                      want_masks[:, real])


def test_attention_choice_after_a_first_compiled_call_takes_effect(monkeypatch):
    """The attention kind and query block are static config fields: changing them after a call retraces."""
    import jax.numpy as jnp

    from opt_jax import model as model_module
    from opt_jax.runtime import _forward

    config = opt_jax.OPTConfig(2, 16, 2, 32, 16, vocab_size=64, max_position_embeddings=16, attention="blocked")
    params = opt_jax.init_params(config)
    ids, mask = jnp.ones((1, 8), jnp.int32), jnp.ones((1, 8), bool)
    fused_traces = []
    real_fused = jax.nn.dot_product_attention

    def counting_fused(*args, **kwargs):
        fused_traces.append(1)
        return real_fused(*args, **kwargs)

    monkeypatch.setattr(model_module.jax.nn, "dot_product_attention", counting_fused)
    blocked_logits, _ = _forward(config, params, ids, mask)
    assert not fused_traces
    fused_logits, _ = _forward(config.replace(attention="fused"), params, ids, mask)
    assert fused_traces, "the fused kernel was not traced: the first compilation was reused"
    np.testing.assert_allclose(np.asarray(fused_logits), np.asarray(blocked_logits), atol=1e-5)
    lowered = {b: jax.jit(model_module.forward, static_argnums=0).lower(config.replace(query_block=b), params, ids,
                                                                       mask).as_text() for b in (2, 8)}
    assert lowered[2] != lowered[8]
    assert config.replace(attention="fused").to_dict() == config.to_dict()  # how it runs, not what it is
