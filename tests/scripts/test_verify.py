"""`scripts/verify.py` / `analyses.verify`: a sound store, checkpoint and atlas pass; each planted defect is found
and named (a flipped, truncated or deleted chunk, a manifest naming a missing generation, counts that disagree,
a damaged checkpoint chunk, a missing or broken atlas file), and the script exits 1."""

import json
import os
import shutil

import pytest

import analyses
from analyses.neurons.atlas import build_atlas
from analyses.verify import verify
from helpers import run_script

SEQ = 12


@pytest.fixture(scope="module")
def sound(tiny_model, tiny_corpus, tmp_path_factory):
    """A store (examples, n-grams), its model and an atlas of it: (stats, model, atlas)."""
    root = tmp_path_factory.mktemp("sound")
    stats = analyses.collect(tiny_model, [tiny_corpus], str(root / "stats"), seq_len=SEQ, batch_size=4,
                             ngram_orders=(2,), verbose=False)
    atlas = build_atlas([stats], str(root / "atlas"), verbose=False)
    return stats, tiny_model, atlas


def _copy(source, tmp_path, name) -> str:
    out = str(tmp_path / name)
    shutil.copytree(source, out, symlinks=True)
    return out


def _gen(store) -> str:
    with open(os.path.join(store, "manifest.json")) as f:
        return os.path.join(store, f"data-{json.load(f)['generation']:06d}")


def test_sound_directories_pass(sound):
    for path, kind in zip(sound, ("statistics", "checkpoint", "atlas")):
        report = verify(path, verbose=False)
        assert report.ok and report.kind == kind and report.items > 0, report.problems


def test_each_planted_store_defect_is_found(sound, tmp_path):
    stats = sound[0]
    flipped, truncated, deleted, counts, generation = (_copy(stats, tmp_path, n) for n in
                                                      ("flipped", "truncated", "deleted", "counts", "generation"))
    chunk = os.path.join("pos_act", "c", "0", "0", "0")
    with open(os.path.join(_gen(flipped), chunk), "r+b") as f:
        f.seek(-1, 2)
        last = f.read(1)
        f.seek(-1, 2)
        f.write(bytes([last[0] ^ 1]))
    with open(os.path.join(_gen(truncated), "act", "c", "0", "0"), "r+b") as f:
        f.truncate(4)
    os.remove(os.path.join(_gen(deleted), "tok_act", "c", "0", "0", "0"))
    for store, edit in ((counts, lambda m: m | {"tokens": m["tokens"] + 1}),
                        (generation, lambda m: m | {"generation": m["generation"] + 1})):
        path = os.path.join(store, "manifest.json")
        with open(path) as f:
            manifest = edit(json.load(f))
        with open(path, "w") as f:
            json.dump(manifest, f)
    expected = {flipped: ("pos_act", "Digest mismatch"), truncated: ("act", "damaged chunk"),
                deleted: ("tok_act/c/0/0/0", "missing"), counts: ("tokens", "pos_tokens sums to"),
                generation: ("manifest.json", "is missing")}
    for store, (where, what) in expected.items():
        report = verify(store, verbose=False)
        assert not report.ok and any(p.where.startswith(where.split("/")[0]) and what in str(p)
                                     for p in report.problems), (store, report.problems)


def test_damaged_checkpoint_and_atlas_are_found(sound, tmp_path):
    _, model, atlas = sound
    model = _copy(model, tmp_path, "model")
    with open(os.path.join(model, "params", "layers", "ffn", "fc2", "weight", "c", "1", "0", "0"), "r+b") as f:
        f.seek(10)
        f.write(b"\xff\xfe")
    report = verify(model, verbose=False)
    assert [p.where for p in report.problems] == ["layers/ffn/fc2/weight"] and "damaged chunk" in report.problems[0].what
    atlas = _copy(atlas, tmp_path, "atlas")
    os.remove(os.path.join(atlas, "data", "m0", "L1", "B0.js"))
    with open(os.path.join(atlas, "data", "m0", "L0", "summary.js"), "a") as f:
        f.write("garbage")
    report = verify(atlas, verbose=False)
    assert {(p.where, p.what.split(" ")[0]) for p in report.problems} == {
        ("data/m0/L1/B0.js", "missing"), ("data/m0/L0/summary.js", "does")}


def test_the_script_exits_1_on_a_problem_and_0_when_sound(sound, tmp_path):
    stats = _copy(sound[0], tmp_path, "s")
    ok = run_script("scripts/verify.py", stats, sound[1])
    assert ok.returncode == 0 and ok.stdout.count(": sound") == 2, ok.stdout + ok.stderr
    assert "chunks (100%)" in ok.stderr, "progress while reading"
    os.remove(os.path.join(_gen(stats), "act", "c", "0", "0"))
    bad = run_script("scripts/verify.py", "--quiet", stats, str(tmp_path))
    assert bad.returncode == 1 and "Traceback" not in bad.stderr
    assert "act/c/0/0: missing" in bad.stdout and "1 problem(s)" in bad.stdout
    assert f"error: {tmp_path}: not a statistics store" in bad.stderr


def test_counts_that_disagree_are_found_though_every_chunk_is_sound(sound, tmp_path):
    """`act` rewritten through tensorstore (valid checksums) no longer matches `pos_act` nor `tok_act`."""
    import numpy as np
    import tensorstore as ts

    stats = _copy(sound[0], tmp_path, "s")
    act = ts.open({"driver": "zarr3", "kvstore": {"driver": "file", "path": os.path.join(_gen(stats), "act")}},
                  open=True).result()
    value = act[0].read().result()
    value[3] += 1
    act[0].write(value).result()
    report = verify(stats, verbose=False)
    assert {p.where for p in report.problems} == {"act[0]", "tok_act[0]"}, report.problems
    assert all("first at neuron 3" in p.what for p in report.problems)
