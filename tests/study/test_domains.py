"""Positional neurons across domains, on the planted model: a Latin-square domain (every word at every position)
and a domain of one word, the rare word that switches some planted positional neurons on everywhere."""

import json
import os

import numpy as np
import pytest
from matplotlib import image

import opt_jax
import planted
from analyses import domains, study
from analyses.positional import PositionalThresholds
from opt_jax.errors import AnalysisError
from helpers import run_script

PURE = (6, 8)  # planted positional neurons that read position only: the same curve in any domain
RARE_ON = (7, 9)  # ... that also fire on the rare word: always on in the rare domain, so not positional there


@pytest.fixture(scope="module")
def study_report(tmp_path_factory):
    root = tmp_path_factory.mktemp("domains")
    planted.build(str(root / "hf"))
    model = opt_jax.convert(str(root / "hf"), str(root / "model"), verbose=False)
    square = planted.write_corpus(str(root / "square.jsonl"))
    rare = root / "rare.jsonl"
    rare.write_text("".join(json.dumps({"text": " ".join([planted.word(planted.RARE)] * (planted.SEQ - 1))}) + "\n"
                            for _ in range(4)))
    got = study.run_study(str(root / "out"), models=[f"planted={model}"], corpus=[f"square={square}", f"rare={rare}"],
                          seq_len=planted.SEQ, batch_size=16, max_tokens=None, ngram_orders=(),
                          analyses=["dead", "positional"], verbose=False)
    return got, root / "out"


def test_a_positional_neuron_is_found_in_both_domains_with_the_same_curve(study_report):
    got, out = study_report
    result = got["models"]["planted"]["positional_domains"]
    assert result["domains"] == ["square", "rare"]
    found = {(n["layer"], n["neuron"]): n for n in result["neurons"]}
    for n in PURE:
        neuron = found[0, n]
        assert neuron["positional_in"] == ["square", "rare"]
        assert neuron["correlation"]["square | rare"] == pytest.approx(1.0, abs=1e-9)
        assert neuron["per_domain"]["square"]["type"] == neuron["per_domain"]["rare"]["type"]
    assert found[0, 6]["per_domain"]["rare"]["type"] == "oscillatory"


def test_a_neuron_positional_in_one_domain_only_is_flagged(study_report):
    got, out = study_report
    result = got["models"]["planted"]["positional_domains"]
    found = {(n["layer"], n["neuron"]): n for n in result["neurons"]}
    for n in RARE_ON:
        neuron = found[0, n]
        assert neuron["positional_in"] == ["square"]
        assert neuron["per_domain"]["rare"]["mi"] == 0 and not neuron["per_domain"]["rare"]["positional"]
        assert neuron["correlation"]["square | rare"] is None, "a flat curve has no correlation"
    assert result["positional_in_some_only"] == sum(len(n["positional_in"]) == 1 for n in result["neurons"]) >= 2
    assert sum(result["per_layer"]["square"]) == len(planted.POSITIONAL)
    assert {(p["layer"], p["neuron"]) for p in got["models"]["planted"]["positional"]} >= {(0, n) for n in PURE}
    name = "positional_domains_planted.png"
    assert name in got["figures"]
    pixels = image.imread(out / "report" / name)
    assert pixels.shape[1] >= 600 and np.std(pixels[..., :3]) > 0.01


def test_the_correlation_against_numpy(study_report):
    """Every listed correlation equals numpy's corrcoef of the two fr(p) curves read from the domain stores."""
    got, out = study_report
    from analyses import open_stats

    stores = {d: open_stats(str(out / "stats" / f"planted-domain-{d}")) for d in ("square", "rare")}
    curves = {d: np.asarray(s.pos_act[0], float)[1:] / np.asarray(s.pos_tokens, float)[1:, None]
              for d, s in stores.items()}  # [positions after BOS, n]
    for neuron in got["models"]["planted"]["positional_domains"]["neurons"]:
        r = neuron["correlation"]["square | rare"]
        a, b = curves["square"][:, neuron["neuron"]], curves["rare"][:, neuron["neuron"]]
        if r is None:
            assert np.ptp(a) == 0 or np.ptp(b) == 0
        else:
            assert r == pytest.approx(np.corrcoef(a, b)[0, 1], abs=1e-9)
    with pytest.raises(AnalysisError, match="at least two"):
        domains.analyze_domains({"square": stores["square"]}, PositionalThresholds())
    with pytest.raises(AnalysisError, match="one labelled corpus"):
        study.corpus_domains(["wiki=a.jsonl", "b.jsonl"])
    assert os.path.isdir(out / "stats" / "planted")  # the model itself is collected over both corpora


def test_analyze_script_compares_domain_stores(study_report, tmp_path):
    """scripts/analyze.py --domain [MODEL:]DOMAIN=DIR: the same comparison from stores collected separately."""
    got, out = study_report
    stats = out / "stats"
    result = run_script("scripts/analyze.py", "--stats", f"p={stats / 'planted'}", "--out", str(tmp_path),
                        "--analyses", "positional", "--domain", f"p:square={stats / 'planted-domain-square'}",
                        "--domain", f"rare={stats / 'planted-domain-rare'}")
    assert result.returncode == 0, result.stderr[-3000:]
    with open(tmp_path / "report.json") as f:
        again = json.load(f)["models"]["p"]["positional_domains"]
    assert again == got["models"]["planted"]["positional_domains"]
    bad = run_script("scripts/analyze.py", "--stats", str(stats / "planted"), "--stats", str(stats / "planted"),
                     "--names", "a,b", "--out", str(tmp_path / "bad"), "--domain", f"rare={stats / 'planted'}")
    assert bad.returncode == 1 and "name the model" in bad.stderr and "Traceback" not in bad.stderr


def test_the_standard_library_cut_into_prose_and_code():
    from opt_jax import stdlib_corpus

    source = ('"""The module."""\nimport os\n\n\ndef f(x):\n    """What f does,\n    on two lines."""\n'
              '    return x  # a comment stays with the code\n\n\nclass A:\n    \'\'\'A class.\'\'\'\n    y = "a string"\n')
    split = stdlib_corpus.split_domains(source)
    assert split["prose"] == "The module.\n\nWhat f does,\non two lines.\n\nA class."
    assert split["code"] == ('import os\n\n\ndef f(x):\n    return x  # a comment stays with the code\n\n\n'
                             'class A:\n    y = "a string"\n')
    assert stdlib_corpus.split_domains("def broken(:\n") is None
