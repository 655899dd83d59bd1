"""One writer at a time (`opt_jax.lock`): a second writer of any directory the project writes is refused at once,
naming the holder, or waits; the kernel frees the lock of a killed holder; a process may re-enter its own lock."""

import os
import signal
import subprocess
import sys
import threading
import time

import pytest

import analyses
import opt_jax
from analyses.collection import collect_runs
from analyses.neurons.atlas import build_atlas
from helpers import ROOT, offline_env, run_script
from opt_jax import lock
from opt_jax.train import TrainOptions, model_config, train


def _hold(tmp_path, *directories):
    """A process holding the locks of `directories` (see tests/hold_lock.py), once it says so."""
    ready = tmp_path / f"ready-{time.monotonic_ns()}"
    proc = subprocess.Popen([sys.executable, "tests/hold_lock.py", str(ready), *map(str, directories)], cwd=ROOT,
                            stdin=subprocess.PIPE, env=offline_env())
    deadline = time.monotonic() + 120
    while not ready.exists():
        assert proc.poll() is None and time.monotonic() < deadline, "the holder did not take its locks"
        time.sleep(0.01)
    return proc


def _release(proc) -> None:
    proc.stdin.close()
    assert proc.wait(timeout=60) == 0


def test_a_second_writer_is_refused_naming_the_holder(tmp_path):
    directory = tmp_path / "store"
    holder = _hold(tmp_path, directory)
    try:
        with pytest.raises(lock.LockedError) as e, lock.locked(str(directory)):
            pass
        message = str(e.value)
        assert str(directory) in message and f"pid {holder.pid}" in message and "hold_lock.py" in message
        assert "--wait_for_lock" in message
    finally:
        _release(holder)
    with lock.locked(str(directory)) as path:  # free again once the holder let go
        assert path == os.path.join(str(directory), lock.LOCK_NAME)
    assert not directory.exists(), "a directory made only to hold the lock goes with it"


def test_a_killed_holder_leaves_no_stale_lock(tmp_path):
    directory = tmp_path / "run"
    holder = _hold(tmp_path, directory)
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    assert os.path.exists(lock.lock_path(str(directory))), "the lock file stays behind"
    with lock.locked(str(directory)):  # and yet the kernel released the lock with the process
        pass


def test_wait_blocks_until_the_holder_is_done(tmp_path):
    directory = tmp_path / "atlas"
    holder = _hold(tmp_path, f"whole:{directory}")
    said, acquired = [], []

    def writer():
        with lock.locked(str(directory), wait=True, replaced_whole=True, say=said.append):
            acquired.append(True)

    thread = threading.Thread(target=writer)
    thread.start()
    while not said:
        time.sleep(0.01)
    assert f"pid {holder.pid}" in said[0] and "waiting" in said[0]
    time.sleep(0.5)
    assert not acquired, "the waiter must not get the lock while the holder holds it"
    _release(holder)
    thread.join(60)
    assert acquired == [True], "the waiter got the lock once the holder let go"


def test_a_process_reenters_its_own_lock_and_lock_files_do_not_count_as_contents(tmp_path):
    directory = tmp_path / "d"
    directory.mkdir()
    with lock.locked(str(directory)):
        with lock.locked(str(directory)):
            assert lock.entries(str(directory)) == []
        holder = subprocess.run([sys.executable, "-c", "import sys; from opt_jax import lock\n"
                                 f"with lock.locked({str(directory)!r}): sys.exit(3)"],
                                env=offline_env(), capture_output=True, text=True, timeout=120)
        assert holder.returncode == 1 and "LockedError" in holder.stderr, "still held after the inner block"
    assert os.listdir(directory) == [], "the lock file goes with its release"
    (directory / "x").write_text("")
    with lock.locked(str(directory)):
        assert sorted(os.listdir(directory)) == [".lock", "x"] and lock.entries(str(directory)) == ["x"]


def test_every_writer_refuses_a_locked_directory_and_writes_nothing(tmp_path, tiny_model, tiny_corpus, pre_ln_dir):
    """The store, the converted checkpoint, the training run, the report, the atlas (locked beside it), an
    ablation and an attribution (locked beside it: it is swapped in whole), the study's directory, a merge, a join
    and a collection in runs."""
    d = {name: tmp_path / name for name in ("stats", "converted", "run", "report", "atlas", "ablation",
                                            "attribution", "study", "merged", "joined", "runs")}
    holder = _hold(tmp_path, d["stats"], d["converted"], d["run"], d["report"], f"whole:{d['atlas']}",
                   d["ablation"], f"whole:{d['attribution']}", d["study"], d["merged"], d["joined"], d["runs"])
    stats = analyses.collect(tiny_model, [tiny_corpus], str(tmp_path / "ok"), seq_len=16, batch_size=2,
                             max_tokens=64, verbose=False)
    calls = {
        "stats": lambda: analyses.collect(tiny_model, [tiny_corpus], str(d["stats"]), seq_len=16, batch_size=2,
                                          verbose=False),
        "converted": lambda: opt_jax.convert(pre_ln_dir, str(d["converted"]), verbose=False),
        "run": lambda: train(str(d["run"]), model_config(None, layers=1, hidden=16, heads=2, ffn=32, vocab_size=64,
                                                           max_positions=16), TrainOptions(steps=1, seq_len=16),
                             corpus=[tiny_corpus]),
        "report": lambda: analyses.analyze([stats], str(d["report"]), verbose=False),
        "atlas": lambda: build_atlas([stats], str(d["atlas"]), verbose=False),
        "ablation": lambda: analyses.ablate(tiny_model, [tiny_corpus], "0:1", str(d["ablation"]), seq_len=16,
                                            verbose=False),
        "attribution": lambda: analyses.attribute(tiny_model, [tiny_corpus], str(d["attribution"]), seq_len=16,
                                                  verbose=False),
        "study": lambda: analyses.run_study(str(d["study"]), models=[tiny_model], corpus=[tiny_corpus],
                                            seq_len=16),
        "merged": lambda: analyses.merge_stats([stats], str(d["merged"])),
        "joined": lambda: analyses.join_stats([stats], str(d["joined"]), verbose=False),
        "runs": lambda: collect_runs(tiny_model, [tiny_corpus], str(d["runs"]), seq_len=16, batch_size=2,
                                     verbose=False),
    }
    try:
        for name, call in calls.items():
            with pytest.raises(lock.LockedError, match=f"pid {holder.pid}"):
                call()
            assert not os.path.exists(d[name]) or lock.entries(str(d[name])) == [], f"{name}: something was written"
    finally:
        _release(holder)


def test_scripts_print_the_refusal_without_a_traceback(tmp_path, tiny_model, tiny_corpus):
    out = tmp_path / "stats"
    holder = _hold(tmp_path, out)
    try:
        result = run_script("scripts/collect.py", "--model", tiny_model, "--corpus", tiny_corpus, "--out", str(out),
                            "--seq_len", "16", "--batch_size", "2")
    finally:
        _release(holder)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert f"error: {out}: another process is writing it (pid {holder.pid}" in result.stderr
