"""Exact n-gram activation counts on the host (numpy only), for the n-gram neuron analyses.

For a k-gram order k, the k-gram at position p of a window is (x[p-k+1], ..., x[p]). It is counted
only when all of its positions are real (token_mask True) and none is position 0 (BOS), so that
valid positions are p >= k. Per order k and token layer t the table counts
  pairs        (k-gram g, neuron j) -> activations of j at valid positions holding g (as last token)
  occurrences  k-gram g -> valid positions holding g (independent of layers)

Storage: sorted unique int64 keys with int64 counts, 16 bytes per stored entry. A k-gram is the id
sum_i x[p-k+1+i] * vocab**(k-1-i); a pair is the key ngram_id * num_neurons + j. New entries are
buffered (already reduced) and merged into the sorted arrays lazily: when the buffer outgrows the
stored entries, when the arrays are read, or when the pair budget needs an exact count.

Memory: after every `add` or `merge` the pair tables hold at most `max_pairs` entries, buffers
included (16 bytes each); occurrences add 16 bytes per distinct k-gram seen and are not budgeted.
While a batch is counted, its own pair keys (about 40 bytes per firing of one order and layer at a
time, then 16 per distinct pair of the batch) and one table's merge (old and new arrays) come on top.
"""

from __future__ import annotations

import numpy as np

from opt_jax.errors import InputError, NgramBudgetError

_INT64_LIMIT = 2**63  # keys must stay below this


def _check_id_space(vocab: int, order: int, num_neurons: int = 1) -> None:
    """ValueError unless every key vocab**order * num_neurons - 1 fits in int64."""
    if vocab < 1 or order < 1 or num_neurons < 1:
        raise InputError(f"vocab, order and num_neurons must be >= 1, got {vocab}, {order}, {num_neurons}")
    if vocab**order * num_neurons > _INT64_LIMIT:
        raise InputError(f"vocab**order * num_neurons = {vocab}**{order} * {num_neurons} = "
                         f"{vocab**order * num_neurons} does not fit int64 keys (limit 2**63)")


def ngram_ids(input_ids: np.ndarray, order: int, vocab: int) -> np.ndarray:
    """int64 id of the k-gram ending at each position: [batch, seq]; positions < order-1 get -1."""
    _check_id_space(vocab, order)
    x = np.asarray(input_ids)  # [b, s]
    if x.ndim != 2 or (x.size and x.dtype.kind not in "iu"):
        raise InputError(f"input_ids must be an integer [batch, seq] array, got {x.dtype} {x.shape}")
    if x.size and (x.min() < 0 or x.max() >= vocab):
        raise InputError(f"input_ids must lie in [0, {vocab}), got [{x.min()}, {x.max()}]")
    batch, seq = x.shape
    ids = np.full((batch, seq), -1, np.int64)  # [b, s]
    span = seq - order + 1  # positions with a whole k-gram
    if span > 0:
        gram = x[:, :span].astype(np.int64)  # [b, span]
        for i in range(1, order):
            gram = gram * vocab + x[:, i:i + span]  # [b, span]
        ids[:, order - 1:] = gram
    return ids


def decode_ngrams(ngram_id: np.ndarray, order: int, vocab: int) -> np.ndarray:
    """Token ids [m, order] of n-gram ids (the inverse of `ngram_ids`)."""
    ids = np.asarray(ngram_id, dtype=np.int64)  # [m]
    if ids.size and (ids.min() < 0 or ids.max() >= vocab ** order):
        raise InputError(f"{order}-gram ids must lie in [0, {vocab}**{order})")
    tokens = np.empty(ids.shape + (order,), np.int64)  # [m, order]
    for i in range(order - 1, -1, -1):
        ids, tokens[..., i] = np.divmod(ids, vocab)
    return tokens


def valid_positions(token_mask: np.ndarray, order: int) -> np.ndarray:
    """bool [batch, seq]: positions p >= order whose k-gram lies wholly on real, non-BOS positions."""
    mask = np.asarray(token_mask, dtype=bool)  # [b, s]
    if mask.ndim != 2 or order < 1:
        raise InputError(f"token_mask must be [batch, seq] and order >= 1, got {mask.shape}, order {order}")
    batch, seq = mask.shape
    valid = np.zeros((batch, seq), bool)  # [b, s]
    span = seq - order  # k-grams starting at 1 .. seq-order
    if span > 0:
        whole = np.ones((batch, span), bool)  # [b, span]
        for i in range(order):
            whole &= mask[:, 1 + i:1 + i + span]
        valid[:, order:] = whole
    return valid


def _as_int64(values, name: str) -> np.ndarray:
    """values as a 1-D int64 array; ValueError for other shapes, non-integers or values beyond int64."""
    array = np.asarray(values)
    if array.ndim != 1:
        raise InputError(f"{name} must be 1-D, got shape {array.shape}")
    if array.size == 0:
        return np.zeros(0, np.int64)
    if array.dtype.kind not in "iu":
        raise InputError(f"{name} must be integers, got {array.dtype}")
    if array.dtype == np.uint64 and array.max() >= _INT64_LIMIT:
        raise InputError(f"{name} holds {array.max()}, beyond int64")
    return array.astype(np.int64, copy=False)


def _reduce(keys: np.ndarray, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sorted unique keys with summed counts (zero totals dropped)."""
    if keys.size == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    order = np.argsort(keys, kind="stable")  # [m]
    keys, counts = keys[order], counts[order]  # [m], [m]
    starts = np.flatnonzero(np.concatenate(([True], keys[1:] != keys[:-1])))  # [u]
    keys, counts = keys[starts], np.add.reduceat(counts, starts)  # [u], [u]
    keep = counts > 0  # [u]
    return (keys, counts) if keep.all() else (keys[keep], counts[keep])


def _merge_sorted(a_keys, a_counts, b_keys, b_counts) -> tuple[np.ndarray, np.ndarray]:
    """Union of two sorted unique key sets, counts summed; new arrays, O(len(a) + len(b) log len(a))."""
    pos = np.searchsorted(a_keys, b_keys)  # [m] where each b key goes in a
    hit = np.zeros(b_keys.size, bool)  # [m] b key already in a
    inside = pos < a_keys.size  # [m]
    hit[inside] = a_keys[pos[inside]] == b_keys[inside]
    new = ~hit  # [m]
    keys = np.insert(a_keys, pos[new], b_keys[new])  # [n + new]
    counts = np.insert(a_counts, pos[new], b_counts[new])  # [n + new]
    shift = np.searchsorted(pos[new], pos[hit], side="right")  # [hits] new keys inserted before each hit
    counts[pos[hit] + shift] += b_counts[hit]
    return keys, counts


def _missing(sorted_keys: np.ndarray, keys: np.ndarray) -> int:
    """How many of the unique `keys` are not in `sorted_keys`."""
    if sorted_keys.size == 0:
        return int(keys.size)
    pos = np.minimum(np.searchsorted(sorted_keys, keys), sorted_keys.size - 1)  # [m]
    return int(np.count_nonzero(sorted_keys[pos] != keys))


def _read_only(array: np.ndarray) -> np.ndarray:
    view = array.view()
    view.flags.writeable = False
    return view


class SparseCounts:
    """Exact counts keyed by int64, kept as sorted unique keys with int64 counts."""

    # Buffered entries are merged in once they exceed both this and the stored entries (amortised O(log)).
    BUFFER_MIN = 1 << 20

    def __init__(self):
        self._keys = np.zeros(0, np.int64)  # [m] sorted, unique
        self._counts = np.zeros(0, np.int64)  # [m] > 0
        self._buffer: list[tuple[np.ndarray, np.ndarray]] = []  # reduced chunks not yet merged in
        self._buffered = 0  # entries in _buffer

    @property
    def keys(self) -> np.ndarray:
        """Sorted unique keys [m] (a read-only view)."""
        self.consolidate()
        return _read_only(self._keys)

    @property
    def counts(self) -> np.ndarray:
        """Counts [m] > 0, aligned with `keys` (a read-only view)."""
        self.consolidate()
        return _read_only(self._counts)

    def __len__(self) -> int:
        self.consolidate()
        return int(self._keys.size)

    @property
    def stored(self) -> int:
        """Entries held now, buffered ones included: an upper bound on len(self), without consolidating."""
        return int(self._keys.size) + self._buffered

    def add(self, keys: np.ndarray, counts: np.ndarray | None = None) -> None:
        """Add counts (default 1 each) to keys; keys may repeat and come in any order."""
        keys = _as_int64(keys, "keys")
        if counts is None:
            self._push(*np.unique(keys, return_counts=True))
            return
        counts = _as_int64(counts, "counts")
        if counts.shape != keys.shape:
            raise InputError(f"keys and counts differ in length: {keys.size} vs {counts.size}")
        if counts.size and counts.min() < 0:
            raise InputError("counts must be >= 0")
        self._push(*_reduce(keys, counts))

    def merge(self, other: "SparseCounts") -> None:
        """Add all of other's counts into self."""
        other.consolidate()
        self._push(other._keys, other._counts)

    def new_keys(self, other_keys: np.ndarray) -> int:
        """How many of the sorted unique `other_keys` are not yet counted here (consolidates)."""
        self.consolidate()
        return _missing(self._keys, other_keys)

    def consolidate(self) -> None:
        """Merge the buffered chunks into the sorted arrays."""
        if not self._buffer:
            return
        chunks, self._buffer, self._buffered = self._buffer, [], 0
        if len(chunks) == 1:
            keys, counts = chunks[0]
        else:
            keys, counts = _reduce(np.concatenate([k for k, _ in chunks]), np.concatenate([c for _, c in chunks]))
        self._keys, self._counts = _merge_sorted(self._keys, self._counts, keys, counts)

    def _push(self, keys: np.ndarray, counts: np.ndarray) -> None:
        """Buffer one reduced chunk (sorted unique keys, positive counts); never mutated afterwards."""
        if keys.size == 0:
            return
        self._buffer.append((keys, counts.astype(np.int64, copy=False)))
        self._buffered += int(keys.size)
        if self._buffered > max(self._keys.size, self.BUFFER_MIN):
            self.consolidate()

    @classmethod
    def from_arrays(cls, keys, counts) -> "SparseCounts":
        """Counts from sorted unique keys and positive counts (copied); ValueError otherwise."""
        keys, counts = _as_int64(keys, "keys").copy(), _as_int64(counts, "counts").copy()
        if keys.shape != counts.shape:
            raise InputError(f"keys and counts differ in length: {keys.size} vs {counts.size}")
        if keys.size > 1 and not (keys[1:] > keys[:-1]).all():
            raise InputError("keys must be sorted in increasing order with no duplicates")
        if counts.size and counts.min() <= 0:
            raise InputError("counts must be positive")
        table = cls()
        table._keys, table._counts = keys, counts
        return table


class NgramTable:
    """Per order k and token layer t: counts of (k-gram, neuron) at activations, and k-gram occurrences."""

    def __init__(self, orders=(2, 3), num_layers: int = 1, num_neurons: int = 1, vocab: int = 50272,
                 max_pairs: int = 50_000_000):
        self.orders = tuple(sorted({int(k) for k in orders}))
        if not self.orders or len(self.orders) != len(tuple(orders)) or self.orders[0] < 1:
            raise InputError(f"orders must be distinct, >= 1 and non-empty, got {orders!r}")
        if num_layers < 1 or max_pairs < 0:
            raise InputError(f"num_layers must be >= 1 and max_pairs >= 0, got {num_layers}, {max_pairs}")
        _check_id_space(vocab, max(self.orders), num_neurons)
        self.num_layers, self.num_neurons, self.vocab, self.max_pairs = num_layers, num_neurons, vocab, max_pairs
        self._pairs = {(k, t): SparseCounts() for k in self.orders for t in range(num_layers)}
        self._occ = {k: SparseCounts() for k in self.orders}

    def num_pairs(self) -> int:
        """Distinct (k-gram, neuron) pairs over all orders and layers."""
        return sum(len(c) for c in self._pairs.values())

    def add(self, input_ids: np.ndarray, token_mask: np.ndarray, active: dict[int, np.ndarray]) -> None:
        """Count one batch: input_ids int [batch, seq], token_mask bool [batch, seq], active[t] bool [batch, seq, neurons]."""
        ids, mask, active = self._checked_batch(input_ids, token_mask, active)
        pair_chunks, occ_chunks = {}, {}
        for k in self.orders:
            valid = valid_positions(mask, k)  # [b, s]
            grams = ngram_ids(ids, k, self.vocab)[valid]  # [q]
            occ_chunks[k] = np.unique(grams, return_counts=True)
            for t in range(self.num_layers):
                pair_chunks[k, t] = np.unique(self._pair_keys(grams, active[t][valid]), return_counts=True)
        near_budget = self._check_budget(pair_chunks, "this batch")
        for key, chunk in pair_chunks.items():
            self._pairs[key]._push(*chunk)
            if near_budget:  # keep stored entries (buffers included) within max_pairs
                self._pairs[key].consolidate()
        for k, chunk in occ_chunks.items():
            self._occ[k]._push(*chunk)

    def _checked_batch(self, input_ids, token_mask, active):
        """The batch as (ids with padding zeroed, bool mask, {t: bool active}), or ValueError."""
        ids = np.asarray(input_ids)  # [b, s]
        mask = np.asarray(token_mask)  # [b, s]
        if ids.ndim != 2 or ids.dtype.kind not in "iu" or mask.shape != ids.shape or mask.dtype != bool:
            raise InputError(f"need integer input_ids and bool token_mask of one [batch, seq] shape, got "
                             f"{ids.dtype} {ids.shape} and {mask.dtype} {mask.shape}")
        real = ids[mask]  # [r] padded positions may hold any id
        if real.size and (real.min() < 0 or real.max() >= self.vocab):
            raise InputError(f"real input_ids must lie in [0, {self.vocab}), got [{real.min()}, {real.max()}]")
        if set(active) != set(range(self.num_layers)):
            raise InputError(f"active must hold token layers 0..{self.num_layers - 1}, got {sorted(active)}")
        active = {t: np.asarray(a) for t, a in active.items()}  # t -> [b, s, n]
        for t, a in active.items():
            if a.shape != ids.shape + (self.num_neurons,) or a.dtype != bool:
                raise InputError(f"active[{t}] must be bool {ids.shape + (self.num_neurons,)}, "
                                 f"got {a.dtype} {a.shape}")
        return np.where(mask, ids, 0), mask, active

    def _pair_keys(self, grams: np.ndarray, fired: np.ndarray) -> np.ndarray:
        """Pair keys ngram_id * num_neurons + j of every firing: grams [q], fired bool [q, neurons]."""
        flat = np.flatnonzero(fired)  # [a] row * n + j
        row, neuron = np.divmod(flat, self.num_neurons)  # [a], [a]
        return grams[row] * self.num_neurons + neuron  # [a]

    def _check_budget(self, pair_chunks: dict, what: str) -> bool:
        """NgramBudgetError, changing no count, if the pair chunks would exceed max_pairs; True if counted exactly."""
        bound = sum(c.stored for c in self._pairs.values()) + sum(k.size for k, _ in pair_chunks.values())
        if bound <= self.max_pairs:
            return False
        total = sum(self._pairs[key].new_keys(keys) for key, (keys, _) in pair_chunks.items())
        total += self.num_pairs()
        if total > self.max_pairs:
            raise NgramBudgetError(
                f"n-gram pair budget exceeded: {what} would bring the distinct (n-gram, neuron) pairs of orders "
                f"{self.orders} over {self.num_layers} token layer(s) to {total:,}, above max_pairs="
                f"{self.max_pairs:,} ({self.max_pairs * 16 / 2**30:.2f} GiB at 16 bytes per pair). The table "
                f"still holds the {self.num_pairs():,} pairs counted before; raise max_pairs if memory allows, "
                f"or count fewer tokens, token layers or orders (or count in shards and merge offline).")
        return True

    def pairs(self, order: int, layer: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(ngram_id int64 [m], neuron int64 [m], count int64 [m]), sorted by (neuron, ngram_id)."""
        table = self._pairs[self._order(order), self._layer(layer)]
        gram, neuron = np.divmod(table.keys, self.num_neurons)  # [m], [m]
        by_neuron = np.lexsort((gram, neuron))  # [m]
        return gram[by_neuron], neuron[by_neuron], table.counts[by_neuron]

    def occurrences(self, order: int) -> tuple[np.ndarray, np.ndarray]:
        """(ngram_id int64 [m], count int64 [m]) sorted by ngram_id."""
        table = self._occ[self._order(order)]
        return table.keys, table.counts

    def merge(self, other: "NgramTable") -> None:
        """Add all of other's counts into self (same orders, layers, neurons and vocab); budget-checked."""
        shape = ("orders", "num_layers", "num_neurons", "vocab")
        if any(getattr(self, a) != getattr(other, a) for a in shape):
            raise InputError("cannot merge n-gram tables of different " + ", ".join(
                f"{a} ({getattr(self, a)} vs {getattr(other, a)})" for a in shape
                if getattr(self, a) != getattr(other, a)))
        near_budget = self._check_budget({key: (c.keys, c.counts) for key, c in other._pairs.items()}, "merging")
        for key, counts in other._pairs.items():
            self._pairs[key].merge(counts)
            if near_budget:
                self._pairs[key].consolidate()
        for k, counts in other._occ.items():
            self._occ[k].merge(counts)

    def to_arrays(self) -> dict[str, np.ndarray]:
        """Flat name -> 1-D array, e.g. 'ngram2_layer0_keys', 'ngram2_layer0_counts', 'ngram2_occ_keys', 'ngram2_occ_counts'."""
        arrays = {}
        for name, table in self._named_tables():
            arrays[f"{name}_keys"], arrays[f"{name}_counts"] = table.keys, table.counts
        return arrays

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray], orders, num_layers: int, num_neurons: int, vocab: int,
                    max_pairs: int) -> "NgramTable":
        """A table from `to_arrays` output (exactly its names); ValueError for bad arrays, budget-checked."""
        table = cls(orders, num_layers, num_neurons, vocab, max_pairs)
        expected = {f"{name}_{part}" for name, _ in table._named_tables() for part in ("keys", "counts")}
        if set(arrays) != expected:
            raise InputError(f"n-gram arrays: missing {sorted(expected - set(arrays))}, "
                             f"unexpected {sorted(set(arrays) - expected)}")
        for name, _ in table._named_tables():
            counts = SparseCounts.from_arrays(arrays[f"{name}_keys"], arrays[f"{name}_counts"])
            limit = table._key_limit(name)
            if len(counts) and (counts.keys[0] < 0 or counts.keys[-1] >= limit):
                raise InputError(f"{name}_keys must lie in [0, {limit})")
            table._set(name, counts)
        if table.num_pairs() > max_pairs:
            raise NgramBudgetError(f"the arrays hold {table.num_pairs():,} n-gram pairs, above max_pairs="
                                   f"{max_pairs:,}; pass a larger max_pairs if memory allows")
        return table

    def decode(self, ngram_id: np.ndarray, order: int) -> np.ndarray:
        """Token ids [m, order] of k-gram ids."""
        return decode_ngrams(ngram_id, self._order(order), self.vocab)

    def _named_tables(self):
        """(array name prefix, SparseCounts) of every table, in a fixed order."""
        for k in self.orders:
            for t in range(self.num_layers):
                yield f"ngram{k}_layer{t}", self._pairs[k, t]
            yield f"ngram{k}_occ", self._occ[k]

    def _set(self, name: str, counts: SparseCounts) -> None:
        k, rest = name.removeprefix("ngram").split("_", 1)
        if rest == "occ":
            self._occ[int(k)] = counts
        else:
            self._pairs[int(k), int(rest.removeprefix("layer"))] = counts

    def _key_limit(self, name: str) -> int:
        """One past the largest valid key of the table `name`."""
        k, rest = name.removeprefix("ngram").split("_", 1)
        return self.vocab ** int(k) * (1 if rest == "occ" else self.num_neurons)

    def _order(self, order: int) -> int:
        if order not in self.orders:
            raise InputError(f"order {order} is not counted (orders {self.orders})")
        return order

    def _layer(self, layer: int) -> int:
        if not 0 <= layer < self.num_layers:
            raise InputError(f"token layer {layer} is out of range 0..{self.num_layers - 1}")
        return layer
