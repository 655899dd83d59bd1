"""Collection as separate processes: 4 simulated devices, 2 jax.distributed processes merged, SIGKILL + rerun.

Each compares every array with an in-process run: the counts, the n-gram tables, and the example sets
(`top` and `random`) with the windows they point into."""

import json
import os
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

import analyses
from kill import kill_when
from paused_commits import STEPS as PAUSE_STEPS
from analyses.collection.store import StatsError
from helpers import ROOT, assert_same_stats, devices_env as _env, small_disk

SEQ = 12
QUANTILE = 2  # quantile examples per neuron and value bin: compared with the other sets by `assert_same_stats`


def _collect_cmd(model, corpus, out, *extra):
    return [sys.executable, "scripts/collect.py", "--model", model, "--corpus", corpus, "--out", out,
            "--seq_len", str(SEQ), "--batch_size", "4", "--ngram_orders", "2,3", "--quantile_examples", str(QUANTILE),
            *extra]


@pytest.fixture(scope="module")
def single(tiny_model, tiny_corpus, tmp_path_factory):
    """The reference: one device, one process, in this process."""
    out = str(tmp_path_factory.mktemp("single") / "stats")
    return analyses.open_stats(analyses.collect(tiny_model, [tiny_corpus], out, seq_len=SEQ, batch_size=4,
                                                ngram_orders=(2, 3), quantile_examples=QUANTILE, verbose=False))


def test_four_simulated_devices_equal_one(tiny_model, tiny_corpus, tmp_path, single):
    out = str(tmp_path / "stats")
    result = subprocess.run(_collect_cmd(tiny_model, tiny_corpus, out), cwd=ROOT, env=_env(4),
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    assert "devices: data=4 " in result.stdout, result.stdout  # the run's own mesh: the batches split over 4
    assert_same_stats(analyses.open_stats(out), single)


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_merged_equal_one(tiny_model, tiny_corpus, tmp_path, single):
    """Two hosts of 2 devices each, each its own --mesh of its local devices (one the neurons split over both, the
    other a data=1,neurons=2 mesh: issue 25's multi-host), merged: equal to one device in one process."""
    out = str(tmp_path / "run")
    coordinator = f"127.0.0.1:{_free_port()}"
    meshes = ["neurons=2", "data=1,neurons=2"]
    procs = [subprocess.Popen(_collect_cmd(tiny_model, tiny_corpus, out, "--coordinator", coordinator,
                                           "--num_processes", "2", "--process_id", str(i), "--mesh", meshes[i]),
                              cwd=ROOT, env=_env(2), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for i in range(2)]
    for p, mesh in zip(procs, meshes):
        stdout, err = p.communicate(timeout=600)
        assert p.returncode == 0, err
        assert "neurons=2" in stdout + err, (stdout + err)[-2000:]  # the run says the mesh it runs on
    parts = sorted(os.path.join(out, d) for d in os.listdir(out))
    assert [os.path.basename(p) for p in parts] == ["process-0-of-2", "process-1-of-2"]
    tokens = [analyses.open_stats(p).tokens for p in parts]
    assert all(t > 0 for t in tokens), "each process must have had batches of its own"
    with pytest.raises(StatsError, match="expected the 2 parts"):
        analyses.merge_stats(parts[:1], str(tmp_path / "half"))
    result = subprocess.run([sys.executable, "scripts/merge_stats.py", "--parts", f"{out}/process-*",
                             "--out", str(tmp_path / "merged")], cwd=ROOT, env=_env(1), capture_output=True,
                            text=True)
    assert result.returncode == 0, result.stderr
    merged = analyses.open_stats(str(tmp_path / "merged"))
    assert_same_stats(merged, single)
    assert sum(tokens) == merged.tokens


@pytest.fixture(scope="module")
def long_corpus(tmp_path_factory):
    """A corpus of 201 batches of 4 x SEQ tokens (the killed runs take its first 12)."""
    corpus = tmp_path_factory.mktemp("long") / "long.jsonl"
    rng = np.random.default_rng(0)
    words = ["dead", "neurons", "fire", "on", "tokens", "positional", "models", "the", "n-gram", "language"]
    corpus.write_text("\n".join(json.dumps({"text": " ".join(rng.choice(words, 60))}) for _ in range(40)) + "\n")
    return str(corpus)


SHORT = 12 * 4 * SEQ  # tokens of the killed runs: 12 batches


@pytest.fixture(scope="module")
def short_run(tiny_model, long_corpus, tmp_path_factory):
    """The long corpus's first 12 batches, uninterrupted: (corpus path, stats)."""
    clean = analyses.collect(tiny_model, [long_corpus], str(tmp_path_factory.mktemp("short") / "s"), seq_len=SEQ,
                             batch_size=4, ngram_orders=(2, 3), quantile_examples=QUANTILE, max_tokens=SHORT,
                             verbose=False)
    return long_corpus, analyses.open_stats(clean)


def _rerun_equals(model, corpus, out, clean, flush_every_batches):
    """Rerun the killed command to its end: every array equals the uninterrupted run, one generation is left.

    The rerun is the command's collection (`_collect_cmd`'s flags, --max_tokens SHORT) called in this process,
    where short_run compiled its shapes: a second interpreter would only add its start and compilation (the
    full-disk test below resumes with the command itself)."""
    stats = analyses.open_stats(out)
    assert not stats.manifest["complete"] and stats.tokens > 0
    analyses.collect(model, [corpus], out, seq_len=SEQ, batch_size=4, ngram_orders=(2, 3), quantile_examples=QUANTILE,
                     flush_every_batches=flush_every_batches, max_tokens=SHORT, verbose=False)
    assert_same_stats(analyses.open_stats(out), clean)
    generations = [d for d in os.listdir(out) if d.startswith("data-")]
    assert len(generations) == 1 and os.readlink(os.path.join(out, "act")) == f"{generations[0]}/act"


def test_sigkill_then_rerun_equals_an_uninterrupted_run(tiny_model, tmp_path, short_run):
    """Killed after its third commit of 12 (one a batch); kill_when asserts it was still running then."""
    corpus, clean = short_run
    out = str(tmp_path / "killed")
    cmd = _collect_cmd(tiny_model, corpus, out, "--flush_every_batches", "1", "--max_tokens", str(SHORT))
    proc = subprocess.Popen(cmd, cwd=ROOT, env=_env(1), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    kill_when(proc, os.path.join(out, "manifest.json"), lambda m: m["cursor"]["next_batch"] >= 3)
    assert os.path.exists(os.path.join(out, ".lock")), "the killed writer's lock file stays, and does not block"
    _rerun_equals(tiny_model, corpus, out, clean, flush_every_batches=1)


def test_a_second_run_on_the_same_out_is_refused_and_the_first_is_unharmed(tiny_model, tmp_path, short_run):
    """The same command in two terminals: the second stops at once naming the first (whose commits are paused
    mid-way, so that it is surely running), and the first's store equals an uninterrupted run's."""
    corpus, clean = short_run
    out, marker = str(tmp_path / "twice"), str(tmp_path / "paused.json")
    cmd = _collect_cmd(tiny_model, corpus, out, "--flush_every_batches", "4", "--max_tokens", str(SHORT))
    paused = [sys.executable, "tests/paused_commits.py", marker, "written", "3.0", "--", *cmd[1:]]
    first = subprocess.Popen(paused, cwd=ROOT, env=_env(1), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                             text=True)
    deadline = time.monotonic() + 300
    while not os.path.exists(marker):
        assert first.poll() is None and time.monotonic() < deadline, "the first run ended before its commit paused"
        time.sleep(0.01)
    second = subprocess.run(cmd, cwd=ROOT, env=_env(1), capture_output=True, text=True, timeout=600)
    assert first.poll() is None, "the first run was still writing while the second tried"
    assert second.returncode == 1 and "Traceback" not in second.stderr
    assert f"error: {out}: another process is writing it (pid {first.pid}" in second.stderr
    _, errors = first.communicate(timeout=600)
    assert first.returncode == 0, errors
    assert_same_stats(analyses.open_stats(out), clean)


@pytest.mark.parametrize("step", PAUSE_STEPS)
def test_sigkill_during_a_background_commit_then_rerun_equals_an_uninterrupted_run(tiny_model, tmp_path, short_run,
                                                                                   step):
    """Killed while the commit thread is at `step` of its third commit (or later) and the step loop counts on."""
    corpus, clean = short_run
    out, marker = str(tmp_path / "killed"), str(tmp_path / "paused.json")
    cmd = _collect_cmd(tiny_model, corpus, out, "--flush_every_batches", "1", "--max_tokens", str(SHORT))
    paused = [sys.executable, "tests/paused_commits.py", marker, step, "1.0", "--", *cmd[1:]]
    proc = subprocess.Popen(paused, cwd=ROOT, env=_env(1), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    seen = []
    kill_when(proc, marker, lambda m: seen.append(m) or m["generation"] >= 3)
    assert seen[-1]["step"] == step and seen[-1]["thread"].startswith("commit"), seen[-1]
    committed = analyses.open_stats(out).manifest["generation"]
    assert committed == seen[-1]["generation"] - (step != "committed"), (committed, seen[-1])
    _rerun_equals(tiny_model, corpus, out, clean, flush_every_batches=1)


def test_a_full_disk_is_a_clear_error_and_the_same_command_resumes(tiny_model, tmp_path, short_run):
    """`--out` on a disk that fills during a commit: a clear error, the last commit readable and nothing else left;
    with less free than the counts alone take, the next commit is refused before it writes; with room, the same
    command ends equal to an uninterrupted run."""
    from opt_jax import disk

    corpus, clean = short_run
    mount = tmp_path / "disk"
    with small_disk(mount, disk.used_bytes(clean.root) * 4):
        out = str(mount / "stats")
        cmd = _collect_cmd(tiny_model, corpus, out, "--flush_every_batches", "2", "--max_tokens")
        # The first third and the refused run in this process (the shapes short_run compiled); the run that fills
        # the disk and the one that resumes are the command's own.
        stats = analyses.open_stats(analyses.collect(
            tiny_model, [corpus], out, seq_len=SEQ, batch_size=4, ngram_orders=(2, 3), quantile_examples=QUANTILE,
            flush_every_batches=2, max_tokens=SHORT // 3, verbose=False))
        generation = os.path.join(out, f"data-{stats.manifest['generation']:06d}")
        counts = sum(disk.used_bytes(os.path.join(generation, name)) for name in stats.manifest["arrays"]
                     if not name.startswith("examples_") and name != "windows")  # rewritten whole by a commit
        ballast = mount / "ballast"

        def leave_free(n):
            ballast.unlink(missing_ok=True)
            ballast.write_bytes(b"\0" * (disk.free_bytes(str(mount)) - n))

        leave_free(counts + 8192)  # the counts fit, the example sets do not: the disk fills mid-commit
        full = subprocess.run([*cmd, str(SHORT)], cwd=ROOT, env=_env(1), capture_output=True, text=True, timeout=600)
        assert full.returncode == 1 and "Traceback" not in full.stderr, full.stderr
        assert "No space left on device" in full.stderr and "is intact" in full.stderr
        assert analyses.open_stats(out).manifest == stats.manifest, "the last commit as it was"
        assert [d for d in os.listdir(out) if d.startswith("data-")] == [os.path.basename(generation)]
        leave_free(counts // 2)
        with pytest.raises(StatsError, match="needs about .* is free there"):  # the command's run, in this process
            analyses.collect(tiny_model, [corpus], out, seq_len=SEQ, batch_size=4, ngram_orders=(2, 3),
                             quantile_examples=QUANTILE, flush_every_batches=2, max_tokens=SHORT, verbose=False)
        assert analyses.open_stats(out).manifest == stats.manifest, "refused before it wrote"
        ballast.unlink()
        again = subprocess.run([*cmd, str(SHORT)], cwd=ROOT, env=_env(1), capture_output=True, text=True,
                               timeout=600)
        assert again.returncode == 0, again.stderr
        assert_same_stats(analyses.open_stats(out), clean)
