"""The study: activation statistics over a corpus, and the paper's analyses of them."""

from analyses.collect import collect
from analyses.store import Stats, StatsError, merge_stats, open_stats

__all__ = ["Stats", "StatsError", "collect", "merge_stats", "open_stats"]
