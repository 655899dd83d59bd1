"""Every neuron's effect at once: activation x gradient, summed over a corpus, as an estimate of zero-ablation.

The model runs with an edit that scales each neuron's ReLU output by `s` (`opt_jax.edit.Edit`, s = 1: today's
forward, bit for bit). The gradient of the summed next-token loss (`opt_jax.loss`) with respect to s at ones is,
per (layer, neuron), the sum over every counted prediction's tokens of a * g: the neuron's activation a (what
fc2 reads) times the loss's gradient there. Zero-ablating a neuron moves its s from 1 to 0, so the first-order
estimate of the change in the total loss is -(that sum); divided by the number of counted predictions it
estimates the change in the mean loss (nats per token) that zero-ablating that neuron alone would cause.
One forward and one backward per batch give it for every neuron of the model.

The windows are cut exactly as collection cuts them (`opt_jax.corpus.model_corpus` + `limited_batches`).
Two executors, the same sums:

  resident  every layer on the device, one jitted value_and_grad per batch, batches split over a ("data",)
            mesh of the local devices (as `analyses.collection.runner`);
  streamed  (`offload`) layer groups from the checkpoint (`opt_jax.streaming.GroupStream`), a chunk of batches
            at a time: forward group by group keeping each group's input hidden states on the device, then
            backward group by group in reverse with `jax.vjp`, recomputing the group's forward (so only one
            group's activations are ever held for a backward). The stream visits the groups 0 .. G-1, G-2 .. 0:
            the last group's forward, head and backward run in one step.

In a 16-bit `dtype` the products a * g are summed over a batch's tokens in that dtype (the gradient of the
edit's scale); the batches' sums are added in float32 on the device and the result is reported in float64.

`attribute(...)` writes the result into a directory (`effect`, a zarr3 float64 [layers, ffn] array, and
`attribution.json`), built beside it and renamed into place when complete (`opt_jax.atomic.replace_dir`);
`read_attribution(dir)` reads it back.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
from collections.abc import Iterable

import jax
import jax.numpy as jnp
import numpy as np
import tensorstore as ts
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from analyses.collection.plan import RUNTIME_BYTES
from opt_jax import atomic, heap
from opt_jax import lock
from opt_jax import checkpoint as ckpt
from opt_jax.config import OPTConfig
from opt_jax.corpus import limited_batches, model_corpus
from opt_jax.edit import Edit
from opt_jax.errors import InputError, MissingError
from opt_jax.loss import next_token_nll
from opt_jax.model import Params, decoder_layers, embed, forward, head, unflatten
from opt_jax.progress import Progress
from opt_jax.streaming import CheckpointLayers, GroupStream, StackedLayers, group_size_for, put_now, split_layers

FORMAT = "opt_jax.attribution"
VERSION = 1
MANIFEST = "attribution.json"
EFFECT = "effect"
READING = ("effect[layer, neuron]: the first-order (activation x gradient) estimate of the change in the mean "
           "next-token loss, in nats per counted prediction, that zero-ablating that neuron alone would cause "
           "over these windows: -sum over counted predictions of a * dL/da at the neuron's ReLU output, divided "
           "by `tokens` (the counted predictions). Positive: ablating it would raise the loss (the neuron helps).")


@dataclasses.dataclass
class Sums:
    """What a pass over the batches adds up: `grad` float64 [layers, ffn], the gradient of the summed loss with
    respect to each neuron's scale at ones (= sum of a * g); `loss` the summed loss; `count` the predictions."""

    grad: np.ndarray
    loss: float
    count: int

    @property
    def effect(self) -> np.ndarray:
        """float64 [layers, ffn]: the estimated change of the mean loss when zero-ablating each neuron alone."""
        return -self.grad / max(self.count, 1)

    @property
    def base_loss(self) -> float:
        """The mean next-token loss of the unedited model over the counted predictions (nats)."""
        return self.loss / max(self.count, 1)


# The loss and its gradients, pure functions of (params, batch, scale).

def _scaled(scale) -> Edit:
    """The edit that multiplies each neuron's ReLU output by `scale` [layers, ffn] (ones: no change)."""
    return Edit(scale, jnp.zeros_like(scale), jnp.zeros(scale.shape, bool))


def _summed_nll(logits, input_ids, token_mask):  # [b, s, v], [b, s], [b, s]
    """The next-token loss summed over the counted predictions (float32 [])."""
    nll, counted = next_token_nll(logits, input_ids, token_mask)  # [b, s - 1] x2
    return jnp.where(counted, nll, 0.0).sum()


def _model_loss(config: OPTConfig, params: Params, input_ids, token_mask, scale):
    logits, _ = forward(config, params, input_ids, token_mask, _scaled(scale))  # [b, s, v]
    return _summed_nll(logits, input_ids, token_mask)


@functools.partial(jax.jit, static_argnums=0, donate_argnums=(4,))
def resident_step(config: OPTConfig, params: Params, input_ids, token_mask, totals):
    """One batch through the whole model and back: totals {"grad" [layers, ffn], "loss" []} plus this batch's."""
    scale = jnp.ones(totals["grad"].shape, jnp.float32)  # [l, f]
    loss, grad = jax.value_and_grad(_model_loss, argnums=4)(config, params, input_ids, token_mask.astype(bool),
                                                            scale)  # [], [l, f]
    return {"grad": totals["grad"] + grad, "loss": totals["loss"] + loss}


def _keep(active, index, state):
    return state


def _group_forward(config: OPTConfig, group_params: Params, x, token_mask, scale):  # [b, s, d], [b, s], [g, f]
    """The hidden states after a stacked group of layers, each neuron's ReLU output scaled by `scale`."""
    x, _ = decoder_layers(config, group_params, x, token_mask, _keep, (), edit=_scaled(scale))  # [b, s, d]
    return x


def _group_ones(config: OPTConfig, group_params: Params):
    return jnp.ones((jax.tree.leaves(group_params)[0].shape[0], config.ffn_dim), jnp.float32)  # [g, f]


@functools.partial(jax.jit, static_argnums=0)
def embed_step(config: OPTConfig, outer: Params, input_ids, token_mask):
    """Hidden states entering layer 0 (streamed mode)."""
    return embed(config, outer, input_ids, token_mask.astype(bool))  # [b, s, d]


@functools.partial(jax.jit, static_argnums=0)
def forward_step(config: OPTConfig, group_params: Params, x, token_mask):
    """A group's forward, unedited (streamed mode): the hidden states after it."""
    return _group_forward(config, group_params, x, token_mask.astype(bool), _group_ones(config, group_params))


@functools.partial(jax.jit, static_argnums=0, donate_argnums=(6,))
def last_step(config: OPTConfig, group_params: Params, outer: Params, x, input_ids, token_mask, acc):
    """The last group, the head and the loss, and back through them (streamed mode): (the summed loss, its
    gradient at the group's input [b, s, d], acc [g, f] plus the gradient of the group's scale)."""
    token_mask = token_mask.astype(bool)

    def loss(x, scale):
        logits = head(config, outer, _group_forward(config, group_params, x, token_mask, scale))  # [b, s, v]
        return _summed_nll(logits, input_ids, token_mask)

    value, (dx, dscale) = jax.value_and_grad(loss, argnums=(0, 1))(x, _group_ones(config, group_params))
    return value, dx, acc + dscale


@functools.partial(jax.jit, static_argnums=0, donate_argnums=(5,))  # the cotangent stays: the stream waits on it
def backward_step(config: OPTConfig, group_params: Params, x, token_mask, cotangent, acc):
    """Back through one group, recomputing its forward from its input x (streamed mode): (the gradient at x,
    acc [g, f] plus the gradient of the group's scale), given the gradient at its output."""
    token_mask = token_mask.astype(bool)
    _, pullback = jax.vjp(lambda x, scale: _group_forward(config, group_params, x, token_mask, scale), x,
                          _group_ones(config, group_params))
    dx, dscale = pullback(cotangent)  # [b, s, d], [g, f]
    return dx, acc + dscale


# The executors.

class Attributor:
    """Runs batches forward and back on the device, adding up `Sums`; resident or streamed (`offload`).

    `outer`: {"embed", "head"} parameters; `layers`: a layer source (`opt_jax.streaming`: `StackedLayers` of
    parameters in memory, `CheckpointLayers` of a converted checkpoint). Use `Attributor.of_params(config,
    params)` or `Attributor.of_checkpoint(path)`, then `run(batches)`.
    """

    def __init__(self, config: OPTConfig, outer: Params, layers, batch_size: int, seq_len: int,
                 offload: bool = False, group_size: int | None = None, chunk_batches: int = 4):
        self.config, self.batch_size, self.seq_len = config, batch_size, seq_len
        if seq_len > config.max_position_embeddings:
            raise InputError(f"seq_len {seq_len} exceeds the model's {config.max_position_embeddings} positions")
        if seq_len < 2:
            raise InputError(f"seq_len must be at least 2 (BOS and one token), got {seq_len}")
        if chunk_batches < 1:
            raise InputError(f"chunk_batches must be at least 1, got {chunk_batches}")
        devices = jax.local_devices()
        if batch_size % len(devices):
            raise InputError(f"batch_size {batch_size} is not divisible by the {len(devices)} local devices")
        mesh = Mesh(np.array(devices), ("data",))
        self.replicated = NamedSharding(mesh, PartitionSpec())
        self.data = NamedSharding(mesh, PartitionSpec("data"))
        self.layers, self.offload, self.chunk_batches = layers, offload, chunk_batches if offload else 1
        num_layers = layers.num_layers
        self.groups = split_layers(range(num_layers), group_size or group_size_for(layers)) if offload \
            else [range(num_layers)]
        itemsize = np.dtype(jax.tree.leaves(outer)[0].dtype).itemsize
        check_memory(config, self.groups, layers.layer_bytes, batch_size, seq_len, itemsize, offload,
                     self.chunk_batches, devices[0])
        self.outer = put_now(outer, self.replicated)
        self.acc = [jax.device_put(jnp.zeros((len(g), config.ffn_dim), jnp.float32), self.replicated)
                    for g in self.groups]
        self.loss = jax.device_put(jnp.zeros((), jnp.float32), self.replicated)
        self.count = 0
        if offload:  # forward 0 .. G-1, then back G-2 .. 0 (the last group goes both ways in one step)
            self.stream = GroupStream(layers, self.groups + self.groups[-2::-1], self.replicated)
        else:
            self.stream = None
            self.params = put_now({**outer, "layers": layers.read(self.groups[0])}, self.replicated)

    @classmethod
    def of_params(cls, config: OPTConfig, params: Params, batch_size: int, seq_len: int, **options) -> "Attributor":
        """Over parameters in memory ({"embed", "layers" (stacked), "head"}, as `opt_jax.init_params`)."""
        return cls(config, {"embed": params["embed"], "head": params.get("head", {})},
                   StackedLayers(params["layers"]), batch_size, seq_len, **options)

    @classmethod
    def of_checkpoint(cls, path: str, batch_size: int, seq_len: int, dtype: str | None = None,
                      **options) -> "Attributor":
        """Over a converted checkpoint: the embedding and head read now, the layers when they are needed."""
        tree = unflatten(ckpt.read_params(path, dtype, layers=slice(0, 0)))
        return cls(ckpt.read_config(path), {"embed": tree["embed"], "head": tree["head"]},
                   CheckpointLayers(path, dtype), batch_size, seq_len, **options)

    def run(self, batches: Iterable[tuple[np.ndarray, np.ndarray]], progress: Progress | None = None) -> Sums:
        """Add every batch's gradients (ids int32 [batch, seq_len], mask bool [batch, seq_len]); the sums so far."""
        chunk = []
        for ids, mask in batches:
            if ids.shape != (self.batch_size, self.seq_len):
                raise InputError(f"a batch of shape {ids.shape}; this run takes ({self.batch_size}, {self.seq_len})")
            self.count += int((mask[:, 1:] & mask[:, :-1]).sum())
            chunk.append((jax.device_put(ids, self.data), jax.device_put(mask, self.data)))
            if len(chunk) == self.chunk_batches:
                self._run(chunk)
                chunk = []
            if progress is not None:
                progress.update(int(mask.sum()))
        if chunk:
            self._run(chunk)
        return self.sums()

    def sums(self) -> Sums:
        """The sums of the batches run so far, on the host."""
        grad = np.concatenate([np.asarray(a, np.float64) for a in self.acc])  # [l, f]
        return Sums(grad, float(self.loss), self.count)

    def close(self) -> None:
        """Stop reading layers ahead (streamed mode)."""
        if self.stream is not None:
            self.stream.close()

    def _run(self, chunk: list) -> None:
        if not self.offload:
            for ids, mask in chunk:
                totals = resident_step(self.config, self.params, ids, mask, {"grad": self.acc[0], "loss": self.loss})
                self.acc[0], self.loss = totals["grad"], totals["loss"]
            return
        c, last = self.config, len(self.groups) - 1
        hidden = [[embed_step(c, self.outer, ids, mask) for ids, mask in chunk]]  # per group: its inputs
        before = None
        for gi in range(last):
            params = self._next(gi)
            hidden.append([forward_step(c, params, x, mask) for x, (_, mask) in zip(hidden[gi], chunk)])
            self.stream.advance(after=before)
            before = hidden[-1]
        params = self._next(last)
        cotangents = []
        for x, (ids, mask) in zip(hidden[last], chunk):
            loss, dx, self.acc[last] = last_step(c, params, self.outer, x, ids, mask, self.acc[last])
            self.loss = self.loss + loss
            cotangents.append(dx)
        self.stream.advance(after=before)
        before = tuple(cotangents)
        for gi in range(last - 1, -1, -1):
            params = self._next(gi)
            for bi, (x, (_, mask)) in enumerate(zip(hidden[gi], chunk)):
                cotangents[bi], self.acc[gi] = backward_step(c, params, x, mask, cotangents[bi], self.acc[gi])
            hidden[gi + 1] = None  # the group's outputs are no longer needed
            self.stream.advance(after=before)
            before = tuple(cotangents)

    def _next(self, gi: int):
        group, params = self.stream.next()
        assert group == self.groups[gi], (group, self.groups[gi])
        return params


def working_bytes(config: OPTConfig, layers: int, batch_size: int, seq_len: int, itemsize: int) -> int:
    """An upper estimate of what a forward and backward through `layers` layers of one batch keeps for the
    backward and makes on the way: per layer its FFN activations, hidden states and attention probabilities,
    plus the logits, their softmax and gradient in float32."""
    tokens = batch_size * seq_len
    per_layer = tokens * (config.ffn_dim * itemsize * 3 + config.hidden_size * itemsize * 12) \
        + batch_size * config.num_attention_heads * seq_len * seq_len * 4
    return layers * per_layer + 3 * tokens * config.vocab_size * 4


def check_memory(config: OPTConfig, groups: list[range], layer_bytes: int, batch_size: int, seq_len: int,
                 itemsize: int, offload: bool, chunk_batches: int, device, host_available: int | None = None) -> None:
    """Refuse, before anything is allocated, a run whose weights, kept hidden states and one step's
    temporaries cannot fit in the device's memory (on the CPU: the available host memory)."""
    largest = max(len(g) for g in groups)
    streamed = offload and len(groups) > 2
    weights = (2 if streamed else len(groups)) * largest * layer_bytes
    weights += itemsize * config.vocab_size * config.word_embed_proj_dim
    kept = len(groups) * chunk_batches * batch_size * seq_len * config.hidden_size * itemsize * 2 if offload else 0
    working = working_bytes(config, largest, batch_size, seq_len, itemsize)
    needed = weights + kept + working
    stats = device.memory_stats() if hasattr(device, "memory_stats") else None
    if not stats or "bytes_limit" not in stats:
        needed += RUNTIME_BYTES + (2 * largest * layer_bytes if streamed else 0)
        free = heap.host_available() if host_available is None else host_available
        where = f"{device} (host memory, shared with the device)"
    else:
        free, where = stats["bytes_limit"] - stats.get("bytes_in_use", 0), str(device)
    if needed > free:
        raise InputError(
            f"{where}: an attribution pass needs about {needed / 1e9:.1f} GB (the weights on the device "
            f"{weights / 1e9:.1f} GB, the hidden states kept for the backward {kept / 1e9:.1f} GB, what one "
            f"forward and backward of a batch through {largest} layer(s) keeps {working / 1e9:.1f} GB); "
            f"{free / 1e9:.1f} GB are free. Use a smaller --batch_size or --seq_len, a 16-bit --dtype, or "
            "--offload (with a smaller --group_size)")


# The stored result.

@dataclasses.dataclass
class Attribution:
    """A stored attribution: `effect` float64 [layers, ffn] (see READING) and its manifest."""

    root: str
    manifest: dict
    effect: np.ndarray

    @property
    def tokens(self) -> int:
        return int(self.manifest["tokens"])


@lock.writes("out_dir", replaced_whole=True)
def attribute(model_path: str, corpus_paths, out_dir: str, seq_len: int = 2048, batch_size: int = 8,
              max_tokens: int | None = None, dtype: str | None = None, offload: bool = False,
              group_size: int | None = None, chunk_batches: int = 4, text_key: str = "text",
              verbose: bool = True) -> str:
    """Estimate every neuron's zero-ablation effect of the converted model at model_path over the corpus (its
    windows as collection cuts them, up to `max_tokens`), into out_dir; returns its absolute path."""
    out_dir = os.path.abspath(out_dir)
    atomic.recover_dir(out_dir)
    if os.path.isdir(out_dir) and lock.entries(out_dir) and not os.path.isfile(os.path.join(out_dir, MANIFEST)):
        raise InputError(f"{out_dir}: exists, is not empty and is not an attribution directory")
    config = ckpt.read_config(model_path)
    corpus = model_corpus(model_path, corpus_paths, seq_len, text_key)
    corpus.check_not_empty()
    runner = Attributor.of_checkpoint(model_path, batch_size, seq_len, dtype, offload=offload,
                                      group_size=group_size, chunk_batches=chunk_batches)
    progress = Progress("attribute", max_tokens, " tokens", enabled=verbose)
    try:
        sums = runner.run(limited_batches(corpus, batch_size, config.pad_token_id, max_tokens), progress)
    finally:
        runner.close()
    progress.update(0, force=True)
    manifest = {"format": FORMAT, "version": VERSION, "model": os.path.abspath(model_path),
                "config": config.to_dict(), "dtype": dtype or ckpt.read_manifest(model_path)["dtype"],
                "corpus": {"paths": list(corpus.files), "fingerprint": corpus.fingerprint(), "text_key": text_key},
                "seq_len": seq_len, "batch_size": batch_size, "max_tokens": max_tokens, "tokens": sums.count,
                "base_loss": sums.base_loss, "layers": config.num_hidden_layers, "ffn": config.ffn_dim,
                "mode": "streamed" if offload else "resident", "reading": READING}
    return write_attribution(out_dir, sums.effect, manifest)


def write_attribution(out_dir: str, effect: np.ndarray, manifest: dict) -> str:
    """Write `effect` and the manifest into out_dir, complete or not at all (built in `<out_dir>.partial`)."""
    work = f"{out_dir}.partial"
    atomic.remove(work)
    array = ts.open({"driver": "zarr3", "kvstore": {"driver": "file", "path": os.path.join(work, EFFECT)},
                     "metadata": {"shape": list(effect.shape), "data_type": "float64"}, "create": True}).result()
    array.write(np.asarray(effect, np.float64)).result()
    atomic.write_json(os.path.join(work, MANIFEST), manifest)
    return atomic.replace_dir(work, out_dir)


def read_attribution(root: str) -> Attribution:
    """The attribution written by `attribute` in root; a clear error for anything else."""
    root = str(root)
    path = os.path.join(root, MANIFEST)
    if not os.path.isfile(path):
        hint = " (a run was interrupted: rerun it)" if os.path.isdir(f"{os.path.abspath(root)}.partial") else ""
        raise MissingError(f"{root}: not an attribution directory, {MANIFEST} is missing{hint}")
    try:
        with open(path) as f:
            manifest = json.load(f)
    except ValueError as e:
        raise InputError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT or manifest.get("version") != VERSION:
        got = manifest.get("format") if isinstance(manifest, dict) else None
        raise InputError(f"{path}: not an attribution of format {FORMAT} v{VERSION} (format {got!r})")
    try:
        effect = ts.open({"driver": "zarr3", "kvstore": {"driver": "file", "path": os.path.join(root, EFFECT)}},
                         open=True).result().read().result()
    except ValueError as e:
        raise InputError(f"{os.path.join(root, EFFECT)}: cannot read the effect array ({e})") from None
    shape = (manifest.get("layers"), manifest.get("ffn"))
    if effect.shape != shape:
        raise InputError(f"{os.path.join(root, EFFECT)}: shape {effect.shape}, but {MANIFEST} says {shape}")
    return Attribution(os.path.abspath(root), manifest, np.asarray(effect, np.float64))
