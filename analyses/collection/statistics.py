"""Sufficient statistics of the FFN bitmasks, reduced on the device inside the jitted step.

Per collected layer l, neuron n, position p, token v (BOS = position 0 of each window):
  act[l, n]         activations over real (non-pad) positions, BOS included
  pos_act[l, p, n]  activations at position p over real positions
  tok_act[t, v, n]  activations at real, non-BOS positions holding token v (token layers only)
  value_hist[l, n, j]  activations over real positions whose fc1 value lies in bin j (`values.py`; with
                    `Plan.value_bins` bins per octave, 0: none), so that value_hist.sum(-1) == act
and, with `Plan.examples` = k > 0, the neuron's example activations at real, non-BOS positions:
  examples[kind][field][l, n, :k]  its k strongest and a uniform sample of k (`examples.py`)
and with `Plan.quantile` = K > 0 (and value bins), a uniform sample of K of each value bin's activations:
  examples["quantile"][field][l, n, :bins * K]  (`examples.update_quantile`)
Only these leave the device; the token-only counts (tokens, pos_tokens, token_occ, sequences) come
from the ids on the host.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding

from analyses.collection import examples as ex
from analyses.collection import values
from opt_jax import decoder_layers, embed, pack_masks
from opt_jax.config import OPTConfig
from opt_jax.sharding import constrain, spec
from opt_jax.streaming import split_layers

# Device accumulators are int32 and emptied at every flush; a flush is forced before this many tokens.
MAX_TOKENS_PER_FLUSH = 2**31 - 1


@dataclasses.dataclass(frozen=True)
class Plan:
    """What one run collects: the first `num_layers` layers, with token statistics for `token_layers`."""

    config: OPTConfig
    num_layers: int
    token_layers: tuple[int, ...]
    seq_len: int
    examples: int = 0  # k examples per neuron and set (0: none)
    value_bins: int = 0  # bins per octave of the value histogram (0: none; `values.py`)
    quantile: int = 0  # K quantile examples per neuron and value bin (0: none; needs examples and value_bins)

    @property
    def ffn(self) -> int:
        return self.config.ffn_dim

    @property
    def vocab(self) -> int:
        return self.config.vocab_size

    def groups(self, group_size: int | None = None) -> list[range]:
        """Layer ranges, each wholly token layers or wholly not, of at most `group_size` layers."""
        boundaries = [l for l in range(1, self.num_layers)
                      if (l in self.token_layers) != (l - 1 in self.token_layers)]
        return split_layers(range(self.num_layers), group_size or self.num_layers, boundaries)

    def has_tokens(self, group: range) -> bool:
        return group.start in self.token_layers


def zero_accumulators(plan: Plan, group: range, masks_for_batch: int | None = None,
                      with_examples: bool = True) -> dict[str, jax.Array]:
    """Device counters of one layer group: act [g, ffn], pos_act [g, seq, ffn], tok_act [g, vocab, ffn],
    with value bins value_hist [g, ffn, bins], and with examples (unless `with_examples` is False: the caller
    has them) the running example sets {kind: {field: [g, ffn, k]}}.

    With `masks_for_batch`, token groups also get `masks` [g, batch, seq, ffn / 8]: the packed masks of
    the last batch, which the host needs for n-gram counts.
    """
    g = len(group)
    acc = {"act": jnp.zeros((g, plan.ffn), jnp.int32),  # [g, n]
           "pos_act": jnp.zeros((g, plan.seq_len, plan.ffn), jnp.int32)}  # [g, p, n]
    if plan.value_bins:
        acc["value_hist"] = jnp.zeros((g, plan.ffn, values.num_bins(plan.value_bins)), jnp.int32)  # [g, n, bins]
    if plan.examples and with_examples:
        slots = plan.quantile * values.num_bins(plan.value_bins) if plan.quantile else 0
        acc["examples"] = ex.zero_sets(g, plan.ffn, plan.examples, slots)  # {kind: {field: [g, n, k or bins * K]}}
    if plan.has_tokens(group):
        acc["tok_act"] = jnp.zeros((g, plan.vocab, plan.ffn), jnp.int32)  # [g, v, n]
        if masks_for_batch:
            acc["masks"] = jnp.zeros((g, masks_for_batch, plan.seq_len, plan.config.mask_bytes), jnp.uint8)
    return acc


# Where each counter's axes lie on a ("data", "neurons") mesh (`opt_jax.sharding`): split by neuron.
COUNTER_AXES = {"act": (None, "neurons"), "pos_act": (None, None, "neurons"), "tok_act": (None, None, "neurons"),
                "value_hist": (None, "neurons", None), "masks": (None, "data", None, "neurons"),
                "examples": (None, "neurons", None)}


def counter_shardings(mesh, acc: dict) -> dict:
    """NamedShardings of a group's counters (arrays or shapes) on `mesh`, by `COUNTER_AXES`."""
    return {name: jax.tree.map(lambda a: NamedSharding(mesh, spec(mesh, a.shape, COUNTER_AXES[name])), value)
            for name, value in acc.items()}


def split_counters(acc: dict) -> dict:
    """`acc` laid out by `COUNTER_AXES` on the mesh being traced under (nothing without one)."""
    return {name: jax.tree.map(lambda a: constrain(a, *COUNTER_AXES[name]), value) for name, value in acc.items()}


def accumulator_bytes(plan: Plan, groups: list[range], masks_for_batch: int | None = None) -> int:
    """Device bytes of every group's counters (`zero_accumulators`), computed without allocating them."""
    shapes = [jax.eval_shape(functools.partial(zero_accumulators, plan, g, masks_for_batch)) for g in groups]
    return sum(int(np.prod(leaf.shape)) * leaf.dtype.itemsize for s in shapes for leaf in jax.tree.leaves(s))


def _probe(input_ids, counted_for_tokens, first_layer, first_window, value_bins):
    """The per-layer reduction: adds layer i's activations into row i of the group's counters, in place,
    and merges its fc1 outputs into the example sets (layer `first_layer + i`, batch row 0 = `first_window`)."""
    flat_ids = input_ids.reshape(-1)  # [b*s]

    def probe(active, i, acc, fc1=None):  # [b, s, n], layer index in the group, {name: [g, ...]}, [b, s, n]
        # act from pos_act's delta: one pass over the batch, not two. The barrier keeps XLA from folding the two sums
        # back into one over (batch, position), which XLA:CPU runs as a slow reduce-window (18 ms a layer at 125m
        # widths and 4096 tokens, BENCHMARKS.md).
        by_position = jax.lax.optimization_barrier(jnp.sum(active, axis=0, dtype=jnp.int32))  # [p, n]
        out = {"act": acc["act"].at[i].add(jnp.sum(by_position, axis=0)),  # [g, n]
               "pos_act": acc["pos_act"].at[i].add(by_position)}  # [g, p, n]
        if "tok_act" in acc:
            rows = (active & counted_for_tokens[:, :, None]).astype(jnp.int32)  # [b, s, n]
            out["tok_act"] = acc["tok_act"].at[i, flat_ids].add(rows.reshape(-1, rows.shape[-1]))  # [g, v, n]
        if "value_hist" in acc:
            out["value_hist"] = acc["value_hist"].at[i].add(values.count(fc1, active, value_bins))  # [g, n, bins]
        if "masks" in acc:
            out["masks"] = acc["masks"].at[i].set(pack_masks(active))  # [g, b, s, n / 8]
        if "examples" in acc:
            k = acc["examples"]["top"]["window"].shape[-1]
            out["examples"] = ex.update(acc["examples"], i, first_layer + i, fc1, counted_for_tokens,
                                        first_window, k)  # {kind: {field: [g, n, k]}}
            if ex.QUANTILE in acc["examples"]:
                out["examples"][ex.QUANTILE] = ex.update_quantile(
                    acc["examples"][ex.QUANTILE], i, first_layer + i, fc1, counted_for_tokens, first_window,
                    value_bins)  # {field: [g, n, bins * K]}
        return out

    return probe


def non_bos(token_mask):
    """Real positions other than position 0 (where every window holds BOS): [batch, seq]."""
    position = jnp.arange(token_mask.shape[1])[None, :]  # [1, s]
    return token_mask & (position > 0)  # [b, s]


def group_forward(config: OPTConfig, group_params, x, token_mask, input_ids, acc, first_layer, first_window):
    """Run one stacked layer group (model layers first_layer, ...) over hidden states x, adding its
    activations into `acc`; the batch's row 0 is window `first_window` of the run's window stream."""
    value_bins = values.per_octave(acc["value_hist"].shape[-1]) if "value_hist" in acc else 0
    probe = _probe(input_ids, non_bos(token_mask), first_layer, first_window, value_bins)
    return decoder_layers(config, group_params, x, token_mask, probe, acc,
                          with_fc1="examples" in acc or "value_hist" in acc)


@functools.partial(jax.jit, static_argnums=0, donate_argnums=(5,))
def group_step(config: OPTConfig, group_params, x, token_mask, input_ids, acc, first_layer, first_window):
    """Jitted `group_forward` (streamed mode; first_layer and first_window int32 scalars): (hidden, acc)."""
    x, acc = group_forward(config, group_params, x, token_mask, input_ids, acc, first_layer, first_window)
    return x, split_counters(acc)  # [b, s, d], on a mesh split by neuron as they came


@functools.partial(jax.jit, static_argnums=0)
def embed_step(config: OPTConfig, params, input_ids, token_mask):
    """Jitted embedding (streamed mode): hidden states entering layer 0."""
    return embed(config, params, input_ids, token_mask)


@functools.partial(jax.jit, static_argnums=0, donate_argnums=(5,))
def resident_step(config: OPTConfig, params, group_params: list, input_ids, token_mask, accs: list, first_window):
    """The whole step in one jit (resident mode): embed, then each layer group's scan with its counters;
    returns (the counters, the last layer's output).

    Nothing reads that output, but returning it keeps the last layer whole: unused, XLA would drop the last
    layer's fc2 and, when the last group is one layer (its scan unrolled), compute its fc1 in another fusion,
    a float32 rounding apart from the same layer inside a longer group. The counts would then depend on how a
    run groups its layers (a run with `max_layers` ending at a token layer against one with every layer), and
    the runs of one model could not be joined (`analyses.collection.join`) as equal to one run."""
    x = embed(config, params, input_ids, token_mask)  # [b, s, d]
    new, first_layer = [], 0
    for layer_params, acc in zip(group_params, accs):
        x, acc = group_forward(config, layer_params, x, token_mask, input_ids, acc, first_layer, first_window)
        new.append(split_counters(acc))  # on a mesh split by neuron as they came
        first_layer += acc["act"].shape[0]
    return new, x  # [b, s, d]


def host_counts(input_ids: np.ndarray, token_mask: np.ndarray, vocab: int) -> dict[str, np.ndarray]:
    """The counts that need only the ids: tokens, pos_tokens [seq], token_occ [vocab], sequences."""
    real = token_mask.astype(bool)  # [b, s]
    counted = real.copy()
    counted[:, 0] = False  # [b, s]
    return {
        "tokens": np.int64(real.sum()),
        "pos_tokens": real.sum(axis=0, dtype=np.int64),  # [s]
        "token_occ": np.bincount(input_ids[counted], minlength=vocab).astype(np.int64),  # [v]
        "sequences": np.int64(real.any(axis=1).sum()),
        "full_length_sequences": np.int64(real.all(axis=1).sum()),
    }
