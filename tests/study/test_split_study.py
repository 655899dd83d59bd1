"""The study end to end when a model's token layers do not fit in one run: forced to split by a small memory budget
(`device_memory_gb`), it plans the runs, collects them, joins them and analyses the model once, equal to the study
that collected everything in one run; killed in run 2, it resumes run 2 and does not redo run 1."""

import json
import os

import jax
import numpy as np
import pytest

import analyses
from analyses import study
from analyses.collection import runs as runs_module
from analyses.collection import store as store_module
from analyses.collection.plan import Options, make_plan, memory_use
from analyses.collection.store import ARRAY_NAMES, example_layouts
from opt_jax import checkpoint as ckpt
from opt_jax.streaming import CheckpointLayers

# Two token layers of the 3-layer tiny model (the first half has one); one pass, without n-grams (the join of n-gram
# tables and of their candidates is tested in tests/collection/test_join.py).
COLLECT = {"token_layers": (0, 1)}


def _study(out, model, corpus, **extra):
    return study.run_study(str(out), models=[f"tiny={model}"], corpus=[corpus], seq_len=12, batch_size=4,
                           max_tokens=None, ngram_orders=(), analyses=["dead", "ngrams", "detectors"],
                           compare_domains=False, atlas=False, causal=False, collect_options=COLLECT, **extra)


def _budget_gb(model) -> float:
    """Device memory (GB) for the first run with one token layer (every layer, the example sets): too little for
    two."""
    options = Options(seq_len=12, batch_size=4, full_length_only=True, token_layers=(0,))
    plan = make_plan(ckpt.read_config(model), options)
    use = memory_use(plan, plan.groups(), CheckpointLayers(model).layer_bytes, options, jax.local_devices()[0])
    return (use.needed + 100) / 1e9


@pytest.fixture(scope="module")
def unsplit(tiny_model, tiny_corpus, tmp_path_factory):
    return tmp_path_factory.mktemp("unsplit") / "out"


def test_one_run_needs_no_join(unsplit, tiny_model, tiny_corpus, capsys):
    _study(unsplit, tiny_model, tiny_corpus, verbose=True)
    out = capsys.readouterr().out
    assert out.count("one run holds every token layer: no join needed") == 1, out
    assert not os.path.exists(f"{unsplit}/stats/tiny-runs") and "join" not in analyses.open_stats(
        f"{unsplit}/stats/tiny").manifest


def test_the_split_study_equals_the_unsplit_one_and_resumes_the_run_it_was_killed_in(
        unsplit, tiny_model, tiny_corpus, tmp_path, monkeypatch, capsys):
    out = tmp_path / "out"
    budget = _budget_gb(tiny_model)
    real_commit = store_module.StatsStore.commit
    commits = []

    def dies_in_run_2(self, *args, **kwargs):  # run 2 is killed at its second commit
        if self.root == f"{out}/stats/tiny-runs/run-2":
            commits.append(self.manifest["generation"])
            if len(commits) == 2:
                raise KeyboardInterrupt
        return real_commit(self, *args, **kwargs)

    monkeypatch.setattr(store_module.StatsStore, "commit", dies_in_run_2)
    monkeypatch.setitem(COLLECT, "flush_every_batches", 1)
    with pytest.raises(KeyboardInterrupt):
        _study(out, tiny_model, tiny_corpus, device_memory_gb=budget, verbose=True)
    log = capsys.readouterr().out
    assert "stats/tiny: 2 runs for 2 token layers in" in log, log
    killed = analyses.open_stats(f"{out}/stats/tiny-runs/run-2")
    assert not killed.manifest["complete"] and killed.manifest["cursor"]["next_batch"] > 0
    monkeypatch.setattr(store_module.StatsStore, "commit", real_commit)

    collected = []
    real_collect = runs_module.collect
    monkeypatch.setattr(runs_module, "collect", lambda model, corpus, where, **flags: collected.append(where)
                        or real_collect(model, corpus, where, **flags))
    got = _study(out, tiny_model, tiny_corpus, device_memory_gb=budget, verbose=True)
    assert collected == [f"{out}/stats/tiny-runs/run-2"], "only the run that was killed runs again"
    log = capsys.readouterr().out
    assert "run 1/2: token layers 0, layers 0-2" not in log and "run 1/2: token layers 0 -> " in log, log
    assert log.count(": finished") == 1 and "the 2 runs planned before" in log, log

    with open(f"{out}/stats/tiny-runs/plan.json") as f:
        plan = json.load(f)
    assert plan["runs"] == [{"token_layers": [0], "max_layers": None, "examples": 16},
                            {"token_layers": [1], "max_layers": 2, "examples": 0}]
    joined, whole = analyses.open_stats(f"{out}/stats/tiny"), analyses.open_stats(f"{unsplit}/stats/tiny")
    assert len(joined.manifest["join"]["parts"]) == 2 and joined.token_layers == whole.token_layers == [0, 1]
    for name in ARRAY_NAMES + tuple(example_layouts(1, 1, 1, 2)):
        np.testing.assert_array_equal(np.asarray(joined.array(name).read().result()),
                                      np.asarray(whole.array(name).read().result()), name)
    assert {k: v for k, v in joined.manifest.items() if k not in ("join", "chunks", "generation", "flags")} == \
        {k: v for k, v in whole.manifest.items() if k not in ("chunks", "generation", "flags")}
    with open(f"{unsplit}/report/report.json") as f:
        want = json.load(f)["models"]["tiny"]
    assert {**got["models"]["tiny"], "stats": None} == {**want, "stats": None}
