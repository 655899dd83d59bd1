"""Collection as separate processes: 4 simulated devices, 2 jax.distributed processes merged, SIGKILL + rerun.

Each compares every array with an in-process run: the counts, the n-gram tables, and the example sets
(`top` and `random`) with the windows they point into."""

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

import analyses
from kill import kill_when
from analyses.collection.store import ARRAY_NAMES, StatsError, example_layouts
from helpers import ROOT, devices_env as _env

SEQ = 12


def _collect_cmd(model, corpus, out, *extra):
    return [sys.executable, "scripts/collect.py", "--model", model, "--corpus", corpus, "--out", out,
            "--seq_len", str(SEQ), "--batch_size", "4", "--ngram_orders", "2,3", *extra]


def _assert_same(a, b):
    for name in ARRAY_NAMES:
        np.testing.assert_array_equal(np.asarray(getattr(a, name)), np.asarray(getattr(b, name)), err_msg=name)
    for key in ("tokens", "sequences", "full_length_sequences"):
        assert a.manifest[key] == b.manifest[key], key
    assert a.examples_per_neuron == b.examples_per_neuron == 16
    for name in example_layouts(1, 1, 1, 2):
        np.testing.assert_array_equal(np.asarray(a.array(name).read().result()),
                                      np.asarray(b.array(name).read().result()), err_msg=name)
    assert (np.asarray(a.array("examples_random_window").read().result()) >= 0).any()
    ta, tb = a.ngram_table().to_arrays(), b.ngram_table().to_arrays()
    assert ta.keys() == tb.keys() and all(len(v) for v in ta.values())
    for name in ta:
        np.testing.assert_array_equal(ta[name], tb[name], err_msg=name)


@pytest.fixture(scope="module")
def single(tiny_model, tiny_corpus, tmp_path_factory):
    """The reference: one device, one process, in this process."""
    out = str(tmp_path_factory.mktemp("single") / "stats")
    return analyses.open_stats(analyses.collect(tiny_model, [tiny_corpus], out, seq_len=SEQ, batch_size=4,
                                                ngram_orders=(2, 3), verbose=False))


def test_four_simulated_devices_equal_one(tiny_model, tiny_corpus, tmp_path, single):
    out = str(tmp_path / "stats")
    probe = subprocess.run([sys.executable, "-c", "import jax; print(jax.local_device_count())"], env=_env(4),
                           capture_output=True, text=True)
    assert probe.stdout.strip() == "4"
    result = subprocess.run(_collect_cmd(tiny_model, tiny_corpus, out), cwd=ROOT, env=_env(4),
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    _assert_same(analyses.open_stats(out), single)


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_merged_equal_one(tiny_model, tiny_corpus, tmp_path, single):
    out = str(tmp_path / "run")
    coordinator = f"127.0.0.1:{_free_port()}"
    procs = [subprocess.Popen(_collect_cmd(tiny_model, tiny_corpus, out, "--coordinator", coordinator,
                                           "--num_processes", "2", "--process_id", str(i)),
                              cwd=ROOT, env=_env(1), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for i in range(2)]
    for p in procs:
        _, err = p.communicate(timeout=600)
        assert p.returncode == 0, err
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
    _assert_same(merged, single)
    assert sum(tokens) == merged.tokens


def test_sigkill_then_rerun_equals_an_uninterrupted_run(tiny_model, tmp_path):
    corpus = tmp_path / "long.jsonl"
    rng = np.random.default_rng(0)
    words = ["dead", "neurons", "fire", "on", "tokens", "positional", "models", "the", "n-gram", "language"]
    corpus.write_text("\n".join(json.dumps({"text": " ".join(rng.choice(words, 60))}) for _ in range(40)) + "\n")
    clean = str(tmp_path / "clean")
    analyses.collect(tiny_model, [str(corpus)], clean, seq_len=SEQ, batch_size=4, ngram_orders=(2, 3),
                     verbose=False)
    out = str(tmp_path / "killed")
    cmd = _collect_cmd(tiny_model, str(corpus), out, "--flush_every_batches", "1")
    proc = subprocess.Popen(cmd, cwd=ROOT, env=_env(1), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    kill_when(proc, os.path.join(out, "manifest.json"), lambda m: m["cursor"]["next_batch"] >= 3)
    stats = analyses.open_stats(out)
    assert not stats.manifest["complete"] and stats.tokens > 0
    result = subprocess.run(cmd, cwd=ROOT, env=_env(1), capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    _assert_same(analyses.open_stats(out), analyses.open_stats(clean))
    generations = [d for d in os.listdir(out) if d.startswith("data-")]
    assert len(generations) == 1 and os.readlink(os.path.join(out, "act")) == f"{generations[0]}/act"
