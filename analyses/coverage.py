"""How many items (tokens, n-grams) cover a neuron's activations: the paper's 95% coverage count.

Every analysis of items works on one layer's `ItemCounts` (`analyses.collection.candidates`, which also
picks the neurons collection counts n-grams for): the non-zero (item, neuron, count) triples, from a dense
`tok_act` layer (read a block of token rows at a time) or from an n-gram table. Memory is then bounded by the
number of non-zero counts, which is small where the analyses are interesting (sparse layers) and at most one
dense layer elsewhere.
"""

from __future__ import annotations

import numpy as np

from analyses.collection.candidates import (  # noqa: F401 - the study's names for them too
    BLOCK_CELLS, ItemCounts, covering_counts_of, ngram_candidates)

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

