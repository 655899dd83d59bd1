"""Host-side n-gram counting: ids, valid positions, SparseCounts, NgramTable vs a plain-Python recount."""

from collections import Counter

import numpy as np
import pytest

from analyses.collection.ngrams import (NgramBudgetError, NgramTable, SparseCounts, ngram_ids, valid_positions)

ORDERS = (2, 3)
LAYERS = 2
NEURONS = 5
OPT_VOCAB = 50272


@pytest.fixture(autouse=True)
def small_buffer(monkeypatch):
    """Consolidate SparseCounts buffers after a few entries, so the tests exercise the merge paths."""
    monkeypatch.setattr(SparseCounts, "BUFFER_MIN", 8)


def random_batch(rng, vocab, batch=4, seq=10, right_padded=True, p_active=0.3):
    """(input_ids, token_mask, active): padded positions hold junk ids, outside the vocabulary too."""
    if right_padded:
        lengths = rng.integers(0, seq + 1, batch)  # [b]
        mask = np.arange(seq)[None, :] < lengths[:, None]  # [b, s]
    else:
        mask = rng.random((batch, seq)) < 0.8  # [b, s]
    ids = rng.integers(0, vocab, (batch, seq))  # [b, s]
    ids = np.where(mask, ids, rng.choice([1, -7, vocab + 3], (batch, seq)))  # [b, s]
    active = {t: rng.random((batch, seq, NEURONS)) < p_active for t in range(LAYERS)}  # t -> [b, s, n]
    return ids, mask, active


def reference(batches, orders=ORDERS):
    """Counts by loops over positions: occ[k][gram tuple], pairs[k, t][(gram tuple, neuron)]."""
    occ = {k: Counter() for k in orders}
    pairs = {(k, t): Counter() for k in orders for t in range(LAYERS)}
    for ids, mask, active in batches:
        batch, seq = ids.shape
        for b in range(batch):
            for p in range(seq):
                for k in orders:
                    span = range(p - k + 1, p + 1)
                    if span[0] < 1 or not all(mask[b, q] for q in span):  # BOS or padding in the k-gram
                        continue
                    gram = tuple(int(ids[b, q]) for q in span)
                    occ[k][gram] += 1
                    for t in range(LAYERS):
                        for j in range(NEURONS):
                            if active[t][b, p, j]:
                                pairs[k, t][gram, j] += 1
    return occ, pairs


def table_as_counters(table):
    """The table's counts in the reference's form, checking the documented orderings on the way."""
    occ, pairs = {}, {}
    for k in table.orders:
        grams, counts = table.occurrences(k)
        assert grams.dtype == counts.dtype == np.int64
        assert (np.diff(grams) > 0).all() and (counts > 0).all()
        occ[k] = Counter({tuple(map(int, g)): int(c) for g, c in zip(table.decode(grams, k), counts)})
        for t in range(table.num_layers):
            grams, neurons, counts = table.pairs(k, t)
            assert grams.dtype == neurons.dtype == counts.dtype == np.int64
            assert (np.diff(neurons) >= 0).all()
            assert (np.diff(grams)[np.diff(neurons) == 0] > 0).all()  # sorted by (neuron, ngram_id), unique
            tokens = table.decode(grams, k)
            pairs[k, t] = Counter({(tuple(map(int, g)), int(j)): int(c) for g, j, c in zip(tokens, neurons, counts)})
    return occ, pairs


def filled(batches, **kwargs):
    table = NgramTable(ORDERS, LAYERS, NEURONS, kwargs.pop("vocab", 11), **kwargs)
    for batch in batches:
        table.add(*batch)
    return table


def same_arrays(a, b):
    return a.keys() == b.keys() and all(np.array_equal(a[n], b[n]) for n in a)


# ---- ids and valid positions ----

def test_ngram_ids_encoding_and_round_trip():
    rng = np.random.default_rng(0)
    ids = rng.integers(0, OPT_VOCAB, (3, 7))
    for k in (1, 2, 3):
        got = ngram_ids(ids, k, OPT_VOCAB)
        assert got.dtype == np.int64 and got.shape == ids.shape
        assert (got[:, :k - 1] == -1).all()
        for b in range(3):
            for p in range(k - 1, 7):
                expected = sum(int(ids[b, p - k + 1 + i]) * OPT_VOCAB ** (k - 1 - i) for i in range(k))
                assert got[b, p] == expected
    table = NgramTable((2, 3), 1, 1, OPT_VOCAB)
    grams = ngram_ids(ids, 3, OPT_VOCAB)[:, 2:].reshape(-1)
    windows = np.stack([ids[:, p - 2:p + 1] for p in range(2, 7)], axis=1).reshape(-1, 3)
    assert np.array_equal(table.decode(grams, 3), windows)


def test_largest_ids_do_not_overflow():
    top = OPT_VOCAB - 1
    got = ngram_ids(np.full((1, 4), top), 3, OPT_VOCAB)
    assert got.tolist() == [[-1, -1, OPT_VOCAB**3 - 1, OPT_VOCAB**3 - 1]]
    neurons = 36864
    table = NgramTable((2, 3), 1, neurons, OPT_VOCAB)
    ids = np.array([[2, top, top, top, top]])
    active = np.zeros((1, 5, neurons), bool)
    active[0, 4, neurons - 1] = True  # the largest pair key: (V**3 - 1) * N + N - 1
    table.add(ids, np.ones((1, 5), bool), {0: active})
    grams, neuron, counts = table.pairs(3, 0)
    assert grams.tolist() == [OPT_VOCAB**3 - 1] and neuron.tolist() == [neurons - 1] and counts.tolist() == [1]
    assert table.to_arrays()["ngram3_layer0_keys"].tolist() == [OPT_VOCAB**3 * neurons - 1]
    assert table.occurrences(3)[1].tolist() == [2]  # positions 3 and 4
    assert table.decode(grams, 3).tolist() == [[top, top, top]]


def test_id_space_overflow_is_refused():
    limit = 2**63 // OPT_VOCAB**3  # the most neurons whose trigram pair keys fit int64
    NgramTable((2, 3), 1, limit, OPT_VOCAB)
    with pytest.raises(ValueError, match="does not fit int64"):
        NgramTable((2, 3), 1, limit + 1, OPT_VOCAB)
    NgramTable((2,), 1, limit + 1, OPT_VOCAB)  # bigrams alone still fit
    with pytest.raises(ValueError, match="does not fit int64"):
        ngram_ids(np.zeros((1, 5), np.int64), 5, OPT_VOCAB)
    with pytest.raises(ValueError, match="must lie in"):
        ngram_ids(np.array([[0, OPT_VOCAB]]), 2, OPT_VOCAB)


def test_valid_positions_do_not_assume_right_padding():
    mask = np.array([[True, True, False, True, True, True],
                     [True, True, True, True, False, False]])
    assert valid_positions(mask, 2).astype(int).tolist() == [[0, 0, 0, 0, 1, 1], [0, 0, 1, 1, 0, 0]]
    assert valid_positions(mask, 3).astype(int).tolist() == [[0, 0, 0, 0, 0, 1], [0, 0, 0, 1, 0, 0]]
    assert not valid_positions(mask[:, :2], 3).any()


# ---- the table against hand-made and recomputed answers ----

def test_bos_and_padding_are_excluded_by_hand():
    # Window A: BOS 5 6 7 + 2 pads (junk ids); window B: BOS 5 6 5 6 2 (a </s> inside counts as a token).
    ids = np.array([[2, 5, 6, 7, 1, 999], [2, 5, 6, 5, 6, 2]])
    mask = np.array([[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1]], bool)
    active = np.zeros((2, 6, 3), bool)
    active[:, :, 0] = True  # fires everywhere, BOS and pads included
    active[0, 3, 1] = True  # fires on the 7 of window A only
    active[0, 1, 2] = active[0, 4, 2] = True  # fires on A's first token (BOS in its k-grams) and a pad
    table = NgramTable((2, 3), 1, 3, vocab=10)
    table.add(ids, mask, {0: active})
    occ, pairs = table_as_counters(table)
    # Bigrams: A has (5,6) (6,7); B has (5,6) (6,5) (5,6) (6,2). (2,5) holds BOS, (7,pad) holds padding.
    assert occ[2] == {(5, 6): 3, (6, 7): 1, (6, 5): 1, (6, 2): 1}
    # Trigrams: A has (5,6,7); B has (5,6,5) (6,5,6) (5,6,2).
    assert occ[3] == {(5, 6, 7): 1, (5, 6, 5): 1, (6, 5, 6): 1, (5, 6, 2): 1}
    # Neuron 0 fires on every counted k-gram; neuron 1 on those ending at A's 7; neuron 2 on none.
    assert pairs[2, 0] == {((g, 0)): c for g, c in occ[2].items()} | {((6, 7), 1): 1}
    assert pairs[3, 0] == {((g, 0)): c for g, c in occ[3].items()} | {((5, 6, 7), 1): 1}


@pytest.mark.parametrize("right_padded", [True, False])
@pytest.mark.parametrize("vocab", [4, OPT_VOCAB])
def test_matches_plain_python_recount(vocab, right_padded):
    rng = np.random.default_rng(vocab + right_padded)
    batches = [random_batch(rng, vocab, right_padded=right_padded) for _ in range(4)]
    table = filled(batches, vocab=vocab)
    occ, pairs = reference(batches)
    assert table_as_counters(table) == (occ, pairs)
    assert table.num_pairs() == sum(len(c) for c in pairs.values())


def test_several_batches_equal_one():
    rng = np.random.default_rng(1)
    batches = [random_batch(rng, 6, batch=3) for _ in range(5)]
    ids, mask = (np.concatenate([b[i] for b in batches]) for i in (0, 1))
    active = {t: np.concatenate([b[2][t] for b in batches]) for t in range(LAYERS)}
    assert same_arrays(filled(batches).to_arrays(), filled([(ids, mask, active)]).to_arrays())


def test_merge_equals_one_table_fed_both_halves():
    rng = np.random.default_rng(2)
    batches = [random_batch(rng, 5) for _ in range(6)]
    first, second = filled(batches[:3]), filled(batches[3:])
    first.merge(second)
    assert same_arrays(first.to_arrays(), filled(batches).to_arrays())
    assert table_as_counters(second) == reference(batches[3:])  # the merged-in table is untouched
    with pytest.raises(ValueError, match="num_neurons"):
        first.merge(NgramTable(ORDERS, LAYERS, NEURONS + 1, 11))


def test_to_arrays_from_arrays_round_trip():
    rng = np.random.default_rng(3)
    table = filled([random_batch(rng, 7) for _ in range(3)])
    arrays = table.to_arrays()
    assert set(arrays) == {f"ngram{k}_{part}_{a}" for k in ORDERS for part in ("layer0", "layer1", "occ")
                           for a in ("keys", "counts")}
    assert all(a.ndim == 1 and a.dtype == np.int64 for a in arrays.values())
    copy = NgramTable.from_arrays({n: a.copy() for n, a in arrays.items()}, ORDERS, LAYERS, NEURONS, 11, 10**6)
    assert same_arrays(copy.to_arrays(), arrays)
    assert table_as_counters(copy) == table_as_counters(table)
    with pytest.raises(ValueError, match="missing"):
        NgramTable.from_arrays({n: a for n, a in arrays.items() if n != "ngram3_occ_keys"},
                               ORDERS, LAYERS, NEURONS, 11, 10**6)
    too_big = dict(arrays, ngram2_occ_keys=np.append(arrays["ngram2_occ_keys"], 11**2),
                   ngram2_occ_counts=np.append(arrays["ngram2_occ_counts"], 1))
    with pytest.raises(ValueError, match="must lie in"):
        NgramTable.from_arrays(too_big, ORDERS, LAYERS, NEURONS, 11, 10**6)
    with pytest.raises(NgramBudgetError, match="max_pairs=3"):
        NgramTable.from_arrays(arrays, ORDERS, LAYERS, NEURONS, 11, 3)


def test_bad_batches_are_refused():
    rng = np.random.default_rng(4)
    ids, mask, active = random_batch(rng, 11)
    table = NgramTable(ORDERS, LAYERS, NEURONS, 11)
    with pytest.raises(ValueError, match="token layers 0..1"):
        table.add(ids, mask, {0: active[0]})
    with pytest.raises(ValueError, match="active\\[1\\] must be bool"):
        table.add(ids, mask, {0: active[0], 1: active[1][:, :, :2]})
    with pytest.raises(ValueError, match="must lie in"):
        table.add(np.where(mask, 11, ids), mask | (np.arange(10) == 0), active)
    assert table.num_pairs() == 0


# ---- the pair budget ----

def test_budget_is_exact_and_preserves_state():
    rng = np.random.default_rng(5)
    first, second = random_batch(rng, 9), random_batch(rng, 9)
    exact = filled([first]).num_pairs()
    table = filled([first], max_pairs=exact)  # exactly at the budget is allowed
    table.add(*first)  # no new pair: the exact count is taken although the cheap bound is over
    assert sum(c.stored for c in table._pairs.values()) == exact  # buffers merged in: memory within budget
    before = {n: a.copy() for n, a in table.to_arrays().items()}
    with pytest.raises(NgramBudgetError) as error:
        table.add(*second)
    message = str(error.value)
    total = filled([first, second]).num_pairs()
    assert f"to {total:,}" in message and f"max_pairs={exact:,}" in message
    assert "raise max_pairs" in message and f"holds the {exact:,} pairs" in message
    assert same_arrays(table.to_arrays(), before)
    assert table_as_counters(table) == reference([first, first])
    with pytest.raises(NgramBudgetError, match="merging"):
        table.merge(filled([second]))
    assert same_arrays(table.to_arrays(), before)
    quiet = {t: np.zeros_like(a) for t, a in second[2].items()}
    table.add(second[0], second[1], quiet)  # occurrences only: no pairs, within budget
    assert table.num_pairs() == exact


# ---- SparseCounts ----

def test_sparse_counts_match_a_counter():
    rng = np.random.default_rng(6)
    counts, expected = SparseCounts(), Counter()
    for _ in range(20):
        keys = rng.integers(-50, 50, rng.integers(0, 30))
        weights = rng.integers(0, 4, keys.size) if rng.random() < 0.5 else None
        counts.add(keys, weights)
        for key, w in zip(keys.tolist(), [1] * keys.size if weights is None else weights.tolist()):
            expected[key] += w
        if rng.random() < 0.3:
            assert dict(zip(counts.keys.tolist(), counts.counts.tolist())) == +expected
    other = SparseCounts.from_arrays([-100, 3, 200], [1, 2, 3])
    counts.merge(other)
    expected.update({-100: 1, 3: 2, 200: 3})
    assert dict(zip(counts.keys.tolist(), counts.counts.tolist())) == +expected
    assert len(counts) == len(+expected) and (np.diff(counts.keys) > 0).all()
    assert not counts.keys.flags.writeable


@pytest.mark.parametrize("keys, values, problem", [
    ([1, 3, 2], [1, 1, 1], "sorted"), ([1, 2, 2], [1, 1, 1], "duplicates"),
    ([1, 2, 3], [1, 0, 1], "positive"), ([1, 2, 3], [1, -1, 1], "positive"),
    ([1, 2], [1], "differ in length"), ([1.0, 2.0], [1, 1], "integers")])
def test_sparse_counts_from_arrays_validates(keys, values, problem):
    with pytest.raises(ValueError, match=problem):
        SparseCounts.from_arrays(np.array(keys), np.array(values))


def test_sparse_counts_add_rejects_negative_counts():
    with pytest.raises(ValueError, match=">= 0"):
        SparseCounts().add([1, 2], [1, -1])
