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
