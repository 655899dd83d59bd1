"""The statistics store at shapes that are multiples of nothing: commits, a crash mid-commit, merging.

Chunks are made small (`CHUNK_CELLS`) so that every axis of the large arrays is cut into several
chunks with a short last one, as OPT's vocabulary (50272) and widths cut the real 32 MiB chunks.
Each store is read back through `open_stats` (numpy slicing semantics) and through stock tensorstore,
and compared with the sum of the deltas computed here in numpy.
"""

import os

import numpy as np
import pytest
import tensorstore as ts
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as hs

from analyses.collection import store as store_module
from analyses.collection.store import StatsStore, array_layouts, chunk_blocks, from_layers, merge_stats, open_stats

SETTINGS = settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

shapes = hs.fixed_dictionaries({
    "layers": hs.integers(1, 3), "token_layers": hs.integers(0, 2), "seq_len": hs.integers(2, 37),
    "vocab": hs.integers(3, 700), "ffn": hs.integers(1, 29), "chunk_cells": hs.integers(1, 300),
    "commits": hs.integers(1, 3), "seed": hs.integers(0, 2**31 - 1)})


def _deltas(shape: dict, rng) -> dict:
    """Random int64 deltas of every array of the layout (token layers at most the layers)."""
    layouts = _layouts(shape)
    return {name: rng.integers(0, 3, size) * (rng.random(size) < 0.3) for name, (size, _) in layouts.items()}


def _layouts(shape: dict) -> dict:
    return array_layouts(shape["layers"], min(shape["token_layers"], shape["layers"]), shape["seq_len"],
                         shape["vocab"], shape["ffn"])


def _stock(root: str, name: str) -> np.ndarray:
    """An array read with stock tensorstore, as docs/collection.md's contract says."""
    spec = {"driver": "zarr3", "kvstore": f"file://{os.path.join(root, name)}"}
    return ts.open(spec, open=True).result().read().result()


def _manifest(index: int = 0, count: int = 1) -> dict:
    return {"model": "m", "config": {}, "corpus": {}, "flags": {}, "token_layers": [], "layers": 1,
            "ngram_orders": [], "ngram_candidates_source": None, "process": {"index": index, "count": count},
            "tokens": 0, "sequences": 0, "full_length_sequences": 0, "complete": False}


def _check(root: str, want: dict, rng) -> None:
    stats = open_stats(root)
    for name, value in want.items():
        np.testing.assert_array_equal(_stock(root, name), value, err_msg=name)
        lazy = getattr(stats, name)
        np.testing.assert_array_equal(np.asarray(lazy), value, err_msg=name)
        if not value.shape[0]:
            continue
        # a slice reaching past the end stops there, as in numpy
        stop = value.shape[0] + int(rng.integers(0, 5000))
        start = int(rng.integers(0, value.shape[0]))
        np.testing.assert_array_equal(lazy[start:stop], value[start:stop], err_msg=name)
        if value.ndim == 3:
            view = lazy.view(start)
            np.testing.assert_array_equal(view[1:stop], value[start, 1:stop], err_msg=name)


@SETTINGS
@given(shape=shapes)
def test_commits_add_up_at_any_shape(tmp_path_factory, monkeypatch, shape):
    monkeypatch.setattr(store_module, "CHUNK_CELLS", shape["chunk_cells"])
    rng = np.random.default_rng(shape["seed"])
    root = str(tmp_path_factory.mktemp("store"))
    layouts = _layouts(shape)
    for name, (size, chunk) in layouts.items():  # several chunks, the last one short, wherever possible
        assert len(chunk_blocks(size, chunk)) == int(np.prod([-(-s // c) for s, c in zip(size, chunk)] or [1]))
    store = StatsStore.create(root, _manifest(), layouts)
    want = {name: np.zeros(size, np.int64) for name, (size, _) in layouts.items()}
    for k in range(shape["commits"]):
        deltas = _deltas(shape, rng)
        given_as = {}
        for name, value in deltas.items():  # whole arrays, block functions and layer functions alike
            if value.ndim == 3 and k % 2 == 0:
                given_as[name] = from_layers(lambda layer, value=value: value[layer])
            elif value.ndim == 3:
                given_as[name] = lambda block, value=value: value[block]
            else:
                given_as[name] = value
            want[name] += value
        store.commit(given_as, {"tokens": k + 1})
    assert open_stats(root).manifest["tokens"] == shape["commits"]
    _check(root, want, rng)


@SETTINGS
@given(shape=shapes, fail_at=hs.integers(0, 40))
def test_a_crash_mid_commit_keeps_the_last_commit(tmp_path_factory, monkeypatch, shape, fail_at):
    """A commit that dies after some blocks are written leaves the previous generation, and resumes."""
    monkeypatch.setattr(store_module, "CHUNK_CELLS", shape["chunk_cells"])
    rng = np.random.default_rng(shape["seed"])
    root = str(tmp_path_factory.mktemp("store"))
    layouts = _layouts(shape)
    store = StatsStore.create(root, _manifest(), layouts)
    fail_at %= len(chunk_blocks(*layouts["pos_act"]))  # dies within pos_act, at any of its blocks
    first, second = _deltas(shape, rng), _deltas(shape, rng)
    store.commit(first, {"tokens": 1})
    calls = []

    def dying(block):
        calls.append(block)
        if len(calls) > fail_at:
            raise KeyboardInterrupt("killed")
        return second["pos_act"][block]

    with pytest.raises(KeyboardInterrupt):
        store.commit(second | {"pos_act": dying}, {"tokens": 2})
    reopened = StatsStore.open(root)  # what a rerun does: repair, drop the unfinished generation
    assert reopened.manifest["tokens"] == 1
    assert [d for d in os.listdir(root) if d.startswith("data-")] == [os.path.basename(reopened.generation_dir)]
    _check(root, first, rng)
    reopened.commit(second, {"tokens": 2})
    _check(root, {name: first[name] + second[name] for name in first}, rng)


@SETTINGS
@given(shape=shapes)
def test_merged_parts_are_their_sum(tmp_path_factory, monkeypatch, shape):
    monkeypatch.setattr(store_module, "CHUNK_CELLS", shape["chunk_cells"])
    rng = np.random.default_rng(shape["seed"])
    base = tmp_path_factory.mktemp("parts")
    parts, want = [], None
    for index in range(2):
        root = str(base / f"process-{index}-of-2")
        store = StatsStore.create(root, _manifest(index, 2), _layouts(shape))
        deltas = _deltas(shape, rng)
        store.commit(deltas, {"tokens": 10 + index, "complete": True})
        parts.append(root)
        want = deltas if want is None else {name: want[name] + deltas[name] for name in want}
    merged = merge_stats(parts, str(base / "merged"))
    assert open_stats(merged).manifest["tokens"] == 21
    _check(merged, want, rng)
