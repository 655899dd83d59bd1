"""Activation-value histograms: each neuron's fc1 outputs > 0 counted in fixed, log-spaced bins on the device.

`value_hist[l, n, j]` counts the activations of neuron n of layer l (fc1 output > 0 at a real position, BOS
included: the positions `act` counts) whose value lies in bin j, so that `value_hist.sum(-1) == act` exactly.

The bins follow float32 itself: with p = 2^m bins per octave (`per_octave`, 1, 2, 4 or 8), an octave
[2^e, 2^(e+1)) is cut at 2^e (1 + k / p), k = 0..p-1, and a value's bin is its exponent and the top m bits of its
mantissa, read off its bits with one shift (no logarithm, no rounding: the edges are exact float32 numbers and a
value on an edge belongs to the bin it opens). The inner edges run from 2^LOWEST (about 1e-3) to 2^HIGHEST (128):
bin 0 holds (0, 2^LOWEST), the last bin [2^HIGHEST, inf); 17 p + 2 bins in all, 36 at the default p = 2.

Why these: OPT's fc1 outputs that fire should be mostly 1e-2..10 at every size, with a tail to tens in the large
models' outlier neurons (expected, not measured on real OPT weights); below 1e-3 a 16-bit fc1 output is within
its rounding of 0 (bfloat16 steps by 4e-3 near 1, where its inputs' terms are), and above 128 outputs are rare
enough to be counted together. Two bins per octave (edges a factor 1.33 or 1.5 apart, within 6% of a geometric
spacing of sqrt 2) resolve a neuron's value distribution to within a factor 1.5, enough to band its quantiles,
at 36 int32 counters per neuron.

Counting: a scatter-add of the bin indices into [ffn, bins] (inactive cells dropped), a slice of the positions at
a time. On the CPU it cost less than the other exact ways measured (a compare-and-sum per bin, or bins packed 4
to an int32 and summed in blocks of tokens): see BENCHMARKS.md.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from opt_jax.errors import StatsError

LOWEST, HIGHEST = -10, 7  # the inner edges run from 2^LOWEST to 2^HIGHEST
PER_OCTAVE = 2  # the default bins per octave (`Options.value_bins_per_octave`)
CHOICES = (0, 1, 2, 4, 8)  # 0: no histogram


def check(per_octave: int) -> int:
    """`per_octave` if it is one of `CHOICES`, else a StatsError."""
    if per_octave not in CHOICES:
        raise StatsError(f"value_bins_per_octave must be one of {', '.join(map(str, CHOICES))} (0: no value "
                         f"histogram), got {per_octave!r}")
    return per_octave


def num_bins(per_octave: int) -> int:
    """Bins of the histogram: the inner edges' (HIGHEST - LOWEST) * p + 1, plus one."""
    return (HIGHEST - LOWEST) * per_octave + 2


def per_octave(bins: int) -> int:
    """The bins per octave of a histogram of `bins` bins (`num_bins`' inverse)."""
    return (bins - 2) // (HIGHEST - LOWEST)


def edges(per_octave: int) -> np.ndarray:
    """The inner edges, float32 [bins - 1]: bin j holds [edges[j - 1], edges[j]), bin 0 from 0 (exclusive), the last
    bin to infinity."""
    octaves = 2.0 ** np.arange(LOWEST, HIGHEST)  # [o]
    steps = 1 + np.arange(per_octave) / per_octave  # [p]
    inner = (octaves[:, None] * steps[None, :]).reshape(-1)  # [o * p]
    return np.append(inner, 2.0 ** HIGHEST).astype(np.float32)  # [bins - 1]


def bin_index(values, per_octave: int):
    """The bin of each value > 0 (any float dtype; a NaN or a value <= 0 has none: use only where it fired), int32 of
    the same shape: the float32 exponent and top log2(p) mantissa bits, shifted so that 2^LOWEST opens bin 1."""
    m = per_octave.bit_length() - 1  # log2 p
    bits = jax.lax.bitcast_convert_type(values.astype(jnp.float32), jnp.int32)  # [...]
    first = (127 + LOWEST) << m  # the bits of 2^LOWEST, shifted
    return jnp.clip((bits >> (23 - m)) - first + 1, 0, num_bins(per_octave) - 1)  # [...]


def chunks(batch: int, seq: int) -> int:
    """How many slices of the positions `count` takes, one at a time: the fewest (a divisor of seq) holding at most
    seq cells per neuron (or one position, when batch > seq), so that a slice's int32 indices take no more memory
    than one window's."""
    return next(k for k in range(min(batch, seq), seq + 1) if seq % k == 0)


def count(fc1, active, per_octave: int):
    """One layer's histogram delta, int32 [ffn, bins]: the cells of fc1 [batch, seq, ffn] where `active` (fc1 > 0 at a
    real position), counted by bin, a slice of the positions at a time (`chunks`: its int32 indices take a window's
    memory, 0.3 GB at OPT-66b's width and 2048 positions, not the batch's; the batch axis, which a data mesh shards,
    stays whole)."""
    bins, (batch, seq, ffn) = num_bins(per_octave), fc1.shape
    k = chunks(batch, seq)
    width = seq // k
    neuron = jnp.arange(ffn, dtype=jnp.int32) * bins  # [n]

    def add(i, hist):  # [n * bins]
        values = jax.lax.dynamic_slice_in_dim(fc1, i * width, width, axis=1)  # [b, w, n]
        fired = jax.lax.dynamic_slice_in_dim(active, i * width, width, axis=1)  # [b, w, n]
        flat = jnp.where(fired, neuron + bin_index(values, per_octave), ffn * bins)  # [b, w, n]: past the end if not
        return hist.at[flat.reshape(-1)].add(1, mode="drop")  # [n * bins]

    hist = jax.lax.fori_loop(0, k, add, jnp.zeros(ffn * bins, jnp.int32))  # [n * bins]
    return hist.reshape(ffn, bins)  # [n, bins]
