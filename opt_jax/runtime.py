"""`opt_jax.load` and `Model`: host-resident parameters, a jitted forward returning logits and masks."""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

from opt_jax import checkpoint as ckpt
from opt_jax.config import OPTConfig
from opt_jax.edit import Edit
from opt_jax.model import Params, forward, unflatten
from opt_jax.errors import InputError


@dataclasses.dataclass
class Output:
    """`logits` float32 [batch, seq, vocab]; `masks` uint8 [layers, batch, seq, ceil(ffn / 8)]."""

    logits: jax.Array
    masks: jax.Array


@functools.partial(jax.jit, static_argnums=0)
def _forward(config: OPTConfig, params: Params, input_ids, token_mask, edit: Edit | None = None):
    return forward(config, params, input_ids, token_mask, edit)


@functools.partial(jax.jit, static_argnums=(0, 4))
def _forward_with(config: OPTConfig, params: Params, input_ids, token_mask, edit):
    """`_forward` with a user's edit function, static (one trace per function object)."""
    return forward(config, params, input_ids, token_mask, edit)


class Model:
    """An OPT model with host-resident `params` (numpy, layers stacked); `forward` runs it on the device."""

    def __init__(self, config: OPTConfig, params: Params, path: str | None = None):
        self.config = config
        self.params = params
        self.path = path
        self._device_params = None

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(self.params["embed"]["tokens"].dtype)

    def device_params(self) -> Params:
        """The parameters on the default device (copied once, then kept)."""
        if self._device_params is None:
            self._device_params = jax.device_put(self.params)
        return self._device_params

    def forward(self, input_ids, attention_mask=None, edit=None) -> Output:
        """Logits and packed FFN masks for a batch; masks are zero at padded positions.

        `edit` changes what fc2 reads (`opt_jax.edit`): an `Edit` (dense per-layer arrays: one compilation
        for every set of neurons), or a function `(fc1 [batch, seq, ffn], layer) -> activations`. The masks
        stay those of fc1 > 0 in the edited run."""
        input_ids = jnp.asarray(input_ids, jnp.int32)  # [b, s]
        if input_ids.ndim != 2:
            raise InputError(f"input_ids must be [batch, seq], got shape {input_ids.shape}")
        if input_ids.shape[1] > self.config.max_position_embeddings:
            raise InputError(f"sequence of {input_ids.shape[1]} tokens exceeds the model's "
                             f"{self.config.max_position_embeddings} positions")
        if attention_mask is None:
            attention_mask = jnp.ones(input_ids.shape, bool)  # [b, s]
        attention_mask = jnp.asarray(attention_mask).astype(bool)  # [b, s]
        if attention_mask.shape != input_ids.shape:
            raise InputError(f"attention_mask shape {attention_mask.shape} != input_ids shape {input_ids.shape}")
        if edit is None or isinstance(edit, Edit):
            if edit is not None and edit.shape != (self.config.num_hidden_layers, self.config.ffn_dim):
                raise InputError(f"an edit of shape {edit.shape}; this model's is "
                                 f"({self.config.num_hidden_layers}, {self.config.ffn_dim}) (layers, ffn)")
            logits, masks = _forward(self.config, self.device_params(), input_ids, attention_mask, edit)
        else:
            logits, masks = _forward_with(self.config, self.device_params(), input_ids, attention_mask, edit)
        return Output(logits=logits, masks=masks)


def load(path: str, dtype=None) -> Model:
    """Load a converted checkpoint into host memory, optionally cast to `dtype`."""
    config = ckpt.read_config(path)
    params = unflatten(ckpt.read_params(path, dtype))
    return Model(config, params, path)
