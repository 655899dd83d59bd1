"""How many items (tokens, n-grams) cover a neuron's activations: the paper's 95% coverage count."""

from __future__ import annotations

import numpy as np

# Neurons per block when sorting [items, neurons] count tables: bounds the sorted copy's memory.
NEURON_BLOCK = 1024


def covering_counts(counts: np.ndarray, fraction: float = 0.95) -> np.ndarray:
    """Per neuron, the fewest items whose activation counts reach `fraction` of its total: int64 [neurons].

    `counts` is [items, neurons] (e.g. one layer of `tok_act`); dead neurons (no activations) get 0.
    """
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    items, neurons = counts.shape
    out = np.zeros(neurons, np.int64)  # [n]
    for start in range(0, neurons, NEURON_BLOCK):
        block = np.asarray(counts[:, start:start + NEURON_BLOCK], np.int64)  # [i, n]
        total = block.sum(axis=0)  # [n]
        ranked = -np.sort(-block, axis=0)  # [i, n], largest first
        reached = np.cumsum(ranked, axis=0) >= fraction * total[None, :]  # [i, n]
        first = np.argmax(reached, axis=0) + 1  # [n]
        out[start:start + block.shape[1]] = np.where(total > 0, first, 0)
    return out


def ngram_candidates(tok_act, max_coverage: int, fraction: float = 0.95) -> np.ndarray:
    """bool [token_layers, neurons]: alive neurons that at most `max_coverage` tokens cover.

    Since an n-gram ends in one token, a neuron covered by c tokens needs at least c n-grams: every
    other neuron has n-gram coverage above max_coverage without counting its n-grams.
    """
    rows = [covering_counts(tok_act[t], fraction) for t in range(len(tok_act))]
    coverage = np.stack(rows) if rows else np.zeros((0, 0), np.int64)  # [t, n]
    return (coverage >= 1) & (coverage <= max_coverage)
