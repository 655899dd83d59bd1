"""The Hugging Face side of opt_jax, kept in one place: reading and writing `config.json` (`config`), reading
weight shards (`weights`: safetensors and torch `.bin`), finding a checkpoint in the hub cache (`hub`),
converting it into the opt_jax format (`conversion`) and exporting back (`export`)."""

from opt_jax.hf.config import from_hf_dict, read_hf_config, to_hf_dict
from opt_jax.hf.conversion import convert
from opt_jax.hf.export import export_hf

__all__ = ["convert", "export_hf", "from_hf_dict", "read_hf_config", "to_hf_dict"]
