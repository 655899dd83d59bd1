"""Detectors suppress their triggers (paper Section 4.4, Figs. 5, 6).

A neuron's update is its `fc2` column (through `project_out` where the model has one, as in 350m);
its scores over the vocabulary are `E @ update`, E the (tied) token embeddings. High scores are the
tokens it promotes, low scores those it suppresses. As in the paper, the final LayerNorm is ignored.
A trigger's rank among the suppressed is 1 for the lowest score of the vocabulary. Scores are float32
products: two that differ by less than their rounding (`TIE_TOLERANCE` of the row's largest |score|) are
tied, so a rank does not depend on the BLAS kernel's order of summation. The top promoted / suppressed lists
(`lowest`) order equal scores by token id, lower first, as the atlas's device path does
(`analyses.neurons.products`).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from opt_jax import checkpoint as ckpt

# Detectors scored at once: bounds the [detectors, vocab] score block.
DETECTOR_BLOCK = 64
# Scores closer than this share of their row's largest |score| count as equal when ranking (float32 dot
# products over up to 9216 hidden units round at about sqrt(9216) * 6e-8 ~ 6e-6 of that scale).
TIE_TOLERANCE = 1e-5


@dataclasses.dataclass
class Suppression:
    """Per detector: trigger scores and ranks among the suppressed; top promoted / suppressed tokens."""

    layers: np.ndarray  # int64 [d]
    neurons: np.ndarray  # int64 [d]
    triggers: list[np.ndarray]  # d arrays of token ids
    trigger_scores: list[np.ndarray]  # d arrays of float
    trigger_ranks: list[np.ndarray]  # d arrays of int, 1 = most suppressed
    top_promoted: np.ndarray  # int64 [d, k], highest score first
    top_suppressed: np.ndarray  # int64 [d, k], lowest score first

    def fraction_all_triggers_negative(self) -> float | None:
        """Share of detectors whose every trigger scores below zero (None without detectors)."""
        if not self.triggers:
            return None
        return float(np.mean([bool((s < 0).all()) for s in self.trigger_scores]))


def unembedding(model_dir: str, dtype=np.float32) -> tuple[np.ndarray, np.ndarray | None]:
    """What scores an update over the vocabulary: the token embeddings E [v, e] and `project_out` [e, d] (None for
    a model without one), as `dtype` (None: as stored)."""
    config = ckpt.read_config(model_dir)
    embedding = np.asarray(ckpt.open_array(model_dir, "embed/tokens").read().result(), dtype)  # [v, e]
    project_out = (np.asarray(ckpt.open_array(model_dir, "head/project_out/weight").read().result(), dtype)
                   if config.has_projections else None)  # [e, d]
    return embedding, project_out


def update_scores(embedding: np.ndarray, project_out: np.ndarray | None, columns: np.ndarray) -> np.ndarray:
    """Scores over the vocabulary of the updates `columns` (fc2 columns [d, k]): E @ update, float32 [k, v].

    `optimize=True` lets einsum hand the products to BLAS (about 10x numpy's own loop at 125m's sizes)."""
    updates = np.asarray(columns, np.float32).T  # [k, d]
    if project_out is not None:
        updates = np.einsum("ed,kd->ke", project_out, updates, optimize=True)  # [k, e]
    return np.einsum("ve,ke->kv", embedding, updates, optimize=True)  # [k, v]


def analyze_suppression(model_dir: str, layer_detectors, top_k: int = 10) -> Suppression:
    """Scores of every token detector's update over the vocabulary (`layer_detectors`: LayerDetectors list)."""
    embedding, project_out = unembedding(model_dir)  # [v, e], [e, d]
    fc2 = ckpt.open_array(model_dir, "layers/ffn/fc2/weight")  # [L, d, n] lazily
    parts = []
    for found in layer_detectors:
        if len(found.neurons):
            columns = np.asarray(fc2[found.layer].read().result(), np.float32)[:, found.neurons]  # [d, k]
            parts.append((found.layer, found.neurons, found.items, columns))
    layers, neurons, triggers, scores_of, ranks_of, promoted, suppressed = [], [], [], [], [], [], []
    for layer, ids, items, columns in parts:
        for start in range(0, len(ids), DETECTOR_BLOCK):
            scores = update_scores(embedding, project_out, columns[:, start:start + DETECTOR_BLOCK])  # [k, v]
            block_items = items[start:start + DETECTOR_BLOCK]
            s, r = trigger_scores_and_ranks(scores, block_items)
            layers += [layer] * len(block_items)
            neurons += ids[start:start + DETECTOR_BLOCK].tolist()
            triggers += block_items
            scores_of += s
            ranks_of += r
            promoted.append(lowest(-scores, top_k))
            suppressed.append(lowest(scores, top_k))
    empty = np.zeros((0, min(top_k, embedding.shape[0])), np.int64)
    return Suppression(np.array(layers, np.int64), np.array(neurons, np.int64), triggers, scores_of, ranks_of,
                       np.concatenate(promoted) if promoted else empty,
                       np.concatenate(suppressed) if suppressed else empty)


def trigger_scores_and_ranks(scores: np.ndarray, items: list[np.ndarray]):
    """Each row's trigger scores and ranks among the suppressed (1 + tokens scoring lower by more than the
    row's rounding, `TIE_TOLERANCE`), for the scores [k, v] of k updates and their k arrays of trigger ids."""
    width = max(len(i) for i in items)
    padded = np.zeros((len(items), width), np.int64)  # [k, m]
    for row, ids in enumerate(items):
        padded[row, :len(ids)] = ids
    trigger = np.take_along_axis(scores, padded, axis=1)  # [k, m]
    tie = TIE_TOLERANCE * np.abs(scores).max(axis=1, keepdims=True)  # [k, 1]
    ranks = (scores[:, None, :] < trigger[:, :, None] - tie[:, :, None]).sum(axis=2) + 1  # [k, m]
    return ([trigger[i, :len(ids)] for i, ids in enumerate(items)],
            [ranks[i, :len(ids)] for i, ids in enumerate(items)])


def lowest(scores: np.ndarray, k: int) -> np.ndarray:
    """Ids of the k lowest values per row, lowest first, equal values lower id first (as `jax.lax.top_k` of the
    negated scores, `analyses.neurons.products`): int64 [rows, k]."""
    k = min(k, scores.shape[1])
    if k == 0:
        return np.zeros((scores.shape[0], 0), np.int64)
    part = np.argpartition(scores, k - 1, axis=1)[:, :k]  # [r, k]: the k lowest, ties at the k-th cut anyhow
    kth = np.take_along_axis(scores, part, axis=1).max(axis=1, keepdims=True)  # [r, 1]: the k-th lowest value
    below = scores < kth  # [r, v]
    at = scores == kth  # [r, v]
    room = k - below.sum(axis=1, keepdims=True)  # [r, 1]: places left for ids at the k-th value
    chosen = below | (at & (np.cumsum(at, axis=1) <= room))  # [r, v]: exactly k per row, lower ids first at the cut
    ids = np.nonzero(chosen)[1].reshape(len(scores), k)  # [r, k], ascending ids
    order = np.argsort(np.take_along_axis(scores, ids, axis=1), axis=1, kind="stable")  # [r, k]
    return np.take_along_axis(ids, order, axis=1).astype(np.int64)
