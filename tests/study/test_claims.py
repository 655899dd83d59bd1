"""The claims' small measures on hand-made inputs (the claims themselves are checked on real reports in
test_planted.py, test_analyses.py, test_post_ln.py and tests/scripts/test_scripts.py)."""

import pytest

from analyses import claims


def test_variants_of_one_word():
    assert claims.one_word([" Run", "run", "running", "Runs"], 3)
    assert claims.one_word([" the"], 3) and claims.one_word(["a", " A"], 3)
    assert not claims.one_word(["'", '"'], 3)
    assert not claims.one_word(["w1", "w2"], 3), "a shared prefix shorter than the words is not enough"
    assert not claims.one_word([" ", "x"], 3)


def test_valley_between_two_stages():
    assert claims.valley_depth([5, 1, 0, 4, 6], 6) == 1.0  # peak in layers 0-1, a valley at 2, a second peak at 4
    assert claims.valley_depth([4, 1, 2, 8, 0, 0], 6) == pytest.approx(0.75)
    assert claims.valley_depth([33, 12, 9, 0], 4) == 0.0, "falling only: no valley (never negative)"
    assert claims.valley_depth([3, 4, 0, 0, 0, 0], 6) == 0.0, "no second stage"
    assert claims.valley_depth([3, 4, 0], 3) == 0.0, "the peaks are adjacent"


def test_rank_correlation():
    assert claims.spearman([0.1, 0.2, 0.3], [3, 2, 1]) == pytest.approx(-1.0)
    assert claims.spearman([0.0, 0.5, 0.5, 0.9], [1, 2, 2, 3]) == pytest.approx(1.0)
    assert claims.spearman([0.1, 0.2], [2, 1]) is None and claims.spearman([0, 0, 0], [1, 2, 3]) is None


def _causal_claims(causal):
    found = []
    claims._causal_claims(causal, claims.ClaimThresholds(), lambda key, *a, **k: found.append((key, k)))
    return {key: k for key, k in found}


def test_causal_claims_hold_fail_and_say_why():
    def entry(change, interval, diff=None, diff_interval=None):
        e = {"spec": "x", "neurons": 3, "per_layer": [3], "change": change, "interval": interval, "kl": 0.0}
        if diff is not None:
            e["against_control"] = {"control": "match:x", "difference": diff, "interval": diff_interval}
        return e

    triggers = [{"change": 0.5, "control_change": 0.1}] * 9 + [{"change": 0.0, "control_change": 0.2}]
    causal = {"held_out": True, "notes": {}, "sets": {
        "dead": entry(0.0002, [-0.0003, 0.0006]),
        "detectors": entry(0.02, [0.01, 0.03], 0.015, [0.004, 0.02]) | {"triggers": triggers},
        "positional": entry(0.01, [0.0, 0.02], 0.002, [-0.001, 0.005])}}
    got = _causal_claims(causal)
    assert got["dead_unused_causal"] == {"measured": 0.0002, "holds": True}
    assert got["detectors_matter_causal"] == {"measured": 0.015, "holds": True}
    assert got["detectors_suppress_causal"] == {"measured": 0.9, "holds": True}
    assert got["positional_matter_causal"] == {"measured": 0.002, "holds": False}, "the interval reaches 0"
    causal["sets"]["dead"] = entry(0.0, [-0.0002, 0.0015])
    assert not _causal_claims(causal)["dead_unused_causal"]["holds"], "an interval past 0.001 nats"
    del causal["sets"]["positional"]
    causal["notes"]["positional"] = "left out: no positional neurons"
    assert _causal_claims(causal)["positional_matter_causal"] == {"note": "left out: no positional neurons"}
    assert "not run" in _causal_claims(None)["dead_unused_causal"]["note"]
