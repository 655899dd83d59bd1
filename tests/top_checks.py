"""Checks of top-k lists against a plain numpy reference, shared by the tests of `analyses.neurons.products` and
`analyses.neurons.related`: float32 results against float64 (or float32 numpy) scores, ids compared wherever
rounding cannot reorder them."""

import numpy as np


def reference_top(scores: np.ndarray, k: int):
    """(high ids, low ids) [q, k] by a stable full sort: highest (lowest) first, equal scores lower id first."""
    return (np.argsort(-scores, axis=1, kind="stable")[:, :k],
            np.argsort(scores, axis=1, kind="stable")[:, :k])


def assert_same_top(ids, values, scores, want, tol, highest):
    """ids / values [q, k] of the device against the reference's scores [q, r] and ordered ids `want` [q, k]
    (`highest`: the high end, else the low end):
    the values are the reference's at those ids and at its own ids, ids are distinct, and wherever the
    reference's value is apart from its neighbours' (and from the first left out) by more than 2 tol, the id is
    the reference's."""
    rows = np.arange(len(scores))[:, None]
    ref_values = scores[rows, want]  # [q, k]
    np.testing.assert_allclose(values, ref_values, atol=tol, rtol=0)
    np.testing.assert_allclose(scores[rows, ids], values, atol=tol, rtol=0)
    assert all(len(set(row)) == len(row) for row in ids.tolist())
    ordered = np.sort(scores, axis=1)  # [q, r]
    k = want.shape[1]
    edge = (ordered[:, ::-1] if highest else ordered)[:, :k + 1]  # [q, k + 1], the reference's order
    gaps = np.abs(np.diff(edge, axis=1))  # [q, k] (k - 1 when every score is listed: nothing is left out)
    gaps = np.concatenate([gaps, np.full((len(scores), k - gaps.shape[1]), np.inf)], axis=1)
    apart = (gaps[:, :k] > 2 * tol) & np.concatenate([np.ones((len(scores), 1), bool), gaps[:, :k - 1] > 2 * tol],
                                                     axis=1)
    assert apart.mean() > 0.5, "the check compares ids somewhere"
    assert (ids[apart] == want[apart]).all()
