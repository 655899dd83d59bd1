"""What several test files share: the repository root, the offline environment, several simulated JAX devices
on the CPU, running a script as a user runs it, and a fake accelerator reporting its memory."""

from __future__ import annotations

import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def offline_env(**extra) -> dict:
    """The current environment, offline from the hub, plus `extra`."""
    return dict(os.environ, HF_HUB_OFFLINE="1", **extra)


def devices_env(devices: int = 1, **extra) -> dict:
    """The offline environment with JAX on `devices` simulated CPU devices."""
    return offline_env(JAX_PLATFORMS="cpu", XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}", **extra)


def run_script(*args, env: dict | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    """`python <args>` from the repository root (offline unless `env` says otherwise); output captured as text."""
    return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True,
                          env=offline_env() if env is None else env, timeout=timeout)


class FakeDevice:
    """An accelerator as `memory_stats()` reports it: its memory limit and what is in use."""

    def __init__(self, limit: int, in_use: int = 0, name: str = "fake H200"):
        self.stats = {"bytes_limit": limit, "bytes_in_use": in_use}
        self.name = name

    def memory_stats(self) -> dict:
        return self.stats

    def __str__(self) -> str:
        return self.name
