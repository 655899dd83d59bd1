"""opt_jax: OPT in JAX/Flax, with the FFN activation bitmasks of every layer.

Stages, one module each: `hf` (the Hugging Face side: config, weights, hub, conversion, export) ->
`checkpoint` (the converted format) -> `model` (Flax OPT; `edit` ablates, sets or scales its FFN neurons)
-> `runtime` (`load`, `Model`) and `streaming` (layer groups to the device); `corpus` feeds them, `train`
trains from scratch. `errors` is the one error family, `atomic` the one commit protocol. Nothing here imports `analyses` or `benchmarks`.
"""

from opt_jax.bits import pack_masks, unpack_masks
from opt_jax.config import SIZES, OPTConfig, for_size
from opt_jax.edit import Edit
from opt_jax.errors import CheckpointError, ConfigError, OptJaxError
from opt_jax.hf.config import read_hf_config
from opt_jax.hf.conversion import convert
from opt_jax.model import decoder_layer, decoder_layers, embed, forward, head, init_params
from opt_jax.runtime import Model, Output, load

__all__ = [
    "SIZES", "CheckpointError", "ConfigError", "Edit", "Model", "OPTConfig", "OptJaxError", "Output", "convert",
    "decoder_layer", "decoder_layers", "embed", "for_size", "forward", "head", "init_params", "load", "pack_masks",
    "read_hf_config", "unpack_masks",
]
