"""A damaged statistics store is a clear error, never other numbers: every chunk carries a crc32c checksum and
the manifest records the chunk files each commit wrote (store format version 2). Version 1 stores keep working."""

import json
import os
import shutil

import numpy as np
import pytest

import analyses
from analyses.collection.store import StatsError, StatsStore, array_layouts, open_stats
from helpers import assert_same_stats, run_script

SEQ = 12


@pytest.fixture(scope="module")
def clean(tiny_model, tiny_corpus, tmp_path_factory):
    """A committed store with examples and n-grams: every kind of array has chunks on disk."""
    return analyses.collect(tiny_model, [tiny_corpus], str(tmp_path_factory.mktemp("clean") / "s"), seq_len=SEQ,
                            batch_size=4, ngram_orders=(2,), verbose=False)


def _copy(clean, tmp_path) -> str:
    out = str(tmp_path / "s")
    shutil.copytree(clean, out, symlinks=True)
    return out


def _chunk(store: str, name: str) -> str:
    """The first chunk file of array `name` in the committed generation."""
    stats = open_stats(store)
    key = stats.manifest["chunks"][name][0]
    return os.path.join(store, f"data-{stats.manifest['generation']:06d}", name, "c", key)


def _flip(path: str, at: int) -> None:
    data = bytearray(open(path, "rb").read())
    data[at] ^= 0x01
    with open(path, "wb") as f:
        f.write(bytes(data))


@pytest.mark.parametrize("where", ["checksum", "data"])
def test_a_flipped_byte_is_an_error_naming_the_array_and_the_chunk(clean, tmp_path, where):
    """In its checksum the data still decompresses to the same numbers: only the crc32c can tell."""
    store = _copy(clean, tmp_path)
    chunk = _chunk(store, "pos_act")
    _flip(chunk, -1 if where == "checksum" else os.path.getsize(chunk) // 2)
    stats = open_stats(store)
    with pytest.raises(StatsError) as e:
        np.asarray(stats.pos_act)
    message = str(e.value)
    assert "'pos_act'" in message and os.path.realpath(chunk) in message and "collect again" in message
    with pytest.raises(StatsError, match="'pos_act'"):
        stats.pos_act[0]


def test_every_kind_of_read_names_the_damage(clean, tmp_path):
    store = _copy(clean, tmp_path)
    for name in ("act", "tok_act", "examples_top_value", "windows"):
        _flip(_chunk(store, name), -2)
    stats = open_stats(store)
    with pytest.raises(StatsError, match="'act'"):
        stats.act[0]
    with pytest.raises(StatsError, match="'tok_act'"):
        stats.tok_act[0]
    with pytest.raises(StatsError, match="'examples_top_value'"):
        stats.examples(0, 0, "top")
    with pytest.raises(StatsError, match="'windows'"):
        stats.window_rows([0])


def test_a_truncated_chunk_is_an_error(clean, tmp_path):
    store = _copy(clean, tmp_path)
    chunk = _chunk(store, "act")
    with open(chunk, "r+b") as f:
        f.truncate(3)
    with pytest.raises(StatsError, match="'act'.*damaged chunk"):
        open_stats(store).act[0]


def test_a_deleted_chunk_is_an_error_not_zeros(clean, tmp_path):
    store = _copy(clean, tmp_path)
    chunk = _chunk(store, "tok_act")
    os.remove(chunk)
    with pytest.raises(StatsError, match="missing") as e:
        open_stats(store)
    assert chunk in str(e.value)


def test_a_manifest_naming_a_missing_generation_is_an_error(clean, tmp_path):
    store = _copy(clean, tmp_path)
    with open(os.path.join(store, "manifest.json")) as f:
        manifest = json.load(f)
    manifest["generation"] += 7
    with open(os.path.join(store, "manifest.json"), "w") as f:
        json.dump(manifest, f)
    with pytest.raises(StatsError, match=f"generation {manifest['generation']}.*missing"):
        open_stats(store)


def test_scripts_print_the_damage_without_a_traceback(clean, tmp_path):
    store = _copy(clean, tmp_path)
    _flip(_chunk(store, "act"), -1)
    result = run_script("scripts/analyze.py", "--stats", store, "--out", str(tmp_path / "report"),
                        "--analyses", "dead")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "error:" in result.stderr and "'act'" in result.stderr and "damaged chunk" in result.stderr


def test_new_chunks_carry_checksums(clean):
    stats = open_stats(clean)
    assert stats.manifest["version"] == 2
    for name in stats.manifest["arrays"]:
        with open(os.path.join(clean, f"data-{stats.manifest['generation']:06d}", name, "zarr.json")) as f:
            codecs = [c["name"] for c in json.load(f)["codecs"]]
        assert codecs[-1] == "crc32c", (name, codecs)
    assert set(stats.manifest["chunks"]) == set(stats.manifest["arrays"]) and stats.manifest["chunks"]["act"]


def test_a_version_1_store_keeps_reading_and_resuming(tmp_path):
    """Written as before checksums existed (no crc32c, no inventory): read, committed to, reopened, all equal."""
    layouts = array_layouts(2, 1, 4, 8, 6)
    store = StatsStore.create(str(tmp_path / "v1"), {"tokens": 0}, layouts, version=1)
    rng = np.random.default_rng(0)
    deltas = [{name: rng.integers(0, 5, shape) for name, (shape, _) in layouts.items()} for _ in range(2)]
    for i, delta in enumerate(deltas):
        StatsStore.open(store.root).commit(delta, {"tokens": i + 1})
    stats = open_stats(store.root)
    assert stats.manifest["version"] == 1 and "chunks" not in stats.manifest
    for name in layouts:
        np.testing.assert_array_equal(np.asarray(getattr(stats, name)), deltas[0][name] + deltas[1][name])
        with open(os.path.join(store.root, f"data-{stats.manifest['generation']:06d}", name, "zarr.json")) as f:
            assert "crc32c" not in [c["name"] for c in json.load(f)["codecs"]]


def test_damage_found_on_resume_loses_nothing(clean, tiny_model, tiny_corpus, tmp_path):
    """A run resumed on a damaged store stops with the error at its first commit; with the chunk restored (from
    a backup, say), the same command finishes it, equal to an uninterrupted run."""
    store = str(tmp_path / "s")
    flags = dict(seq_len=SEQ, batch_size=4, ngram_orders=(2,), verbose=False)
    analyses.collect(tiny_model, [tiny_corpus], store, max_tokens=2 * 4 * SEQ, **flags)
    assert open_stats(store).tokens < open_stats(clean).tokens
    chunk = _chunk(store, "pos_act")
    original = open(chunk, "rb").read()
    _flip(chunk, -1)
    with pytest.raises(StatsError, match="'pos_act'"):
        analyses.collect(tiny_model, [tiny_corpus], store, **flags)
    with open(chunk, "wb") as f:
        f.write(original)
    analyses.collect(tiny_model, [tiny_corpus], store, **flags)
    assert_same_stats(open_stats(store), open_stats(clean))
