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
