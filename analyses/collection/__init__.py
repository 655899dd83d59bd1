"""Collection: a converted model over a corpus -> activation statistics in a resumable store.

One module per job: `plan` (flags, what a run collects, the memory check), `statistics` (the device
counters, reduced inside the jitted step), `runner` (the resident and the streamed executor behind one
`Runner`), `ngrams` (exact sparse n-gram tables on the host), `candidates` (the neurons a second pass
counts n-grams for), `store` (the zarr3 statistics directory: commit protocol, reader `open_stats`,
`merge_stats`), `collect` (the loop tying them together), `join` (the runs of one model split by token
layers, as one store: `join_stats`), `runs` (one model in as many runs as its token layers need, then
joined: `collect_runs`). Collection imports nothing from the study; the study reads stores only through
`open_stats`.
"""

from analyses.collection.candidates import ItemCounts, covering_counts_of, ngram_candidates
from analyses.collection.collect import collect
from analyses.collection.join import join_stats
from analyses.collection.ngrams import NgramTable, decode_ngrams
from analyses.collection.plan import Options, make_plan
from analyses.collection.runner import Runner, Weights
from analyses.collection.runs import collect_runs
from analyses.collection.store import QUANTILE, Stats, StatsError, merge_stats, open_stats, quantile_bands

__all__ = ["QUANTILE", "ItemCounts", "NgramTable", "Options", "Runner", "Stats", "StatsError", "Weights", "collect",
           "collect_runs", "covering_counts_of", "decode_ngrams", "join_stats", "make_plan", "merge_stats",
           "ngram_candidates", "open_stats", "quantile_bands"]
