"""What several test files share: the repository root, running a script as a user does (offline), and the
environment that simulates several JAX devices on the CPU."""

from __future__ import annotations

import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def offline_env(**extra) -> dict:
    """The current environment, offline from the hub, plus `extra`."""
    return dict(os.environ, HF_HUB_OFFLINE="1", **extra)


def run_script(*args, env_extra=None, timeout=600) -> subprocess.CompletedProcess:
    """`python <args>` from the repository root, offline; output captured as text."""
    return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True,
                          env=offline_env(**(env_extra or {})), timeout=timeout)
