"""`analyses.fired`: the neurons that fire on each token of a text, against transformers' torch model with hooks
on fc1, and their labels from an atlas or from the statistics, on the planted model."""

import numpy as np
import pytest

import analyses
import planted
from opt_jax.errors import InputError, MissingError

TEXT = "w0 w7 w1 w5 w3 w2 w9 w4 w0"


@pytest.fixture(scope="module")
def atlas_dir(planted_run, tmp_path_factory):
    return analyses.atlas([planted_run.stats], str(tmp_path_factory.mktemp("fired") / "atlas"), verbose=False)


def torch_fc1(hf_dir: str, ids: list[int]) -> np.ndarray:
    """fc1 outputs of every layer by transformers' OPT with forward hooks: [layers, seq, ffn]."""
    import torch
    from transformers import OPTForCausalLM

    model = OPTForCausalLM.from_pretrained(hf_dir).eval()
    out = []
    hooks = [layer.fc1.register_forward_hook(lambda m, i, o: out.append(o.detach().numpy().reshape(len(ids), -1)))
             for layer in model.model.decoder.layers]
    with torch.no_grad():
        model(torch.tensor([ids]))
    for h in hooks:
        h.remove()
    return np.stack(out)


def test_the_neurons_that_fire_match_torch(planted_run, atlas_dir):
    tokens = analyses.fired(planted_run.model, TEXT, atlas=atlas_dir)
    words = TEXT.split()
    assert [t.text for t in tokens] == words and [t.position for t in tokens] == list(range(1, len(words) + 1))
    ids = [2] + [t.token for t in tokens]
    reference = torch_fc1(str(planted_run.root / "hf"), ids)  # [l, s, f]
    for t in tokens:
        assert sorted(t.layers) == [0, 1, 2, 3]
        for layer, found in t.layers.items():
            row = reference[layer, t.position]
            clear = np.abs(row) > 1e-4  # leave out values at the threshold itself
            assert {n for n, _, _ in found} & set(np.flatnonzero(clear)) == set(np.flatnonzero(clear & (row > 0)))
            for n, value, _ in found:
                assert value == pytest.approx(row[n], abs=1e-4)
            assert [v for _, v, _ in found] == sorted((v for _, v, _ in found), reverse=True)
    first = {n: label for n, _, label in tokens[0].layers[0]}
    assert first[0] == "detector of 'w0'", "detector 0 fires on w0 and the atlas names it"
    assert all(n not in first for n in (1, 2, 3)), "the other detectors stay silent on w0"
    assert {n for n, _, _ in tokens[2].layers[0]} >= {1} and tokens[2].layers[1] == [], "layer 1 is dead"
    assert {n for n, _, _ in tokens[0].layers[2]} == set(range(planted.FFN)), "layer 2 always fires"


def test_labels_from_the_statistics_equal_the_atlas(planted_run, atlas_dir):
    from_atlas = analyses.fired(planted_run.model, TEXT, atlas=atlas_dir)
    from_stats = analyses.fired(planted_run.model, TEXT, atlas=planted_run.stats)
    assert [t.layers for t in from_stats] == [t.layers for t in from_atlas]
    bare = analyses.fired(planted_run.model, TEXT, layers=[0])
    assert list(bare[0].layers) == [0] and all(label == "" for _, _, label in bare[0].layers[0])
    assert [n for n, _, _ in bare[0].layers[0]] == [n for n, _, _ in from_atlas[0].layers[0]]


def test_bad_input_is_refused_clearly(planted_run, atlas_dir, tmp_path):
    too_long = " ".join(["w1"] * planted.SEQ)  # BOS + SEQ words: one more than the positions
    with pytest.raises(InputError, match=rf"the text is {planted.SEQ} tokens long; .* takes at most "
                                         rf"{planted.SEQ - 1} after BOS \({planted.SEQ} positions\): split the text"):
        analyses.fired(planted_run.model, too_long)
    assert len(analyses.fired(planted_run.model, " ".join(["w1"] * (planted.SEQ - 1)))) == planted.SEQ - 1
    with pytest.raises(InputError, match="no tokens"):
        analyses.fired(planted_run.model, "")
    with pytest.raises(InputError, match=r"layers \[4\] are out of range"):
        analyses.fired(planted_run.model, TEXT, atlas=atlas_dir, layers=[4])
    with pytest.raises(MissingError, match="neither an atlas folder"):
        analyses.fired(planted_run.model, TEXT, atlas=str(tmp_path))
