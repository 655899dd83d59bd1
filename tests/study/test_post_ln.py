"""A post-LayerNorm model with project_in / project_out (350m's layout, tiny) through every analysis and figure.

The real-dimension 350m run is in tests/test_real_shapes.py (`make test-real`)."""

import numpy as np
import pytest
from matplotlib import image

import analyses
import hf_models
import opt_jax
from analyses import detectors, report
from analyses.positional import PositionalThresholds
from helpers import check_claims

# Loose, so that a random tiny model has detectors (and so suppression scores through project_out).
LOOSE = detectors.DetectorThresholds(max_tokens=20, max_trigrams=30, coverage=0.8, item_fraction=0.5,
                                     covered_fraction=0.6)


@pytest.fixture(scope="module")
def post_ln(tiny_corpus, tmp_path_factory):
    root = tmp_path_factory.mktemp("post_ln")
    model = hf_models.random_model(hf_models.hf_config(**hf_models.POST_LN_350M), seed=5)
    hf_models.save(model, str(root / "hf"))
    hf_models.save_tokenizer(str(root / "hf"), model.config.vocab_size)
    path = opt_jax.convert(str(root / "hf"), str(root / "model"), verbose=False)
    stats = analyses.collect(path, [tiny_corpus], str(root / "stats"), seq_len=12, batch_size=4,
                             token_layers=(0, 1), ngram_orders=(2, 3), verbose=False)
    thresholds = report.Thresholds(detectors=LOOSE, positional=PositionalThresholds(mi_threshold=0.0))
    got = report.analyze([stats], str(root / "report"), names=["post-ln"], thresholds=thresholds, verbose=False)
    return got, root / "report", model


def test_every_figure_is_drawn(post_ln):
    got, out, _ = post_ln
    expected = {"fig1a_dead_neurons", "fig1b_alive_frequency", "fig2_coverage_n1", "fig12_coverage_n2",
                "fig13_coverage_n3", "fig3a_token_detectors", "fig3b_detected_tokens", "fig4_new_tokens",
                "fig14a_trigram_detectors", "fig14b_detected_trigrams", "fig15_new_trigrams",
                "fig5_suppression_post-ln", "fig7_positional_examples_post-ln", "fig8_positional_types",
                "fig9_oscillatory_ranges_post-ln"}
    assert sorted(got["figures"]) == sorted(f"{name}.png" for name in expected)
    for name in got["figures"]:
        pixels = image.imread(out / name)  # [h, w, channels]
        assert np.std(pixels[..., :3]) > 0.01, f"{name} is blank"
    assert set(got["tables"]) == {"token_detectors.csv", "trigram_detectors.csv", "positional_neurons.csv",
                                  "claims.csv"}


def test_suppression_through_project_out_and_the_post_ln_claims(post_ln):
    got, _, model = post_ln
    entry = got["models"]["post-ln"]
    assert entry["post_layer_norm"] and entry["positional_embeddings"]
    found = entry["suppression"]["detectors"]
    assert found, "the loose thresholds find detectors"
    decoder = model.model.decoder
    embedding = decoder.embed_tokens.weight.detach().double().numpy()  # [v, e]
    project_out = decoder.project_out.weight.detach().double().numpy()  # [e, d]
    for d in found:
        update = decoder.layers[d["layer"]].fc2.weight[:, d["neuron"]].detach().double().numpy()  # [d]
        scores = embedding @ (project_out @ update)  # [v]
        np.testing.assert_allclose(d["trigger_scores"], scores[d["triggers"]], rtol=1e-4, atol=1e-5)
    claims = check_claims(entry, post_ln=True, hidden=hf_models.POST_LN_350M["hidden_size"])
    assert claims["post_ln_no_dead"]["holds"] is not None and claims["post_ln_positional"]["holds"] is True
