"""The study: activation statistics over a corpus, and the paper's analyses of them."""

from analyses.collect import collect
from analyses.report import Thresholds, analyze
from analyses.store import Stats, StatsError, merge_stats, open_stats
from analyses.study import run_study

__all__ = ["Stats", "StatsError", "Thresholds", "analyze", "collect", "merge_stats", "open_stats", "run_study"]
