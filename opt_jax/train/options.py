"""Training flags (`TrainOptions`; those in IDENTITY must match to resume a run) and the model shape a run
trains (`model_config`)."""

from __future__ import annotations

import dataclasses

import jax

from opt_jax import checkpoint as ckpt
from opt_jax.config import OPTConfig, for_size
from opt_jax.errors import TrainError


@dataclasses.dataclass(frozen=True)
class TrainOptions:
    """Training flags; those in IDENTITY must match to resume a run."""

    seq_len: int = 128
    batch_size: int = 32
    steps: int = 1000
    lr: float = 1e-3
    warmup_steps: int = 100
    end_lr_fraction: float = 0.1  # the cosine decays to lr * end_lr_fraction at the last step
    weight_decay: float = 0.1  # on weight matrices and embeddings, not on biases or norms
    clip_norm: float = 1.0
    b1: float = 0.9
    b2: float = 0.95
    seed: int = 0  # initialisation and data order
    shuffle_windows: int = 1024  # windows permuted together (1: corpus order)
    compute_dtype: str = "float32"  # parameters stay float32; the forward runs in this dtype
    text_key: str = "text"
    save_steps: tuple[int, ...] = ()  # snapshots (step-N); the last step always gets one
    save_dtype: str = "float32"
    export_hf: bool = True  # an hf/ export in each snapshot, for models with positional embeddings
    save_every_s: float = 600.0  # commit a resume state at least this often
    log_every: int = 10
    overwrite: bool = False
    verbose: bool = True


IDENTITY = ("seq_len", "batch_size", "steps", "lr", "warmup_steps", "end_lr_fraction", "weight_decay",
            "clip_norm", "b1", "b2", "seed", "shuffle_windows", "compute_dtype", "text_key")


def model_config(size: str | None = None, *, layers: int | None = None, hidden: int | None = None,
                 heads: int | None = None, ffn: int | None = None, vocab_size: int = 4096,
                 max_positions: int = 2048, positional: bool = True) -> OPTConfig:
    """A published size's config (default 125m's shape) with any dimension, the vocabulary and positions set."""
    base = for_size(size or "125m")
    fields = dict(vocab_size=vocab_size, max_position_embeddings=max_positions, positional_embeddings=positional)
    if hidden and hidden != base.hidden_size:
        fields |= dict(hidden_size=hidden, word_embed_proj_dim=hidden)
    for name, value in (("num_hidden_layers", layers), ("num_attention_heads", heads), ("ffn_dim", ffn)):
        if value:
            fields[name] = value
    return base.replace(**fields)


def _check_options(config: OPTConfig, options: TrainOptions) -> None:
    """Refuse flags that cannot make a run."""
    if options.seq_len < 2 or options.seq_len > config.max_position_embeddings:
        raise TrainError(f"seq_len {options.seq_len} must be in [2, max positions {config.max_position_embeddings}]")
    if not 0 <= options.warmup_steps < options.steps:
        raise TrainError(f"warmup_steps {options.warmup_steps} must be below steps {options.steps}")
    beyond = [s for s in options.save_steps if not 0 < s <= options.steps]
    if beyond:
        raise TrainError(f"save_steps {beyond} are outside steps 1..{options.steps}")
    devices = jax.local_device_count()
    if options.batch_size < 1 or options.batch_size % devices:
        raise TrainError(f"batch_size {options.batch_size} is not a positive multiple of the {devices} local devices")
    ckpt.dtype_name(options.save_dtype)
    ckpt.dtype_name(options.compute_dtype)
