"""Timed variants in processes of their own, driven from this one (`Worker`).

Two implementations timed in one process share more than the machine: the C allocator's state (its thresholds move
with what was freed before), the kernel's page reclaim of the process, each other's thread pools and resident memory.
Measured on the 2-core machine (BENCHMARKS.md, 2026-12-07): the same HF + hooks step took 6.06 s a batch in the cpu
suite's process and 6.9-7.7 s in smaller ones, ours 6.3-7.1 s; which process held what decided the comparison. A
`Worker` builds its variants in a fresh interpreter (spawned: no state of this process is inherited) and runs their
steps on request, so each side runs as it does in a researcher's process of its own, while `cpu.time_interleaved`
still gives them the same batches in alternating order.

The proxies (`Worker.variant`; `variants(workers)` gives all of them) have what `cpu.time_interleaved` uses:
`chunk`, `info`, `step(batches) -> seconds`. `Worker.call(name, fn, *args)` runs `fn(variant, *args)` in the worker
(e.g. a commit of its runner). An error in the worker is raised here as a `WorkerError` carrying the worker's
traceback.
"""

from __future__ import annotations

import multiprocessing
import os
import traceback
from typing import Callable


class WorkerError(RuntimeError):
    """A variant's worker process failed; the message holds its traceback."""


def _serve(conn, build: Callable, args: tuple, kwargs: dict, platform: str) -> None:
    """The worker's loop: build the variants, then answer step / call / close requests until closed."""
    import jax

    jax.config.update("jax_platforms", platform)
    try:
        import torch

        torch.set_num_threads(os.cpu_count())
    except ImportError:
        pass
    try:
        variants = build(*args, **kwargs)  # {name: variant}
        conn.send(("ok", {name: (v.chunk, v.info) for name, v in variants.items()}))
    except BaseException:
        conn.send(("error", traceback.format_exc()))
        return
    while True:
        request = conn.recv()
        try:
            if request[0] == "step":
                _, name, batches = request
                conn.send(("ok", variants[name].step(batches)))
            elif request[0] == "call":
                _, name, fn, call_args = request
                conn.send(("ok", fn(variants[name], *call_args)))
            else:  # close
                for v in variants.values():
                    v.close()
                conn.send(("ok", None))
                return
        except BaseException:
            conn.send(("error", traceback.format_exc()))


class Worker:
    """A spawned process holding the variants `build(*args, **kwargs)` returns ({name: variant}).

    `build` and its arguments must pickle (a module-level function; paths, configs, numbers). The worker runs JAX on
    `platform` (this process's default backend unless given) and torch with every core, as `cpu.run_suite` does."""

    def __init__(self, build: Callable, *args, platform: str | None = None, **kwargs):
        import jax

        context = multiprocessing.get_context("spawn")
        self.conn, child = context.Pipe()
        self.process = context.Process(target=_serve, args=(child, build, args, kwargs,
                                                            platform or jax.default_backend()), daemon=True)
        self.process.start()
        child.close()
        self.shapes = None  # {name: (chunk, info)}, on the first `ready`

    def ready(self) -> "Worker":
        """Wait until the worker has built its variants (start several workers first: they build side by side)."""
        if self.shapes is None:
            self.shapes = self._answer()
        return self

    def variant(self, name: str) -> "_Proxy":
        return _Proxy(self, name, *self.ready().shapes[name])

    def names(self) -> list[str]:
        return list(self.ready().shapes)

    def call(self, name: str, fn: Callable, *args):
        """fn(variant, *args) in the worker; its result pickled back."""
        self.conn.send(("call", name, fn, args))
        return self._answer()

    def close(self) -> None:
        """Close the variants and end the process (a worker that failed to build just ends)."""
        if self.process.is_alive():
            try:
                self.conn.send(("close",))
                self._answer()
            except (WorkerError, EOFError, OSError):  # it failed, or ended after failing to build
                pass
        self.process.join(timeout=60)
        if self.process.is_alive():
            self.process.kill()
            self.process.join()
        self.conn.close()

    def _answer(self):
        try:
            status, value = self.conn.recv()
        except EOFError:
            raise WorkerError(f"the worker process ended (exit code {self.process.exitcode}) without answering; "
                              "out of memory?") from None
        if status == "error":
            raise WorkerError(f"in the worker process:\n{value}")
        return value


def variants(workers: list[Worker]) -> dict:
    """Every variant of the workers, {name: proxy}, in the workers' order (what `cpu.time_interleaved` takes); a
    name two workers share is refused (one would hide the other)."""
    out = {}
    for w in workers:
        for name in w.names():
            if name in out:
                raise ValueError(f"two workers have a variant named {name!r}")
            out[name] = w.variant(name)
    return out


class _Proxy:
    """One variant of a worker, timed from this process (the seconds are the worker's own count)."""

    def __init__(self, worker: Worker, name: str, chunk: int, info: dict):
        self.worker, self.name, self.chunk, self.info = worker, name, chunk, info

    def step(self, batches: list) -> float:
        self.worker.conn.send(("step", self.name, batches))
        return self.worker._answer()

    def close(self) -> None:
        """Nothing: the worker closes all of its variants (`Worker.close`)."""
