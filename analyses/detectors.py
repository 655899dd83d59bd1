"""Token and trigram detectors (paper Sections 4.2-4.3, Figs. 3, 4; App. A.2, Figs. 14, 15).

A neuron of a token layer detects items (tokens, or trigrams) when all three hold:
1. 1 to `max_items` items cover `coverage` (95%) of its activations (its covering count);
2. an item is *covered* when the neuron fires on at least `item_fraction` (95%) of the item's occurrences;
3. its covered items together account for at least `covered_fraction` (95%) of its activations.
Counts exclude BOS, as `tok_act` and the n-gram tables do.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from analyses.coverage import ItemCounts, covering_counts_of


@dataclasses.dataclass(frozen=True)
class DetectorThresholds:
    """The paper's thresholds (defaults) for token (1-5 tokens) and trigram (1-50 trigrams) detectors."""

    max_tokens: int = 5
    max_trigrams: int = 50
    coverage: float = 0.95
    item_fraction: float = 0.95
    covered_fraction: float = 0.95


@dataclasses.dataclass
class LayerDetectors:
    """The detectors of one layer: neuron ids, their covered items (most activations first), covered fraction."""

    layer: int
    neurons: np.ndarray  # int64 [d]
    items: list[np.ndarray]  # d arrays of item ids
    covered_fraction: np.ndarray  # float [d]

    def detected_items(self) -> np.ndarray:
        """The distinct items some detector of the layer covers: int64 [k], sorted."""
        return np.unique(np.concatenate(self.items)) if self.items else np.zeros(0, np.int64)


def layer_detectors(layer: int, counts: ItemCounts, item_occurrences: np.ndarray, max_items: int,
                    thresholds: DetectorThresholds) -> LayerDetectors:
    """The detectors among one layer's neurons; `item_occurrences` [e] = occurrences of counts.items."""
    coverage = covering_counts_of(counts, thresholds.coverage)  # [n]
    totals = counts.totals()  # [n]
    covered = counts.counts >= thresholds.item_fraction * item_occurrences  # [e]
    covered_acts = np.bincount(counts.neurons[covered], counts.counts[covered],
                               minlength=counts.num_neurons)  # [n]
    is_detector = ((coverage >= 1) & (coverage <= max_items)
                   & (covered_acts >= thresholds.covered_fraction * totals) & (totals > 0))  # [n]
    neurons = np.flatnonzero(is_detector)  # [d]
    chosen = covered & is_detector[counts.neurons]  # [e]
    splits = np.searchsorted(counts.neurons[chosen], neurons[1:])  # [d - 1]
    items = np.split(counts.items[chosen], splits) if len(neurons) else []
    fraction = covered_acts[neurons] / np.maximum(totals[neurons], 1)  # [d]
    return LayerDetectors(layer, neurons, items, fraction)


def detectors_of_order(layer: int, counts: ItemCounts, occurrences, order: int,
                       thresholds: DetectorThresholds) -> LayerDetectors:
    """The token (order 1) or trigram (order 3) detectors of one layer, at most `max_tokens` / `max_trigrams`
    items each; `occurrences` maps item ids to their occurrences (`analyses.coverage.occurrences`)."""
    limit = thresholds.max_tokens if order == 1 else thresholds.max_trigrams
    return layer_detectors(layer, counts, occurrences(counts.items), limit, thresholds)


def new_items(per_layer: list[LayerDetectors]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per layer: detected items, cumulative distinct items, new overall, new vs the previous layer: int [layers] x4."""
    seen = np.zeros(0, np.int64)
    previous = np.zeros(0, np.int64)
    detected, cumulative, new_overall, new_vs_previous = [], [], [], []
    for layer in per_layer:
        items = layer.detected_items()  # [k]
        detected.append(len(items))
        new_overall.append(len(np.setdiff1d(items, seen)))
        new_vs_previous.append(len(np.setdiff1d(items, previous)))
        seen = np.union1d(seen, items)
        cumulative.append(len(seen))
        previous = items
    return tuple(np.array(v, np.int64) for v in (detected, cumulative, new_overall, new_vs_previous))

