"""OPT model configuration: the fields of one model, every published size as data, and the model's Hugging Face
`config.json` fields (read, refusing anything that is not a supported OPT, and written).

`opt_jax.hf.config` (and `opt_jax.hf`) offer the Hugging Face readers and writers beside the rest of the
Hugging Face interop; they live here, beside the OPTConfig they read and write, so that this module, which
nearly every other one imports, imports nothing of `opt_jax.hf`.
"""

from __future__ import annotations

import dataclasses
import json
import os

from opt_jax.errors import ConfigError

# (layers, hidden, heads, ffn, word_embed_proj_dim) of the published checkpoints.
_SIZE_SHAPES = {
    "125m": (12, 768, 12, 3072, 768),
    "350m": (24, 1024, 16, 4096, 512),
    "1.3b": (24, 2048, 32, 8192, 2048),
    "2.7b": (32, 2560, 32, 10240, 2560),
    "6.7b": (32, 4096, 32, 16384, 4096),
    "13b": (40, 5120, 40, 20480, 5120),
    "30b": (48, 7168, 56, 28672, 7168),
    "66b": (64, 9216, 72, 36864, 9216),
}
SIZES = tuple(_SIZE_SHAPES)
ATTENTIONS = ("auto", "blocked", "fused")
RUNTIME_FIELDS = ("attention", "query_block")  # how a model runs: left out of to_dict


@dataclasses.dataclass(frozen=True)
class OPTConfig:
    """The shape and options of one OPT model (names as in HF `OPTConfig`)."""

    num_hidden_layers: int  # decoder layers
    hidden_size: int  # width of the residual stream (d)
    num_attention_heads: int  # attention heads; hidden_size / heads is the head width
    ffn_dim: int  # FFN neurons per layer (fc1 outputs, the neurons studied)
    word_embed_proj_dim: int  # width of the token embeddings; != hidden_size means project_in/out (350m)
    vocab_size: int = 50272  # rows of the token embedding (OPT pads its 50265 tokens to 50272)
    max_position_embeddings: int = 2048  # longest sequence the learned positions cover
    do_layer_norm_before: bool = True  # pre-LN (every size but 350m) or post-LN (350m)
    remove_final_layer_norm: bool = False  # HF's `_remove_final_layer_norm`: no LayerNorm before the head
    enable_bias: bool = True  # biases on every linear layer
    layer_norm_elementwise_affine: bool = True  # LayerNorms with a learned scale and shift
    layer_norm_eps: float = 1e-5  # LayerNorm epsilon
    pad_token_id: int = 1  # <pad>
    bos_token_id: int = 2  # </s>, which OPT puts at the start of every sequence
    eos_token_id: int = 2  # </s>
    positional_embeddings: bool = True  # False: no position embeddings at all (not an HF OPT; never exported)
    # How the model runs, not what it is (never stored, never compared; a static jit argument like the rest,
    # so a config with other values compiles its own trace):
    attention: str = "auto"  # "blocked" (query blocks, for the CPU), "fused" (jax.nn.dot_product_attention), or "auto"
    query_block: int = 128  # query positions per block of the blocked attention (BENCHMARKS.md)

    def __post_init__(self):
        for name in ("num_hidden_layers", "hidden_size", "num_attention_heads", "ffn_dim",
                     "word_embed_proj_dim", "vocab_size", "max_position_embeddings"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ConfigError(f"{name} must be a positive integer, got {value!r}")
        if self.attention not in ATTENTIONS:
            raise ConfigError(f"attention must be one of {', '.join(ATTENTIONS)}, got {self.attention!r}")
        if not isinstance(self.query_block, int) or self.query_block <= 0:
            raise ConfigError(f"query_block must be a positive integer, got {self.query_block!r}")
        if self.hidden_size % self.num_attention_heads:
            raise ConfigError(f"hidden_size {self.hidden_size} is not divisible by "
                              f"num_attention_heads {self.num_attention_heads}")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def has_projections(self) -> bool:
        """True when token embeddings are narrower than the residual (350m): project_in/out exist."""
        return self.word_embed_proj_dim != self.hidden_size

    @property
    def has_final_layer_norm(self) -> bool:
        return self.do_layer_norm_before and not self.remove_final_layer_norm

    @property
    def mask_bytes(self) -> int:
        """Bytes per token of one layer's packed activation bitmask."""
        return -(-self.ffn_dim // 8)

    def to_dict(self) -> dict:
        """The model's fields as a dict (not how it runs); positional_embeddings only when False, so older
        manifests compare equal."""
        data = dataclasses.asdict(self)
        for name in RUNTIME_FIELDS:
            del data[name]
        if data["positional_embeddings"]:
            del data["positional_embeddings"]
        return data

    @classmethod
    def from_dict(cls, data: dict) -> "OPTConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"unknown OPTConfig fields: {unknown}")
        return cls(**data)

    def replace(self, **changes) -> "OPTConfig":
        return dataclasses.replace(self, **changes)


def for_size(size: str, **overrides) -> OPTConfig:
    """The config of a published OPT size ('125m' ... '66b'), optionally with fields overridden."""
    key = size.lower().removeprefix("opt-").removeprefix("facebook/opt-")
    if key not in _SIZE_SHAPES:
        raise ConfigError(f"unknown OPT size {size!r}; known sizes: {', '.join(SIZES)}")
    layers, hidden, heads, ffn, embed = _SIZE_SHAPES[key]
    fields = dict(num_hidden_layers=layers, hidden_size=hidden, num_attention_heads=heads,
                  ffn_dim=ffn, word_embed_proj_dim=embed, do_layer_norm_before=key != "350m")
    fields.update(overrides)
    return OPTConfig(**fields)


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
