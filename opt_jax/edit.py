"""Edits of the FFN activations inside the model: what fc2 reads, changed for chosen (layer, neuron).

An edit is any function `(fc1 [batch, seq, ffn], layer) -> activations [batch, seq, ffn]` that a decoder
layer calls in place of its ReLU: `fc1` is the layer's fc1 output (before the ReLU, in the compute dtype),
`layer` the model's layer index (an int32 scalar, traced under the scan: index arrays with it, do not
branch on it in Python), and what it returns is what fc2 reads. The masks and probes of the model still see
the layer's own fc1 (a neuron "fires" where fc1 > 0, edited or not); the layers after it see the edit's
effect. Pass one as `edit=` to `opt_jax.forward`, `decoder_layers`, `decoder_layer` or `Model.forward`; a
function of your own is static under `jit` (hashable, traced once per function object).

`Edit` is the edit the library builds: dense per-layer arrays over every layer of the model, so one
compilation serves every set of neurons (they are ordinary jit arguments):

    activations = where(is_set, value, relu(fc1) * scale)   # [batch, seq, ffn], per layer

`Edit.identity(config)` changes nothing (scale 1, nothing set; the same activations bit for bit);
`.zero(neurons)` ablates (sets 0), `.set(neurons, v)` sets a value, `.scale(neurons, s)` multiplies the
ReLU output. `neurons` is a bool [layers, ffn] mask or an iterable of (layer, neuron) pairs. A neuron's
later operation overrides an earlier one on it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from opt_jax.config import OPTConfig
from opt_jax.errors import InputError

EditFn = Callable[[jax.Array, jax.Array], jax.Array]  # (fc1 [b, s, f], layer int32 []) -> activations [b, s, f]


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Edit:
    """Per-layer dense edit of the ReLU outputs: `where(is_set, value, relu(fc1) * scale)`.

    Fields (all [layers, ffn], over every layer of the model):
      scale   float32, the factor on relu(fc1) (1: unchanged; 0: zero-ablated)
      value   float32, the value a set neuron takes (used where is_set)
      is_set  bool, whether the neuron is set to `value` instead of scaled
    """

    scale: np.ndarray | jax.Array
    value: np.ndarray | jax.Array
    is_set: np.ndarray | jax.Array

    @classmethod
    def identity(cls, config: OPTConfig | tuple[int, int]) -> "Edit":
        """An edit that changes nothing, for a config or a (layers, ffn) shape."""
        shape = (config.num_hidden_layers, config.ffn_dim) if isinstance(config, OPTConfig) else tuple(config)
        return cls(np.ones(shape, np.float32), np.zeros(shape, np.float32), np.zeros(shape, bool))

    @property
    def shape(self) -> tuple[int, int]:
        """(layers, ffn)."""
        return tuple(self.scale.shape)

    def zero(self, neurons) -> "Edit":
        """These neurons ablated: fc2 reads 0 from them."""
        return self.set(neurons, 0.0)

    def set(self, neurons, value) -> "Edit":
        """These neurons set to `value` (a number, or one per neuron: [layers, ffn] or as many as the pairs)."""
        chosen = self.mask_of(neurons)  # [l, f]
        values = np.array(self.value, np.float32, copy=True)  # [l, f]
        values[chosen] = _per_neuron(value, chosen, neurons)
        return Edit(np.where(chosen, 1.0, np.asarray(self.scale)).astype(np.float32), values,
                    np.asarray(self.is_set) | chosen)

    def scale_by(self, neurons, factor) -> "Edit":
        """These neurons' ReLU outputs multiplied by `factor` (a number, or one per neuron)."""
        chosen = self.mask_of(neurons)  # [l, f]
        scale = np.array(self.scale, np.float32, copy=True)  # [l, f]
        scale[chosen] = _per_neuron(factor, chosen, neurons)
        return Edit(scale, np.asarray(self.value, np.float32), np.asarray(self.is_set) & ~chosen)

    def edited(self) -> np.ndarray:
        """bool [layers, ffn]: the neurons this edit changes (set, or scaled by a factor other than 1)."""
        return np.asarray(self.is_set) | (np.asarray(self.scale) != 1.0)

    def mask_of(self, neurons) -> np.ndarray:
        """bool [layers, ffn] of a mask or (layer, neuron) pairs, checked against this edit's shape."""
        return neuron_mask(neurons, self.shape)

    def __call__(self, fc1, layer):  # [b, s, f], int32 []
        hidden = jnp.maximum(fc1, 0)  # [b, s, f]
        scale = jnp.asarray(self.scale)[layer].astype(fc1.dtype)  # [f]
        value = jnp.asarray(self.value)[layer].astype(fc1.dtype)  # [f]
        return jnp.where(jnp.asarray(self.is_set)[layer], value, hidden * scale)  # [b, s, f]


def neuron_mask(neurons, shape: tuple[int, int]) -> np.ndarray:
    """bool [layers, ffn] from a bool mask of that shape or an iterable of (layer, neuron) pairs; a clear error
    for a pair out of range or a mask of another shape."""
    if isinstance(neurons, (np.ndarray, jax.Array)) and np.asarray(neurons).dtype == bool:
        mask = np.asarray(neurons)
        if mask.shape != tuple(shape):
            raise InputError(f"a neuron mask of shape {mask.shape}; the model's is {tuple(shape)} (layers, ffn)")
        return mask
    pairs = np.asarray(list(neurons) if isinstance(neurons, Iterable) else neurons, np.int64).reshape(-1, 2)
    layers, ffn = shape
    bad = pairs[(pairs[:, 0] < 0) | (pairs[:, 0] >= layers) | (pairs[:, 1] < 0) | (pairs[:, 1] >= ffn)]
    if len(bad):
        raise InputError(f"neuron {int(bad[0, 0])}:{int(bad[0, 1])} is outside the model's {layers} layers x "
                         f"{ffn} neurons (layer:neuron, both from 0)")
    mask = np.zeros(shape, bool)
    mask[pairs[:, 0], pairs[:, 1]] = True
    return mask


def _per_neuron(value, chosen: np.ndarray, neurons) -> np.ndarray:
    """`value` for the chosen neurons in mask order: a number, a [layers, ffn] array, or one per given pair."""
    value = np.asarray(value, np.float32)
    if value.ndim == 0:
        return np.full(int(chosen.sum()), value, np.float32)
    if value.shape == chosen.shape:
        return value[chosen]
    pairs = np.asarray(list(neurons), np.int64).reshape(-1, 2)
    if value.shape != (len(pairs),):
        raise InputError(f"{value.size} values for {len(pairs)} neurons: give one number, one per neuron, or a "
                         f"[layers, ffn] array")
    out = np.zeros(chosen.shape, np.float32)
    out[pairs[:, 0], pairs[:, 1]] = value
    return out[chosen]


def apply(edit: EditFn | None, fc1, layer):  # [b, s, f], int32 []
    """The activations fc2 reads: relu(fc1), or the edit's."""
    return jnp.maximum(fc1, 0) if edit is None else edit(fc1, layer)  # [b, s, f]
