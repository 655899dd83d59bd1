"""One training step on the devices: next-token loss in float32, AdamW with warmup and cosine decay and
global-norm clipping (optax), jitted over a mesh of all local devices (parameters replicated, batches split)."""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from opt_jax.config import OPTConfig
from opt_jax.loss import mean_next_token_nll
from opt_jax.model import Params, decoder_layers, embed, head, init_params
from opt_jax.train.options import IDENTITY, TrainOptions


def loss_fn(config: OPTConfig, compute_dtype, params: Params, ids, mask):
    """Mean next-token cross entropy (float32) over real targets, and their count."""
    params = jax.tree.map(lambda p: p.astype(compute_dtype), params)
    x = embed(config, params, ids, mask)  # [b, s, d]
    x, _ = decoder_layers(config, params["layers"], x, mask, lambda active, index, state: state, ())  # [b, s, d]
    return mean_next_token_nll(head(config, params, x), ids, mask)  # logits [b, s, v] float32


def decay_mask(params: Params) -> Params:
    """True for the parameters weight decay applies to: weight matrices and embeddings."""
    def decays(path, _):
        name = "/".join(k.key for k in path)
        return name.startswith("embed/") or (name.endswith("/weight") and "norm" not in name)

    return jax.tree.map_with_path(decays, params)


def make_optimizer(options: TrainOptions) -> optax.GradientTransformation:
    """Global-norm clipping, then AdamW with linear warmup and cosine decay."""
    schedule = learning_rate(options)
    return optax.chain(optax.clip_by_global_norm(options.clip_norm),
                       optax.adamw(schedule, b1=options.b1, b2=options.b2, weight_decay=options.weight_decay,
                                   mask=decay_mask))


def learning_rate(options: TrainOptions) -> optax.Schedule:
    """The learning rate at each step (counted from 0)."""
    return optax.warmup_cosine_decay_schedule(0.0, options.lr, options.warmup_steps, options.steps,
                                              options.lr * options.end_lr_fraction)


@dataclasses.dataclass
class State:
    """Device parameters and optimizer state after `step` steps, and where the data stream is."""

    params: Params
    opt_state: Any
    step: int
    cursor: dict
    tokens: int


# HF's initialisation, jitted: one compilation per (config, seed) rather than one per operation.
initial_params = jax.jit(init_params, static_argnums=(0, 1))


def train_step(config: OPTConfig, options: TrainOptions, params: Params, opt_state, ids, mask):
    """One update on a batch: (params, opt_state, metrics {loss, grad_norm, tokens})."""
    grad_fn = jax.value_and_grad(functools.partial(loss_fn, config, jnp.dtype(options.compute_dtype)), has_aux=True)
    (loss, count), grads = grad_fn(params, ids, mask)
    updates, opt_state = make_optimizer(options).update(grads, opt_state, params)
    metrics = {"loss": loss, "grad_norm": optax.tree.norm(grads), "tokens": count}
    return optax.apply_updates(params, updates), opt_state, metrics


@functools.lru_cache(maxsize=8)
def _jitted_step(config: OPTConfig, options: TrainOptions, devices: tuple):
    """train_step jitted over a mesh of devices (cached: a resumed run in the same process compiles nothing)."""
    mesh = Mesh(np.array(devices), ("data",))
    replicated, data = NamedSharding(mesh, PartitionSpec()), NamedSharding(mesh, PartitionSpec("data"))
    return jax.jit(functools.partial(train_step, config, options), in_shardings=(replicated, replicated, data, data),
                   out_shardings=(replicated, replicated, replicated), donate_argnums=(0, 1))


class Trainer:
    """The jitted train step over a mesh of all local devices: parameters replicated, batches split."""

    def __init__(self, config: OPTConfig, options: TrainOptions):
        self.config, self.options = config, options
        devices = tuple(jax.local_devices())
        self.replicated = NamedSharding(Mesh(np.array(devices), ("data",)), PartitionSpec())
        self.optimizer = make_optimizer(options)
        step_options = TrainOptions(**{name: getattr(options, name) for name in IDENTITY})  # what the step uses
        self.step = _jitted_step(config, step_options, devices)

    def init(self) -> State:
        """Fresh parameters (HF's initialisation, seeded) and optimizer state."""
        params = jax.device_put(initial_params(self.config, self.options.seed), self.replicated)
        opt_state = jax.jit(self.optimizer.init, out_shardings=self.replicated)(params)
        return State(params, opt_state, 0, {"epoch": 0, "window": 0}, 0)

    def template(self) -> dict:
        """{"params", "opt_state"} as abstract arrays, shaped, typed and placed on the devices as the step wants
        them: what a resume state is restored into (`ResumeStates.restore`)."""
        params = jax.eval_shape(functools.partial(init_params, self.config, self.options.seed))
        template = {"params": params, "opt_state": jax.eval_shape(self.optimizer.init, params)}
        return jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=self.replicated), template)

    def resume(self, restored: dict, record: dict) -> State:
        """The state of a run record's committed step: `restored`, its resume state read into `template()`."""
        return State(restored["params"], restored["opt_state"], record["step"], dict(record["cursor"]),
                     record["tokens"])

    def run(self, state: State, ids: np.ndarray, mask: np.ndarray, cursor: dict) -> dict:
        """Advance state by one step on this batch (in place); the step's metrics, still on the device."""
        state.params, state.opt_state, metrics = self.step(state.params, state.opt_state, ids, mask)
        state.step, state.cursor, state.tokens = state.step + 1, cursor, state.tokens + int(mask.sum())
        return metrics
