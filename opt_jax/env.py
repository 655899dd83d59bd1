"""Where a run will run: jax's backend and devices, their memory, the host's, and what looks wrong.

`python -m opt_jax.env` prints it all; the long-running scripts print `describe().line()` when they start.

The one mistake this guards against is the silent one: a machine with an NVIDIA GPU whose jax is the CPU build
(`pip install -e .` takes jax from PyPI, which runs on the CPU unless a CUDA plugin is installed: the `cuda12` or
`cuda13` extra). Such a run works, only hundreds of times slower, and says nothing. So:

- `nvidia_visible()`: an NVIDIA driver is present (`/dev/nvidia*` or an `nvidia-smi` on the PATH);
- `Environment.warnings()`: that GPU is unused because jax runs on the CPU (with the command that fixes it), and
  a model above 1.3b parameters is about to run on the CPU.
"""

from __future__ import annotations

import dataclasses
import glob
import logging
import math
import os
import platform
import shutil
import sys

import psutil

from opt_jax.errors import OptJaxError

# OPT-1.3b has 1.32e9 parameters: anything above runs for days on a CPU.
CPU_PARAMS_LIMIT = 1.4e9
GPU_INSTALL = "pip install -e '.[cuda12]'  (or '.[cuda13]' with a CUDA 13 driver)"
# jax logs at INFO each backend it could not start ("Unable to initialize backend 'tpu'"); absl prints INFO.
_BACKEND_LOGGERS = ("jax._src.xla_bridge",)


@dataclasses.dataclass(frozen=True)
class Device:
    kind: str  # e.g. "NVIDIA H100 80GB HBM3", "cpu"
    memory_bytes: int | None  # what jax may allocate on it; None where it shares the host's (the CPU)


@dataclasses.dataclass(frozen=True)
class Environment:
    jax_version: str
    jaxlib_version: str
    backend: str  # "cpu", "gpu", "tpu"
    devices: tuple[Device, ...]  # this process's (local) devices
    process_count: int
    host_memory_bytes: int
    host_available_bytes: int
    nvidia: str | None  # how an NVIDIA GPU was seen on this machine, None if not
    python: str = platform.python_version()

    def line(self) -> str:
        """One line: backend, devices and their memory, e.g. `jax 0.10.2 on gpu: 1 x NVIDIA H100 (79.1 GB)`."""
        kinds: dict[str, list[Device]] = {}
        for device in self.devices:
            kinds.setdefault(device.kind, []).append(device)
        parts = []
        for kind, same in kinds.items():
            memory = same[0].memory_bytes
            each = " each" if len(same) > 1 else ""
            parts.append(f"{len(same)} x {kind}" + (f" ({_gb(memory)}{each})" if memory else ""))
        processes = f", {self.process_count} processes" if self.process_count > 1 else ""
        return (f"jax {self.jax_version} on {self.backend}: {', '.join(parts)}{processes}; host memory "
                f"{_gb(self.host_available_bytes)} free of {_gb(self.host_memory_bytes)}")

    def warnings(self, model_params: int | None = None) -> list[str]:
        """What looks wrong for a run of a model of `model_params` parameters (None: any run)."""
        found = []
        if self.backend == "cpu" and self.nvidia:
            found.append(f"an NVIDIA GPU is visible ({self.nvidia}) but jax runs on the CPU: jax's CUDA plugin is "
                         f"not installed or failed to load; install it with {GPU_INSTALL}, then check with "
                         f"`python -m opt_jax.env`")
        if self.backend == "cpu" and model_params is not None and model_params > CPU_PARAMS_LIMIT:
            found.append(f"a model of {model_params / 1e9:.1f}B parameters on the CPU: expect hours to days per "
                         f"million tokens; run on a GPU (see docs/install.md)")
        return found

    def report(self) -> str:
        """Everything, for `python -m opt_jax.env`."""
        rows = [f"python {self.python}, jax {self.jax_version}, jaxlib {self.jaxlib_version}",
                f"backend: {self.backend}, {len(self.devices)} local device(s), {self.process_count} process(es)"]
        rows += [f"  device {i}: {d.kind}, " + (f"{_gb(d.memory_bytes)} for jax" if d.memory_bytes
                                                 else "memory shared with the host")
                 for i, d in enumerate(self.devices)]
        rows.append(f"host memory: {_gb(self.host_available_bytes)} available of {_gb(self.host_memory_bytes)}")
        rows.append(f"NVIDIA GPU seen by the system: {self.nvidia or 'no'}")
        rows += [f"warning: {w}" for w in self.warnings()]
        return "\n".join(rows)


def _gb(nbytes: int | None) -> str:
    return "?" if nbytes is None else f"{nbytes / 1e9:.1f} GB"


def nvidia_visible() -> str | None:
    """How this machine shows an NVIDIA GPU (device files or `nvidia-smi`), or None."""
    nodes = sorted(n for n in glob.glob("/dev/nvidia[0-9]*") if os.path.basename(n)[6:].isdigit())
    if nodes:
        return f"{len(nodes)} x /dev/nvidiaN"
    smi = shutil.which("nvidia-smi")
    return f"{smi}" if smi else None


def quiet_backend_probe() -> None:
    """Keep jax's INFO lines about backends it could not start (TPU on a GPU or CPU machine) off the console."""
    for name in _BACKEND_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)


def describe() -> Environment:
    """The environment as jax sees it (starts jax's backend if it has not started)."""
    quiet_backend_probe()
    import jax
    import jaxlib

    devices = tuple(Device(_kind(d), _memory(d)) for d in jax.local_devices())
    memory = psutil.virtual_memory()
    return Environment(jax.__version__, getattr(jaxlib, "__version__", "?"), jax.default_backend(), devices,
                       jax.process_count(), memory.total, memory.available, nvidia_visible())


def _kind(device) -> str:
    kind = getattr(device, "device_kind", None) or device.platform
    return "cpu" if device.platform == "cpu" else kind


def _memory(device) -> int | None:
    if device.platform == "cpu":
        return None
    try:
        stats = device.memory_stats()
    except Exception:  # a backend without memory statistics  # noqa: BLE001
        return None
    return int(stats["bytes_limit"]) if stats and "bytes_limit" in stats else None


def checkpoint_params(model_dir: str) -> int:
    """Parameters of a converted checkpoint, from its manifest's shapes (nothing is read)."""
    from opt_jax.checkpoint import read_manifest

    return sum(math.prod(shape) for shape in read_manifest(model_dir)["params"].values())


def announce(model_dir: str | None = None, stream=None) -> Environment:
    """Print where a run runs and its warnings, on stderr with the progress (stdout keeps the results)."""
    stream = stream or sys.stderr
    env = describe()
    print(f"devices: {env.line()}", file=stream, flush=True)
    try:
        params = checkpoint_params(model_dir) if model_dir else None
    except OptJaxError:  # not a converted checkpoint: the run itself says so, in its own words
        params = None
    for warning in env.warnings(params):
        print(f"warning: {warning}", file=stream, flush=True)
    return env


def main() -> int:
    print(describe().report())
    return 0


if __name__ == "__main__":
    sys.exit(main())
