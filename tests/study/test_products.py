"""The device's top products (`analyses.neurons.products`) against plain numpy: the same scores to float32 rounding,
the same ids in the same order, ties at equal scores by the lower id (as `analyses.suppression.lowest`), through
project_out, as cosines, with a padded last block; at 125m's dimensions under `real`."""

import numpy as np
import pytest

from analyses import suppression
from analyses.neurons import products
from opt_jax.errors import InputError
from top_checks import assert_same_top, reference_top


def test_update_scores_match_numpy_with_ties_by_the_lower_id():
    """Integer weights make every product exact, so equal scores are exactly equal in both paths: the order of
    ties is the rule's, not luck. Duplicated embedding rows tie every neuron's scores; a zero column's scores
    are all 0."""
    rng = np.random.default_rng(0)
    embedding = rng.integers(-3, 4, (97, 8)).astype(np.float32)  # [v, e]
    embedding[50:60] = embedding[10]  # tokens 10 and 50..59 score alike
    fc2 = rng.integers(-2, 3, (8, 21)).astype(np.float32)  # [d, n]
    fc2[:, 5] = 0
    matrix = products.on_device(embedding)
    for k, block in ((10, 4), (97, 8), (3, 64)):
        top = products.top_products(matrix, fc2, k, block=block)
        scores = suppression.update_scores(embedding, None, fc2)  # [n, v]
        high, low = reference_top(scores, k)
        assert top.high_ids.tolist() == high.tolist() and top.low_ids.tolist() == low.tolist(), (k, block)
        assert top.high_ids.tolist() == suppression.lowest(-scores, k).tolist(), "the host rule is the same"
        assert top.low_ids.tolist() == suppression.lowest(scores, k).tolist()
        np.testing.assert_array_equal(top.high, np.take_along_axis(scores, high, 1))
        np.testing.assert_array_equal(top.low, np.take_along_axis(scores, low, 1))
    assert top.high_ids[5].tolist() == [0, 1, 2] == top.low_ids[5].tolist(), "all zero: the lowest ids, both ends"


def test_through_project_out_a_subset_of_columns_and_float16_as_stored():
    rng = np.random.default_rng(1)
    embedding = rng.standard_normal((300, 16)).astype(np.float16)  # [v, e]
    project = rng.standard_normal((16, 24)).astype(np.float16)  # [e, d]
    fc2 = rng.standard_normal((24, 40)).astype(np.float16)  # [d, n]
    ids = np.array([39, 0, 7, 7, 12])
    top = products.top_products(products.on_device(embedding, project), fc2, 6, ids, block=2)
    scores = suppression.update_scores(embedding.astype(np.float32), project.astype(np.float32), fc2[:, ids])
    high, low = reference_top(scores, 6)
    tol = 1e-5 * np.abs(scores).max()
    assert_same_top(top.high_ids, top.high, scores, high, tol, True)
    assert_same_top(top.low_ids, top.low, scores, low, tol, False)
    rows = products.product_rows(products.on_device(embedding, project), fc2, ids, block=3)
    np.testing.assert_allclose(rows, scores, atol=tol, rtol=0)


def test_cosines_against_numpy():
    rng = np.random.default_rng(2)
    rows = rng.standard_normal((200, 12)).astype(np.float32)  # [r, e]
    rows[17] = 0  # a zero row scores 0
    queries = rng.standard_normal((12, 30)).astype(np.float32)  # [e, q]
    top = products.top_products(products.on_device(rows, cosine=True), queries, 10, block=16)
    norms = np.linalg.norm(rows.astype(np.float64), axis=1)
    cosines = (queries.T.astype(np.float64) @ rows.T.astype(np.float64)) / np.where(norms > 0, norms, np.inf)
    cosines /= np.linalg.norm(queries.astype(np.float64), axis=0)[:, None]  # [q, r]
    high, low = reference_top(cosines, 10)
    assert_same_top(top.high_ids, top.high, cosines, high, 1e-6, True)
    assert_same_top(top.low_ids, top.low, cosines, low, 1e-6, False)
    assert np.abs(top.high).max() <= 1 + 1e-6


def test_wrong_shapes_are_refused():
    matrix = products.on_device(np.ones((5, 3), np.float32))
    with pytest.raises(InputError, match="length 4"):
        products.top_products(matrix, np.ones((4, 2), np.float32), 2)
    with pytest.raises(InputError, match="ids"):
        products.top_products(matrix, np.ones((3, 2), np.float32), 2, [2])
    with pytest.raises(InputError, match="projection"):
        products.on_device(np.ones((5, 3)), np.ones((4, 2)))
    empty = products.top_products(matrix, np.ones((3, 2), np.float32), 9, [])
    assert empty.high_ids.shape == (0, 5) and products.product_rows(matrix, np.ones((3, 2)), []).shape == (0, 5)


@pytest.mark.real
def test_update_scores_at_125m_dimensions():
    """Vocab 50272, hidden 768, 300 random neurons of an ffn of 3072, float16 as a converted model stores them:
    the device's top 10 each way against the numpy path (`suppression.update_scores`, `suppression.lowest`)."""
    rng = np.random.default_rng(3)
    embedding = (rng.standard_normal((50272, 768)) * 0.05).astype(np.float16)  # [v, d]
    fc2 = (rng.standard_normal((768, 3072)) * 0.05).astype(np.float16)  # [d, n]
    ids = np.sort(rng.choice(3072, 300, replace=False))
    top = products.top_products(products.on_device(embedding), fc2, 10, ids)
    scores = suppression.update_scores(embedding.astype(np.float32), None, fc2[:, ids])  # [q, v]
    tol = suppression.TIE_TOLERANCE * np.abs(scores).max()
    assert_same_top(top.high_ids, top.high, scores, suppression.lowest(-scores, 10), tol, True)
    assert_same_top(top.low_ids, top.low, scores, suppression.lowest(scores, 10), tol, False)
