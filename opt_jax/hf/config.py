"""Hugging Face `config.json` <-> OPTConfig, where the Hugging Face interop (`opt_jax.hf`) offers it: read
(refusing anything that is not a supported OPT) and write. The functions live in `opt_jax.config`, beside
OPTConfig, so that `opt_jax.config` imports nothing of `opt_jax.hf`."""

from __future__ import annotations

from opt_jax.config import from_hf_dict, read_hf_config, to_hf_dict

__all__ = ["from_hf_dict", "read_hf_config", "to_hf_dict"]
