"""Dead neurons (paper Section 3, Fig. 1): never activated on the corpus; how often the others fire.

Frequency = activations / tokens, both over every real position (BOS included, as `act` counts it).
Reads `act` one layer at a time.

"Dead" means never seen firing in the N tokens counted, not a rate of exactly 0: the 95% upper bound on the
firing rate of a neuron that never fired in N tokens is the exact binomial (Clopper-Pearson) one, the p at which
N tokens without a firing have probability 5%: (1 - p)^N = 0.05, p = 1 - 0.05^(1/N) (about 3 / N).
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from opt_jax.errors import AnalysisError


@dataclasses.dataclass
class DeadResult:
    """Per collected layer: dead fraction, mean frequency of the alive neurons (NaN with none alive)."""

    fraction_per_layer: np.ndarray  # float [layers]
    alive_mean_frequency_per_layer: np.ndarray  # float [layers]
    alive: np.ndarray  # bool [layers, ffn]
    num_layers: int  # the model's layers (the collected ones may be fewer)
    tokens_per_layer: np.ndarray  # int [layers]: the tokens each layer's `act` counts (a store's are all alike)
    rate_bound_per_layer: np.ndarray  # float [layers]: a dead neuron's 95% upper bound on its rate (`rate_bound`)


def rate_bound(tokens: int, confidence: float = 0.95) -> float:
    """The exact binomial upper bound, at `confidence`, on the firing rate of a neuron that never fired in `tokens`
    tokens: 1 - (1 - confidence)^(1 / tokens) (1.0 for no tokens), computed as -expm1(log(1 - confidence) / tokens)
    so that a large token count loses no digits."""
    if not 0 < confidence < 1:
        raise AnalysisError(f"confidence must lie strictly between 0 and 1, got {confidence}")
    if tokens <= 0:
        return 1.0
    return -math.expm1(math.log1p(-confidence) / tokens)


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
    tokens = np.full(layers, stats.tokens, np.int64)  # [l]
    return DeadResult(fraction, frequency, alive, stats.config.num_hidden_layers, tokens,
                      np.array([rate_bound(int(t)) for t in tokens]))

