"""Joining the runs of one model (split by token layers) into one store: equal to one run with every token layer,
array by array, in the report and in the atlas; hard-linked; mismatched parts refused before anything is written;
a join killed before its manifest leaves nothing that opens as a store.

The tiny model has 3 layers; the runs split as the 66b plan splits them: the first collects every layer (with the
example sets) and token layer 0, the later ones stop at their last token layer (`--max_layers`) and keep no
example sets."""

import glob
import json
import os
import shutil

import numpy as np
import pytest

import analyses
from analyses.collection import join
from analyses.collection.store import StatsStore
from analyses.neurons.data_files import read_js
from analyses.verify import verify
from helpers import assert_same_stats, run_script
from opt_jax.errors import MissingError, StatsError

FLAGS = dict(seq_len=12, batch_size=4, ngram_orders=(2, 3), verbose=False)
RUNS = [dict(token_layers=(0,), quantile_examples=2), dict(token_layers=(1,), max_layers=2, examples=0),
        dict(token_layers=(2,), max_layers=3, examples=0)]


@pytest.fixture(scope="module")
def runs(tiny_model, tiny_corpus, tmp_path_factory):
    """(the run with every token layer, the three runs split by token layers)."""
    root = tmp_path_factory.mktemp("runs")
    full = analyses.collect(tiny_model, [tiny_corpus], str(root / "full"), token_layers=(0, 1, 2),
                            quantile_examples=2, **FLAGS)
    parts = [analyses.collect(tiny_model, [tiny_corpus], str(root / f"part-{i}"), **(FLAGS | run))
             for i, run in enumerate(RUNS)]
    return full, parts


@pytest.fixture(scope="module")
def joined(runs, tmp_path_factory):
    """The parts joined by the script, given out of order."""
    _, parts = runs
    out = str(tmp_path_factory.mktemp("joined") / "stats")
    result = run_script("scripts/join_stats.py", "--parts", ",".join([parts[1], parts[2], parts[0]]), "--out", out)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"joined 3 runs into {out}" in result.stdout and "join: linking chunk files" in result.stderr
    return out


def test_the_joined_store_equals_one_run_with_every_token_layer(runs, joined):
    full, parts = runs
    stats = analyses.open_stats(joined)
    assert_same_stats(stats, analyses.open_stats(full))
    assert stats.token_layers == [0, 1, 2] and stats.manifest["layers"] == 3
    assert stats.manifest["cursor"] == analyses.open_stats(full).manifest["cursor"]
    join = stats.manifest["join"]
    assert join["storage"] == "hard links" and [p["path"] for p in join["parts"]] == [parts[1], parts[2], parts[0]]
    assert [p["generation"] for p in join["parts"]] == [analyses.open_stats(p).manifest["generation"]
                                                        for p in (parts[1], parts[2], parts[0])]
    assert join["dropped_ngram_orders"] == [] and join["layers_without_examples"] == []
    assert verify(joined, verbose=False).ok


def test_chunks_are_hard_links_to_the_parts(runs, joined):
    _, parts = runs
    stats = analyses.open_stats(joined)
    gen = os.path.join(joined, "data-000000")
    for t, part in enumerate(parts):  # token layer t is part t's token layer 0
        src = analyses.open_stats(part)
        part_gen = os.path.join(part, f"data-{src.manifest['generation']:06d}")
        files = sorted(glob.glob(os.path.join(part_gen, "tok_act", "c", "0", "**", "*"), recursive=True))
        files = [f for f in files if os.path.isfile(f)]
        assert files
        for f in files:
            rel = os.path.relpath(f, os.path.join(part_gen, "tok_act", "c", "0"))
            assert os.path.samefile(f, os.path.join(gen, "tok_act", "c", str(t), rel))
    assert sum(1 for _ in stats.manifest["chunks"]["tok_act"]) >= 3


def test_the_report_and_the_atlas_see_one_model(runs, joined, tmp_path):
    """Analysed and built alike: the same report entry and atlas data files as the run with every token layer."""
    full, _ = runs
    wanted = ["dead", "ngrams", "detectors", "positional"]
    one = analyses.analyze([f"m={full}"], str(tmp_path / "r-full"), analyses=wanted, verbose=False)
    both = analyses.analyze([f"m={joined}"], str(tmp_path / "r-joined"), analyses=wanted, verbose=False)
    assert list(both["models"]) == ["m"]
    assert {**one["models"]["m"], "stats": None} == {**both["models"]["m"], "stats": None}
    a = analyses.atlas([full], str(tmp_path / "a-full"), names=["m"], verbose=False)
    b = analyses.atlas([joined], str(tmp_path / "a-joined"), names=["m"], verbose=False)
    files = glob.glob(os.path.join(a, "data", "**", "*.js"), recursive=True)
    assert len(files) > 5
    for path in files:
        rel = os.path.relpath(path, a)
        want, got = read_js(path)[1], read_js(os.path.join(b, rel))[1]
        if rel.endswith("atlas.js"):
            for data in (want, got):
                data.pop("created")
                for model in data["models"]:
                    model.pop("stats")
        assert got == want, rel


def test_joining_again_does_nothing_and_a_part_committing_again_leaves_the_join_as_it_was(runs, tmp_path):
    """A join keeps what it linked when a part commits a new generation; joining the same parts again takes it."""
    _, parts = runs
    copies = [shutil.copytree(p, tmp_path / f"part-{i}", symlinks=True) for i, p in enumerate(parts)]
    out = str(tmp_path / "joined")
    analyses.join_stats(copies, out, verbose=False)
    before = analyses.open_stats(out)
    act = np.asarray(before.act)
    analyses.join_stats(copies, out, verbose=False)
    assert analyses.open_stats(out).manifest == before.manifest
    for part in copies:  # every part counts one more activation of layer 0, neuron 0, at position 1 (token 5)
        store = StatsStore.open(str(part))
        delta = {name: np.zeros(store.array(name).shape, np.int64) for name in ("act", "pos_act", "tok_act")}
        delta["act"][0, 0] = delta["pos_act"][0, 1, 0] = 1
        if store.manifest["token_layers"] == [0]:
            delta["tok_act"][0, 5, 0] = 1
        store.commit(delta, {})
    np.testing.assert_array_equal(np.asarray(analyses.open_stats(out).act), act)
    assert verify(out, verbose=False).ok, "the links keep the old chunks alive"
    analyses.join_stats(copies, out, verbose=False)  # the same parts: rejoined without overwrite
    assert analyses.open_stats(out).act[0][0] == act[0, 0] + 1
    assert verify(out, verbose=False).ok


def test_n_gram_candidates_join_by_token_layer(runs, tiny_model, tiny_corpus, tmp_path):
    """A part that counted n-grams only for some neurons (those <= 10 tokens cover in the run with every token
    layer): the joined store tracks those at its token layer and every neuron at the others."""
    full, parts = runs
    some = analyses.collect(tiny_model, [tiny_corpus], str(tmp_path / "candidates"),
                            **(FLAGS | RUNS[1] | {"ngram_candidates_from": full, "ngram_max_coverage": 10}))
    some = analyses.open_stats(some)
    joined = analyses.open_stats(analyses.join_stats([parts[0], some.root, parts[2]], str(tmp_path / "j"),
                                                     verbose=False))
    tracked = joined.tracked_neurons()  # [3, ffn]
    assert tracked[0].all() and tracked[2].all() and 0 < tracked[1].sum() < tracked.shape[1]
    np.testing.assert_array_equal(tracked[1], some.tracked_neurons()[0])
    assert joined.manifest["ngram_candidates_source"] == some.manifest["ngram_candidates_source"]
    table, theirs, whole = joined.ngram_table(), some.ngram_table(), analyses.open_stats(full).ngram_table()
    for order in (2, 3):
        for got, want in zip(table.pairs(order, 1), theirs.pairs(order, 0)):
            np.testing.assert_array_equal(got, want)
        for got, want in zip(table.pairs(order, 2), whole.pairs(order, 2)):
            np.testing.assert_array_equal(got, want)
        assert 0 < len(table.pairs(order, 1)[0]) < len(whole.pairs(order, 1)[0])
    assert verify(joined.root, verbose=False).ok


def _copy_with(part, where, edit) -> str:
    """A copy of a part whose manifest `edit` changes."""
    shutil.copytree(part, where, symlinks=True)
    path = os.path.join(where, "manifest.json")
    with open(path) as f:
        manifest = json.load(f)
    edit(manifest)
    with open(path, "w") as f:
        json.dump(manifest, f)
    return str(where)


def _recounted(part, where, name: str, index: tuple) -> str:
    """A copy of a part whose array `name` counts one more at `index` (a real commit: a sound store)."""
    shutil.copytree(part, where, symlinks=True)
    store = StatsStore.open(str(where))
    delta = np.zeros(store.array(name).shape, np.int64)
    delta[index] = 1
    store.commit({name: delta}, {})
    return str(where)


def test_mismatched_parts_are_refused_before_anything_is_written(runs, tiny_model, tmp_path):
    full, parts = runs
    other = tmp_path / "other.jsonl"
    other.write_text(json.dumps({"text": "another corpus of other words entirely, " * 8}) + "\n")
    cases = {
        "another corpus": ([parts[0], analyses.collect(tiny_model, [str(other)], str(tmp_path / "other"),
                                                        **(FLAGS | RUNS[1]))], "its corpus fingerprint differs"),
        "another model": ([parts[0], _copy_with(parts[1], tmp_path / "model",
                                                lambda m: m["config"].update(ffn_dim=65))],
                          "statistics of another model than .* ffn_dim: 65 vs 64"),
        "another seq_len": ([parts[0], _copy_with(parts[1], tmp_path / "seq", lambda m: m["flags"].update(seq_len=10))],
                            r"seq: its --seq_len differs from .*part-0's \(12 there, 10 here\)"),
        "unfinished": ([parts[0], _copy_with(parts[1], tmp_path / "unfinished", lambda m: m.update(complete=False))],
                       "the run is not complete"),
        "overlapping token layers, other counts": ([parts[1], parts[0], _recounted(parts[1], tmp_path / "tok",
                                                                                     "tok_act", (0, 5, 7))],
                                                   "tok_act of layer 1 differs in 1 cells"),
        "a shared layer, other counts": ([parts[0], _recounted(parts[1], tmp_path / "act", "act", (1, 3))],
                                         "act of layer 1 differs in 1 cells"),
        "other example sets": ([parts[0], _copy_with(parts[1], tmp_path / "k", lambda m: m.update(examples=8))],
                               "example sets of different sizes"),
        "other quantile examples": ([parts[0], _copy_with(parts[1], tmp_path / "q",
                                                          lambda m: m.update(examples=16, quantile_examples=3))],
                                    "quantile examples of different sizes"),
        "a shared layer, other value counts": ([parts[0], _recounted(parts[1], tmp_path / "hist", "value_hist",
                                                                      (1, 3, 5))],
                                               "value_hist of layer 1 differs in 1 cells"),
        "other value bins": ([parts[0], _copy_with(parts[1], tmp_path / "bins",
                                                   lambda m: m.update(value_edges=m["value_edges"][::2]))],
                             "count activation values in different bins"),
    }
    for case, (given, message) in cases.items():
        out = tmp_path / f"out-{case.replace(' ', '-').replace(',', '')}"
        with pytest.raises(StatsError, match=message):
            analyses.join_stats(given, str(out), verbose=False)
        assert not out.exists(), case
    with pytest.raises(StatsError, match="already holds statistics"):
        analyses.join_stats(parts, full, verbose=False)
    result = run_script("scripts/join_stats.py", "--parts", f"{parts[0]},{tmp_path / 'seq'}", "--out",
                        str(tmp_path / "out"))
    assert result.returncode == 1 and "Traceback" not in result.stderr and "--seq_len differs" in result.stderr


def test_a_join_killed_before_its_manifest_leaves_no_store_and_the_next_join_completes(runs, tmp_path, monkeypatch):
    """Killed with every chunk linked and the manifest not yet written (what SIGKILL leaves: nothing is cleaned)."""
    full, parts = runs
    out = str(tmp_path / "joined")

    class Killed(BaseException):
        pass

    def killed(*args, **kwargs):
        raise Killed

    with monkeypatch.context() as patched:
        patched.setattr(join.atomic, "write_json", killed)
        patched.setattr(join.atomic, "remove", lambda path: None)  # a killed process cleans nothing up
        with pytest.raises(Killed):
            analyses.join_stats(parts, out, verbose=False)
    assert os.path.isdir(os.path.join(out, "data-000000", "tok_act", "c")), "killed after linking"
    with pytest.raises(StatsError, match="not a statistics directory"):
        analyses.open_stats(out)
    with pytest.raises(MissingError, match="not a statistics store"):
        verify(out, verbose=False)
    analyses.join_stats(parts, out, verbose=False)
    assert_same_stats(analyses.open_stats(out), analyses.open_stats(full))
    assert verify(out, verbose=False).ok
