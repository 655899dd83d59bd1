"""Positional neurons (paper Section 5, Figs. 7-9): mutual information of activation and position, and types.

Inputs are one layer of `pos_act` (activations of each neuron at each position, position 0 = BOS)
and `pos_tokens` (real tokens at each position). Over the kept positions p (see below):

- fr(p) = pos_act[p, n] / pos_tokens[p]: the neuron's activation frequency at position p;
- fr = sum_p pos_act[p, n] / sum_p pos_tokens[p]: its overall frequency over those positions;
- p(pos) = pos_tokens[p] / sum_p pos_tokens[p] (the paper's 1/T when every window is full length);
- I(act; pos) = sum_p p(pos) * [fr(p) log(fr(p) / fr) + (1 - fr(p)) log((1 - fr(p)) / (1 - fr))],
  natural log, 0 log 0 = 0. A neuron that never fires (fr = 0) or always fires (fr = 1) has I = 0.
  Rounding can make I a hair below 0 for a flat curve; it is clipped at 0.
- A neuron is positional when I(act; pos) > `mi_threshold` (the paper's 0.05).

Kept positions: positions with pos_tokens == 0 are left out. Position 0 (BOS) is left out by default
(`include_bos=False`): every window holds the same BOS token there, so fr(0) is 0 or 1 for every
neuron and measures the response to the BOS token, not to position. `include_bos=True` gives the
paper's literal formula over all T positions. The same positions are used for the types.

The paper's analysis uses full-length sequences only: a store without any (`full_length_sequences ==
0`) is not analysed. A store that also holds shorter windows is analysed with every window, each
position weighted by its token count; collect with `--full_length_only` for exactly the paper's setup.

Types of a positional neuron, from its curve fr(p) over the kept positions (constants are the fields
of `PositionalThresholds`, defaults in brackets):

- A position is *low* when fr(p) <= extreme_tolerance [0.05] and *high* when fr(p) >= 1 -
  extreme_tolerance; it is *exactly low* when its count is 0 and *exactly high* when its count
  equals pos_tokens. A *range* is a run of at least min_range [4] consecutive kept positions that
  are all low (or all high); shorter runs, and positions in neither state, are ignored.
- A *switch* is a change between a low range and a high range, reading the ranges in position order
  and skipping everything in between.
- oscillatory: at least min_switches [3] switches (at least four alternating ranges);
- both extremes: not oscillatory, with at least one low range and at least one high range;
- one extreme: only low ranges or only high ranges;
- other: no range at all (the curve never stays at 0 or 1).
- Strength: for the first three types, *strong* when the same criterion also holds with the exactly
  low / exactly high positions (the frequency is exactly 0 or 1 on those ranges), else *weak* (only
  within the tolerance). For "other", *strong* (smooth) when noise <= noise_threshold [0.1], else
  *weak* (noisy). noise = root-mean-square of fr(p) minus its centred moving average over
  smooth_window [9] positions (at positions whose whole window lies inside the curve), divided by
  the range (max - min) of that moving average; 0 for a curve shorter than the window.
- Figure 9 draws a neuron as *on* at positions where fr(p) >= on_threshold [0.5].

Memory: `analyze_positional` reads one layer of `pos_act` at a time and works on blocks of
`NEURON_BLOCK` neurons, so a 66b layer (2048 x 36864 int64, 600 MB) peaks at about the layer plus a
few [positions, NEURON_BLOCK] float64 arrays (64 MB each).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from opt_jax.errors import AnalysisError

TYPES = ("oscillatory", "both extremes", "one extreme", "other")
STRENGTHS = ("strong", "weak")
OSCILLATORY, BOTH_EXTREMES, ONE_EXTREME, OTHER = range(len(TYPES))
# Neurons per block: bounds the [positions, block] float arrays of the computation.
NEURON_BLOCK = 4096
# Differences below this are rounding of the running sums in the noise measure, taken as 0.
ROUNDING = 1e-9
SKIPPED_NOTE = "no full-length sequences: positional analysis skipped"


@dataclasses.dataclass(frozen=True)
class PositionalThresholds:
    """Every constant of the positional analysis; defaults as in the module docstring."""

    mi_threshold: float = 0.05  # positional when I(act; pos) > this (the paper's value)
    include_bos: bool = False  # keep position 0 (BOS) in the curves
    extreme_tolerance: float = 0.05  # low: fr <= tol; high: fr >= 1 - tol
    min_range: int = 4  # a range is at least this many consecutive low (or high) positions
    min_switches: int = 3  # oscillatory: at least this many low <-> high switches
    smooth_window: int = 9  # moving-average window (positions) for the noise of "other" curves
    noise_threshold: float = 0.1  # "other" is weak (noisy) when noise > this
    on_threshold: float = 0.5  # Figure 9: a neuron is on where fr(p) >= this


@dataclasses.dataclass
class Curve:
    """One neuron's frequency curve: fr at `positions`, with its layer, MI, type and strength."""

    layer: int
    neuron: int
    mi: float
    type: str
    strength: str
    positions: np.ndarray  # int64 [kept positions]
    frequency: np.ndarray  # float64 [kept positions]


@dataclasses.dataclass
class PositionalResult:
    """The positional neurons of one model, counts per layer and type, and the curves of Figs. 7 and 9."""

    neurons: list[dict]  # positional neurons only: {"layer", "neuron", "mi", "type", "strength"}
    counts: np.ndarray  # int64 [layers, len(TYPES), len(STRENGTHS)]
    num_layers: int  # collected layers (rows of counts)
    model_layers: int  # layers of the model: relative depth of layer l is l / (model_layers - 1)
    layers: list[int]  # the layers analysed
    examples: dict[str, Curve]  # type -> highest-MI neuron of that type (any layer; ties: lowest layer, neuron)
    oscillatory_layer: int  # the layer of Figure 9
    oscillatory: list[Curve]  # strong oscillatory neurons of oscillatory_layer
    thresholds: PositionalThresholds
    note: str | None = None


def kept_positions(pos_tokens: np.ndarray, include_bos: bool = False) -> np.ndarray:
    """Indices of the positions the analysis uses: tokens > 0, position 0 only with include_bos: int64 [kept]."""
    keep = np.asarray(pos_tokens) > 0  # [p]
    if not include_bos and len(keep):
        keep[0] = False
    return np.flatnonzero(keep)


def frequencies(pos_act_layer: np.ndarray, pos_tokens: np.ndarray, positions: np.ndarray) -> np.ndarray:
    """fr(p) at the given positions: float64 [kept, neurons]."""
    tokens = np.asarray(pos_tokens, np.float64)[positions]  # [k]
    return np.asarray(pos_act_layer[positions], np.float64) / tokens[:, None]  # [k, n]


def mutual_information(pos_act_layer: np.ndarray, pos_tokens: np.ndarray, include_bos: bool = False) -> np.ndarray:
    """I(act; pos) of every neuron (natural log; 0 for dead or always-active neurons): float64 [neurons]."""
    positions = kept_positions(pos_tokens, include_bos)
    neurons = pos_act_layer.shape[1]
    out = np.zeros(neurons, np.float64)  # [n]
    for start in range(0, neurons if len(positions) else 0, NEURON_BLOCK):
        block = pos_act_layer[:, start:start + NEURON_BLOCK]  # [p, b]
        out[start:start + block.shape[1]] = _mi(block[positions], np.asarray(pos_tokens)[positions])
    return out


def _mi(counts: np.ndarray, tokens: np.ndarray) -> np.ndarray:
    """I(act; pos) from the counts [kept, n] and token counts [kept] of the kept positions: float64 [n]."""
    counts = np.asarray(counts, np.int64)  # [k, n]
    tokens = np.asarray(tokens, np.int64)  # [k]
    freq = counts / tokens[:, None]  # [k, n]
    overall = counts.sum(axis=0) / tokens.sum()  # [n], exact 0 or 1 for dead / always-active neurons
    weight = tokens / tokens.sum()  # [k]
    terms = _plogq(freq, overall[None, :]) + _plogq(1.0 - freq, 1.0 - overall[None, :])  # [k, n]
    return np.maximum((weight[:, None] * terms).sum(axis=0), 0.0)  # [n], the same whatever the block width


def _plogq(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """a log(a / b), 0 where a == 0 (there b > 0 wherever a > 0): no warnings."""
    positive = a > 0  # [k, n]
    safe_a = np.where(positive, a, 1.0)  # [k, n]
    safe_b = np.where(positive, b, 1.0)  # [k, n]
    return np.where(positive, a * np.log(safe_a / safe_b), 0.0)  # [k, n]


def classify(pos_act_layer: np.ndarray, pos_tokens: np.ndarray,
             thresholds: PositionalThresholds = PositionalThresholds()) -> tuple[np.ndarray, np.ndarray]:
    """Type (int8 codes into TYPES) and strength (True = strong) of every neuron's curve: ([neurons], [neurons])."""
    positions = kept_positions(pos_tokens, thresholds.include_bos)
    counts = np.asarray(pos_act_layer[positions], np.int64)  # [k, n]
    tokens = np.asarray(pos_tokens, np.int64)[positions][:, None]  # [k, 1]
    freq = counts / tokens  # [k, n]
    tol, m = thresholds.extreme_tolerance, thresholds.min_range
    near = _range_states(freq <= tol, freq >= 1.0 - tol, m)  # [k, n] in {-1, 0, 1}
    exact = _range_states(counts == 0, counts == tokens, m)  # [k, n]
    near_low, near_high = (near == -1).any(axis=0), (near == 1).any(axis=0)  # [n]
    exact_low, exact_high = (exact == -1).any(axis=0), (exact == 1).any(axis=0)  # [n]
    oscillatory = _switches(near) >= thresholds.min_switches  # [n]
    both = ~oscillatory & near_low & near_high  # [n]
    one = ~oscillatory & ~both & (near_low | near_high)  # [n]; the rest are "other"
    types = np.select([oscillatory, both, one], [OSCILLATORY, BOTH_EXTREMES, ONE_EXTREME], OTHER).astype(np.int8)
    strong = np.select(
        [oscillatory, both, one],
        [_switches(exact) >= thresholds.min_switches, exact_low & exact_high,
         (near_low & exact_low) | (near_high & exact_high)],
        _noise(freq, thresholds.smooth_window) <= thresholds.noise_threshold)  # [n]
    return types, strong.astype(bool)


def _range_states(low: np.ndarray, high: np.ndarray, min_range: int) -> np.ndarray:
    """-1 inside low ranges, +1 inside high ranges, 0 elsewhere: int8 [k, n] (ranges = runs >= min_range)."""
    return (_in_long_runs(high, min_range).astype(np.int8)
            - _in_long_runs(low, min_range).astype(np.int8))  # [k, n]


def _in_long_runs(mask: np.ndarray, length: int) -> np.ndarray:
    """True where mask lies in a run of at least `length` consecutive True values along axis 0: bool [k, n]."""
    k = mask.shape[0]
    if length <= 1:
        return mask
    if k < length:
        return np.zeros_like(mask)
    ones = np.zeros((k + 1,) + mask.shape[1:], np.int32)  # [k + 1, n]
    np.cumsum(mask, axis=0, out=ones[1:])
    full = (ones[length:] - ones[:-length]) == length  # [k - length + 1, n]: window starting at q all True
    windows = np.zeros((full.shape[0] + 1,) + mask.shape[1:], np.int32)  # [k - length + 2, n]
    np.cumsum(full, axis=0, out=windows[1:])
    p = np.arange(k)  # [k]
    last = np.minimum(p, k - length)  # [k]: the last window that can contain p
    first = np.maximum(p - length + 1, 0)  # [k]: the first window that can contain p
    return (windows[last + 1] - windows[first]) > 0  # [k, n]


def _switches(states: np.ndarray) -> np.ndarray:
    """Changes between -1 and +1 along axis 0, skipping zeros: int64 [n]."""
    k = states.shape[0]
    index = np.where(states != 0, np.arange(k)[:, None], -1)  # [k, n]
    latest = np.maximum.accumulate(index, axis=0)  # [k, n]: last nonzero position so far
    filled = np.where(latest >= 0, np.take_along_axis(states, np.maximum(latest, 0), axis=0), 0)  # [k, n]
    changed = (filled[1:] != filled[:-1]) & (filled[:-1] != 0)  # [k - 1, n]
    return changed.sum(axis=0)  # [n]


def _noise(freq: np.ndarray, window: int) -> np.ndarray:
    """RMS of fr minus its centred moving average, over the moving average's range: float64 [n].

    0 for curves shorter than the window; inf for a noisy curve whose moving average is flat.
    """
    k, n = freq.shape
    if k < window or window < 2:
        return np.zeros(n)
    sums = np.zeros((k + 1, n))  # [k + 1, n]
    np.cumsum(freq, axis=0, out=sums[1:])
    smooth = (sums[window:] - sums[:-window]) / window  # [k - window + 1, n], centred at q + window // 2
    half = window // 2
    residual = freq[half:half + smooth.shape[0]] - smooth  # [k - window + 1, n]
    rms = np.sqrt(np.mean(residual ** 2, axis=0))  # [n]
    rms = np.where(rms > ROUNDING, rms, 0.0)  # [n]
    span = smooth.max(axis=0) - smooth.min(axis=0)  # [n]
    span = np.where(span > ROUNDING, span, 0.0)  # [n]
    ratio = rms / np.where(span > 0, span, 1.0)  # [n]
    return np.where(span > 0, ratio, np.where(rms > 0, np.inf, 0.0))  # [n]


def analyze_positional(stats, thresholds: PositionalThresholds = PositionalThresholds(), layers=None,
                       example_layer: int = 2, progress=None) -> PositionalResult:
    """Positional neurons of a statistics store, per layer and type, with the curves of Figs. 7 and 9."""
    num_layers = stats.pos_act.shape[0]
    model_layers = stats.config.num_hidden_layers
    layers = list(range(num_layers)) if layers is None else sorted({int(l) for l in layers})
    if any(not 0 <= l < num_layers for l in layers):
        raise AnalysisError(f"layers must lie in 0..{num_layers - 1} (the collected layers), got {layers}")
    example_layer = min(max(example_layer, 0), num_layers - 1)
    result = PositionalResult([], np.zeros((num_layers, len(TYPES), len(STRENGTHS)), np.int64), num_layers,
                              model_layers, layers, {}, example_layer, [], thresholds)
    if stats.full_length_sequences == 0:
        result.note = SKIPPED_NOTE
        return result
    if stats.sequences > stats.full_length_sequences:
        result.note = (f"{stats.sequences - stats.full_length_sequences} of {stats.sequences} windows are "
                       "shorter than seq_len; curves use all windows (collect with --full_length_only "
                       "for the paper's setup)")
    pos_tokens = np.asarray(stats.pos_tokens, np.int64)  # [p]
    for layer in layers:
        _analyze_layer(result, layer, stats.pos_act[layer], pos_tokens)  # [p, n]
        if progress is not None:
            progress.update()
    return result


def _analyze_layer(result: PositionalResult, layer: int, pos_act_layer: np.ndarray, pos_tokens: np.ndarray) -> None:
    """Add one layer's positional neurons, counts and curves to `result`, NEURON_BLOCK neurons at a time."""
    th = result.thresholds
    positions = kept_positions(pos_tokens, th.include_bos)
    if not len(positions):
        return
    for start in range(0, pos_act_layer.shape[1], NEURON_BLOCK):
        block = pos_act_layer[:, start:start + NEURON_BLOCK]  # [p, b]
        mi = _mi(block[positions], pos_tokens[positions])  # [b]
        chosen = np.flatnonzero(mi > th.mi_threshold)  # [c]
        if not len(chosen):
            continue
        types, strong = classify(block[:, chosen], pos_tokens, th)  # [c], [c]
        np.add.at(result.counts[layer], (types, np.where(strong, 0, 1)), 1)
        freq = frequencies(block[:, chosen], pos_tokens, positions)  # [k, c]
        for i, n in enumerate(chosen.tolist()):
            result.neurons.append({"layer": layer, "neuron": start + n, "mi": float(mi[n]),
                                   "type": TYPES[types[i]], "strength": STRENGTHS[0 if strong[i] else 1]})
        _keep_curves(result, layer, start + chosen, mi[chosen], types, strong, positions, freq)


def _keep_curves(result: PositionalResult, layer: int, neurons, mi, types, strong, positions, freq) -> None:
    """Update the best example per type (Fig. 7) and collect the strong oscillatory curves of Fig. 9's layer."""
    def curve(i):
        return Curve(layer, int(neurons[i]), float(mi[i]), TYPES[types[i]], STRENGTHS[0 if strong[i] else 1],
                     positions, freq[:, i].copy())

    for code, name in enumerate(TYPES):
        of_type = np.flatnonzero(types == code)  # [t]
        if len(of_type):
            best = of_type[np.argmax(mi[of_type])]
            if name not in result.examples or mi[best] > result.examples[name].mi:
                result.examples[name] = curve(best)
    if layer == result.oscillatory_layer:
        result.oscillatory.extend(curve(i) for i in np.flatnonzero((types == OSCILLATORY) & strong))


def to_rows(result: PositionalResult) -> list[dict]:
    """The positional neurons as CSV rows (layer, neuron, mi, type, strength), by layer then neuron."""
    return sorted((dict(row) for row in result.neurons), key=lambda r: (r["layer"], r["neuron"]))

