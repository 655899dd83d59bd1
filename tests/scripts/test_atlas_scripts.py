"""scripts/atlas.py and scripts/fired.py, run as a user runs them, on the planted model."""

import json
import os

from helpers import run_script


def test_atlas_script_writes_an_atlas_and_shows_progress(planted_run, tmp_path):
    result = run_script("scripts/atlas.py", "--stats", f"planted={planted_run.stats}", "--out", str(tmp_path / "a"),
                        "--layers", "0,2")
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"atlas: {tmp_path / 'a'}/index.html" in result.stdout
    assert "atlas planted: 2/2 layers" in result.stderr
    with open(tmp_path / "a" / "data" / "atlas.js") as f:
        text = f.read()
    manifest = json.loads(text[len('atlasData("atlas", '):].rstrip()[:-2])
    assert manifest["models"][0]["name"] == "planted" and manifest["models"][0]["built"] == [0, 2]
    assert sorted(os.listdir(tmp_path / "a" / "data" / "m0")) == ["L0", "L2", "tokens"]


def test_atlas_script_bad_layer_fails_clearly(planted_run, tmp_path):
    result = run_script("scripts/atlas.py", "--stats", planted_run.stats, "--out", str(tmp_path / "a"),
                        "--layers", "9")
    assert result.returncode == 1 and "layers [9] are out of range" in result.stderr
    assert "Traceback" not in result.stderr and not os.path.exists(tmp_path / "a")


def test_fired_script_names_the_detector(planted_run):
    result = run_script("scripts/fired.py", "--model", planted_run.model, "--text", "w5 w0",
                        "--atlas", planted_run.stats, "--layers", "0")
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["1", "'w5'"] and lines[2].split() == ["2", "'w0'"]
    assert "detector of 'w0'" in lines[3] and "detector of 'w0'" not in lines[1]


def test_fired_script_too_long_text_fails_clearly(planted_run):
    result = run_script("scripts/fired.py", "--model", planted_run.model, "--text", " ".join(["w1"] * 200))
    assert result.returncode == 1 and "the text is 200 tokens long" in result.stderr
    assert "Traceback" not in result.stderr
