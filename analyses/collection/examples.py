"""Example activations of every neuron: its k strongest and a uniform sample of k, kept on the device.

For each collected layer l and neuron n, two sets of at most k activations at real, non-BOS positions
(an activation is a token where the neuron's fc1 output is > 0), each example a (window, position,
value) triple: the window's index in the run's window stream, the position in the window, the fc1
output in float32.

- `top`: the k largest values; ties go to the earlier token (smaller window, then position).
- `random`: the k activations with the smallest `rank(window, position, l, n)`, a 30-bit hash. For a
  fixed neuron the ranks of distinct tokens are independent and uniform, so the k smallest are a
  uniform sample without replacement of the neuron's activations, whatever the batch, flush or
  process that saw them; ties (1 in 2^30) go to the earlier token.

- `quantile` (with `--quantile_examples K`, kept beside them): for each value bin j of `values.py`, the K
  activations in bin j with the smallest rank, in slots j K .. j K + K - 1 ([n, bins * K]): a uniform sample of
  the bin's activations, from which the reader (`Stats.examples(..., "quantile")`) draws each quantile band's K
  (a band is a run of whole bins, so its K smallest ranks are among its bins' samples).

All are "the k best of a total order" (the quantile set bin by bin), so the set over a union is the k best of the
sets of its parts: the device merges each batch into its running sets (`update`, inside the jitted scan), which a
run keeps across its commits (a resumed run starts from the stored ones), and `merge_stats` merges stores' sets on
the host (`merge_sets`) by the same order.
A neuron with fewer than k activations keeps all of them; the empty slots hold window and position
`EMPTY` and value 0, after the examples.

The quantile set is found on the device per slot (`_batch_bin_minima`): slot m of every (neuron, bin) is the
smallest rank after slot m - 1 in (rank, token) order, by a scatter-minimum over the cells, then the earliest token
of that rank, by another; 2 K scatters over a slice of the positions at a time, then a top-k of the running and the
batch's K per bin.

For `top` and `random`, a batch's best k per neuron are found without a top-k over every token: the tokens are
cut into blocks of `c` consecutive ones, the k blocks with the largest maxima hold the k best tokens
(a block outside them has k blocks, each with a token ahead of all of its own), so only those k * c
tokens are ranked. The ranking keys are float32, for which `lax.top_k` is fast on every backend: the
value itself for `top`, and for `random` the positive normal float whose bits are 0x40800000 - rank
(larger key = smaller rank); -inf where the neuron did not fire. Both sets' block maxima come from one pass over
the fc1 output (`_block_maxima`), and they also gate the merge. Only a block whose maximum beats a neuron's k-th
key can hold a token that enters its set, and after a of a neuron's activations about k / a of the next ones do:
from the second or third batch on most neurons have such a block in at most a quarter of the k blocks, so ranking
that many (`_few_blocks`) is exact for them, and only the neurons with more are merged on all k (`merge_tier`:
every neuron on few blocks, then the few with more); once few neurons have any, only those are merged (`update`).
"""

from __future__ import annotations

import functools

import jax.numpy as jnp
import numpy as np
from jax import lax

from analyses.collection import values

KINDS = ("top", "random")  # the sets every run with examples keeps; `QUANTILE` is kept when asked for
QUANTILE = "quantile"
RANDOM = "random"
FIELDS = ("window", "position", "value")
EMPTY = -1  # window and position of an empty slot
_KEY_BITS = 0x40800000  # bits of 4.0: 0x40800000 - rank for rank < 2^30 is a positive normal float32
_MAX_BLOCK = 16  # tokens per block of the first pass: 16 and 32 alike, 8 behind (BENCHMARKS.md, 2026-12-07)


# The rank of the random sample: a murmur3-style mix in uint32, the same in numpy (host) and jax.numpy (device).

def _fmix32(xp, h):
    with np.errstate(over="ignore"):  # uint32 products wrap, as on the device
        h = h ^ (h >> 16)
        h = h * xp.uint32(0x85EBCA6B)
        h = h ^ (h >> 13)
        h = h * xp.uint32(0xC2B2AE35)
        return h ^ (h >> 16)


def token_hash(xp, window, position):
    """uint32 hash of a token (window index, position in the window)."""
    return _fmix32(xp, _fmix32(xp, xp.asarray(window).astype(xp.uint32) ^ xp.uint32(0x2545F491))
                   ^ xp.asarray(position).astype(xp.uint32))


def neuron_hash(xp, layer, neuron):
    """uint32 hash of a neuron (layer, index)."""
    return _fmix32(xp, _fmix32(xp, xp.asarray(layer).astype(xp.uint32) + xp.uint32(0x9E3779B9))
                   ^ xp.asarray(neuron).astype(xp.uint32))


def sample_rank(xp, token_h, neuron_h):
    """The 30-bit rank of a (token, neuron) in the random sample (smaller first), as int32."""
    return ((token_h ^ neuron_h) >> 2).astype(xp.int32)


# The device side: running sets in the scan carry, one batch merged in per layer.

def zero_sets(layers: int, ffn: int, k: int, quantile_slots: int = 0) -> dict:
    """Empty running sets of a layer group: {kind: {window, position, value: [g, n, k]}}, and with `quantile_slots`
    (bins x K) the quantile set {window, position, value: [g, n, bins * K]}."""
    def empty(slots, dtype, fill):  # a buffer of its own per field: the step donates each
        return jnp.full((layers, ffn, slots), fill, dtype)  # [g, n, slots]

    sizes = {kind: k for kind in KINDS} | ({QUANTILE: quantile_slots} if quantile_slots else {})
    return {kind: {"window": empty(c, jnp.int32, EMPTY), "position": empty(c, jnp.int32, EMPTY),
                   "value": empty(c, jnp.float32, 0.0)} for kind, c in sizes.items()}


def block_tokens(seq_len: int, batch: int, k: int) -> int:
    """Tokens per block: a divisor of seq_len (blocks never span windows or devices) leaving at least k blocks."""
    for c in range(min(_MAX_BLOCK, seq_len), 0, -1):
        if seq_len % c == 0 and batch * seq_len // c >= k:
            return c
    return 1


def working_bytes(seq_len: int, batch: int, ffn: int, k: int) -> int:
    """An upper estimate of one layer's `update` temporaries: both kinds' block maxima [tokens / c, ffn] (the loop's
    carry and its next value), and per kind the merge's blocks [ffn, tokens / c] and candidates' rows, values and
    keys [ffn, k * c] (float32 / int32; the gated path merges a part of these neurons)."""
    tokens = seq_len * batch
    kb = min(k, tokens)
    c = block_tokens(seq_len, batch, kb)
    return (2 * len(KINDS) * tokens // c + len(KINDS) * (tokens // c + 3 * kb * c)) * ffn * 4


def _sort_small(x):
    """Distinct integers sorted along the last (short) axis by counting, without a sort: [..., m]."""
    rank = jnp.sum(x[..., None, :] < x[..., :, None], axis=-1)  # [..., m]: how many are smaller
    slot = jnp.arange(x.shape[-1])  # [m]
    return jnp.sum(jnp.where(rank[..., :, None] == slot, x[..., :, None], 0), axis=-2)  # [..., m]


def _keys(kind: str, values, fired, token_h, neuron_h):
    """float32 ranking keys (larger first, -inf where the neuron did not fire); arguments broadcast."""
    if kind == "top":
        return jnp.where(fired, values.astype(jnp.float32), -jnp.inf)
    bits = jnp.int32(_KEY_BITS) - sample_rank(jnp, token_h, neuron_h)
    return jnp.where(fired, lax.bitcast_convert_type(bits, jnp.float32), -jnp.inf)


def _running_keys(kind: str, sets: dict, neuron_h):
    """The keys of a running set ([n, k] fields), recomputed from its examples."""
    token_h = token_hash(jnp, sets["window"], sets["position"])  # [n, k]
    return _keys(kind, sets["value"], sets["window"] != EMPTY, token_h, neuron_h[:, None])  # [n, k]


def _block_maxima(fc1, counted, token_h, neuron_h, c: int) -> dict:
    """Every kind's key maxima over blocks of c consecutive tokens: {kind: [t / c, n]}, -inf where none fired.

    Arguments as `batch_candidates`'. A loop over the c tokens of every block, each step one elementwise pass over
    [t / c, n] that computes both kinds' keys and folds them into the running maxima: fc1 is read once and no key
    array of the batch's size is written. (XLA's CPU backend hands a `reduce` to YNNPACK and first writes its input
    out whole: at 125m, a fresh [4096, 3072] key array per set and layer, most of the pass's time.)"""
    t, n = fc1.shape
    blocks = fc1.reshape(t // c, c, n)  # [t / c, c, n]
    fired_in, hash_in = counted.reshape(t // c, c), token_h.reshape(t // c, c)  # [t / c, c] x 2

    def fold(j, best):  # the j-th token of every block
        x = lax.dynamic_index_in_dim(blocks, j, axis=1, keepdims=False)  # [t / c, n]
        fired = lax.dynamic_index_in_dim(fired_in, j, axis=1, keepdims=False)[:, None] & (x > 0)  # [t / c, n]
        th = lax.dynamic_index_in_dim(hash_in, j, axis=1, keepdims=False)[:, None]  # [t / c, 1]
        return {kind: jnp.maximum(best[kind], _keys(kind, x, fired, th, neuron_h[None, :])) for kind in KINDS}

    return lax.fori_loop(0, c, fold, {kind: jnp.full((t // c, n), -jnp.inf, jnp.float32) for kind in KINDS})


def _budget(ffn: int) -> int:
    """Neurons merged by the gated paths of `update` (a static size): an eighth of a layer's."""
    return max(1, ffn // 8)


def _few_blocks(kb: int) -> int:
    """Blocks ranked per neuron by the cheap merges of `update`: a quarter of the full merge's kb."""
    return max(1, kb // 4)


def _merge_neurons(kind: str, running: dict, running_keys, block_max, fc1, counted, window, position, token_h,
                   neuron_h, neurons, blocks: int, k: int, c: int) -> dict:
    """The k best of `neurons`' running sets and the batch's tokens in their `blocks` blocks with the largest
    maxima: {field: [m, k]}.

    running {field: [n, k]} and running_keys [n, k] (the layer's sets), block_max [t / c, n] (`_block_maxima`), fc1
    [t, n], counted bool [t], window, position int32 [t], token_h uint32 [t], neuron_h uint32 [n], neurons int32 [m]
    (any layer neurons, repeats allowed). Exact for a neuron when every block holding a token that beats its k-th
    key is among those ranked: always with blocks = min(k, t / c) (a block outside the kb best has kb blocks, each
    with a token ahead of all of its own), and with fewer where fewer blocks beat the k-th key (`update` checks
    which). The running set and the candidates (in token order) are ranked in one top-k: the running set holds
    earlier tokens than the batch, so equal keys keep it first, as the total order does."""
    m = neurons.shape[0]
    _, picked = lax.top_k(block_max[:, neurons].T, blocks)  # [m, blocks]
    picked = _sort_small(picked)  # [m, blocks]: in token order, so that equal keys keep the lower token first
    rows = (picked[:, :, None] * c + jnp.arange(c)).reshape(m, blocks * c)  # [m, blocks * c]
    t, n = fc1.shape
    if t * n < 2**31:  # one flat index per element (2-D gather indices are built whole inside a `lax.cond`)
        values = jnp.take(fc1.reshape(t * n), rows * n + neurons[:, None])  # [m, blocks * c]
    else:
        values = fc1[rows, neurons[:, None]]  # [m, blocks * c]
    keys = _keys(kind, values, counted[rows] & (values > 0), token_h[rows], neuron_h[neurons, None])  # [m, blocks*c]
    best, pick = lax.top_k(jnp.concatenate([running_keys[neurons], keys], axis=1), k)  # [m, k]
    kept = pick < k  # [m, k]: from the running set
    at = jnp.maximum(pick - k, 0)  # [m, k]: the candidate, where from the batch
    token = jnp.take_along_axis(rows, at, axis=1)  # [m, k]
    ran = {f: jnp.take_along_axis(running[f][neurons], jnp.minimum(pick, k - 1), axis=1) for f in FIELDS}  # [m, k]
    fired = best > -jnp.inf  # [m, k]: an empty running slot is picked before any batch token that did not fire
    batch = {"window": jnp.where(fired, window[token], EMPTY), "position": jnp.where(fired, position[token], EMPTY),
             "value": jnp.where(fired, jnp.take_along_axis(values, at, axis=1).astype(jnp.float32), 0.0)}  # [m, k]
    return {f: jnp.where(kept, ran[f], batch[f]) for f in FIELDS}  # [m, k]


TIERS = ("late", "late_wide", "middle", "early")  # the merges `update` runs for a set, by the batch's candidates
LATE, LATE_WIDE, MIDDLE, EARLY = range(len(TIERS))


def merge_tier(count, budget: int, few: int):
    """Which merge a set's batch needs (int32 scalar), from count [n] (per neuron, the blocks whose maximum beats
    its k-th key): LATE when at most `budget` neurons have a candidate, each in at most `few` blocks (only those
    neurons, few blocks each); LATE_WIDE when at most `budget` have one (only those, every block a merge ranks);
    MIDDLE when at most `budget` have candidates in more than `few` blocks (every neuron on few blocks, then those
    on all); else EARLY (every neuron on all)."""
    entering, wide = jnp.sum(count > 0), jnp.sum(count > few)
    return jnp.where(entering <= budget, jnp.where(wide == 0, LATE, LATE_WIDE),
                     jnp.where(wide <= budget, MIDDLE, EARLY)).astype(jnp.int32)


def update(sets: dict, i, layer, fc1, counted, first_window, k: int, gated: bool = True,
           return_tiers: bool = False) -> dict | tuple[dict, dict]:
    """Merge one layer's batch into row i of the group's running sets ({kind: {field: [g, n, k]}}).

    fc1 [b, s, n] (the layer's fc1 output), counted bool [b, s] (real, non-BOS), layer the model's layer
    index, first_window the window index of the batch's row 0 (int32 scalars, traced).

    Gated by threshold: only a block whose maximum beats a neuron's k-th key can change its set, and after the first
    batches few do. `merge_tier` picks, per set, a merge that is exact for every neuron from how many of a
    neuron's blocks beat it and how many neurons have such blocks: the LATE merges gather only those neurons (then
    scatter them back), the cheap ones rank only `_few_blocks` blocks of a neuron, the rest all kb. Whichever runs,
    each neuron gets the exact k best, so the sets are those of merging every neuron on all blocks. `gated=False`
    always does that (the benchmark's baseline). `return_tiers` also returns {kind: the `merge_tier` that ran}.
    """
    b, s, n = fc1.shape
    t = b * s
    flat, tokens_counted = fc1.reshape(t, n), jnp.asarray(counted).reshape(t)  # [t, n], [t]
    window = first_window + jnp.arange(t, dtype=jnp.int32) // s  # [t]
    position = jnp.arange(t, dtype=jnp.int32) % s  # [t]
    token_h = token_hash(jnp, window, position)  # [t]
    neuron_h = neuron_hash(jnp, layer, jnp.arange(n))  # [n]
    kb = min(k, t)
    c = block_tokens(s, b, kb)
    few = _few_blocks(kb)
    block_max = _block_maxima(flat, tokens_counted, token_h, neuron_h, c)  # {kind: [t / c, n]}
    budget = _budget(n)
    out, tiers = {}, {}
    for kind in KINDS:  # the quantile set, when kept, is merged by `update_quantile`
        running = {f: sets[kind][f][i] for f in FIELDS}  # [n, k] each
        running_keys = _running_keys(kind, running, neuron_h)  # [n, k]
        count = jnp.sum(block_max[kind] > running_keys.min(axis=1), axis=0)  # [n]: blocks beating the k-th key
        merge = functools.partial(_merge_neurons, kind, running, running_keys, block_max[kind], flat, tokens_counted,
                                  window, position, token_h, neuron_h, k=k, c=c)
        every = jnp.arange(n, dtype=jnp.int32)  # [n]

        def some(flags, blocks, base, merge=merge):  # the flagged neurons (at most `budget`) merged into `base`
            neurons = jnp.nonzero(flags, size=budget, fill_value=0)[0].astype(jnp.int32)  # [budget], padded with 0
            merged = merge(neurons, blocks)  # [budget, k] each: neuron 0, padding or not, is merged exactly too
            return {f: base[f].at[neurons].set(merged[f]) for f in FIELDS}  # [n, k]

        branches = [lambda running=running, count=count, some=some: some(count > 0, few, running),
                    lambda running=running, count=count, some=some: some(count > 0, kb, running),
                    lambda count=count, some=some, merge=merge: some(count > few, kb, merge(every, few)),
                    lambda merge=merge: merge(every, kb)]
        if gated:
            tiers[kind] = merge_tier(count, budget, few)
            merged = lax.switch(tiers[kind], branches)
        else:
            tiers[kind], merged = jnp.int32(EARLY), branches[EARLY]()
        out[kind] = {f: sets[kind][f].at[i].set(merged[f]) for f in FIELDS}
    return (out, tiers) if return_tiers else out


# The quantile set: the `random` order restricted to each bin of the value histogram (`values.py`).

_NONE = 2**31 - 1  # int32 maximum: "no token" in the per-bin minima


def _batch_bin_minima(fc1, counted, token_h, neuron_h, per_octave: int, k: int):
    """The k smallest (rank, token index) pairs of each neuron and value bin in a batch: (rank, token), int32
    [n, bins, k] each, `_NONE` in both where the bin holds fewer than k activations.

    fc1 [b, s, n], counted bool [b, s] (real, non-BOS), token_h uint32 [b, s], neuron_h uint32 [n]. Slot m is found
    by two scatter-minima over the cells, a slice of the positions at a time (`values.chunks`): the smallest rank
    among the cells after slot m - 1 in (rank, token) order, then the smallest token of that rank, so that equal
    ranks (1 in 2^30) go to the earlier token, as in the other sets' total order."""
    b, s, n = fc1.shape
    bins = values.num_bins(per_octave)
    slices = values.chunks(b, s)
    width = s // slices
    cell_base = jnp.arange(n, dtype=jnp.int32) * bins  # [n]

    def cells(i):  # one slice's (flat (neuron, bin) index or past the end, rank, token index), [b, w, n] each
        x = lax.dynamic_slice_in_dim(fc1, i * width, width, axis=1)  # [b, w, n]
        fired = lax.dynamic_slice_in_dim(counted, i * width, width, axis=1)[..., None] & (x > 0)  # [b, w, n]
        th = lax.dynamic_slice_in_dim(token_h, i * width, width, axis=1)  # [b, w]
        rank = sample_rank(jnp, th[..., None], neuron_h)  # [b, w, n]
        token = (jnp.arange(b, dtype=jnp.int32)[:, None] * s + i * width
                 + jnp.arange(width, dtype=jnp.int32)[None, :])  # [b, w]
        flat = jnp.where(fired, cell_base + values.bin_index(x, per_octave), n * bins)  # [b, w, n]
        return flat, rank, jnp.broadcast_to(token[..., None], rank.shape)

    def scatter_min(pick):  # pick(flat, rank, token) -> (where, what) [b, w, n]: the minimum of `what` per cell
        def add(i, table):  # [n * bins]
            flat, rank, token = cells(i)
            where, what = pick(flat, rank, token)
            return table.at[jnp.where(where, flat, n * bins).reshape(-1)].min(what.reshape(-1), mode="drop")
        return lax.fori_loop(0, slices, add, jnp.full(n * bins, _NONE, jnp.int32))  # [n * bins]

    prev_rank = jnp.full(n * bins, -1, jnp.int32)  # [n * bins]: slot m - 1's pair; (-1, -1) before slot 0
    prev_token = jnp.full(n * bins, -1, jnp.int32)  # [n * bins]
    ranks, tokens = [], []
    for _ in range(k):
        def after(flat, rank, token, pr=prev_rank, pt=prev_token):  # [b, w, n]: after slot m - 1 in (rank, token)
            at = jnp.minimum(flat, n * bins - 1)  # [b, w, n]
            return (rank > pr[at]) | ((rank == pr[at]) & (token > pt[at]))
        best_rank = scatter_min(lambda f, r, t: (after(f, r, t), r))  # [n * bins]
        best_token = scatter_min(lambda f, r, t: (after(f, r, t) & (r == best_rank[jnp.minimum(f, n * bins - 1)]),
                                                  t))  # [n * bins]
        ranks.append(best_rank)
        tokens.append(best_token)
        prev_rank, prev_token = best_rank, best_token
    shape = (n, bins, k)
    return jnp.stack(ranks, -1).reshape(shape), jnp.stack(tokens, -1).reshape(shape)  # [n, bins, k] x 2


def update_quantile(sets: dict, i, layer, fc1, counted, first_window, per_octave: int) -> dict:
    """Merge one layer's batch into row i of the group's quantile set ({window, position, value: [g, n, bins * K]}):
    for each neuron and value bin (slots j * K ... j * K + K - 1 for bin j), the K activations of that bin with the
    smallest `random` rank, ties to the earlier token. Arguments as `update`'s."""
    b, s, n = fc1.shape
    bins = values.num_bins(per_octave)
    k = sets["window"].shape[-1] // bins
    token_h = token_hash(jnp, first_window + jnp.arange(b, dtype=jnp.int32)[:, None],
                         jnp.arange(s, dtype=jnp.int32)[None, :])  # [b, s]
    neuron_h = neuron_hash(jnp, layer, jnp.arange(n))  # [n]
    _, token = _batch_bin_minima(fc1, counted, token_h, neuron_h, per_octave, k)  # [n, bins, k]
    fired = token != _NONE  # [n, bins, k]
    at = jnp.where(fired, token, 0)  # [n, bins, k]
    new = {"window": jnp.where(fired, first_window + at // s, EMPTY),
           "position": jnp.where(fired, at % s, EMPTY),
           "value": jnp.where(fired, fc1.reshape(b * s, n)[at, jnp.arange(n)[:, None, None]].astype(jnp.float32),
                              0.0)}  # [n, bins, k]
    running = {f: sets[f][i].reshape(n, bins, k) for f in FIELDS}  # [n, bins, k]
    both = {f: jnp.concatenate([running[f], new[f]], axis=-1) for f in FIELDS}  # [n, bins, 2k]
    nh = neuron_h[:, None, None]  # [n, 1, 1]
    keys = _keys("random", both["value"], both["window"] != EMPTY,
                 token_hash(jnp, both["window"], both["position"]), nh)  # [n, bins, 2k]
    _, pick = lax.top_k(keys, k)  # [n, bins, k]: the running set first on equal keys (earlier tokens)
    return {f: sets[f].at[i].set(jnp.take_along_axis(both[f], pick, axis=-1).reshape(n, bins * k)) for f in FIELDS}


# The host side: sets of [n, k] numpy arrays, merged by the same total order.

def merge_sets(kind: str, layer: int, *parts: dict, groups: int = 1) -> dict:
    """The k best examples of several sets of one layer ({window, position, value: [n, k]} each), stored order.

    The quantile set ([n, bins * K]) passes `groups` = bins: each bin's K slots are merged by the `random` order."""
    if kind == QUANTILE:
        n = parts[0]["window"].shape[0]
        rows = [{f: p[f].reshape(n * groups, -1) for f in FIELDS} for p in parts]  # [n * bins, K] each
        merged = _merge(RANDOM, layer, np.arange(n * groups, dtype=np.uint32) // groups, rows)
        return {f: merged[f].reshape(n, -1) for f in FIELDS}  # [n, bins * K]
    return _merge(kind, layer, np.arange(parts[0]["window"].shape[0], dtype=np.uint32), parts)


def _merge(kind: str, layer: int, neuron_of_row: np.ndarray, parts) -> dict:
    """`merge_sets` of rows [r, k] by `kind`'s order, row i of neuron `neuron_of_row[i]`."""
    k = parts[0]["window"].shape[1]
    both = {f: np.concatenate([p[f] for p in parts], axis=1) for f in FIELDS}  # [n, m]
    window, position, value = both["window"], both["position"], both["value"]
    empty = window == EMPTY  # [n, m]
    if kind == "top":
        primary = -value.astype(np.float64)  # [n, m]
    else:
        neurons = neuron_of_row[:, None]  # [r, 1]
        primary = sample_rank(np, token_hash(np, window, position), neuron_hash(np, np.uint32(layer), neurons))
    order = np.lexsort((position, window, primary, empty), axis=1)[:, :k]  # [n, k]: last key sorts first
    out = {f: np.take_along_axis(both[f], order, axis=1) for f in FIELDS}
    gone = np.take_along_axis(empty, order, axis=1)  # [n, k]
    out["window"][gone], out["position"][gone], out["value"][gone] = EMPTY, EMPTY, 0.0
    return out


def empty_sets(ffn: int, k: int) -> dict:
    """One layer's empty host set: {window, position, value: [n, k]}."""
    return {"window": np.full((ffn, k), EMPTY, np.int32), "position": np.full((ffn, k), EMPTY, np.int32),
            "value": np.zeros((ffn, k), np.float32)}
