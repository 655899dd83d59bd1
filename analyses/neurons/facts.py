"""Per-neuron facts of one collected layer, every neuron at once: what the atlas shows of each neuron.

`layer_facts(source, layer)` reads the layer's statistics once and computes, vectorised over its neurons:

- activation frequency (`act / tokens`, BOS included, as `analyses.dead`), dead (never active; with the 95%
  upper bound on a dead neuron's rate that the layer's token count gives, `analyses.dead.rate_bound`), and the
  frequency's rank in the layer (1 + the neurons firing strictly more often);
- the positional curve fr(p), its mutual information and, for a positional neuron, its type and strength
  (`analyses.positional`: the same kept positions, MI and classification as the study);
- token layers: the TOP_TRIGGERS tokens with most activations (`tok_act`, BOS excluded), each with its share
  of the neuron's activations and its rate (activations / occurrences of the token; `always` when >= 95%),
  and the token and trigram detectors (`analyses.detectors`, the study's thresholds);
- with the model's weights: each alive neuron's top promoted and suppressed tokens (E @ fc2[:, n], through
  project_out where present, as `analyses.suppression` scores them; computed on jax's default device, a GPU where
  there is one, with the top k taken there: `analyses.neurons.products`), and each token detector's trigger
  scores and ranks (`analyses.suppression.trigger_scores_and_ranks` of its scores over the vocabulary);
- with the model's weights, too: the related neurons through the weights (`analyses.neurons.related`: the
  neurons of the next / previous `related_depth` layers whose fc1 rows each neuron's update most excites and
  inhibits, and whose updates most excite and inhibit its fc1 row, as cosines);
- with example activations: each set as contexts (token ids around the firing position, `context_span`); with
  quantile examples (`--quantile_examples K`) each neuron's QUANTILE_BANDS quantile bands of its value histogram
  (`analyses.collection.quantile_bands`) and the K examples of each that `Stats.examples(layer, neuron,
  "quantile")` gives (the band's smallest `random` ranks), chosen for every neuron of the layer at once;
- with an attribution (`analyses.interventions.attribution`): each neuron's estimated zero-ablation effect
  (`Source.effect`).

Memory per layer: one `pos_act` layer (int64 [positions, ffn]) and its curves (float32), `tok_act` read a block
of rows at a time (`ItemCounts`), the layer's fc2 as stored, the update scores SCORE_BLOCK neurons at a time
(float32 [block, vocab] on the device beside E; [block, top_k] come back, whole rows only for token detectors),
the related neurons' fc1 / fc2 of up to 2 x depth neighbouring layers on the device (float32 on the CPU: 1.36 GB
each at 66b) with [block, ffn] cosines at a time, and the layer's example arrays once (int32 / float32 [ffn, k] per
field, [ffn, bins x K] for the quantile set) with the windows they name.
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np

from analyses import coverage, detectors, positional, suppression
from analyses.collection import QUANTILE, decode_ngrams, open_stats, quantile_bands
from analyses.collection import examples as sampling
from analyses.dead import rate_bound
from analyses.interventions.attribution import read_attribution
from analyses.neurons import products, related
from analyses.report import Thresholds
from analyses.tokens import TokenStrings, context_span
from opt_jax import checkpoint as ckpt
from opt_jax.errors import InputError

TOP_TRIGGERS = 10  # trigger tokens listed per neuron
ALWAYS = 0.95  # a trigger is `always` when the neuron fires on at least this share of its occurrences
SCORE_BLOCK = products.BLOCK  # neurons whose update scores are computed at once: float32 [block, vocab]
CURVE_BLOCK = positional.NEURON_BLOCK  # neurons whose curves are computed at once (float64 [positions, block])
BEFORE, AFTER = 12, 4  # tokens of context shown before and after a firing token
QUANTILE_BANDS = 10  # quantile bands per neuron (deciles, in whole value-histogram bins: `Stats.quantile_bands`)


@dataclasses.dataclass
class Source:
    """One model's inputs to the facts: statistics, weights and tokenizer (when found), thresholds."""

    name: str
    stats: object  # analyses.collection.Stats
    model_dir: str | None
    thresholds: Thresholds
    texts: list[str]  # token id -> decoded text ('<id N>' without the tokenizer)
    strings: TokenStrings | None  # the tokenizer's decoder (None without it)
    unembedding: tuple | None  # (E [v, e], project_out [e, d] or None) as stored; None without the weights
    table: object  # the n-gram table (None when n-grams were not collected)
    occurrences: dict  # order -> function item ids -> occurrences
    notes: list[str]
    attribution: object = None  # analyses.interventions.Attribution of the same model, or None
    _scorer: products.Matrix | None = dataclasses.field(default=None, repr=False)
    _weights: related.Weights | None = dataclasses.field(default=None, repr=False)

    def scorer(self) -> products.Matrix | None:
        """The unembedding on the device (put there on first use, then kept); None without the weights."""
        if self._scorer is None and self.unembedding is not None:
            self._scorer = products.on_device(*self.unembedding)
        return self._scorer

    def weights(self) -> related.Weights | None:
        """The model's fc1 and fc2 (`related.Weights`, kept across layers); None without the weights."""
        if self._weights is None and self.unembedding is not None:
            self._weights = related.Weights(self.model_dir)
        return self._weights

    def effect(self, layer: int) -> np.ndarray | None:
        """float64 [ffn]: the layer's estimated zero-ablation effects (nats per token), None without an attribution."""
        return None if self.attribution is None else self.attribution.effect[layer]

    def text(self, token: int) -> str:
        """The decoded text of a token id ('<id N>' without the tokenizer)."""
        return self.texts[token]

    def joined(self, sequences) -> list[str]:
        """One text per id sequence (a trigram), decoded together as the report decodes it."""
        if self.strings is None:
            return [" ".join(self.text(i) for i in seq) for seq in sequences]
        return self.strings.join(sequences)

    @property
    def collected_layers(self) -> int:
        return int(self.stats.act.shape[0])


def open_source(stats_dir: str, name: str | None = None, model_dir: str | None = None,
                thresholds: Thresholds = Thresholds(), scores: bool = True, attribution: str | None = None) -> Source:
    """The inputs of one model: its statistics directory and the converted model the statistics name (or
    `model_dir`). Without the model directory the facts lack token texts and update scores (said in `notes`);
    `scores=False` skips the weights (labels only). `attribution`: a directory written by `analyses.attribute`
    for the same model (its estimated zero-ablation effects)."""
    stats = open_stats(stats_dir)
    attributed = _attribution(attribution, stats) if attribution else None
    model_dir = model_dir or stats.manifest.get("model")
    notes = []
    texts = unembedding = strings = None
    if model_dir and os.path.isdir(model_dir):
        strings = TokenStrings(model_dir)
        texts = strings(np.arange(stats.config.vocab_size))
        if scores:
            unembedding = suppression.unembedding(model_dir, dtype=None)
    else:
        notes.append(f"the model directory {model_dir!r} was not found: tokens are shown as ids and no update "
                     "scores (promoted / suppressed tokens) or related neurons were computed" if model_dir else
                     "the statistics name no model: tokens are shown as ids and no update scores or related neurons "
                     "were computed")
        model_dir = None
    if texts is None:
        texts = [f"<id {i}>" for i in range(stats.config.vocab_size)]
    table = stats.ngram_table() if 3 in (stats.manifest.get("ngram_orders") or []) else None
    orders = [1] + ([3] if table is not None else [])
    occurrences = {k: coverage.occurrences(stats, k, table) for k in orders if stats.token_layers}
    if stats.token_layers and table is None:
        notes.append("n-grams were not collected: no trigram detectors")
    if not stats.examples_per_neuron:
        notes.append("no example contexts were collected (the statistics were collected with --examples 0)")
    if stats.full_length_sequences == 0:
        notes.append(positional.SKIPPED_NOTE)
    return Source(name or os.path.basename(os.path.normpath(stats_dir)), stats, model_dir, thresholds, texts,
                  strings, unembedding, table, occurrences, notes, attributed)


def _attribution(root: str, stats):
    """The attribution in root, checked to be of the statistics' model and to cover its collected layers."""
    attribution = read_attribution(root)
    if attribution.manifest.get("config") != stats.config.to_dict():
        raise InputError(f"{root}: an attribution of another model than the statistics {stats.root} (their configs "
                         "differ)")
    if attribution.effect.shape[0] < stats.act.shape[0]:
        raise InputError(f"{root}: has {attribution.effect.shape[0]} layers; the statistics {stats.root} collected "
                         f"{stats.act.shape[0]}")
    return attribution


@dataclasses.dataclass
class Examples:
    """One example set of a layer as contexts: token ids [n, k, c] (-1 outside the context), the firing token's
    index in the context [n, k], its fc1 value, window and position [n, k]; `valid` [n, k] marks real examples."""

    ids: np.ndarray
    fire: np.ndarray
    value: np.ndarray
    window: np.ndarray
    position: np.ndarray
    valid: np.ndarray
    values: np.ndarray | None = None  # float32 [n, k, c]: fc1 at each context token (NaN where none); None: no
    # context activations (scripts/contexts.py)
    band: np.ndarray | None = None  # int64 [n, k], the quantile set only: each example's band (an index into
    # LayerFacts.bands[neuron]); its slots are ordered band by band, each band's in the `random` order


@dataclasses.dataclass
class LayerFacts:
    """The facts of every neuron of one layer (n = ffn); see the module docstring."""

    layer: int
    freq: np.ndarray  # float64 [n]
    rank: np.ndarray  # int64 [n], 1 = most frequent
    dead: np.ndarray  # bool [n]
    mi: np.ndarray | None  # float64 [n]; None without full-length sequences
    pos_type: np.ndarray  # int8 [n]: index into positional.TYPES, -1 when not positional
    strong: np.ndarray  # bool [n]
    positions: np.ndarray  # int64 [kept]: the positions of the curves
    curves: np.ndarray  # float32 [kept, n]: fr(p)
    token_layer: bool
    trigger_ids: np.ndarray  # int64 [n, TOP_TRIGGERS], -1 past a neuron's triggers
    trigger_counts: np.ndarray  # int64 [n, TOP_TRIGGERS]
    trigger_rates: np.ndarray  # float64 [n, TOP_TRIGGERS]
    totals: np.ndarray  # int64 [n]: activations at non-BOS positions (the sum of the neuron's tok_act column)
    token_items: dict  # token detector neuron -> its covered token ids [m]
    trigram_items: dict  # trigram detector neuron -> its covered trigrams' token ids [m, 3]
    promoted: np.ndarray | None  # int64 [n, k] (-1 for dead neurons), highest score first; None without weights
    promoted_scores: np.ndarray | None  # float32 [n, k]
    suppressed: np.ndarray | None  # int64 [n, k], lowest score first
    suppressed_scores: np.ndarray | None  # float32 [n, k]
    trigger_scores: dict  # token detector neuron -> (scores float [m], ranks among the suppressed int [m])
    examples: dict  # kind -> Examples (empty without examples)
    related: related.Related | None = None  # every neuron's related neurons; None without weights (or depth 0)
    rate_bound: float = 1.0  # a dead neuron's 95% upper bound on its firing rate, from the layer's token count
    value_hist: np.ndarray | None = None  # int64 [n, bins]: activations by fc1 value bin; None without one
    bands: list | None = None  # per neuron its quantile bands (`store.Band`s, lowest values first); None without
    # quantile examples

    @property
    def neurons(self) -> int:
        return len(self.freq)

    def trigger_shares(self) -> np.ndarray:
        """Each trigger's share of its neuron's activations: float64 [n, TOP_TRIGGERS] (0 past its triggers)."""
        return self.trigger_counts / np.maximum(self.totals, 1)[:, None]

    def counts(self) -> dict:
        """The layer's tallies: neurons, dead, token and trigram detectors, positional neurons per type."""
        positional_counts = {name: int((self.pos_type == code).sum()) for code, name in enumerate(positional.TYPES)}
        strong = {name: int(((self.pos_type == code) & self.strong).sum())
                  for code, name in enumerate(positional.TYPES)}
        return {"layer": self.layer, "neurons": self.neurons, "dead": int(self.dead.sum()),
                "token_detectors": len(self.token_items), "trigram_detectors": len(self.trigram_items),
                "positional": positional_counts, "positional_strong": strong}


def layer_facts(source: Source, layer: int, before: int = BEFORE, after: int = AFTER,
                examples: bool = True, related_depth: int = related.DEPTH, quantile: bool = True) -> LayerFacts:
    """Every neuron's facts of one collected layer of `source` (see the module docstring); `examples=False`
    leaves the example contexts out, `related_depth=0` the related neurons, `quantile=False` the quantile bands and
    their examples (`bands` None, no QUANTILE set, as for a store without quantile examples)."""
    stats, th = source.stats, source.thresholds
    if not isinstance(layer, (int, np.integer)) or not 0 <= layer < source.collected_layers:
        raise InputError(f"{stats.root}: layer {layer!r} is out of range; the store holds layers "
                         f"0..{source.collected_layers - 1}")
    layer = int(layer)
    act = np.asarray(stats.act[layer], np.int64)  # [n]
    freq = act / max(stats.tokens, 1)  # [n]
    ordered = np.sort(freq)  # [n]
    rank = 1 + len(freq) - np.searchsorted(ordered, freq, side="right")  # [n]: 1 + neurons strictly above
    mi, pos_type, strong, positions, curves = _positional(stats, layer, th.positional)
    n = len(act)
    token_layer = layer in stats.token_layers
    trigger_ids = np.full((n, TOP_TRIGGERS), -1, np.int64)
    trigger_counts = np.zeros((n, TOP_TRIGGERS), np.int64)
    totals = np.zeros(n, np.int64)
    token_items, trigram_items = {}, {}
    if token_layer:
        t = stats.token_layers.index(layer)
        counts = coverage.item_counts(stats, 1, t)  # sorted by neuron, most activations first
        totals = counts.totals()
        top = counts.ranks() < TOP_TRIGGERS  # [e]
        trigger_ids[counts.neurons[top], counts.ranks()[top]] = counts.items[top]
        trigger_counts[counts.neurons[top], counts.ranks()[top]] = counts.counts[top]
        found = detectors.detectors_of_order(layer, counts, source.occurrences[1], 1, th.detectors)
        token_items = {int(k): v for k, v in zip(found.neurons, found.items)}
        if 3 in source.occurrences:
            grams = coverage.item_counts(stats, 3, t, source.table)
            found = detectors.detectors_of_order(layer, grams, source.occurrences[3], 3, th.detectors)
            trigram_items = {int(k): decode_ngrams(v, 3, stats.config.vocab_size)
                             for k, v in zip(found.neurons, found.items)}
    occurrences = np.asarray(stats.token_occ, np.int64) if token_layer else None  # [v]
    trigger_rates = (trigger_counts / np.maximum(occurrences[np.maximum(trigger_ids, 0)], 1)
                     if token_layer else np.zeros((n, TOP_TRIGGERS)))  # [n, T]
    scores = _update_scores(source, layer, ~(act > 0), token_items)
    value_hist = _value_hist(stats, layer)
    bands = _bands(stats, value_hist) if quantile and QUANTILE in stats.example_slots else None
    examples = _examples(stats, layer, before, after, bands) if examples and stats.examples_per_neuron else {}
    return LayerFacts(layer, freq, rank.astype(np.int64), act == 0, mi, pos_type, strong, positions, curves,
                      token_layer, trigger_ids, trigger_counts, trigger_rates, totals, token_items, trigram_items,
                      *scores, examples, _related(source, layer, related_depth), rate_bound(stats.tokens),
                      value_hist, bands)


def _value_hist(stats, layer: int) -> np.ndarray | None:
    """int64 [n, bins]: the layer's activation-value histograms, or None when the store counted none."""
    if value_edges(stats) is None:
        return None
    return np.asarray(stats.value_hist[layer], np.int64)  # [n, bins]


def value_edges(stats) -> list[float] | None:
    """The inner edges of the store's activation-value bins (bin 0 runs from 0, the last to infinity), or None
    when the store counted no histogram."""
    if "value_hist" not in stats.manifest["arrays"]:
        return None
    return [float(e) for e in stats.value_edges[1:-1]]


def _positional(stats, layer: int, th: positional.PositionalThresholds):
    """(mi [n] or None, type [n], strong [n], kept positions, curves float32 [kept, n]) of one layer."""
    pos_tokens = np.asarray(stats.pos_tokens, np.int64)  # [p]
    counts = stats.pos_act[layer]  # [p, n]
    n = counts.shape[1]
    positions = positional.kept_positions(pos_tokens, th.include_bos)  # [k]
    curves = np.zeros((len(positions), n), np.float32)  # [k, n]
    for start in range(0, n if len(positions) else 0, CURVE_BLOCK):
        curves[:, start:start + CURVE_BLOCK] = positional.frequencies(counts[:, start:start + CURVE_BLOCK],
                                                                      pos_tokens, positions)
    pos_type = np.full(n, -1, np.int8)
    strong = np.zeros(n, bool)
    if stats.full_length_sequences == 0:  # the study skips such a store (positional.SKIPPED_NOTE)
        return None, pos_type, strong, positions, curves
    mi = positional.mutual_information(counts, pos_tokens, th.include_bos)  # [n]
    chosen = np.flatnonzero(mi > th.mi_threshold)  # [c]
    if len(chosen) and len(positions):
        pos_type[chosen], strong[chosen] = positional.classify(counts[:, chosen], pos_tokens, th)
    return mi, pos_type, strong, positions, curves


def _update_scores(source: Source, layer: int, dead: np.ndarray, token_items: dict) -> tuple:
    """(promoted, promoted scores, suppressed, suppressed scores, trigger scores) of the alive neurons' updates,
    SCORE_BLOCK neurons at a time on the device; Nones (and no trigger scores) without the weights."""
    scorer = source.scorer()
    if scorer is None:
        return None, None, None, None, {}
    k = min(source.thresholds.top_k, scorer.shape[0])
    fc2 = np.asarray(ckpt.open_array(source.model_dir, "layers/ffn/fc2/weight")[layer].read().result())  # [d, n]
    n = fc2.shape[1]
    promoted, suppressed = np.full((n, k), -1, np.int64), np.full((n, k), -1, np.int64)
    promoted_scores, suppressed_scores = np.zeros((n, k), np.float32), np.zeros((n, k), np.float32)
    alive = np.flatnonzero(~dead)  # [a]
    top = products.top_products(scorer, fc2, k, alive, SCORE_BLOCK)
    promoted[alive], promoted_scores[alive] = top.high_ids, top.high
    suppressed[alive], suppressed_scores[alive] = top.low_ids, top.low
    trigger_scores = {}
    detectors = np.array(sorted(token_items), np.int64)  # [t]
    for start in range(0, len(detectors), SCORE_BLOCK):
        ids = detectors[start:start + SCORE_BLOCK]  # [b]
        scores = products.product_rows(scorer, fc2, ids, SCORE_BLOCK)  # [b, v]
        values, ranks = suppression.trigger_scores_and_ranks(scores, [token_items[int(i)] for i in ids])
        trigger_scores |= {int(i): (v, r) for i, v, r in zip(ids, values, ranks)}
    return promoted, promoted_scores, suppressed, suppressed_scores, trigger_scores


def _related(source: Source, layer: int, depth: int) -> related.Related | None:
    """Every neuron's related neurons (`related.K` each way, `depth` layers each side); None without the weights
    or with depth 0."""
    weights = source.weights()
    if weights is None or depth == 0:
        return None
    return related.related(weights, layer, depth=depth, block=SCORE_BLOCK)


def _bands(stats, value_hist: np.ndarray) -> list[list]:
    """Every neuron's quantile bands (QUANTILE_BANDS at most, `analyses.collection.quantile_bands` of its value histogram)."""
    edges = stats.value_edges  # [bins + 1]
    return [quantile_bands(counts, edges, QUANTILE_BANDS) for counts in value_hist]


def band_order(stats, layer: int, sets: dict, bands: list[list]) -> tuple[np.ndarray, np.ndarray]:
    """(order, band), int64 [n, slots] each: the quantile set's slots ordered band by band, each band's K of
    smallest `random` rank first (ties to the earlier token), as `Stats.examples(layer, neuron, "quantile")` reads
    one neuron; `band` is each ordered slot's band index, -1 for the slots left out (empty, or past a band's K)."""
    window, position = sets["window"], sets["position"]  # [n, slots]: slots j K .. j K + K - 1 hold bin j's
    n, slots = window.shape
    k = int(stats.manifest["quantile_examples"])
    bins = slots // k
    of_bin = np.full((n, bins), QUANTILE_BANDS, np.int64)  # [n, bins]: each bin's band (QUANTILE_BANDS: none)
    for neuron, found in enumerate(bands):
        for b in found:
            of_bin[neuron, b.bins[0]:b.bins[1]] = b.index
    band = np.where(window >= 0, np.repeat(of_bin, k, axis=1), QUANTILE_BANDS)  # [n, slots]
    neuron_h = sampling.neuron_hash(np, np.uint32(layer), np.arange(n, dtype=np.uint32))[:, None]  # [n, 1]
    rank = sampling.sample_rank(np, sampling.token_hash(np, window, position), neuron_h)  # [n, slots]
    order = np.lexsort((position, window, rank, band), axis=-1)  # [n, slots]
    band = np.take_along_axis(band, order, axis=1)  # [n, slots]: ascending in each row
    first = np.argmax(band[:, :, None] == np.arange(QUANTILE_BANDS + 1), axis=1)  # [n, bands + 1]: where each starts
    place = np.arange(slots) - np.take_along_axis(first, band, axis=1)  # [n, slots]: the slot's place in its band
    return order, np.where((band < QUANTILE_BANDS) & (place < k), band, -1)


def _examples(stats, layer: int, before: int, after: int, bands: list[list] | None = None) -> dict:
    """Every example set of a layer as contexts (`Examples`), reading the example arrays and their windows once;
    the quantile set (with `bands`, `LayerFacts.bands`; left out without them) ordered and cut as `band_order`
    says."""
    kinds = tuple(k for k in stats.example_slots if k != QUANTILE or bands is not None)
    sets = stats.layer_examples(layer, kinds)  # {kind: {field: [n, k]}}
    spans = stats.layer_contexts(layer, kinds) if stats.contexts else None  # {kind: [n, k, w]}
    if QUANTILE in sets:
        order, band = band_order(stats, layer, sets[QUANTILE], bands)  # [n, slots] each
        chosen = np.argsort(band < 0, axis=1, kind="stable")[:, :max(1, int((band >= 0).sum(1).max()))]  # [n, c]
        order, band = np.take_along_axis(order, chosen, axis=1), np.take_along_axis(band, chosen, axis=1)  # the
        # chosen slots first, in their order, and only as many columns as a neuron has chosen (<= bands x K)
        picked = {f: np.take_along_axis(a, order, axis=1) for f, a in sets[QUANTILE].items()}  # [n, slots] each
        picked["window"] = np.where(band >= 0, picked["window"], -1)
        sets[QUANTILE] = picked
        if spans:
            spans[QUANTILE] = np.take_along_axis(spans[QUANTILE], order[..., None], axis=1)  # [n, slots, w]
    used = np.unique(np.concatenate([s["window"][s["window"] >= 0] for s in sets.values()]))  # [u]
    rows = stats.window_rows(used)  # [u, seq]
    lengths = (rows >= 0).sum(axis=1)  # [u]: windows hold -1 after their end
    offsets = np.arange(-before, after + 1)  # [c]
    out = {}
    for kind, s in sets.items():
        valid = s["window"] >= 0  # [n, k]
        row = np.searchsorted(used, np.where(valid, s["window"], used[0] if len(used) else 0))  # [n, k]
        row = np.minimum(row, max(len(used) - 1, 0))
        length = lengths[row] if len(used) else np.zeros_like(row)  # [n, k]
        start, stop = context_span(s["position"], length, before, after)  # [n, k] each
        at = s["position"][..., None] + offsets  # [n, k, c]
        inside = valid[..., None] & (at >= start[..., None]) & (at < stop[..., None])  # [n, k, c]
        ids = (rows[row[..., None], np.clip(at, 0, rows.shape[1] - 1)] if len(used)
               else np.zeros(at.shape, np.int32))  # [n, k, c]
        values = _context_values(stats, spans[kind], s["value"], inside, before, after) if spans else None
        out[kind] = Examples(np.where(inside, ids, -1), s["position"] - start, s["value"], s["window"],
                             s["position"], valid, values, band if kind == QUANTILE else None)
    return out


def _context_values(stats, stored, value, inside, before: int, after: int) -> np.ndarray:
    """float32 [n, k, c]: the neuron's fc1 output at each context token from the store's context activations
    (`stored` [n, k, w], `analyses.collection.contexts`), the firing token's the example's own value; NaN outside
    the context and where the stored spans (their `before` and `after`) do not reach."""
    entry = stats.contexts
    slot = np.arange(-before, after + 1) + entry["before"]  # [c]
    kept = (slot >= 0) & (slot < entry["span"])  # [c]
    values = np.full(inside.shape, np.nan, np.float32)  # [n, k, c]
    values[..., kept] = stored[..., slot[kept]]
    values[..., before] = value  # [n, k]: exact
    return np.where(inside, values, np.nan)


def label(facts: LayerFacts, n: int, source: Source, triggers: int = 3) -> str:
    """A short human label of neuron n: "dead", "detector of 'w'", "positional, oscillatory strong", or its top
    trigger tokens with their shares; "" when nothing is known."""
    if facts.dead[n]:
        return "dead"
    parts = []
    if n in facts.token_items:
        parts.append("detector of " + ", ".join(repr(source.text(i)) for i in facts.token_items[n]))
    elif n in facts.trigram_items:
        grams = facts.trigram_items[n]
        shown = ", ".join(repr(t) for t in source.joined(grams[:triggers]))
        parts.append(f"trigram detector of {shown}" + (f" (+{len(grams) - triggers} more)"
                                                       if len(grams) > triggers else ""))
    if facts.pos_type[n] >= 0:
        parts.append(f"positional, {positional.TYPES[facts.pos_type[n]]} "
                     f"{positional.STRENGTHS[0 if facts.strong[n] else 1]}")
    if not parts and facts.trigger_ids[n, 0] >= 0:
        shares = facts.trigger_counts[n] / max(facts.totals[n], 1)  # [T]: the row of trigger_shares(), alone
        parts.append("fires on " + ", ".join(f"{source.text(i)!r} ({s:.0%})" for i, s in
                                             zip(facts.trigger_ids[n, :triggers], shares[:triggers]) if i >= 0))
    return "; ".join(parts)


def labels(source: Source, layers=None) -> dict[int, list[str]]:
    """The label of every neuron of the given collected layers (default: all): layer -> [ffn] labels."""
    layers = range(source.collected_layers) if layers is None else layers
    out = {}
    for layer in layers:
        facts = layer_facts(source, layer, examples=False, related_depth=0)
        out[int(layer)] = [label(facts, n, source) for n in range(facts.neurons)]
    return out
