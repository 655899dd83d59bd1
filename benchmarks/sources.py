"""Random layer sources for the benchmarks: OPT-shaped weights made on the device a group at a time
(`RandomLayers`), one stored group answering every read (`RepeatedGroup`: streaming's transfers without a
host copy of the model, or no transfers at all), and `shrink_config` for CPU-sized runs of big shapes."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from opt_jax.checkpoint import DTYPES
from opt_jax.config import OPTConfig
from opt_jax.errors import InputError
from opt_jax.model import param_shapes, unflatten
from opt_jax.streaming import layer_bytes, slice_layers

def shrink_config(config: OPTConfig, factor: int) -> OPTConfig:
    """Heads, widths and vocabulary divided by `factor` (head size kept), layers too (at least 4); 1: unchanged."""
    if factor < 1:
        raise InputError(f"shrink must be >= 1, got {factor}")
    if factor == 1:
        return config
    heads = max(1, config.num_attention_heads // factor)
    hidden = heads * config.head_dim
    return config.replace(num_hidden_layers=max(4, config.num_hidden_layers // factor), num_attention_heads=heads,
                          hidden_size=hidden, ffn_dim=config.ffn_dim * hidden // config.hidden_size,
                          word_embed_proj_dim=config.word_embed_proj_dim * hidden // config.hidden_size,
                          vocab_size=max(64, config.vocab_size // factor))


def _random_leaf(key, path: str, shape: tuple[int, ...], dtype: str):
    """HF's initialisation of one parameter: normal(0.02) weights, zero biases, unit LayerNorm scales."""
    if "norm/" in path and path.endswith("weight"):
        return jnp.ones(shape, dtype)
    if path.endswith("bias"):
        return jnp.zeros(shape, dtype)
    return 0.02 * jax.random.normal(key, shape, dtype)


@functools.partial(jax.jit, static_argnums=(0, 2, 3))
def random_layers(config: OPTConfig, first, count: int, dtype: str, seed):
    """Random layers first .. first+count-1 made on the device, stacked; a layer depends only on (seed, layer)."""

    shapes = {path: shape[1:] for path, shape in param_shapes(config).items() if path.startswith("layers/")}

    def one(layer):
        key = jax.random.fold_in(jax.random.PRNGKey(seed), layer)
        return {path: _random_leaf(jax.random.fold_in(key, i), path, shape, dtype)
                for i, (path, shape) in enumerate(shapes.items())}

    return unflatten(jax.lax.map(one, first + jnp.arange(count)))["layers"]  # leaves [count, ...]


@functools.partial(jax.jit, static_argnums=(0, 1))
def random_embed(config: OPTConfig, dtype: str, seed):
    """Random embedding parameters made on the device."""
    key = jax.random.fold_in(jax.random.PRNGKey(seed), 1 << 30)  # apart from every layer's key
    shapes = {path: shape for path, shape in param_shapes(config).items() if path.startswith("embed/")}
    flat = {path: _random_leaf(jax.random.fold_in(key, i), path, shape, dtype)
            for i, (path, shape) in enumerate(shapes.items())}
    return unflatten(flat)["embed"]


class RandomLayers:
    """A layer source making each group's random weights on the device when it is read (never a host copy)."""

    def __init__(self, config: OPTConfig, dtype: str = "bfloat16", seed: int = 0):
        self.config, self.dtype, self.seed = config, dtype, seed
        self.num_layers = config.num_hidden_layers
        self.layer_bytes = layer_bytes(config, DTYPES[dtype].itemsize)

    def read(self, group: range):
        """The group's layers on the device."""
        return random_layers(self.config, group.start, len(group), self.dtype, self.seed)


class RepeatedGroup:
    """A layer source answering every group with the first layers of one stored group.

    Host arrays: every read is still a transfer of a whole group (what streaming costs, without a host copy of
    the model). Device arrays: no transfer at all (what the compute alone costs).
    """

    def __init__(self, group_params, num_layers: int):
        self.params, self.num_layers = group_params, num_layers
        self.size = jax.tree.leaves(group_params)[0].shape[0]
        self.layer_bytes = layer_bytes(group_params)
        self._prefixes = {}  # length -> the first `length` layers (sliced once: device slices are copies)

    def read(self, group: range):
        """The first len(group) layers of the stored group."""
        if len(group) > self.size:
            raise InputError(f"a group of {len(group)} layers asked of a stored group of {self.size}")
        if len(group) not in self._prefixes:
            self._prefixes[len(group)] = slice_layers(self.params, range(len(group)))
        return self._prefixes[len(group)]
