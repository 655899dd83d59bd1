"""How many items (tokens, n-grams) cover a neuron's activations: the paper's 95% coverage count.

Every analysis of items works on one layer's `ItemCounts`: the non-zero (item, neuron, count) triples,
from a dense `tok_act` layer (read a block of token rows at a time) or from an n-gram table. Memory is
then bounded by the number of non-zero counts, which is small where the analyses are interesting
(sparse layers) and at most one dense layer elsewhere.
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


# Histogram bins of covering counts: [1, 2), [2, 3), ..., [1001, inf) (the paper's Figs. 2, 12, 13 bin alike).
BIN_EDGES = (1, 2, 3, 4, 5, 6, 11, 21, 51, 101, 501, 1001)
DEAD, UNTRACKED = -1, -2  # covering-count codes: never active; alive but its n-grams were not counted


def item_counts(stats, order: int, t: int, table=None) -> ItemCounts:
    """Token layer t's counts of n-grams of `order` (1 = tokens, from `tok_act`; 2, 3 from the n-gram table)."""
    if order == 1:
        return ItemCounts.from_dense(stats.tok_act.view(t))
    grams, neurons, counts = table.pairs(order, t)  # [m] each
    return ItemCounts.from_triples(grams, neurons, counts, stats.config.ffn_dim)


def occurrences(stats, order: int, table=None):
    """A function item ids -> occurrences of those items over the corpus (non-BOS positions)."""
    if order == 1:
        token_occ = np.asarray(stats.token_occ)  # [v]
        return lambda items: token_occ[items]
    keys, counts = table.occurrences(order)  # [m], [m], keys sorted

    def lookup(items):
        if not len(keys):
            return np.zeros(len(items), np.int64)
        at = np.minimum(np.searchsorted(keys, items), len(keys) - 1)  # [e]
        return np.where(keys[at] == items, counts[at], 0)
    return lookup


def covering_codes(layer: ItemCounts, alive: np.ndarray, tracked: np.ndarray | None, fraction: float) -> np.ndarray:
    """Covering counts of one layer's neurons, with DEAD and UNTRACKED codes: int64 [neurons].

    0 = alive but no item to cover (it fired only on BOS, or only before the first whole n-gram).
    """
    codes = covering_counts_of(layer, fraction)  # [n]
    if tracked is not None:
        codes = np.where(tracked, codes, UNTRACKED)
    return np.where(alive, codes, DEAD)


def histogram(codes: np.ndarray, edges=BIN_EDGES) -> dict:
    """Counts of alive neurons per covering-count bin: {labels, counts} plus the 0 and untracked tallies."""
    codes = np.asarray(codes)  # [n]
    counted = codes[codes >= 1]  # [k]
    bins = np.histogram(counted, bins=list(edges) + [np.iinfo(np.int64).max])[0]  # [bins]
    return {"bins": bin_labels(edges), "counts": bins.tolist(), "no_item": int((codes == 0).sum()),
            "untracked": int((codes == UNTRACKED).sum())}


def bin_labels(edges=BIN_EDGES) -> list[str]:
    """'1', '2', ..., '6-10', ..., '>1000' for the bins [edges[i], edges[i+1])."""
    labels = []
    for low, high in zip(edges, list(edges[1:]) + [None]):
        labels.append(f">{low - 1}" if high is None else str(low) if high == low + 1 else f"{low}-{high - 1}")
    return labels

