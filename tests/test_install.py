"""Installing opt_jax into a researcher's own environment, resolved by pip against the package index (needs the
index: `make test-install`, run by CI, not by `make test`). Nothing is installed: `pip install --dry-run`."""

import json
import os
import subprocess
import sys

import pytest

from helpers import ROOT

pytestmark = pytest.mark.install


@pytest.fixture(scope="module")
def resolve(tmp_path_factory):
    """`resolve(extra)`: {distribution name: version} that `pip install -e '.[extra]'` would install in a fresh venv."""
    venv = tmp_path_factory.mktemp("venv")
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = os.path.join(venv, "bin", "pip")

    def run(extra: str) -> dict:
        report = venv / f"report-{extra or 'base'}.json"
        target = f"{ROOT}[{extra}]" if extra else ROOT
        done = subprocess.run([pip, "install", "--dry-run", "--quiet", "--report", str(report), "-e", target],
                              capture_output=True, text=True, timeout=900)
        assert done.returncode == 0, done.stderr[-3000:]
        installs = json.loads(report.read_text())["install"]
        return {i["metadata"]["name"].lower().replace("_", "-"): i["metadata"]["version"] for i in installs}

    return run


def test_the_base_install_takes_no_torch_and_no_cuda(resolve):
    found = resolve("")
    assert {"jax", "jaxlib", "flax", "tensorstore", "transformers", "pyarrow"} <= set(found), sorted(found)
    assert "torch" not in found and not [name for name in found if name.startswith("nvidia-")], sorted(found)


@pytest.mark.parametrize("cuda", ["cuda12", "cuda13"])
def test_the_cuda_extras_resolve_with_jax_cuda_plugin(resolve, cuda):
    found = resolve(cuda)
    assert found.get(f"jax-{cuda}-plugin") == found["jax"] == found["jaxlib"], sorted(found)
    assert f"jax-{cuda}-pjrt" in found and "torch" not in found


def test_the_torch_extra_adds_torch(resolve):
    assert "torch" in resolve("torch")
