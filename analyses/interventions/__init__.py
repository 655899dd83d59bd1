"""Interventions: change FFN neurons inside the model (`opt_jax.edit`) and measure what changes.

`spec` resolves neuron sets named on the command line (pairs, dead, detectors, positional, random and matched
controls) against a model and its statistics; `passes` runs the base and the edited models over batches,
each batch read and embedded once, resident or streamed; `ablation` (`ablate`) tallies losses, KL, the change
by position and the detectors' trigger repetition with bootstrap intervals; `results` writes its files.
`attribution`: every neuron's estimated zero-ablation effect at once (activation x gradient of the next-token
loss, summed over a corpus; `attribute` writes it, `read_attribution` reads it).
"""

from analyses.interventions.ablation import ablate
from analyses.interventions.attribution import Attribution, attribute, read_attribution

__all__ = ["Attribution", "ablate", "attribute", "read_attribution"]
