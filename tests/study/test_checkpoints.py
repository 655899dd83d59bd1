"""Figs. 10 and 11: models with and without positional embeddings side by side, a training run as a series of
checkpoints; labelled models (`NAME=DIR`) and run directories recognised by the study."""

import dataclasses
import json

import numpy as np
import pytest
from matplotlib import image

import analyses
from analyses import figures, report, study
from opt_jax import train
from opt_jax.tokenizer import train_tokenizer

SEQ = 16
SHAPE = dict(layers=2, hidden=32, heads=4, ffn=64, vocab_size=320, max_positions=SEQ)
OPTIONS = train.TrainOptions(seq_len=SEQ, batch_size=4, steps=4, lr=1e-2, warmup_steps=1, save_steps=(2,),
                             shuffle_windows=8, export_hf=False, verbose=False)
TEXTS = ["def neuron(x):\n    return max(x, 0)\n", "the dead neurons of large language models never fire, " * 3,
         "positional neurons fire by position; n-gram neurons fire on a few tokens. " * 2]


@pytest.fixture
def panels(monkeypatch):
    """File name -> visible panels of each figure saved while the fixture is active."""
    counted = {}
    save = figures.save

    def counting(fig, path, **kwargs):
        counted[path.rsplit("/", 1)[-1]] = sum(ax.get_visible() for ax in fig.axes)
        return save(fig, path, **kwargs)

    monkeypatch.setattr(figures, "save", counting)
    return counted


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Two smoke training runs on one corpus: with positions (snapshots at steps 2 and 4) and without (step 4)."""
    root = tmp_path_factory.mktemp("runs")
    corpus = root / "docs.jsonl"
    corpus.write_text("".join(json.dumps({"text": f"{i}: {t}"}) + "\n" for i in range(4) for t in TEXTS))
    tokenizer = train_tokenizer([f"{i}: {t}" for i in range(4) for t in TEXTS], SHAPE["vocab_size"],
                                str(root / "tokenizer"))
    pos = train.train(str(root / "pos"), train.model_config(**SHAPE), OPTIONS, corpus=[str(corpus)],
                      tokenizer=tokenizer)
    nopos = train.train(str(root / "nopos"), train.model_config(**SHAPE, positional=False),
                        dataclasses.replace(OPTIONS, save_steps=()), corpus=[str(corpus)], tokenizer=tokenizer)
    return root, str(corpus), pos, nopos


def not_blank(path):
    pixels = image.imread(path)  # [h, w, channels]
    assert pixels.shape[0] >= 250 and pixels.shape[1] >= 600, path
    assert np.std(pixels[..., :3]) > 0.01, f"{path} is blank"


def test_a_run_directory_is_a_series_of_checkpoints(runs, panels, tmp_path):
    root, corpus, pos, nopos = runs
    assert study.expand_models([pos, f"twin={nopos}"]) == (
        ["pos-step-2", "pos-step-4", "twin-step-4"], [f"{pos}/step-2", f"{pos}/step-4", f"{nopos}/step-4"])
    got = study.run_study(str(tmp_path), models=[pos, f"twin={nopos}"], corpus=[corpus], seq_len=SEQ,
                          batch_size=4, max_tokens=None, ngram_orders=(), analyses=["dead", "positional"],
                          verbose=False)
    models = got["models"]
    assert list(models) == ["pos-step-2", "pos-step-4", "twin-step-4"]
    assert [models[n]["training"]["step"] for n in models] == [2, 4, 4]
    assert [models[n]["positional_embeddings"] for n in models] == [True, True, False]
    assert {"fig10_positional_with_without.png", "fig11_positional_by_checkpoint.png"} <= set(got["figures"])
    assert panels["fig11_positional_by_checkpoint.png"] == 2, "one panel per checkpoint of the series"
    assert panels["fig10_positional_with_without.png"] == 2, "the last checkpoint of each run, side by side"
    for name in ("fig10_positional_with_without.png", "fig11_positional_by_checkpoint.png"):
        not_blank(tmp_path / "report" / name)
    claims = {c["id"]: c for c in models["twin-step-4"]["claims"]}
    assert claims["nopos_no_oscillatory"]["measured"] == sum(p["type"] == "oscillatory"
                                                             for p in models["twin-step-4"]["positional"])


def test_labelled_statistics_and_no_comparison_without_a_twin(runs, panels, tmp_path):
    root, corpus, pos, nopos = runs
    stats = analyses.collect(f"{pos}/step-4", [corpus], str(tmp_path / "stats"), seq_len=SEQ, batch_size=4,
                             verbose=False)
    got = report.analyze([f"final={stats}"], str(tmp_path / "r"), analyses=["positional"], verbose=False)
    assert list(got["models"]) == ["final"]
    assert not {"fig10_positional_with_without.png", "fig11_positional_by_checkpoint.png"} & set(got["figures"])
    assert report.split_labels(["a=x/y", "x/z=1", "w"], ["named"]) == (["a", "named", "w"], ["x/y", "x/z=1", "w"])
    with pytest.raises(ValueError, match="more names"):
        report.split_labels(["a=x"], ["b"])
