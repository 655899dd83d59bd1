"""The 95% coverage count against a plain loop, and n-gram candidate neurons."""

import numpy as np
import pytest

from analyses import coverage


def _loop_coverage(column, fraction):
    total = sum(column)
    if total == 0:
        return 0
    running = 0
    for k, c in enumerate(sorted(column, reverse=True), start=1):
        running += c
        if running >= fraction * total:
            return k


@pytest.mark.parametrize("fraction", [0.95, 0.5, 1.0])
def test_covering_counts_match_a_loop(monkeypatch, fraction):
    monkeypatch.setattr(coverage, "BLOCK_CELLS", 7 * 23)  # 7 rows a block: several blocks, the last one short
    rng = np.random.default_rng(0)
    counts = rng.integers(0, 5, (40, 23)) * (rng.random((40, 23)) < 0.3)  # [items, neurons], sparse
    counts[:, 3] = 0  # a dead neuron
    counts[:, 4] = 0
    counts[11, 4] = 9  # a single-item neuron
    got = coverage.covering_counts_of(coverage.ItemCounts.from_dense(counts), fraction)
    want = [_loop_coverage(counts[:, n].tolist(), fraction) for n in range(23)]
    assert got.tolist() == want
    assert got[3] == 0 and got[4] == 1


def test_candidates_are_alive_and_covered_by_few_tokens():
    tok_act = np.zeros((2, 10, 4), np.int64)  # [token layers, vocab, neurons]
    tok_act[0, 1, 0] = 100  # one token
    tok_act[0, :, 1] = 10  # ten tokens alike
    tok_act[1, 2, 2], tok_act[1, 3, 2] = 50, 50  # two tokens
    candidates = coverage.ngram_candidates(tok_act, max_coverage=2)
    assert candidates.tolist() == [[True, False, False, False], [False, False, True, False]]
    with pytest.raises(ValueError):
        coverage.covering_counts_of(coverage.ItemCounts.from_dense(tok_act[0]), fraction=0)
