"""The 95% upper bound on a dead neuron's firing rate (`analyses.dead.rate_bound`), against scipy's exact
binomial (Clopper-Pearson) bound for zero successes, beta.ppf(0.95, 1, N), and the binomial tail itself, and in
the planted run's report.json."""

import math

import numpy as np
import pytest
from scipy import stats as scipy_stats

from analyses import dead, report
from opt_jax.errors import AnalysisError


@pytest.mark.parametrize("tokens", [1, 2, 10, 4096, 10 ** 6, 10 ** 9, 10 ** 12])
def test_the_bound_is_the_exact_binomial_one(tokens):
    bound = dead.rate_bound(tokens)
    assert bound == pytest.approx(scipy_stats.beta.ppf(0.95, 1, tokens), rel=1e-9)
    assert math.exp(tokens * math.log1p(-bound)) == pytest.approx(0.05, rel=1e-9), "(1 - p)^N = 0.05"
    assert dead.rate_bound(tokens, 0.99) == pytest.approx(scipy_stats.beta.ppf(0.99, 1, tokens), rel=1e-9)
    if tokens >= 1000:
        assert bound == pytest.approx(-math.log(0.05) / tokens, rel=1e-3), "about 3 / N"


def test_no_tokens_bound_nothing_and_a_bad_confidence_is_refused():
    assert dead.rate_bound(0) == 1.0
    for confidence in (0, 1, 1.5):
        with pytest.raises(AnalysisError, match="confidence"):
            dead.rate_bound(10, confidence)


def test_report_json_gives_each_layer_its_tokens_and_bound(planted_run):
    entry = planted_run.report["dead"]
    layers = len(entry["fraction_per_layer"])
    assert entry["tokens_per_layer"] == [planted_run.report["tokens"]] * layers
    np.testing.assert_allclose(entry["rate_bound_per_layer"],
                               [scipy_stats.beta.ppf(0.95, 1, planted_run.report["tokens"])] * layers, rtol=1e-9)
    text = report.summary({"models": {"planted": planted_run.report}})
    assert f"never fired in {planted_run.report['tokens']:,} tokens: its rate is below " \
           f"{entry['rate_bound_per_layer'][0]:.3g} (95%)" in text
