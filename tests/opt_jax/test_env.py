"""`opt_jax.env`: where a run runs, said at the start of the long-running scripts, with the warnings that matter."""

import os
import stat

import jax
import pytest

from opt_jax import env
from opt_jax.checkpoint import read_manifest, read_params
from opt_jax import shipped

from helpers import offline_env, run_script

TWIN = shipped.path("stdlib-4l")


def _environment(backend: str, nvidia: str | None) -> env.Environment:
    return env.Environment("0.10.2", "0.10.2", backend, (env.Device("cpu", None),), 1, 32 * 10**9, 16 * 10**9,
                           nvidia)


def test_describe_reads_jax_and_the_host():
    found = env.describe()
    assert found.jax_version == jax.__version__ and found.backend == jax.default_backend() == "cpu"
    assert len(found.devices) == jax.local_device_count() and found.devices[0].kind == "cpu"
    assert 0 < found.host_available_bytes <= found.host_memory_bytes
    assert found.line().startswith(f"jax {jax.__version__} on cpu: {jax.local_device_count()} x cpu;")


@pytest.mark.parametrize("backend,nvidia,params,expected", [
    ("cpu", "1 x /dev/nvidiaN", None, ["NVIDIA GPU is visible"]),
    ("gpu", "1 x /dev/nvidiaN", 66 * 10**9, []),
    ("cpu", None, 125 * 10**6, []),
    ("cpu", None, 2_700 * 10**6, ["2.7B parameters on the CPU"]),
    ("cpu", "/usr/bin/nvidia-smi", 66 * 10**9, ["NVIDIA GPU is visible", "66.0B parameters on the CPU"]),
])
def test_warnings(backend, nvidia, params, expected):
    warnings = _environment(backend, nvidia).warnings(params)
    assert len(warnings) == len(expected) and all(e in w for e, w in zip(expected, warnings)), warnings
    if nvidia and backend == "cpu":
        assert "[cuda12]" in warnings[0]


def test_nvidia_is_seen_by_device_files_or_nvidia_smi(monkeypatch):
    monkeypatch.setattr(env.glob, "glob", lambda pattern: ["/dev/nvidia0", "/dev/nvidia1", "/dev/nvidiactl"])
    assert env.nvidia_visible() == "2 x /dev/nvidiaN"
    monkeypatch.setattr(env.glob, "glob", lambda pattern: ["/dev/nvidiactl"])
    monkeypatch.setattr(env.shutil, "which", lambda name: "/opt/bin/nvidia-smi" if name == "nvidia-smi" else None)
    assert env.nvidia_visible() == "/opt/bin/nvidia-smi"
    monkeypatch.setattr(env.shutil, "which", lambda name: None)
    assert env.nvidia_visible() is None


def test_checkpoint_params_counts_every_stored_parameter():
    params = read_params(TWIN)
    assert env.checkpoint_params(TWIN) == sum(v.size for v in params.values()) > 4 * 10**6
    assert set(params) == set(read_manifest(TWIN)["params"])


def test_module_prints_the_report():
    result = run_script("-m", "opt_jax.env")
    assert result.returncode == 0, result.stderr
    assert f"jax {jax.__version__}" in result.stdout and "backend: cpu" in result.stdout
    assert "host memory:" in result.stdout and "Unable to initialize backend" not in result.stdout + result.stderr


def test_a_script_says_where_it_runs_first_and_warns_of_an_unused_gpu(tmp_path):
    """The first line on stderr is the devices line (no absl / XLA noise before it); an `nvidia-smi` on the PATH
    while jax runs on the CPU gets the warning with the install command."""
    fake = tmp_path / "bin" / "nvidia-smi"
    fake.parent.mkdir()
    fake.write_text("#!/bin/sh\nexit 0\n")
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    result = run_script("scripts/fired.py", "--model", TWIN, "--text", "def main():",
                        env=offline_env(PATH=f"{fake.parent}{os.pathsep}{os.environ['PATH']}"))
    assert result.returncode == 0, result.stderr
    lines = result.stderr.splitlines()
    assert lines[0].startswith(f"devices: jax {jax.__version__} on cpu"), lines[:3]
    assert any(l.startswith("warning: an NVIDIA GPU is visible") and "[cuda12]" in l for l in lines), lines
    assert "Unable to initialize backend" not in result.stderr
    assert "main" in result.stdout  # the result itself, on stdout
