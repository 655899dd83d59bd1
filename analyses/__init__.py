"""Two programs over activation statistics, kept apart.

Collection (`analyses.collection`): a converted model over a corpus -> a statistics store. The study
(`dead`, `coverage`, `detectors`, `suppression`, `positional`, `domains` -> `report`, which also checks the
paper's `claims` on each model; figures in `figures`; `study` runs collection then the study end to end)
reads stores only through `analyses.collection.open_stats`. The neuron atlas (`neurons`: `atlas` writes a
static page per neuron, `fired` lists the neurons that fire on a text) builds on the study. Interventions
(`interventions`: `ablate` edits neuron sets and measures the change, `attribute` estimates every neuron's
zero-ablation effect) change the model and measure it.
Importing `analyses` imports no plotting library.
"""

from analyses.collection import Stats, StatsError, collect, join_stats, merge_stats, open_stats
from analyses.interventions import ablate, attribute, read_attribution
from analyses.report import Thresholds, analyze
from analyses.neurons.atlas import build_atlas as atlas
from analyses.neurons.fired import fired
from analyses.study import run_study

__all__ = ["Stats", "StatsError", "Thresholds", "ablate", "analyze", "atlas", "attribute", "collect", "fired",
           "join_stats", "merge_stats", "open_stats", "read_attribution", "run_study"]
