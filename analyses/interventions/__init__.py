"""Interventions: change the model's FFN neurons and measure what changes.

`attribution`: every neuron's estimated zero-ablation effect at once (activation x gradient of the next-token
loss, summed over a corpus; `attribute` writes it, `read_attribution` reads it).
"""

from analyses.interventions.attribution import Attribution, attribute, read_attribution

__all__ = ["Attribution", "attribute", "read_attribution"]
