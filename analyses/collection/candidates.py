"""Which neurons n-gram counting tracks: those whose activations few tokens cover (the 95% coverage count).

Works on one layer's `ItemCounts`: the non-zero (item, neuron, count) triples, from a dense `tok_act`
layer (read a block of token rows at a time) or from an n-gram table. Collection uses it to pick the
candidates of a second pass (`ngram_candidates`); the study (`analyses.coverage`) builds on it.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from opt_jax.errors import InputError

# Cells read at once from a dense layer (128 MiB of int64): 4096 token rows at 125m's width, 455 at 66b's.
BLOCK_CELLS = 1 << 24


@dataclasses.dataclass(frozen=True)
class ItemCounts:
    """Non-zero activation counts of one layer, sorted by neuron then by count, largest first."""

    items: np.ndarray  # int64 [e]: token id or n-gram id
    neurons: np.ndarray  # int64 [e]
    counts: np.ndarray  # int64 [e], > 0
    num_neurons: int

    @classmethod
    def from_triples(cls, items, neurons, counts, num_neurons: int) -> "ItemCounts":
        """Sort (item, neuron, count) triples, dropping zero counts."""
        items, neurons, counts = (np.asarray(a, np.int64) for a in (items, neurons, counts))  # [e] each
        keep = counts > 0  # [e]
        items, neurons, counts = items[keep], neurons[keep], counts[keep]
        order = np.lexsort((items, -counts, neurons))  # [e]
        return cls(items[order], neurons[order], counts[order], num_neurons)

    @classmethod
    def from_dense(cls, counts) -> "ItemCounts":
        """From a dense [items, neurons] table (numpy or a lazily read array), a block of rows at a time."""
        rows, num_neurons = counts.shape
        step = max(1, BLOCK_CELLS // max(num_neurons, 1))
        parts = []
        for start in range(0, rows, step):
            block = np.asarray(counts[start:min(start + step, rows)])  # [i, n]
            item, neuron = np.nonzero(block)  # [e], [e]
            parts.append((item + start, neuron, block[item, neuron]))
        if not parts:
            return cls.from_triples([], [], [], num_neurons)
        return cls.from_triples(*(np.concatenate(p) for p in zip(*parts)), num_neurons)

    def totals(self) -> np.ndarray:
        """Activations per neuron: int64 [neurons]."""
        return np.bincount(self.neurons, self.counts, minlength=self.num_neurons).astype(np.int64)

    def ranks(self) -> np.ndarray:
        """Each triple's place among its neuron's items, 0 = the most frequent: int64 [e]."""
        starts = np.searchsorted(self.neurons, self.neurons, side="left")  # [e]
        return np.arange(len(self.neurons)) - starts


def covering_counts_of(layer: ItemCounts, fraction: float = 0.95) -> np.ndarray:
    """Per neuron, the fewest items whose counts reach `fraction` of its activations: int64 [neurons], 0 if none."""
    if not 0 < fraction <= 1:
        raise InputError(f"fraction must be in (0, 1], got {fraction}")
    totals = layer.totals()  # [n]
    ranks = layer.ranks()  # [e]
    running = np.cumsum(layer.counts)  # [e]
    before_neuron = (running - layer.counts)[np.arange(len(ranks)) - ranks]  # [e]: sum of earlier neurons
    reached = running - before_neuron >= fraction * totals[layer.neurons]  # [e]
    out = np.zeros(layer.num_neurons, np.int64)  # [n]
    neurons, first = np.unique(layer.neurons[reached], return_index=True)  # first reaching triple per neuron
    out[neurons] = ranks[reached][first] + 1
    return out


def ngram_candidates(tok_act, max_coverage: int, fraction: float = 0.95) -> np.ndarray:
    """bool [token_layers, neurons]: alive neurons that at most `max_coverage` tokens cover.

    `tok_act` is a sequence of [vocab, neurons] layers (numpy arrays, or `LazyArray.view`s read a block
    of rows at a time).

    Since an n-gram ends in one token, a neuron covered by c tokens needs at least c n-grams: every
    other neuron has n-gram coverage above max_coverage without counting its n-grams.
    """
    rows = [covering_counts_of(ItemCounts.from_dense(tok_act[t]), fraction) for t in range(len(tok_act))]
    coverage = np.stack(rows) if rows else np.zeros((0, 0), np.int64)  # [t, n]
    return (coverage >= 1) & (coverage <= max_coverage)
