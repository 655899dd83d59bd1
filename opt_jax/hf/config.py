"""Hugging Face `config.json` <-> OPTConfig: read (refusing anything that is not a supported OPT) and write."""

from __future__ import annotations

import json
import os

from opt_jax.config import OPTConfig
from opt_jax.errors import ConfigError

# HF fields we accept only at these values: opt_jax implements exactly this behaviour.
_REQUIRED_VALUES = {"activation_function": "relu", "tie_word_embeddings": True}


def from_hf_dict(hf: dict, source: str = "config") -> OPTConfig:
    """An OPTConfig from a parsed HF `config.json`; refuses anything that is not a supported OPT."""
    model_type = hf.get("model_type")
    if model_type != "opt":
        raise ConfigError(f"{source}: model_type is {model_type!r}, expected 'opt'")
    for name, expected in _REQUIRED_VALUES.items():
        if hf.get(name, expected) != expected:
            raise ConfigError(f"{source}: {name}={hf[name]!r} is not supported (opt_jax needs {expected!r})")
    missing = [k for k in ("num_hidden_layers", "hidden_size", "num_attention_heads", "ffn_dim")
               if k not in hf]
    if missing:
        raise ConfigError(f"{source}: missing required fields {missing}")
    eos = hf.get("eos_token_id", 2)
    if isinstance(eos, list):
        eos = eos[0]
    try:
        return OPTConfig(
            num_hidden_layers=hf["num_hidden_layers"],
            hidden_size=hf["hidden_size"],
            num_attention_heads=hf["num_attention_heads"],
            ffn_dim=hf["ffn_dim"],
            word_embed_proj_dim=hf.get("word_embed_proj_dim") or hf["hidden_size"],
            vocab_size=hf.get("vocab_size", 50272),
            max_position_embeddings=hf.get("max_position_embeddings", 2048),
            do_layer_norm_before=bool(hf.get("do_layer_norm_before", True)),
            remove_final_layer_norm=bool(hf.get("_remove_final_layer_norm", False)),
            enable_bias=bool(hf.get("enable_bias", True)),
            layer_norm_elementwise_affine=bool(hf.get("layer_norm_elementwise_affine", True)),
            pad_token_id=hf.get("pad_token_id", 1) if hf.get("pad_token_id") is not None else 1,
            bos_token_id=hf.get("bos_token_id", 2) if hf.get("bos_token_id") is not None else 2,
            eos_token_id=eos if eos is not None else 2,
        )
    except ConfigError as e:
        raise ConfigError(f"{source}: {e}") from None


def read_hf_config(path: str) -> OPTConfig:
    """Read and validate an HF `config.json` (path to the file or to its directory)."""
    if os.path.isdir(path):
        path = os.path.join(path, "config.json")
    if not os.path.isfile(path):
        raise ConfigError(f"{path}: no config.json found")
    try:
        with open(path) as f:
            hf = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(hf, dict):
        raise ConfigError(f"{path}: expected a JSON object")
    return from_hf_dict(hf, source=path)


def to_hf_dict(config: OPTConfig) -> dict:
    """The HF `config.json` fields that describe this config (for exporting to transformers)."""
    if not config.positional_embeddings:
        raise ConfigError("a model without positional embeddings has no Hugging Face OPT equivalent "
                          "(OPTForCausalLM always adds learned positions); it cannot be exported")
    return dict(
        model_type="opt", architectures=["OPTForCausalLM"], activation_function="relu",
        num_hidden_layers=config.num_hidden_layers, hidden_size=config.hidden_size,
        num_attention_heads=config.num_attention_heads, ffn_dim=config.ffn_dim,
        word_embed_proj_dim=config.word_embed_proj_dim, vocab_size=config.vocab_size,
        max_position_embeddings=config.max_position_embeddings,
        do_layer_norm_before=config.do_layer_norm_before,
        _remove_final_layer_norm=config.remove_final_layer_norm,
        enable_bias=config.enable_bias,
        layer_norm_elementwise_affine=config.layer_norm_elementwise_affine,
        pad_token_id=config.pad_token_id, bos_token_id=config.bos_token_id,
        eos_token_id=config.eos_token_id, tie_word_embeddings=True,
        dropout=0.0, attention_dropout=0.0, layerdrop=0.0,
    )
