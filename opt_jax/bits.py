"""Packed activation bitmasks: bit j of byte k is neuron 8k+j (numpy's little bit order)."""

import jax
import jax.numpy as jnp
import numpy as np


def pack_masks(active: jax.Array) -> jax.Array:
    """Pack a boolean [..., ffn] array into uint8 [..., ceil(ffn / 8)] inside jit."""
    return jnp.packbits(active, axis=-1, bitorder="little")  # [..., ffn / 8]


def unpack_masks(masks, ffn_dim: int | None = None) -> np.ndarray:
    """Unpack uint8 masks [..., ceil(ffn / 8)] into a bool numpy array [..., ffn_dim]."""
    masks = np.asarray(masks)
    if masks.dtype != np.uint8:
        raise TypeError(f"packed masks must be uint8, got {masks.dtype}")
    bits = np.unpackbits(masks, axis=-1, count=ffn_dim, bitorder="little")  # [..., ffn]
    return bits.view(bool)
