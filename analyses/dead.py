"""Dead neurons (paper Section 3, Fig. 1): never activated on the corpus; how often the others fire.

Frequency = activations / tokens, both over every real position (BOS included, as `act` counts it).
Reads `act` one layer at a time.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from opt_jax.errors import AnalysisError


@dataclasses.dataclass
class DeadResult:
    """Per collected layer: dead fraction, mean frequency of the alive neurons (NaN with none alive)."""

    fraction_per_layer: np.ndarray  # float [layers]
    alive_mean_frequency_per_layer: np.ndarray  # float [layers]
    alive: np.ndarray  # bool [layers, ffn]
    num_layers: int  # the model's layers (the collected ones may be fewer)


def analyze_dead(stats) -> DeadResult:
    """Dead fraction and alive neurons' mean activation frequency per layer of a statistics directory."""
    if stats.tokens == 0:
        raise AnalysisError(f"{stats.root}: the run counted no tokens")
    layers = stats.act.shape[0]
    alive = np.zeros(stats.act.shape, bool)  # [l, n]
    fraction = np.zeros(layers)  # [l]
    frequency = np.full(layers, np.nan)  # [l]
    for layer in range(layers):
        act = stats.act[layer]  # [n]
        alive[layer] = act > 0
        fraction[layer] = 1.0 - alive[layer].mean()
        if alive[layer].any():
            frequency[layer] = act[alive[layer]].mean() / stats.tokens
    return DeadResult(fraction, frequency, alive, stats.config.num_hidden_layers)

