"""OPT model configuration: the fields of one model, and every published size as data.

Reading and writing Hugging Face `config.json` lives in `opt_jax.hf.config`.
"""

from __future__ import annotations

import dataclasses

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
    query_block: int = 256  # query positions per block of the blocked attention

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


def __getattr__(name: str):
    """The Hugging Face readers and writers under their old names (`opt_jax.config.to_hf_dict`, ...), for one
    release; they live in `opt_jax.hf.config`."""
    if name in ("from_hf_dict", "read_hf_config", "to_hf_dict"):
        from opt_jax.hf import config as hf_config

        return getattr(hf_config, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
