"""Importing the libraries has no side effects: no pyplot, no matplotlib backend chosen."""

import subprocess
import sys

from helpers import ROOT


def test_importing_the_libraries_leaves_matplotlib_alone():
    code = ("import sys, opt_jax, analyses, analyses.report\n"
            "assert 'matplotlib.pyplot' not in sys.modules, 'pyplot imported'\n"
            "assert 'matplotlib' not in sys.modules or sys.modules['matplotlib'].rcParams._get_backend_or_none() "
            "is None, 'a backend was chosen'\n")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]


def test_the_old_entry_points_still_import():
    """Names research code uses, kept where they were for one release (the modules behind them moved)."""
    import analyses
    import opt_jax
    from analyses import coverage
    from analyses.collection import Runner, Weights, collect, open_stats

    assert analyses.collect is collect and analyses.open_stats is open_stats
    assert callable(analyses.analyze) and callable(analyses.run_study) and callable(analyses.merge_stats)
    assert callable(opt_jax.load) and callable(opt_jax.convert) and callable(opt_jax.config.to_hf_dict)
    assert coverage.covering_counts_of is not None and Runner and Weights
