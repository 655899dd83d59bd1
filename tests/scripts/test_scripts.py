"""The command-line entry points, run as a user runs them."""

import os

import hf_models
from helpers import check_claims, offline_env, run_script

def _run(*args, env_extra=None):
    return run_script(*args, env=offline_env(**(env_extra or {})))


def test_convert_script_converts_and_shows_progress(pre_ln_dir, tmp_path):
    result = _run("scripts/convert.py", "--hf_path", pre_ln_dir, "--out", str(tmp_path / "out"),
                  "--dtype", "bfloat16")
    assert result.returncode == 0, result.stderr
    assert "converted checkpoint:" in result.stdout
    assert "MB/s" in result.stderr and "left" in result.stderr
    import opt_jax

    assert opt_jax.load(str(tmp_path / "out")).dtype.name == "bfloat16"


def test_convert_script_offline_size_fails_clearly(tmp_path):
    result = _run("scripts/convert.py", "--size", "66b", "--out", str(tmp_path / "out"),
                  "--cache_dir", str(tmp_path))
    assert result.returncode == 1
    assert "facebook/opt-66b is not in the local Hugging Face cache" in result.stderr
    assert "Traceback" not in result.stderr


def test_convert_script_bad_checkpoint_fails_clearly(pre_ln_model, tmp_path):
    hf_dir = hf_models.save(pre_ln_model, str(tmp_path / "hf"), "safetensors")
    os.truncate(os.path.join(hf_dir, "model.safetensors"), 1000)
    result = _run("scripts/convert.py", "--hf_path", hf_dir, "--out", str(tmp_path / "out"))
    assert result.returncode == 1 and "truncated" in result.stderr and "Traceback" not in result.stderr


def test_main_job_runs_end_to_end(tmp_path):
    """The quick start's main command (scripts/study.py, what `make run` runs), at smoke size."""
    result = _run("scripts/study.py", "--out", str(tmp_path), "--max_tokens", "3000", "--causal_tokens", "3000")
    assert result.returncode == 0, result.stderr[-3000:]
    import json

    with open(tmp_path / "report" / "report.json") as f:
        report = json.load(f)
    assert list(report["models"]) == ["stdlib-4l", "stdlib-4l-nopos"]
    for name, model in report["models"].items():
        assert model["tokens"] >= 3000 and model["full_length_sequences"] == model["sequences"]
        assert f"{name}: {model['tokens']:,} tokens" in result.stdout
        claims = check_claims(model, positional_embeddings=not name.endswith("nopos"), hidden=256)
        assert (claims["nopos_no_oscillatory"]["holds"] is None) == (name == "stdlib-4l")
    assert "the paper's claims:" in result.stdout and (tmp_path / "report" / "claims.csv").exists()
    for name, model in report["models"].items():  # the causal checks, on held-out text
        causal = model["causal"]
        assert causal["held_out"] and causal["tokens"] >= 3000
        with open(tmp_path / "ablation" / name / "ablation.json") as f:
            ablation = json.load(f)
        assert ablation["corpus"]["skip_windows"] * 128 >= model["tokens"], "after the collected windows"
        assert {"dead_unused_causal", "detectors_matter_causal", "positional_matter_causal"} <= set(claims)
        for kind, entry in causal["sets"].items():
            assert entry["neurons"] > 0 and entry["interval"][0] <= entry["change"] <= entry["interval"][1]
        assert (tmp_path / "report" / f"causal_{name}.png").stat().st_size > 10_000
    for name, model in report["models"].items():  # the library's docstrings against its code
        assert model["positional_domains"]["domains"] == ["prose", "code"]
        assert (tmp_path / "report" / f"positional_domains_{name}.png").stat().st_size > 10_000
    assert (tmp_path / "report" / "fig8_positional_types.png").stat().st_size > 10_000
    assert (tmp_path / "report" / "fig10_positional_with_without.png").stat().st_size > 10_000, "the twins compared"
    assert "collect:" in result.stderr and "tokens/s" in result.stderr
    with open(tmp_path / "atlas" / "data" / "atlas.js") as f:  # the neuron atlas beside the report
        atlas = json.loads(f.read()[len('atlasData("atlas", '):].rstrip()[:-2])
    assert [m["name"] for m in atlas["models"]] == list(report["models"])
    assert all(m["examples"] == 16 and m["built"] == [0, 1, 2, 3] for m in atlas["models"])
    assert (tmp_path / "atlas" / "index.html").stat().st_size > 1000
    assert f"atlas: {tmp_path}/atlas/index.html" in result.stdout and "atlas stdlib-4l-nopos: 4/4" in result.stderr
