"""opt_jax: OPT in JAX/Flax, with the FFN activation bitmasks of every layer."""

from opt_jax.bits import pack_masks, unpack_masks
from opt_jax.config import SIZES, OPTConfig, for_size, read_hf_config
from opt_jax.conversion import convert
from opt_jax.errors import CheckpointError, ConfigError, OptJaxError
from opt_jax.model import decoder_layer, decoder_layers, embed, forward, head, init_params
from opt_jax.runtime import Model, Output, load

__all__ = [
    "SIZES", "CheckpointError", "ConfigError", "Model", "OPTConfig", "Output", "convert", "decoder_layer",
    "decoder_layers", "embed", "for_size", "forward", "head", "init_params", "load", "OptJaxError", "pack_masks",
    "read_hf_config", "unpack_masks",
]
