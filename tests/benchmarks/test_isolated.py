"""benchmarks.isolated: variants built and stepped in a spawned process, errors carried back with their traceback."""

import os

import pytest

from benchmarks.isolated import Worker, WorkerError, variants


class Counting:
    """A timed variant that reports its process and how many batches it has seen."""

    chunk = 2

    def __init__(self, fail_at=None):
        self.seen, self.fail_at = 0, fail_at
        self.info = {"pid": os.getpid()}

    def step(self, batches):
        self.seen += len(batches)
        if self.fail_at is not None and self.seen >= self.fail_at:
            raise ValueError(f"planted failure after {self.seen} batches")
        return float(self.seen)

    def close(self):
        pass


def build(fail_at=None):
    return {"a": Counting(), "b": Counting(fail_at)}


def broken_build():
    raise KeyError("no such model")


def seen(variant):
    return variant.seen


def test_variants_run_in_their_own_process_and_keep_state():
    worker = Worker(build, fail_at=5)
    try:
        assert worker.names() == ["a", "b"]
        a, b = worker.variant("a"), worker.variant("b")
        assert a.chunk == 2 and a.info["pid"] == b.info["pid"] != os.getpid()
        assert a.step([1, 2]) == 2.0 and a.step([3]) == 3.0 and b.step([1]) == 1.0  # state lives in the worker
        assert worker.call("a", seen) == 3 and worker.call("b", seen) == 1
        with pytest.raises(WorkerError, match="planted failure after 5 batches") as error:
            b.step([1, 2, 3, 4])
        assert "Traceback" in str(error.value) and "in step" in str(error.value)
        assert a.step([0]) == 4.0  # the worker goes on after a variant's error
    finally:
        worker.close()
    assert not worker.process.is_alive()


def test_a_failed_build_is_raised_with_its_traceback():
    worker = Worker(broken_build)
    try:
        with pytest.raises(WorkerError, match="no such model"):
            worker.names()
    finally:
        worker.close()
    assert not worker.process.is_alive()


def only(name):
    return {name: Counting()}


def test_variants_gathers_every_workers_variants_in_order():
    first, second, again = Worker(only, "x"), Worker(build), Worker(only, "a")
    try:
        found = variants([first, second])
        assert list(found) == ["x", "a", "b"]
        assert found["x"].info["pid"] != found["a"].info["pid"] == found["b"].info["pid"]
        with pytest.raises(ValueError, match="two workers have a variant named 'a'"):
            variants([second, again])
    finally:
        for w in (first, second, again):
            w.close()
