"""The study over one or more statistics directories: `report.json`, one PNG per figure, CSV tables.

`analyze(stats_dirs, out_dir)` runs the requested analyses model by model, a layer at a time, then
writes the figures (several models share the size-comparing ones), the tables and the report. Every
file is written atomically, the report last.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os

import numpy as np

from analyses import claims, coverage, dead, detectors, domains as domain_analysis, positional, suppression
from analyses.collection import open_stats
from analyses.collection.ngrams import decode_ngrams
from analyses.interventions.causal import summary as causal_summary
from analyses.tokens import TokenStrings
from opt_jax import atomic
from opt_jax import lock
from opt_jax.errors import AnalysisError, OptJaxError
from opt_jax.progress import Progress

ANALYSES = ("dead", "ngrams", "detectors", "suppression", "positional")
FORMAT = "opt_jax.report"
VERSION = 1


@dataclasses.dataclass(frozen=True)
class Thresholds:
    """Every threshold of the study, the paper's values by default."""

    coverage_fraction: float = 0.95  # n-gram coverage: the share of a neuron's activations its covering n-grams reach
    bin_edges: tuple = coverage.BIN_EDGES  # histogram bins of covering counts
    detectors: detectors.DetectorThresholds = detectors.DetectorThresholds()
    positional: positional.PositionalThresholds = positional.PositionalThresholds()
    top_k: int = 10  # promoted / suppressed tokens listed per detector
    example_layer: int = 2  # the layer of Fig. 9 (the paper shows layer 2 of 125m)
    claims: claims.ClaimThresholds = claims.ClaimThresholds()

    def to_json(self) -> dict:
        """Plain values, for the report."""
        return json.loads(json.dumps(dataclasses.asdict(self)))


# Flat names of the nested thresholds (flags of scripts/analyze.py): prefix -> field of Thresholds.
_NESTED = {"detector_": "detectors", "positional_": "positional", "claim_": "claims"}


THRESHOLD_HELP = {
    "coverage_fraction": "n-gram coverage: share of a neuron's activations its covering n-grams must reach",
    "bin_edges": "lower edges of the covering-count histogram bins",
    "detector_max_tokens": "token detectors: most tokens covering a detector",
    "detector_max_trigrams": "trigram detectors: most trigrams covering a detector",
    "detector_coverage": "detectors: share of activations the covering items reach",
    "detector_item_fraction": "detectors: an item is covered when the neuron fires on this share of its occurrences",
    "detector_covered_fraction": "detectors: share of activations the covered items must account for",
    "positional_mi_threshold": "positional: I(act; pos) above this (nats) makes a neuron positional",
    "positional_include_bos": "positional: keep position 0 (BOS) in the MI and the types (the paper's literal formula)",
    "positional_extreme_tolerance": "positional: a frequency within this of 0 or 1 counts as reaching it",
    "positional_min_range": "positional: fewest consecutive positions of a low / high range",
    "positional_min_switches": "positional: fewest low <-> high switches of an oscillatory neuron",
    "positional_smooth_window": "positional: moving-average window (positions) of the noise measure",
    "positional_noise_threshold": "positional: an 'other' curve noisier than this is weak",
    "positional_on_threshold": "positional: Fig. 9 draws a neuron on where its frequency reaches this",
    "top_k": "suppression: promoted / suppressed tokens listed per detector",
    "example_layer": "the layer whose strong oscillatory neurons Fig. 9 shows",
    "claim_alive_max_dead": "claims: a layer is fully alive when its dead fraction is below this",
    "claim_sparse_min_dead": "claims: the first half is sparse when one of its layers has this dead fraction",
    "claim_suppress_fraction": "claims: token detectors suppress their triggers when more than this share do",
    "claim_one_word_fraction": "claims: detectors cover one word's variants when more than this share do",
    "claim_word_prefix": "claims: variants of one word share this many first characters",
    "claim_large_hidden": "claims: models this wide or wider count as 6.7b and above",
    "claim_two_stage_depth": "claims: the valley between the two stages of positional neurons is this deep",
    "claim_dead_max_change": "claims: ablating the dead neurons moves the loss by less than this (nats per token)",
}


def flat_thresholds(thresholds: Thresholds = Thresholds()) -> dict:
    """Every threshold under one flat name (e.g. 'detector_max_tokens', 'positional_mi_threshold') -> value."""
    flat = {}
    for field in dataclasses.fields(thresholds):
        value = getattr(thresholds, field.name)
        prefix = next((p for p, f in _NESTED.items() if f == field.name), None)
        if prefix is None:
            flat[field.name] = value
        else:
            flat |= {prefix + k: v for k, v in dataclasses.asdict(value).items()}
    return flat


def thresholds_from_flat(values: dict) -> Thresholds:
    """The inverse of `flat_thresholds` (missing names keep the paper's defaults)."""
    top = {k: v for k, v in values.items() if not any(k.startswith(p) for p in _NESTED)}
    if "bin_edges" in top:
        top["bin_edges"] = tuple(int(e) for e in top["bin_edges"])
    for prefix, name in _NESTED.items():
        nested = {k.removeprefix(prefix): v for k, v in values.items() if k.startswith(prefix)}
        top[name] = dataclasses.replace(getattr(Thresholds(), name), **nested)
    return Thresholds(**top)


@dataclasses.dataclass
class ModelResults:
    """What the analyses found in one statistics directory."""

    name: str
    stats: object
    model_dir: str
    dead: dead.DeadResult | None = None
    histograms: dict = dataclasses.field(default_factory=dict)  # order -> one histogram dict per token layer
    token_detectors: list = dataclasses.field(default_factory=list)  # LayerDetectors per token layer
    trigram_detectors: list = dataclasses.field(default_factory=list)
    suppression: suppression.Suppression | None = None
    positional: object = None
    notes: dict = dataclasses.field(default_factory=dict)
    training: dict | None = None  # {"run", "step"} when the model is a snapshot of a training run
    domains: object = None  # DomainsResult: positional neurons compared across domains

    @property
    def positional_embeddings(self) -> bool:
        return bool(self.stats.config.positional_embeddings)

    @functools.cached_property
    def strings(self) -> TokenStrings:
        """Token id -> string, with the model's tokenizer."""
        return TokenStrings(self.model_dir)


def split_labels(values, names=None) -> tuple[list[str], list[str]]:
    """(names, paths) of values given as `PATH` or `NAME=PATH`; `names` (if given) name the unlabelled ones.

    A value is labelled when it holds '=' and the part before it is a plain name (no path separator).
    Unlabelled values are named by `names` in order, else by their directory's name.
    """
    names = list(names or [])
    labels, paths = [], []
    for value in values:
        label, path = label_of(value)
        if label is not None:
            labels.append(label)
            paths.append(path)
        else:
            labels.append(names.pop(0) if names else os.path.basename(os.path.normpath(value)))
            paths.append(value)
    if names:
        raise AnalysisError(f"more names than unlabelled directories: {names} left over")
    return labels, paths


def label_of(value: str) -> tuple[str | None, str]:
    """(NAME, PATH) of `NAME=PATH`, (None, value) of a plain path (no '=', or a path separator before it)."""
    label, sep, path = str(value).partition("=")
    if sep and label and path and os.sep not in label:
        return label, path
    return None, str(value)


def domain_stores(values, stats_dirs, names=None) -> dict | None:
    """{model: {domain: dir}} of `[MODEL:]DOMAIN=DIR` values (MODEL may be left out when there is one model)."""
    if not values:
        return None
    models = (split_labels(stats_dirs, names)[0] if any("=" in str(d) for d in stats_dirs) else
              list(names) if names else [os.path.basename(os.path.normpath(d)) for d in stats_dirs])
    out = {}
    for value in values:
        label, path = label_of(value)
        if label is None:
            raise AnalysisError(f"--domain {value!r}: expected [MODEL:]DOMAIN=DIR")
        model, _, domain = label.rpartition(":")
        if not model and len(models) != 1:
            raise AnalysisError(f"--domain {value!r}: name the model (MODEL:DOMAIN=DIR), one of {models}")
        out.setdefault(model or models[0], {})[domain] = path
    return out


def training_snapshot(model_dir: str) -> dict | None:
    """{"run", "step"} of a checkpoint written by `scripts/train.py` (its manifest says), else None."""
    from opt_jax import checkpoint

    try:
        training = checkpoint.read_manifest(model_dir).get("training")
    except (OptJaxError, OSError, ValueError):
        return None
    if not isinstance(training, dict) or "step" not in training or "run" not in training:
        return None
    return {"run": os.path.normpath(str(training["run"])), "step": int(training["step"])}


def checkpoint_series(results: list[ModelResults]) -> dict[str, list[ModelResults]]:
    """Training run -> its snapshots among the results, ordered by step (runs with one snapshot too)."""
    series = {}
    for r in results:
        if r.training is not None:
            series.setdefault(r.training["run"], []).append(r)
    return {run: sorted(rs, key=lambda r: r.training["step"]) for run, rs in series.items()}


@lock.writes("out_dir")
def analyze(stats_dirs, out_dir: str, analyses=ANALYSES, names=None, model_dirs=None,
            thresholds: Thresholds = Thresholds(), verbose: bool = True, domains: dict | None = None,
            causal: dict | None = None) -> dict:
    """Run `analyses` on each statistics directory; write report.json, figures and tables into out_dir.

    A statistics directory may be given as `NAME=DIR`; the others are named by `names`, else their
    directory's name. `domains` (model name -> {domain: statistics directory of that model over that
    domain's corpus}) compares the model's positional neurons across domains (`analyses.domains`).
    `causal` (model name -> a directory holding `ablation.json` of `analyses.interventions.causal`) adds each
    model's causal checks: its entry `causal`, four claims and the figure `causal_<name>.png`.
    """
    if any("=" in str(d) for d in stats_dirs):
        names, stats_dirs = split_labels(stats_dirs, names)
    unknown = set(analyses) - set(ANALYSES)
    if unknown:
        raise AnalysisError(f"unknown analyses {sorted(unknown)}; choose from {', '.join(ANALYSES)}")
    wanted = set(analyses) | ({"detectors"} if "suppression" in analyses else set())
    names = list(names) if names else [os.path.basename(os.path.normpath(d)) for d in stats_dirs]
    if len(names) != len(stats_dirs) or len(set(names)) != len(names):
        raise AnalysisError(f"need one distinct name per statistics directory, got {names}: pass names")
    model_dirs = list(model_dirs) if model_dirs else [None] * len(stats_dirs)
    results = []
    for name, stats_dir, model_dir in zip(names, stats_dirs, model_dirs):
        stats = open_stats(stats_dir)
        model_dir = model_dir or stats.manifest["model"]
        results.append(_analyze_model(ModelResults(name, stats, model_dir, training=training_snapshot(model_dir)),
                                      wanted, thresholds, verbose))
    for model, stores in (domains or {}).items():
        if model not in names:
            raise AnalysisError(f"domains given for {model!r}, which is not among the models {names}")
        if "positional" in wanted:
            r = results[names.index(model)]
            r.domains = domain_analysis.analyze_domains({d: open_stats(p) for d, p in stores.items()},
                                                        thresholds.positional)
    ablations = {}
    for model, directory in (causal or {}).items():
        if model not in names:
            raise AnalysisError(f"causal checks given for {model!r}, which is not among the models {names}")
        ablations[model] = read_ablation(directory)
    os.makedirs(out_dir, exist_ok=True)
    figures = _figures(results, wanted, thresholds, out_dir)
    if ablations:
        from analyses import figures as drawing

        figures += [drawing.ablation_figure(a, f"{out_dir}/causal_{name}.png") for name, a in ablations.items()]
    tables = _tables(results, wanted, out_dir)
    report = {"format": FORMAT, "version": VERSION, "analyses": sorted(wanted), "thresholds": thresholds.to_json(),
              "figures": [os.path.basename(f) for f in figures], "tables": [os.path.basename(t) for t in tables],
              "models": {r.name: _model_json(r, wanted) for r in results}}
    for name, a in ablations.items():
        report["models"][name]["causal"] = causal_summary(a)
    for r in results:
        report["models"][r.name]["claims"] = claims.model_claims(report["models"][r.name], r.stats.config,
                                                                 thresholds.claims)
    rows = [{"model": name} | c for name, m in report["models"].items() for c in m["claims"]]
    report["tables"].append(os.path.basename(atomic.write_csv(f"{out_dir}/claims.csv", rows, list(claims.COLUMNS))))
    atomic.write_json(os.path.join(out_dir, "report.json"), report)
    return report


def read_ablation(directory: str) -> dict:
    """An ablation's result (`ablation.json` in `directory`), with a clear error when it is missing or broken."""
    path = os.path.join(directory, "ablation.json")
    if not os.path.isfile(path):
        raise AnalysisError(f"{directory}: no ablation.json (run scripts/ablate.py, or the study's causal checks)")
    try:
        with open(path) as f:
            result = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise AnalysisError(f"{path}: not an ablation result ({e})") from None
    if "variants" not in result or "base_loss" not in result:
        raise AnalysisError(f"{path}: not an ablation result (no variants / base_loss)")
    return result


def _analyze_model(r: ModelResults, wanted: set, thresholds: Thresholds, verbose: bool) -> ModelResults:
    stats = r.stats
    steps = (len(stats.token_layers) * bool(wanted & {"ngrams", "detectors"})
             + stats.pos_act.shape[0] * ("positional" in wanted) + 2)
    progress = Progress(f"analyze {r.name}", steps, " steps", enabled=verbose, every=10.0)
    if "dead" in wanted:
        r.dead = dead.analyze_dead(stats)
    progress.update()
    if wanted & {"ngrams", "detectors"}:
        _analyze_token_layers(r, wanted, thresholds, progress)
    if "suppression" in wanted:
        r.suppression = suppression.analyze_suppression(r.model_dir, r.token_detectors, thresholds.top_k)
    if "positional" in wanted:
        r.positional = positional.analyze_positional(stats, thresholds.positional,
                                                     example_layer=thresholds.example_layer, progress=progress)
        if r.positional.note:
            r.notes["positional"] = r.positional.note
    progress.update()
    return r


def _analyze_token_layers(r: ModelResults, wanted: set, thresholds: Thresholds, progress: Progress) -> None:
    """Coverage histograms (n = 1, 2, 3) and token / trigram detectors, one token layer at a time."""
    stats = r.stats
    table = stats.ngram_table()
    tracked = stats.tracked_neurons()  # [t, n] or None
    orders = [1] + ([k for k in (2, 3) if k in (stats.manifest.get("ngram_orders") or [])] if table else [])
    if table is None:
        r.notes["ngrams"] = "n-grams were not collected (collect with --ngram_orders 2,3): n = 2, 3 coverage " \
                            "and trigram detectors are missing"
    max_coverage = (stats.manifest["flags"] or {}).get("ngram_max_coverage")
    if tracked is not None and stats.manifest.get("ngram_candidates_source") and \
            max_coverage < thresholds.detectors.max_trigrams:
        r.notes["trigram_detectors"] = (f"n-grams were counted only for neurons <= {max_coverage} tokens cover; "
                                        f"trigram detectors with {max_coverage + 1}..{thresholds.detectors.max_trigrams}"
                                        " trigrams cannot be seen")
    occurrences = {k: coverage.occurrences(stats, k, table) for k in orders}
    for order in orders:
        r.histograms[order] = []
    for t, layer in enumerate(stats.token_layers):
        alive = stats.act[layer] > 0  # [n]
        for order in orders:
            counts = coverage.item_counts(stats, order, t, table)
            layer_tracked = tracked[t] if order > 1 and tracked is not None else None
            codes = coverage.covering_codes(counts, alive, layer_tracked, thresholds.coverage_fraction)  # [n]
            r.histograms[order].append(coverage.histogram(codes, thresholds.bin_edges))
            if "detectors" in wanted and order in (1, 3):
                found = detectors.detectors_of_order(layer, counts, occurrences[order], order, thresholds.detectors)
                (r.token_detectors if order == 1 else r.trigram_detectors).append(found)
        progress.update()


def _figures(results: list[ModelResults], wanted: set, thresholds: Thresholds, out_dir: str) -> list[str]:
    from analyses import figures  # matplotlib only when figures are drawn

    paths = []
    num_layers = {r.name: r.stats.config.num_hidden_layers for r in results}
    if "dead" in wanted:
        paths += figures.dead_figures({r.name: r.dead for r in results}, out_dir)
    if "ngrams" in wanted:
        for order, fig in ((1, "fig2"), (2, "fig12"), (3, "fig13")):
            having = [r for r in results if order in r.histograms]
            if having:
                paths.append(figures.coverage_figure({r.name: r.histograms[order] for r in having},
                                                     {r.name: r.stats.token_layers for r in having}, order,
                                                     f"{out_dir}/{fig}_coverage_n{order}.png"))
    if "detectors" in wanted:
        paths += figures.detector_figures({r.name: r.token_detectors for r in results}, num_layers, "token",
                                          out_dir)
        having = [r for r in results if r.trigram_detectors]
        if having:
            paths += figures.detector_figures({r.name: r.trigram_detectors for r in having}, num_layers,
                                              "trigram", out_dir)
    if "suppression" in wanted:
        for r in results:
            paths.append(figures.suppression_figure(r.suppression, r.strings,
                                                    f"{out_dir}/fig5_suppression_{r.name}.png", r.name))
    if "positional" in wanted:
        found = {r.name: r.positional for r in results}
        paths.append(figures.positional_types_per_layer(found, f"{out_dir}/fig8_positional_types.png"))
        for r in results:
            paths.append(figures.positional_example_curves(r.positional, f"{out_dir}/fig7_positional_examples_"
                                                                         f"{r.name}.png", r.name))
            paths.append(figures.oscillatory_ranges(r.positional, f"{out_dir}/fig9_oscillatory_ranges_"
                                                                  f"{r.name}.png", r.name))
            if r.domains is not None:
                paths.append(figures.positional_domains(r.domains, f"{out_dir}/positional_domains_{r.name}.png",
                                                        r.name))
        series = checkpoint_series(results)
        final = [r for r in results if r.training is None or series[r.training["run"]][-1] is r]
        if {r.positional_embeddings for r in final} == {True, False}:  # the last snapshot of each run
            panels = [r for r in final if r.positional_embeddings] + [r for r in final if not r.positional_embeddings]
            paths.append(figures.positional_with_without(
                {r.name: r.positional for r in panels}, {r.name: r.positional_embeddings for r in panels},
                f"{out_dir}/fig10_positional_with_without.png"))
        runs = {run: rs for run, rs in series.items() if len(rs) > 1}
        if runs:
            paths.append(figures.positional_by_checkpoint(
                {os.path.basename(run): [(r.training["step"], r.name, r.positional) for r in rs]
                 for run, rs in runs.items()}, f"{out_dir}/fig11_positional_by_checkpoint.png"))
    return paths


def _model_json(r: ModelResults, wanted: set) -> dict:
    """One model's entry of report.json (the contract documented in docs/analyses.md)."""
    stats = r.stats
    out = {"stats": stats.root, "model": r.model_dir, "layers": stats.config.num_hidden_layers,
           "collected_layers": int(stats.act.shape[0]), "token_layers": list(stats.token_layers),
           "tokens": stats.tokens, "sequences": stats.sequences,
           "full_length_sequences": stats.full_length_sequences, "notes": r.notes,
           "positional_embeddings": r.positional_embeddings, "post_layer_norm": not stats.config.do_layer_norm_before,
           "training": r.training}
    if "dead" in wanted:
        out["dead"] = {"fraction_per_layer": _floats(r.dead.fraction_per_layer),
                       "alive_mean_frequency_per_layer": _floats(r.dead.alive_mean_frequency_per_layer),
                       "tokens_per_layer": [int(t) for t in r.dead.tokens_per_layer],
                       "rate_bound_per_layer": _floats(r.dead.rate_bound_per_layer)}
    if "ngrams" in wanted:
        out["coverage"] = {str(order): {"layers": list(stats.token_layers), "bins": rows[0]["bins"] if rows else [],
                                        "per_layer": rows} for order, rows in r.histograms.items()}
    if "detectors" in wanted:
        out["token_detectors"] = [
            {"layer": d.layer, "neuron": int(n), "tokens": items.tolist(), "token_strings": r.strings(items),
             "covered_fraction": float(f)}
            for d in r.token_detectors for n, items, f in zip(d.neurons, d.items, d.covered_fraction)]
        out["trigram_detectors"] = [
            {"layer": d.layer, "neuron": int(n), "ngrams": _trigrams(r, items).tolist(),
             "ngram_strings": r.strings.join(_trigrams(r, items)), "covered_fraction": float(f)}
            for d in r.trigram_detectors for n, items, f in zip(d.neurons, d.items, d.covered_fraction)]
    if "suppression" in wanted:
        s = r.suppression
        out["suppression"] = {
            "fraction_all_triggers_negative": s.fraction_all_triggers_negative(),
            "detectors": [{"layer": int(s.layers[i]), "neuron": int(s.neurons[i]),
                           "triggers": s.triggers[i].tolist(),
                           "trigger_scores": [float(v) for v in s.trigger_scores[i]],
                           "trigger_ranks_among_suppressed": s.trigger_ranks[i].tolist(),
                           "top_promoted": s.top_promoted[i].tolist(),
                           "top_suppressed": s.top_suppressed[i].tolist()} for i in range(len(s.neurons))]}
    if "positional" in wanted:
        out["positional"] = r.positional.neurons
        if r.domains is not None:
            out["positional_domains"] = r.domains.to_json()
    return out


def _tables(results: list[ModelResults], wanted: set, out_dir: str) -> list[str]:
    """CSV tables: token detectors (with their suppression scores), trigram detectors, positional neurons."""
    paths = []
    if "detectors" in wanted:
        rows = [_token_row(r, d.layer, n, items, f) for r in results for d in r.token_detectors
                for n, items, f in zip(d.neurons, d.items, d.covered_fraction)]
        paths.append(atomic.write_csv(f"{out_dir}/token_detectors.csv", rows, list(TOKEN_COLUMNS)))
        rows = [{"model": r.name, "layer": d.layer, "neuron": int(n),
                 "trigrams": " | ".join(" ".join(map(str, g)) for g in _trigrams(r, items)),
                 "trigram_strings": json.dumps(r.strings.join(_trigrams(r, items))),
                 "covered_fraction": f"{f:.4f}"}
                for r in results for d in r.trigram_detectors for n, items, f in zip(d.neurons, d.items,
                                                                                       d.covered_fraction)]
        paths.append(atomic.write_csv(f"{out_dir}/trigram_detectors.csv", rows,
                                ["model", "layer", "neuron", "trigrams", "trigram_strings", "covered_fraction"]))
    if "positional" in wanted:
        rows = [{"model": r.name} | p for r in results for p in positional.to_rows(r.positional)]
        paths.append(atomic.write_csv(f"{out_dir}/positional_neurons.csv", rows,
                                ["model", "layer", "neuron", "mi", "type", "strength"]))
    return paths


TOKEN_COLUMNS = ("model", "layer", "neuron", "tokens", "token_strings", "covered_fraction", "trigger_scores",
                 "trigger_ranks_among_suppressed")


def _token_row(r: ModelResults, layer: int, neuron, items, fraction) -> dict:
    row = {"model": r.name, "layer": layer, "neuron": int(neuron), "tokens": " ".join(map(str, items)),
           "token_strings": json.dumps(r.strings(items)), "covered_fraction": f"{fraction:.4f}",
           "trigger_scores": "", "trigger_ranks_among_suppressed": ""}
    s = r.suppression
    if s is not None:
        i = int(np.flatnonzero((s.layers == layer) & (s.neurons == neuron))[0])
        row["trigger_scores"] = " ".join(f"{v:.4g}" for v in s.trigger_scores[i])
        row["trigger_ranks_among_suppressed"] = " ".join(map(str, s.trigger_ranks[i]))
    return row


def _trigrams(r: ModelResults, ngram_ids) -> np.ndarray:
    """Token ids [k, 3] of trigram ids."""
    return decode_ngrams(ngram_ids, 3, r.stats.config.vocab_size)


def _floats(values) -> list:
    """Floats for JSON, NaN as null."""
    return [None if np.isnan(v) else float(v) for v in np.asarray(values, float)]


def summary(report: dict) -> str:
    """A few lines per model of what the report found, for the terminal."""
    lines = []
    for name, m in report["models"].items():
        lines.append(f"{name}: {m['tokens']:,} tokens, {m['sequences']:,} sequences "
                     f"({m['full_length_sequences']:,} full length), {m['layers']} layers")
        if "dead" in m:
            dead = ", ".join("-" if v is None else f"{v:.0%}" for v in m["dead"]["fraction_per_layer"])
            lines.append(f"  dead per layer: {dead}")
            bounds = m["dead"].get("rate_bound_per_layer") or []
            if bounds:
                lines.append(f"  a dead neuron never fired in {m['dead']['tokens_per_layer'][0]:,} tokens: its rate is "
                             f"below {max(bounds):.3g} (95%)")
        if "token_detectors" in m:
            lines.append(f"  token detectors: {len(m['token_detectors'])}, trigram detectors: "
                         f"{len(m['trigram_detectors'])}")
        if "suppression" in m and m["suppression"]["fraction_all_triggers_negative"] is not None:
            lines.append(f"  detectors whose triggers all score < 0: "
                         f"{m['suppression']['fraction_all_triggers_negative']:.0%}")
        if "positional" in m:
            kinds = {}
            for p in m["positional"]:
                kinds[f"{p['type']} ({p['strength']})"] = kinds.get(f"{p['type']} ({p['strength']})", 0) + 1
            lines.append(f"  positional neurons: {len(m['positional'])}"
                         + (" - " + ", ".join(f"{k}: {v}" for k, v in sorted(kinds.items())) if kinds else ""))
        lines += [f"  note ({k}): {v}" for k, v in m["notes"].items()]
        if m.get("claims"):
            lines.append("  the paper's claims:")
            lines += claims.summary_lines(m["claims"])
    return "\n".join(lines)
