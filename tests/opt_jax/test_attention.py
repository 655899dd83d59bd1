"""`causal_attention` against a float64 numpy softmax: blocked (padding masked inside the score product) and fused,
left and right padding, query blocks that do and do not divide the sequence, low-precision dtypes, 125m's real
shape at 2048 positions (`real`)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from opt_jax.model import causal_attention


def reference(q, k, v, mask):
    """Softmax over the real keys at or before each query, in float64: [b, s, h, d]; NaN where a query has none."""
    q, k, v = (np.asarray(a, np.float64) for a in (q, k, v))  # [b, s, h, d]
    s = q.shape[1]
    out = np.full(q.shape, np.nan)
    for b in range(q.shape[0]):
        allowed = np.tril(np.ones((s, s), bool)) & mask[b][None, :]  # [q, t]
        for h in range(q.shape[2]):
            scores = np.where(allowed, q[b, :, h] @ k[b, :, h].T, -np.inf)  # [q, t]
            rows = allowed.any(1)
            probs = np.exp(scores[rows] - scores[rows].max(1, keepdims=True))  # [r, t]
            out[b, rows, h] = (probs / probs.sum(1, keepdims=True)) @ v[b, :, h]  # [r, d]
    return out


def padded_inputs(batch, seq, heads, dim, pad, seed=0):
    """Random q (scaled), k, v and a mask with `pad` padded positions on the left of row 0 and on the right of row
    1 (the rest real); the padded keys are 30x larger and their values 1e4x, so any leak would show."""
    rng = np.random.default_rng(seed)
    q, k, v = (rng.standard_normal((batch, seq, heads, dim), dtype=np.float32) for _ in range(3))
    q *= dim ** -0.5
    mask = np.ones((batch, seq), bool)
    mask[0, :pad] = False
    mask[1, seq - pad:] = False
    k[~mask] *= 30
    v[~mask] *= 1e4
    return q, k, v, mask


@pytest.mark.parametrize("kind, block", [("blocked", 3), ("blocked", 4), ("blocked", 256), ("fused", 256)])
def test_matches_numpy_with_padding(kind, block):
    q, k, v, mask = padded_inputs(3, 17, 2, 8, pad=5)
    got = np.asarray(jax.jit(causal_attention, static_argnums=(4, 5))(q, k, v, mask, kind, block))
    want = reference(q, k, v, mask)
    real = mask  # every real query has itself to attend to
    assert np.isfinite(want[real]).all() and np.isnan(want[0, :5]).all()
    np.testing.assert_allclose(got[real], want[real], rtol=1e-5, atol=1e-6)
    assert np.isfinite(got).all(), "padded queries must stay finite (they feed later layers' padded positions)"


@pytest.mark.parametrize("dtype, tol", [(jnp.bfloat16, 3e-2), (jnp.float16, 3e-3)])
def test_low_precision_masks_padding(dtype, tol):
    """bfloat16 and float16 key coordinates hold their dtype's most negative value: padding still gets no weight."""
    q, k, v, mask = padded_inputs(2, 20, 2, 16, pad=6, seed=1)
    v[~mask] = 1e3  # within float16's range
    got = causal_attention(*(jnp.asarray(a, dtype) for a in (q, k, v)), jnp.asarray(mask), "blocked", 8)
    assert got.dtype == dtype
    got = np.asarray(got, np.float64)
    want = reference(*(np.asarray(jnp.asarray(a, dtype), np.float64) for a in (q, k, v)), mask)
    np.testing.assert_allclose(got[mask], want[mask], rtol=tol, atol=tol)
    assert np.isfinite(got).all()


@pytest.mark.real
def test_real_shape_2048_positions():
    """125m's attention (12 heads x 64) over 2048 positions, two rows padded 300 on either side: the default blocks."""
    q, k, v, mask = padded_inputs(2, 2048, 12, 64, pad=300, seed=2)
    got = np.asarray(jax.jit(causal_attention)(q, k, v, mask))
    want = reference(q, k, v, mask)
    np.testing.assert_allclose(got[mask], want[mask], rtol=1e-4, atol=2e-5)
    assert np.isfinite(got).all()
