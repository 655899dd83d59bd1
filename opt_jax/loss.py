"""Next-token cross-entropy, the one definition training, ablation and attribution share.

Position t predicts the token at t + 1. A prediction counts when both are real tokens (`token_mask`): padding
is neither an input nor a target. Losses are in nats, in float32 whatever the compute dtype.
"""

from __future__ import annotations

import jax.numpy as jnp
import optax


def next_token_nll(logits, input_ids, token_mask):  # [b, s, v], [b, s], [b, s]
    """(nll float32 [batch, seq - 1], counted bool [batch, seq - 1]): -log p(ids[t + 1] | ids[..t]) at each t,
    and whether that prediction counts (input and target both real tokens)."""
    nll = optax.softmax_cross_entropy_with_integer_labels(logits[:, :-1].astype(jnp.float32),
                                                          input_ids[:, 1:])  # [b, s - 1]
    counted = token_mask[:, 1:].astype(bool) & token_mask[:, :-1].astype(bool)  # [b, s - 1]
    return nll, counted


def mean_next_token_nll(logits, input_ids, token_mask):
    """(token-weighted mean nll over the counted predictions, float32 [], their count float32 [])."""
    nll, counted = next_token_nll(logits, input_ids, token_mask)  # [b, s - 1] x2
    weights = counted.astype(jnp.float32)  # [b, s - 1]
    count = weights.sum()
    return (nll * weights).sum() / jnp.maximum(count, 1.0), count
