"""The paper's findings as statements checked on one model's statistics (report.json `models[name].claims`).

Each claim is computed from the model's entry of the report (what the other analyses found) and its
config, and comes out as `{id, claim, paper, measured, threshold, holds, note}`: `paper` says what the
paper reports, in our words; `measured` is the number computed here (None when it cannot be);
`holds` is True / False, or None when the statistics cannot test the claim (no detectors, the
analysis not run, a model the claim is not about), `note` then says why. Layers are the model's:
layer l of L lies in the *first half* when l < L / 2 and in the *first third* when l < L / 3; only the
collected layers are measured. Thresholds (fields of `ClaimThresholds`, defaults in brackets):

- `second_half_alive`: the largest dead fraction among the second-half layers; holds when
  < `alive_max_dead` [0.01] (every second-half layer fully alive, up to 1%).
- `first_half_sparse`: the largest dead fraction among the first-half layers; holds when
  >= `sparse_min_dead` [0.01].
- `dead_rarer_alive`: Spearman rank correlation, over the collected layers with alive neurons, of the
  dead fraction and the alive neurons' mean frequency; holds when < 0. Untestable with fewer than 3
  such layers or a constant dead fraction or frequency.
- `detectors_suppress`: share of token detectors whose every trigger scores < 0 (suppression);
  holds when > `suppress_fraction` [0.8].
- `detectors_one_word`: share of token detectors whose covered tokens are variants of one word: their
  strings, stripped of spaces and lowercased, are all equal or all share their first
  `word_prefix` [3] characters (fewer when a string is shorter; a one-token detector counts); holds
  when > `one_word_fraction` [0.5] ("usually").
- `oscillatory_most_common`: for a model with positional embeddings narrower than `large_hidden`
  [4096, 6.7b's width]: share of oscillatory among the positional neurons; holds when oscillatory
  neurons outnumber every other type. For a model at least that wide: the number of oscillatory
  neurons; holds when 0.
- `positional_two_stages`: depth of the valley between the peak count of positional neurons per layer
  in the first third and the peak after it: 1 - (fewest positional neurons of a layer strictly
  between the two peaks) / (the smaller peak), at least 0; 0 when either stage has none or the peaks
  are adjacent; holds when >= `two_stage_depth` [0.5] (the count falls by at least half, then rises).
- `nopos_strong_positional` (a model without positional embeddings): strong positional neurons; holds
  when > 0.
- `nopos_no_oscillatory` (a model without positional embeddings): oscillatory neurons; holds when 0.
- `post_ln_no_dead` (a post-LayerNorm model, as 350m): the largest dead fraction of any layer; holds
  when < `alive_max_dead`.
- `post_ln_positional` (a post-LayerNorm model): positional neurons; holds when > 0.

Causal checks (the report entry's `causal`: zero-ablations on held-out text, `analyses.interventions.causal`):
- `dead_unused_causal`: the change of the mean next-token loss when every dead neuron is ablated; holds when
  its bootstrap 95% interval lies within +-`dead_max_change` [0.001 nats per token].
- `detectors_matter_causal`: the token detectors' change minus that of a matched random set (as many alive
  neurons per layer); holds when the paired 95% interval of the difference lies above 0.
- `detectors_suppress_causal`: share of the ablated token detectors (those whose trigger occurs in the
  held-out text) after whose trigger the log-probability of a trigger next rises more than under the matched
  control; holds when > `suppress_fraction`.
- `positional_matter_causal`: as `detectors_matter_causal`, for the positional neurons (the change by
  position is in the figure).
"""

from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True)
class ClaimThresholds:
    """The thresholds that turn a measured number into holds / does not hold (module docstring)."""

    alive_max_dead: float = 0.01  # a layer is fully alive when its dead fraction is below this
    sparse_min_dead: float = 0.01  # the first half is sparse when one of its layers has this dead fraction
    suppress_fraction: float = 0.8  # detectors suppressing their triggers: more than this share
    one_word_fraction: float = 0.5  # detectors covering one word's variants: more than this share
    word_prefix: int = 3  # variants of one word share this many first characters
    large_hidden: int = 4096  # models this wide or wider are "6.7b and above"
    two_stage_depth: float = 0.5  # the valley between the two stages of positional neurons: at least this deep
    dead_max_change: float = 0.001  # ablating the dead neurons moves the loss by less than this (nats per token)


ORDER = ("second_half_alive", "first_half_sparse", "dead_rarer_alive", "detectors_suppress", "detectors_one_word",
         "oscillatory_most_common", "positional_two_stages", "nopos_strong_positional", "nopos_no_oscillatory",
         "post_ln_no_dead", "post_ln_positional", "dead_unused_causal", "detectors_matter_causal",
         "positional_matter_causal", "detectors_suppress_causal")
COLUMNS = ("model", "id", "claim", "paper", "measured", "threshold", "holds", "note")


def model_claims(entry: dict, config, thresholds: ClaimThresholds = ClaimThresholds()) -> list[dict]:
    """Every claim of the paper, checked on one model's report entry (`entry`) and its `OPTConfig`."""
    t = thresholds
    layers = int(entry["layers"])
    out = []

    def add(key, claim, paper, threshold, measured=None, holds=None, note=None):
        if measured is not None and not isinstance(measured, (int, bool)):
            measured = float(measured)
        out.append({"id": key, "claim": claim, "paper": paper, "measured": measured, "threshold": threshold,
                    "holds": None if holds is None else bool(holds), "note": note})

    dead = entry.get("dead")
    fractions = np.array(dead["fraction_per_layer"], float) if dead else np.zeros(0)  # [collected]
    first_half = np.arange(len(fractions)) < layers / 2  # [collected]
    no_dead = "the dead analysis was not run"

    claim = ("second half fully alive", "only the first half of the network is sparse; the second half is fully "
             "alive (Section 3, Fig. 1a)", f"every second-half layer has < {t.alive_max_dead:.0%} dead")
    if dead is None or not (~first_half).any():
        add("second_half_alive", *claim, note=no_dead if dead is None else "no second-half layer was collected")
    else:
        worst = fractions[~first_half].max()
        add("second_half_alive", *claim, measured=worst, holds=worst < t.alive_max_dead)

    claim = ("first half sparse", "dead neurons lie in the first half of the network (> 70% in some layers of 66b; "
             "Section 3, Fig. 1a)", f"some first-half layer has >= {t.sparse_min_dead:.0%} dead")
    if dead is None or not first_half.any():
        add("first_half_sparse", *claim, note=no_dead)
    else:
        worst = fractions[first_half].max()
        add("first_half_sparse", *claim, measured=worst, holds=worst >= t.sparse_min_dead)

    claim = ("more dead neurons, rarer alive ones", "where more neurons are dead the alive ones fire more rarely "
             "(Section 3, Figs. 1a, 1b)", "Spearman correlation over layers of dead fraction and alive "
             "frequency < 0")
    if dead is None:
        add("dead_rarer_alive", *claim, note=no_dead)
    else:
        frequency = np.array([np.nan if v is None else v for v in dead["alive_mean_frequency_per_layer"]], float)
        having = ~np.isnan(frequency)  # [collected]
        rho = spearman(fractions[having], frequency[having])
        add("dead_rarer_alive", *claim, measured=rho, holds=None if rho is None else rho < 0,
            note=None if rho is not None else "fewer than 3 layers with alive neurons, or a constant dead "
                                              "fraction or frequency")

    claim = ("token detectors suppress their triggers", "for more than 80% of token detectors the update points "
             "away from the tokens that trigger them (Section 4.4)",
             f"share of detectors whose triggers all score < 0 > {t.suppress_fraction:.0%}")
    suppression = entry.get("suppression")
    fraction = None if suppression is None else suppression["fraction_all_triggers_negative"]
    add("detectors_suppress", *claim, measured=fraction, holds=None if fraction is None else fraction > t.suppress_fraction,
        note=None if fraction is not None else "the suppression analysis was not run" if suppression is None
        else "no token detectors")

    claim = ("a token detector covers variants of one word", "a detector usually covers variants of one word: "
             "capitalisation, a leading space, inflection (Section 4.3)",
             f"share of detectors whose tokens share their first {t.word_prefix} characters > "
             f"{t.one_word_fraction:.0%}")
    found = entry.get("token_detectors")
    if not found:
        add("detectors_one_word", *claim, note="the detectors analysis was not run" if found is None
            else "no token detectors")
    else:
        share = float(np.mean([one_word(d["token_strings"], t.word_prefix) for d in found]))
        add("detectors_one_word", *claim, measured=share, holds=share > t.one_word_fraction)

    neurons = entry.get("positional")
    no_positional = "the positional analysis was not run" if neurons is None else None
    skipped = (entry.get("notes") or {}).get("positional", "")
    if neurons is not None and "skipped" in skipped:
        no_positional = skipped
    types = [p["type"] for p in neurons or []]
    oscillatory = types.count("oscillatory")
    large = config.hidden_size >= t.large_hidden
    claim = ("oscillatory neurons: the most common type below 6.7b, none above",
             "oscillatory is the most common positional type in models below 6.7b; larger models have none "
             "(Section 5, Fig. 8)",
             "no oscillatory neurons" if large else "more oscillatory neurons than of any other type")
    if no_positional or not config.positional_embeddings:
        add("oscillatory_most_common", *claim, note=no_positional or "a model without positional embeddings: "
            "the no-positional-embedding claims apply instead")
    elif large:
        add("oscillatory_most_common", *claim, measured=oscillatory, holds=oscillatory == 0)
    elif not types:
        add("oscillatory_most_common", *claim, note="no positional neurons")
    else:
        others = max(types.count(k) for k in ("both extremes", "one extreme", "other"))
        add("oscillatory_most_common", *claim, measured=oscillatory / len(types), holds=oscillatory > others)

    claim = ("positional neurons in two stages", "positional information rises and falls twice: in the first "
             "third of the layers, then in the rest (Section 5, Fig. 8)",
             f"valley between the two peaks of positional neurons per layer >= {t.two_stage_depth:.0%} deep")
    collected = int(entry["collected_layers"])
    if no_positional:
        add("positional_two_stages", *claim, note=no_positional)
    elif collected < 3 or collected <= layers / 3:
        add("positional_two_stages", *claim, note="fewer than 3 collected layers, or none after the first third")
    elif not types:
        add("positional_two_stages", *claim, note="no positional neurons")
    else:
        counts = np.bincount([p["layer"] for p in neurons], minlength=collected)  # [collected]
        depth = valley_depth(counts, layers)
        add("positional_two_stages", *claim, measured=depth, holds=depth >= t.two_stage_depth)

    nopos = not config.positional_embeddings
    strong = sum(p["strength"] == "strong" for p in neurons or [])
    for key, text, paper, threshold, measured, holds in (
            ("nopos_strong_positional", "without positional embeddings: strong positional neurons",
             "a model trained without positional encoding still has strong positional neurons (Section 5.4, "
             "Fig. 10)", "> 0 strong positional neurons", strong, strong > 0),
            ("nopos_no_oscillatory", "without positional embeddings: no oscillatory neurons",
             "... but no oscillatory ones (Section 5.4, Fig. 10)", "0 oscillatory neurons", oscillatory,
             oscillatory == 0)):
        if no_positional or not nopos:
            add(key, text, paper, threshold, note=no_positional or "a model with positional embeddings")
        else:
            add(key, text, paper, threshold, measured=measured, holds=holds)

    post_ln = not config.do_layer_norm_before
    claim = ("post-LayerNorm: no dead neurons", "350m (post-LayerNorm) has no dead neurons (Sections 3, 6)",
             f"every layer has < {t.alive_max_dead:.0%} dead")
    if dead is None or not post_ln:
        add("post_ln_no_dead", *claim, note=no_dead if dead is None else "a pre-LayerNorm model")
    else:
        worst = fractions.max()
        add("post_ln_no_dead", *claim, measured=worst, holds=worst < t.alive_max_dead)
    claim = ("post-LayerNorm: positional neurons", "350m has positional neurons (Section 6, Fig. 16)",
             "> 0 positional neurons")
    if no_positional or not post_ln:
        add("post_ln_positional", *claim, note=no_positional or "a pre-LayerNorm model")
    else:
        add("post_ln_positional", *claim, measured=len(types), holds=len(types) > 0)
    _causal_claims(entry.get("causal"), t, add)
    return out


def _causal_claims(causal: dict | None, t: ClaimThresholds, add) -> None:
    """The claims tested by ablation (module docstring), from the report entry's `causal`."""
    sets = (causal or {}).get("sets", {})
    where = "on held-out text" if (causal or {}).get("held_out", True) else "in sample"

    def missing(kind):
        if causal is None:
            return "the causal checks were not run (scripts/study.py runs them; scripts/ablate.py by hand)"
        return causal["notes"].get(kind, f"no {kind} neurons to ablate")

    claim = ("dead neurons are unused (ablated)", f"dead neurons never fire, so removing them changes nothing "
             f"(Section 3); here all of them zero-ablated {where}",
             f"95% interval of the loss change within +-{t.dead_max_change} nats/token")
    dead = sets.get("dead")
    if dead is None:
        add("dead_unused_causal", *claim, note=missing("dead"))
    else:
        low, high = dead["interval"]
        add("dead_unused_causal", *claim, measured=dead["change"],
            holds=max(abs(low), abs(high)) < t.dead_max_change)

    for key, kind, text in (("detectors_matter_causal", "detectors", "token detectors"),
                            ("positional_matter_causal", "positional", "positional neurons")):
        claim = (f"{text} matter more than random neurons (ablated)",
                 f"not a claim of the paper: the {text} it names, zero-ablated {where}, against as many random "
                 "alive neurons of the same layers", "paired 95% interval of (change - control's change) > 0")
        found = sets.get(kind)
        if found is None or "against_control" not in found:
            add(key, *claim, note=missing(kind))
        else:
            c = found["against_control"]
            add(key, *claim, measured=c["difference"], holds=c["interval"][0] > 0)

    claim = ("ablated token detectors let their triggers repeat", "token detectors suppress their triggers "
             "(Section 4.4): removed, a trigger after a trigger should become likelier; here against the "
             "matched control", f"share of detectors whose trigger repetition rises more than the control's > "
             f"{t.suppress_fraction:.0%}")
    triggers = (sets.get("detectors") or {}).get("triggers")
    if not triggers:
        add("detectors_suppress_causal", *claim, note=missing("detectors") if sets.get("detectors") is None
            else "no detector's trigger occurs in the held-out text")
    else:
        share = float(np.mean([x["change"] > x["control_change"] for x in triggers]))
        add("detectors_suppress_causal", *claim, measured=share, holds=share > t.suppress_fraction)


def spearman(a, b) -> float | None:
    """Spearman rank correlation of two equal-length sequences (average ranks for ties); None when undefined."""
    a, b = np.asarray(a, float), np.asarray(b, float)  # [k], [k]
    if len(a) < 3 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return None
    from scipy.stats import rankdata

    return float(np.corrcoef(rankdata(a), rankdata(b))[0, 1])


def one_word(strings, prefix: int) -> bool:
    """Whether token strings are variants of one word: stripped and lowercased, equal or sharing a prefix."""
    words = [s.strip().lower() for s in strings]
    if len(set(words)) <= 1:
        return True
    k = min(prefix, min(len(w) for w in words))
    return k > 0 and len({w[:k] for w in words}) == 1


def valley_depth(counts, layers: int) -> float:
    """1 - (fewest count strictly between the first-third peak and the later peak) / (the smaller peak), at least 0;
    0 without two peaks apart."""
    counts = np.asarray(counts, float)  # [collected]
    early = np.arange(len(counts)) < layers / 3  # [collected]
    if not early.any() or early.all():
        return 0.0
    first = int(np.argmax(np.where(early, counts, -1)))
    second = int(np.argmax(np.where(early, -1, counts)))
    peak = min(counts[first], counts[second])
    if peak <= 0 or second - first < 2:
        return 0.0
    return float(max(0.0, 1.0 - counts[first + 1:second].min() / peak))  # 0: no dip between the peaks


def summary_lines(claims: list[dict]) -> list[str]:
    """One line per claim for the terminal: holds / does not hold / untestable, and the measured number."""
    lines = []
    for c in claims:
        mark = {True: "holds", False: "fails", None: "n/a  "}[c["holds"]]
        measured = "" if c["measured"] is None else (f" (measured {c['measured']:.3g})"
                                                       if isinstance(c["measured"], float) else
                                                       f" (measured {c['measured']})")
        lines.append(f"  [{mark}] {c['claim']}{measured}" + (f" - {c['note']}" if c["note"] else ""))
    return lines
