"""Commits written and n-grams counted behind the step loop give what the step loop doing both gives.

Each run is compared array by array with a run that waits for every commit and counts every batch's n-grams
itself (`background_commits=False, background_ngrams=False`), and the threads the work ran in are recorded,
so that a test cannot pass with the background path unused."""

import threading
import time

import numpy as np
import pytest

import analyses
import opt_jax
from analyses.collection.background import Behind
from analyses.collection.ngrams import NgramBudgetError, NgramTable
from analyses.collection.store import StatsStore
from helpers import FakeDevice, assert_same_stats

SEQ = 12
FLAGS = dict(seq_len=SEQ, batch_size=2, ngram_orders=(2, 3), flush_every_batches=1, verbose=False)


@pytest.fixture
def threads(monkeypatch):
    """{"commit": [...], "ngrams": [...]}: the thread names `StatsStore.commit` and `NgramTable.add` ran in."""
    seen = {"commit": [], "ngrams": []}
    commit, add = StatsStore.commit, NgramTable.add

    def recorded(name, method):
        def wrapper(*args, **kwargs):
            seen[name].append(threading.current_thread().name)
            return method(*args, **kwargs)
        return wrapper

    monkeypatch.setattr(StatsStore, "commit", recorded("commit", commit))
    monkeypatch.setattr(NgramTable, "add", recorded("ngrams", add))
    return seen


@pytest.fixture(scope="module")
def in_step_loop(tiny_model, tiny_corpus, tmp_path_factory):
    """The reference: every commit and every batch's n-grams in the step loop."""
    out = str(tmp_path_factory.mktemp("step_loop") / "s")
    return analyses.open_stats(analyses.collect(tiny_model, [tiny_corpus], out, background_commits=False,
                                                background_ngrams=False, **FLAGS))


@pytest.mark.parametrize("offload", [False, True], ids=["resident", "streamed"])
def test_background_commits_and_ngrams_equal_the_step_loop(tiny_model, tiny_corpus, tmp_path, in_step_loop, threads,
                                                           offload):
    extra = dict(offload=True, group_size=1, chunk_batches=2) if offload else {}
    out = analyses.collect(tiny_model, [tiny_corpus], str(tmp_path / "s"), **FLAGS, **extra)
    stats = analyses.open_stats(out)
    assert_same_stats(stats, in_step_loop)
    assert stats.manifest["generation"] == len(threads["commit"]) >= 4
    # Every commit but the last (the run's end waits for it anyway) was written by the commit thread.
    assert all(name.startswith("commit") for name in threads["commit"][:-1]), threads["commit"]
    assert threads["commit"][-1] == "MainThread"
    assert threads["ngrams"] and all(name.startswith("ngrams") for name in threads["ngrams"]), threads["ngrams"]


def test_a_failing_background_commit_is_raised_in_the_run_and_the_store_resumes(tiny_model, tiny_corpus, tmp_path,
                                                                                in_step_loop, monkeypatch):
    commit, calls = StatsStore.commit, []

    def failing(self, *args, **kwargs):
        calls.append(threading.current_thread().name)
        if len(calls) == 3:
            time.sleep(0.2)  # the step loop has gone on meanwhile
            raise OSError(28, "No space left on device (planted)")
        return commit(self, *args, **kwargs)

    monkeypatch.setattr(StatsStore, "commit", failing)
    out = str(tmp_path / "s")
    with pytest.raises(OSError, match="No space left on device") as raised:
        analyses.collect(tiny_model, [tiny_corpus], out, **FLAGS)
    assert calls[2].startswith("commit")
    note = "\n".join(raised.value.__notes__)
    assert "background thread 'commit'" in note and f"committing the batches before 3 to {out}" in note, note
    partial = analyses.open_stats(out)  # the two commits before the failing one
    assert partial.manifest["generation"] == 2 and partial.manifest["cursor"]["next_batch"] == 2
    monkeypatch.setattr(StatsStore, "commit", commit)
    analyses.collect(tiny_model, [tiny_corpus], out, **FLAGS)
    assert_same_stats(analyses.open_stats(out), in_step_loop)


def test_an_exceeded_ngram_budget_stops_both_ways_alike(tiny_model, tiny_corpus, tmp_path):
    """The same error, raised before any commit past the batch that exceeded it; nothing committed is lost."""
    ends = {}
    for background in (False, True):
        out = str(tmp_path / f"background-{background}")
        with pytest.raises(NgramBudgetError, match="max_pairs=3,000") as raised:
            analyses.collect(tiny_model, [tiny_corpus], out, ngram_max_pairs=3000, background_commits=background,
                             background_ngrams=background, **FLAGS)
        partial = analyses.open_stats(out)
        assert partial.manifest["generation"] >= 2 and partial.ngram_table().num_pairs() <= 3000
        ends[background] = (str(raised.value), partial.manifest["cursor"], partial.ngram_table().to_arrays(),
                            np.asarray(partial.tok_act))
        notes = getattr(raised.value, "__notes__", [])
        assert any("background thread 'ngrams'" in n for n in notes) == background, notes
    (message, cursor, table, tok_act), (message_bg, cursor_bg, table_bg, tok_act_bg) = ends[False], ends[True]
    assert message_bg == message and cursor_bg == cursor
    assert table_bg.keys() == table.keys() and all(np.array_equal(table_bg[k], table[k]) for k in table)
    np.testing.assert_array_equal(tok_act_bg, tok_act)


def test_behind_runs_one_job_at_a_time_in_order_and_raises_its_error_at_the_next_wait():
    behind, spans = Behind("worker"), []

    def job(i):
        def run():
            start = time.perf_counter()
            time.sleep(0.02)
            spans.append((i, start, time.perf_counter()))
        return run

    for i in range(4):
        behind.submit(f"job {i}", job(i))
    behind.wait()
    assert [i for i, _, _ in spans] == [0, 1, 2, 3]
    assert all(end <= next_start for (_, _, end), (_, next_start, _) in zip(spans, spans[1:]))

    def broken():
        raise KeyError("planted")

    behind.submit("the broken job", broken)
    with pytest.raises(KeyError, match="planted") as raised:
        behind.submit("the next job", job(5))
    assert raised.value.__notes__ == ["(raised in the background thread 'worker' while the broken job)"]
    assert [i for i, _, _ in spans] == [0, 1, 2, 3]  # the next job never started
    main = ValueError("the caller's own error")
    behind.submit("another broken job", broken)
    behind.close(main)  # waits; the job's error becomes a note of the caller's
    assert main.__notes__ == ["meanwhile, in the background: KeyError: 'planted'"]


def test_the_snapshot_goes_where_a_second_set_of_counters_fits():
    """66b, 11 token layers streamed: the counters (101.9 GB) fit the H200 once, so the snapshot needs the host."""
    from analyses.collection.plan import Options, check_memory, make_plan
    from analyses.collection.statistics import accumulator_bytes
    from opt_jax.streaming import layer_bytes

    config = opt_jax.for_size("66b")
    layer = layer_bytes(config, 2)  # bf16
    h200 = FakeDevice(141 * 10**9)
    options = Options(offload=True, group_size=4, token_layers=tuple(range(11)))
    plan = make_plan(config, options)
    groups = plan.groups(4)
    counters = accumulator_bytes(plan, groups)
    host_needs = 3 * 4 * layer + (2 + 3) * (1 << 22) * 8  # groups read ahead and staged, a commit's blocks
    assert check_memory(plan, groups, layer, options, h200, host_needs + counters) == "host"
    assert check_memory(plan, groups, layer, options, h200, host_needs + counters - 1) is None
    off = Options(offload=True, group_size=4, token_layers=tuple(range(11)), background_commits=False)
    assert check_memory(plan, groups, layer, off, h200, 10**12) is None
    two = Options(offload=True, group_size=4, token_layers=(0, 1))  # 2 x 7.4 GB of tok_act: twice on the device
    assert check_memory(make_plan(config, two), groups, layer, two, h200, host_needs) == "device"
