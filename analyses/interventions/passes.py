"""One pass over a corpus computing the model's next-token predictions with and without edits, batch by batch.

Each batch is read, moved and embedded once; its hidden states then go through the layers once unedited
(the base) and once per edit (`opt_jax.edit.Edit`, stacked on a leading axis: one compilation for every
set). Resident: every layer on the device, the whole batch in one jitted step. Streamed (`offload`): layer
groups read from the converted checkpoint two groups ahead and moved to the device one group ahead, each
group running every batch of a chunk, base and edits, before the next group comes (layer-major, as
collection streams). Then the head, a block of positions at a time so that no [batch, seq, vocab] array is
ever whole (vocab 50272 at seq 2048 is 3.3 GB per batch of 8): per prediction, the base and edited losses,
KL(base || edited), and the log-probabilities of a few chosen tokens (`gather`, for trigger repetition).

Position t predicts the token at t + 1; a prediction counts when both are real tokens (`opt_jax.loss`).
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from opt_jax import checkpoint as ckpt
from opt_jax.config import OPTConfig
from opt_jax.edit import Edit
from opt_jax.model import decoder_layers, embed, head, unflatten
from opt_jax.sharding import run_mesh, within
from opt_jax.streaming import (CheckpointLayers, GroupStream, group_size_for, layer_shardings_for, put_now,
                               split_layers)

POSITION_BLOCK = 256  # positions whose logits exist at once in the head


def _unchanged(active, index, state):
    return state


def _layers(config: OPTConfig, layers, x, mask, edit, first_layer):
    return decoder_layers(config, layers, x, mask, _unchanged, (), edit=edit, first_layer=first_layer)[0]


@functools.partial(jax.jit, static_argnums=0)
def resident_hidden(config: OPTConfig, params, ids, mask, edits: Edit):
    """(base hidden [b, s, d], edited hidden [edits, b, s, d]) after the last layer, the batch embedded once."""
    x = embed(config, params, ids, mask)  # [b, s, d]
    base = _layers(config, params["layers"], x, mask, None, 0)  # [b, s, d]
    edited = jax.lax.map(lambda e: _layers(config, params["layers"], x, mask, e, 0), edits)  # [e, b, s, d]
    return base, edited


embed_step = jax.jit(embed, static_argnums=0)


@functools.partial(jax.jit, static_argnums=0)
def group_step(config: OPTConfig, layers, base, edited, mask, edits: Edit, first_layer):
    """One streamed group over the base hidden states [b, s, d] and each edit's [edits, b, s, d]."""
    base = _layers(config, layers, base, mask, None, first_layer)  # [b, s, d]
    edited = jax.lax.map(lambda pair: _layers(config, layers, pair[0], mask, pair[1], first_layer),
                         (edited, edits))  # [e, b, s, d]
    return base, edited


@functools.partial(jax.jit, static_argnums=0)
def predictions(config: OPTConfig, params, base, edited, ids, mask, gather):
    """Per prediction (position t predicting t + 1; the last position predicts nothing, counted False):

    counted bool [b, s]; base_nll float32 [b, s]; nll, kl float32 [edits, b, s]; base_gathered float32
    [b, s, g] and gathered [edits, b, s, g]: log p of the `gather` token ids [g] as the next token."""
    b, s, d = base.shape
    targets = jnp.pad(ids[:, 1:], ((0, 0), (0, 1)))  # [b, s]
    counted = jnp.pad(mask[:, 1:] & mask[:, :-1], ((0, 0), (0, 1)))  # [b, s]
    block = min(POSITION_BLOCK, s)
    blocks = -(-s // block)
    pad = blocks * block - s

    def split(a, axis):  # [..., s, ...] -> [blocks, ..., block, ...]
        a = jnp.pad(a, [(0, pad if i == axis else 0) for i in range(a.ndim)])
        a = a.reshape(*a.shape[:axis], blocks, block, *a.shape[axis + 1:])
        return jnp.moveaxis(a, axis, 0)

    def one_block(inputs):
        base_x, edited_x, target = inputs  # [b, k, d], [e, b, k, d], [b, k]
        base_logp = jax.nn.log_softmax(head(config, params, base_x), axis=-1)  # [b, k, v]
        base_nll = -jnp.take_along_axis(base_logp, target[..., None], axis=-1)[..., 0]  # [b, k]
        base_p = jnp.exp(base_logp)  # [b, k, v]

        def one_edit(x):  # [b, k, d]
            logp = jax.nn.log_softmax(head(config, params, x), axis=-1)  # [b, k, v]
            nll = -jnp.take_along_axis(logp, target[..., None], axis=-1)[..., 0]  # [b, k]
            kl = jnp.sum(base_p * (base_logp - logp), axis=-1)  # [b, k]
            return nll, kl, logp[..., gather]  # [b, k], [b, k], [b, k, g]

        nll, kl, gathered = jax.lax.map(one_edit, edited_x)  # [e, b, k], [e, b, k], [e, b, k, g]
        return base_nll, base_logp[..., gather], nll, kl, gathered

    outs = jax.lax.map(one_block, (split(base, 1), split(edited, 2), split(targets, 1)))

    def join(a, axis):  # [blocks, ..., block, ...] -> [..., s, ...]
        a = jnp.moveaxis(a, 0, axis)
        return a.reshape(*a.shape[:axis], blocks * block, *a.shape[axis + 2:])[
            tuple(slice(None) if i != axis else slice(0, s) for i in range(a.ndim - 1))]

    base_nll, base_gathered, nll, kl, gathered = outs
    return {"counted": counted, "base_nll": join(base_nll, 1), "base_gathered": join(base_gathered, 1),
            "nll": join(nll, 2), "kl": join(kl, 2), "gathered": join(gathered, 2)}


def stack(edits: list[Edit]) -> Edit:
    """Edits stacked on a leading axis (the form every step takes)."""
    return jax.tree.map(lambda *a: np.stack(a), *edits)


@dataclasses.dataclass
class Model:
    """What a pass computes with: the config, the embedding and head parameters on the device, and the layers
    (all on the device when resident; a lazy checkpoint source when streamed)."""

    config: OPTConfig
    outer: dict  # {"embed", "head"} on the device
    layers: object  # resident: the stacked layers on the device; streamed: a `CheckpointLayers`
    streamed: bool
    group_size: int | None = None

    @classmethod
    def load(cls, path: str, dtype: str | None = None, offload: bool = False, group_size: int | None = None,
             sharding=None, mesh: Mesh | None = None) -> "Model":
        """With a ("data", "neurons") `mesh` (`opt_jax.sharding.run_mesh`), resident layers are stored split
        over it."""
        config = ckpt.read_config(path)
        if not offload:
            params = unflatten(ckpt.read_params(path, dtype))
            layers = sharding if mesh is None else layer_shardings_for(config, mesh)
            return cls(config, put_now({"embed": params["embed"], "head": params["head"]}, sharding),
                       put_now(params["layers"], layers), False)
        outer = unflatten(ckpt.read_params(path, dtype, layers=slice(0, 0)))
        return cls(config, put_now({"embed": outer["embed"], "head": outer["head"]}, sharding),
                   CheckpointLayers(path, dtype), True, group_size)


class Pass:
    """Runs batches of (ids, mask) through a `Model`, base and each edit, and returns per-prediction arrays."""

    def __init__(self, model: Model, edits: list[Edit], gather: np.ndarray, batch_size: int,
                 chunk_batches: int = 4, mesh: Mesh | None = None):
        """`mesh`: a ("data", "neurons") mesh (`opt_jax.sharding.run_mesh`; the model loaded with it); None:
        every local device on data."""
        self.mesh = mesh
        mesh = mesh or run_mesh(model.config, batch_size)
        self.replicated = NamedSharding(mesh, PartitionSpec())
        self.data = NamedSharding(mesh, PartitionSpec("data"))
        self.model = model
        self.edits = jax.device_put(stack(edits), self.replicated)
        self.gather = jax.device_put(np.asarray(gather, np.int32), self.replicated)
        self.chunk_batches = chunk_batches if model.streamed else 1
        self.stream = None
        if model.streamed:
            size = model.group_size or group_size_for(model.layers)
            self.groups = split_layers(range(model.config.num_hidden_layers), size)
            where = self.replicated if self.mesh is None else layer_shardings_for(model.config, mesh)
            self.stream = GroupStream(model.layers, self.groups, where)

    def run(self, chunk: list[tuple[np.ndarray, np.ndarray]]) -> list[dict]:
        """Per batch of the chunk, the host arrays of `predictions`."""
        m, c = self.model, self.model.config
        on_device = [(jax.device_put(ids, self.data), jax.device_put(mask, self.data)) for ids, mask in chunk]
        with within(self.mesh):  # `opt_jax.sharding`
            if not m.streamed:
                hidden = [resident_hidden(c, {"embed": m.outer["embed"], "layers": m.layers}, ids, mask,
                                          self.edits) for ids, mask in on_device]
            else:
                hidden = self._streamed(on_device)
            outs = [predictions(c, m.outer, base, edited, ids, mask, self.gather)
                    for (base, edited), (ids, mask) in zip(hidden, on_device)]
        return [jax.device_get(o) for o in outs]

    def _streamed(self, on_device: list) -> list:
        c, n = self.model.config, self.edits.scale.shape[0]
        hidden = []
        for ids, mask in on_device:
            x = embed_step(c, self.model.outer, ids, mask)  # [b, s, d]
            hidden.append((x, jnp.broadcast_to(x, (n, *x.shape))))  # [b, s, d], [e, b, s, d]
        for _ in self.groups:
            before = tuple(hidden)
            group, layers = self.stream.next()
            hidden = [group_step(c, layers, base, edited, mask, self.edits, np.int32(group.start))
                      for (base, edited), (_, mask) in zip(hidden, on_device)]
            self.stream.advance(after=before)  # group i+1 crosses while group i computes
        return hidden

    def close(self) -> None:
        if self.stream is not None:
            self.stream.close()
