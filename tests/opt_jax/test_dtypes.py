"""bfloat16 / float16 forwards run and agree with float32 on the masks."""

import numpy as np

import opt_jax
from benchmarks import conversion as bench


def test_half_precision_masks_agree_with_float32():
    config = opt_jax.OPTConfig(num_hidden_layers=4, hidden_size=128, num_attention_heads=4, ffn_dim=512,
                               word_embed_proj_dim=128, vocab_size=500, max_position_embeddings=128)
    result = bench.mask_agreement(config, batch=2, seq=96)
    assert 0.3 < result["active_fraction"] < 0.7
    for dtype, agreement in result["agreement"].items():
        assert agreement >= 0.99, (dtype, agreement)
        assert agreement < 1.0, f"{dtype} should not be bit-identical to float32: is it really lower precision?"


def test_half_precision_logits_close_and_dtype_kept(pre_ln_dir, tmp_path):
    out = opt_jax.convert(pre_ln_dir, str(tmp_path / "out"), verbose=False)
    ids = np.arange(3, 23).reshape(2, 10)
    f32 = opt_jax.load(out).forward(ids)
    for dtype in ("bfloat16", "float16"):
        model = opt_jax.load(out, dtype=dtype)
        assert model.params["layers"]["ffn"]["fc1"]["weight"].dtype.name == dtype
        got = model.forward(ids)
        assert got.logits.dtype == np.float32 and np.isfinite(np.asarray(got.logits)).all()
        scale = np.abs(np.asarray(f32.logits)).max()
        assert np.abs(np.asarray(got.logits) - np.asarray(f32.logits)).max() < 0.1 * scale
