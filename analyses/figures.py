"""The paper's figures, drawn from the analyses' results (PNG files, written atomically).

The one module that draws: the analyses compute, `analyses.report` calls these when it writes figures.
matplotlib is imported when a figure is drawn, never when `analyses` is imported, and no backend is
chosen here (the scripts choose a headless one; a notebook keeps its own).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from analyses.dead import DeadResult
from analyses.detectors import LayerDetectors, new_items
from analyses.positional import STRENGTHS, SKIPPED_NOTE, TYPES, PositionalResult
from opt_jax import atomic

DPI = 110
# Positional figure sizes in inches (the PNG is this times DPI pixels).
TYPES_ROW_HEIGHT = 3.0
TYPES_WIDTH = 14.0
CURVE_PANEL = (4.5, 3.4)
RANGES_SIZE = (10.0, 6.0)


def _pyplot():
    """matplotlib.pyplot, imported on the first figure drawn."""
    import matplotlib.pyplot as plt

    return plt



def relative_depth(num_layers: int) -> np.ndarray:
    """Layer l of L at depth l / (L - 1) (0 = first layer, 1 = last): float [layers]."""
    return np.arange(num_layers) / max(num_layers - 1, 1)


@dataclasses.dataclass
class Curve:
    """Values at some layers of a model with `num_layers` layers (e.g. only its token layers)."""

    layers: np.ndarray  # int [k]
    values: np.ndarray  # float [k]
    num_layers: int
    dashed: np.ndarray | None = None  # float [k]: a second curve, e.g. cumulative


def per_layer_figure(title: str, ylabel: str, curves: dict[str, Curve], path: str, percent: bool = False,
                     note: str | None = None, dashed_label: str = "cumulative") -> str:
    """One curve per model against the layer index (left) and the relative depth (right); saved as a PNG."""
    import matplotlib.ticker

    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5), sharey=True)
    for i, (name, curve) in enumerate(curves.items()):
        colour = f"C{i % 10}"
        index = np.asarray(curve.layers)  # [k]
        for ax, x in zip(axes, (index, relative_depth(curve.num_layers)[index])):
            ax.plot(x, np.asarray(curve.values, float), "o-", color=colour, markersize=3, label=name)
            if curve.dashed is not None:
                ax.plot(x, np.asarray(curve.dashed, float), "--", color=colour, label=f"{name} ({dashed_label})")
    axes[0].set_xlabel("layer index")
    axes[0].xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    axes[1].set_xlabel("relative depth (layer / (layers - 1))")
    axes[1].set_xlim(-0.03, 1.03)  # the whole model, whatever layers were analysed
    axes[0].set_ylabel(ylabel)
    for ax in axes:
        ax.grid(alpha=0.3)
        if percent:
            ax.yaxis.set_major_formatter(matplotlib.ticker.PercentFormatter(1.0))
    axes[1].legend(fontsize=8, loc="best")
    fig.suptitle(title)
    if note:
        fig.text(0.5, 0.005, note, ha="center", va="bottom", fontsize=8, color="0.3")
    return save(fig, path)


def save(fig, path: str, layout: bool = True) -> str:
    """Write `fig` as a PNG (atomically: a killed run never leaves half a file) and close it."""
    plt = _pyplot()
    if layout:
        fig.tight_layout()
    try:
        return atomic.write_file(path, lambda f: fig.savefig(f, format="png", dpi=DPI), binary=True)
    finally:
        plt.close(fig)


def dead_figures(results: dict[str, DeadResult], out_dir: str) -> list[str]:
    """Fig. 1a (dead fraction per layer) and Fig. 1b (alive neurons' mean frequency), one curve per model."""
    def curves(field):
        return {name: Curve(np.arange(len(r.alive)), getattr(r, field), r.num_layers) for name, r in results.items()}

    return [
        per_layer_figure("Fig. 1a: dead neurons per layer (never activated on the corpus)", "dead neurons",
                         curves("fraction_per_layer"), f"{out_dir}/fig1a_dead_neurons.png", percent=True),
        per_layer_figure("Fig. 1b: mean activation frequency of the alive neurons", "activations / tokens",
                         curves("alive_mean_frequency_per_layer"), f"{out_dir}/fig1b_alive_frequency.png",
                         percent=True, note="a gap: a layer with no alive neuron"),
    ]


def coverage_figure(histograms: dict[str, list[dict]], token_layers: dict[str, list[int]], order: int, path: str) -> str:
    """Figs. 2 / 12 / 13: per token layer, alive neurons binned by how many n-grams cover 95% of their activations."""
    plt = _pyplot()
    names = list(histograms)
    fig, axes = plt.subplots(len(names), 1, figsize=(11, 3.2 * len(names) + 0.8), squeeze=False)
    what = {1: "tokens", 2: "bigrams", 3: "trigrams"}[order]
    for ax, name in zip(axes[:, 0], names):
        rows = histograms[name]  # one dict per token layer
        labels = rows[0]["bins"] + ["untracked (> K)"] if rows else []
        table = np.array([r["counts"] + [r["untracked"]] for r in rows], float)  # [t, bins + 1]
        colours = plt.cm.viridis(np.linspace(0, 0.95, max(table.shape[1] - 1, 1)))
        bottom = np.zeros(len(rows))
        x = np.arange(len(rows))
        for b, label in enumerate(labels):
            if table[:, b].any():
                colour = "0.75" if b == len(labels) - 1 else colours[b]
                ax.bar(x, table[:, b], bottom=bottom, color=colour, label=label)
                bottom += table[:, b]
        ax.set_xticks(x, [str(layer) for layer in token_layers[name]])
        ax.set_xlabel("layer")
        ax.set_ylabel("alive neurons")
        ax.set_title(f"{name}: {what} covering 95% of each neuron's activations (BOS excluded)")
        if rows:
            ax.legend(title=f"{what} needed", fontsize=7, ncol=2, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.suptitle({1: "Fig. 2", 2: "Fig. 12", 3: "Fig. 13"}[order] + f": n-gram coverage, n = {order}")
    return save(fig, path)


def detector_figures(results: dict[str, list[LayerDetectors]], num_layers: dict[str, int], kind: str,
            out_dir: str) -> list[str]:
    """Figs. 3a, 3b, 4 (kind 'token') or 14a, 14b, 15 (kind 'trigram'): one curve per model."""
    figure_ids = {"token": ("3a", "3b", "4"), "trigram": ("14a", "14b", "15")}[kind]
    items = {"token": "tokens", "trigram": "trigrams"}[kind]
    counts = {name: new_items(layers) for name, layers in results.items()}

    def curve(name, values, dashed=None):
        return Curve(np.array([d.layer for d in results[name]]), values, num_layers[name], dashed)

    paths = [
        per_layer_figure(f"Fig. {figure_ids[0]}: {kind}-detecting neurons per layer", f"{kind} detectors",
                         {n: curve(n, [len(d.neurons) for d in results[n]]) for n in results},
                         f"{out_dir}/fig{figure_ids[0]}_{kind}_detectors.png"),
        per_layer_figure(f"Fig. {figure_ids[1]}: {items} with a detector, per layer (solid) and cumulative "
                         "(dashed)", f"detected {items}",
                         {n: curve(n, c[0], dashed=c[1]) for n, c in counts.items()},
                         f"{out_dir}/fig{figure_ids[1]}_detected_{items}.png"),
        per_layer_figure(f"Fig. {figure_ids[2]}: newly detected {items}: new overall (solid), new vs the "
                         "previous layer (dashed)", f"new {items}",
                         {n: curve(n, c[2], dashed=c[3]) for n, c in counts.items()},
                         f"{out_dir}/fig{figure_ids[2]}_new_{items}.png", dashed_label="new vs previous layer"),
    ]
    return paths


def suppression_figure(suppression, strings, path: str, name: str, rows: int = 12, shown: int = 5) -> str:
    """Fig. 5 as a table: for some detectors, their triggers, top promoted and top suppressed tokens."""
    plt = _pyplot()
    count = len(suppression.neurons)
    picked = np.unique(np.linspace(0, count - 1, min(rows, count)).round().astype(int)) if count else []

    def words(ids):
        return ", ".join(repr(s) for s in strings(ids[:shown]))

    cells = [[f"{suppression.layers[i]}:{suppression.neurons[i]}",
              words(suppression.triggers[i]) + ("  (all < 0)" if (suppression.trigger_scores[i] < 0).all() else ""),
              words(suppression.top_promoted[i]), words(suppression.top_suppressed[i])] for i in picked]
    fig, ax = plt.subplots(figsize=(14, 0.4 * max(len(cells), 1) + 1.0))
    ax.axis("off")
    if cells:
        table = ax.table(cellText=cells, colLabels=["layer:neuron", "trigger tokens", f"top {shown} promoted",
                                                    f"top {shown} suppressed"],
                         loc="center", cellLoc="left", colWidths=[0.09, 0.27, 0.32, 0.32])
        table.auto_set_font_size(False)
        table.set_fontsize(8)
        table.scale(1, 1.4)
    else:
        ax.text(0.5, 0.5, "no token detectors found", ha="center", va="center", fontsize=14)
    fraction = suppression.fraction_all_triggers_negative()
    summary = "n/a" if fraction is None else f"{fraction:.0%}"
    ax.set_title(f"Fig. 5 ({name}): token detectors' updates projected onto the vocabulary; detectors whose "
                 f"triggers all score < 0: {summary} of {count}", fontsize=10)
    return save(fig, path)


def _text_panel(ax, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", wrap=True, fontsize=10, transform=ax.transAxes)
    ax.set_xticks([])
    ax.set_yticks([])


def positional_types_per_layer(results: dict[str, PositionalResult], path: str) -> str:
    """Fig. 8: positional neurons per layer by type and strength (a row per model), and totals by relative depth."""
    plt = _pyplot()
    rows = max(len(results), 1)
    fig = plt.figure(figsize=(TYPES_WIDTH, TYPES_ROW_HEIGHT * rows))
    grid = fig.add_gridspec(rows, 2, width_ratios=(2.2, 1))
    depth_ax = fig.add_subplot(grid[:, 1])
    for row, (name, result) in enumerate(results.items()):
        ax = fig.add_subplot(grid[row, 0])
        if result.note == SKIPPED_NOTE:
            _text_panel(ax, f"{name}: {result.note}")
            continue
        _stacked_bars(ax, result)
        ax.set_title(f"{name}: positional neurons per layer ({len(result.neurons)} in all)")
        ax.set_xlabel("layer index")
        ax.set_ylabel("neurons")
        ax.set_ylim(bottom=0)
        if row == 0:
            ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), title="type (strength)",
                      title_fontsize=7)
        totals = result.counts.sum(axis=(1, 2))  # [layers]
        depth = relative_depth(result.model_layers)[result.layers]  # [analysed]
        depth_ax.plot(depth, totals[result.layers], "o-", markersize=3, label=name)
    if not results:
        _text_panel(depth_ax, "no models")
    depth_ax.set_title("positional neurons by relative depth")
    depth_ax.set_xlabel("relative depth (layer / (layers - 1))")
    depth_ax.set_ylabel("positional neurons")
    depth_ax.grid(alpha=0.3)
    if depth_ax.lines:
        depth_ax.legend(fontsize=8)
    return save(fig, path)


def _stacked_bars(ax, result: PositionalResult) -> None:
    """Bars per layer: one segment per (type, strength), strong solid, weak lighter and hatched."""
    x = np.arange(result.num_layers)  # [layers]
    bottom = np.zeros(result.num_layers)  # [layers]
    for code, name in enumerate(TYPES):
        for s, strength in enumerate(STRENGTHS):
            values = result.counts[:, code, s].astype(float)  # [layers]
            weak = strength == "weak"
            ax.bar(x, values, bottom=bottom, color=f"C{code}", alpha=0.45 if weak else 1.0,
                   hatch="//" if weak else None, edgecolor=f"C{code}", linewidth=0.5, label=f"{name} ({strength})")
            bottom += values
    ax.set_xticks(x[::max(1, result.num_layers // 16)])
    ax.grid(axis="y", alpha=0.3)


def positional_example_curves(result: PositionalResult, path: str, name: str) -> str:
    """Fig. 7: fr(p) against position for the highest-MI neuron of each type found, one panel per type."""
    plt = _pyplot()
    found = [result.examples[t] for t in TYPES if t in result.examples]
    fig, axes = plt.subplots(1, max(len(found), 1), squeeze=False,
                             figsize=(CURVE_PANEL[0] * max(len(found), 1), CURVE_PANEL[1]))
    if not found:
        _text_panel(axes[0, 0], f"{name}: no positional neurons" + (f"\n({result.note})" if result.note else ""))
    for ax, c in zip(axes[0], found):
        ax.plot(c.positions, c.frequency, lw=1, color=f"C{TYPES.index(c.type)}")
        ax.set_ylim(-0.03, 1.03)
        ax.set_title(f"{c.type} ({c.strength})\nlayer {c.layer}, neuron {c.neuron}, MI {c.mi:.3f}", fontsize=9)
        ax.set_xlabel("position")
        ax.set_ylabel("activation frequency")
        ax.grid(alpha=0.3)
    fig.suptitle(f"{name}: example positional neurons")
    return save(fig, path)


def oscillatory_ranges(result: PositionalResult, path: str, name: str) -> str:
    """Fig. 9: where each strong oscillatory neuron of one layer is on (fr >= on_threshold), by first on-position."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=RANGES_SIZE)
    layer = result.oscillatory_layer
    threshold = result.thresholds.on_threshold
    curves = result.oscillatory
    if not curves:
        reason = (result.note if result.note == SKIPPED_NOTE else
                  "none found" if layer in result.layers else "layer not analysed")
        _text_panel(ax, f"{name}, layer {layer}: no strong oscillatory neurons ({reason})")
    else:
        on = np.stack([c.frequency >= threshold for c in curves])  # [neurons, kept]
        first = np.where(on.any(axis=1), np.argmax(on, axis=1), on.shape[1])  # [neurons]
        order = np.argsort(first, kind="stable")  # [neurons]
        positions = curves[0].positions  # [kept]
        ax.imshow(on[order], aspect="auto", cmap="Greys", interpolation="nearest", vmin=0, vmax=1,
                  extent=(positions[0] - 0.5, positions[-1] + 0.5, len(curves) - 0.5, -0.5))
        if len(curves) <= 40:
            ax.set_yticks(range(len(curves)), [str(curves[i].neuron) for i in order], fontsize=7)
        ax.set_xlabel("position")
        ax.set_ylabel("neuron (sorted by first on-position)")
    ax.set_title(f"{name}: strong oscillatory neurons of layer {layer} ({len(curves)}); "
                 f"black = on (frequency >= {threshold:g})")
    return save(fig, path)


def _positional_panels(rows: list[list[tuple[str, PositionalResult]]], title: str, path: str) -> str:
    """A grid of Fig. 8 panels (bars per layer by type and strength), one per (title, result), rows as given.

    Panels share the y axis, so the counts compare across models; the legend is drawn once."""
    plt = _pyplot()
    columns = max(len(row) for row in rows)
    fig, axes = plt.subplots(len(rows), columns, squeeze=False, sharey=True,
                             figsize=(CURVE_PANEL[0] * columns + 2.0, TYPES_ROW_HEIGHT * len(rows) + 0.6))
    legend = None
    for row, panels in zip(axes, rows):
        for ax, (label, result) in zip(row, panels):
            if result.note == SKIPPED_NOTE:
                _text_panel(ax, f"{label}: {result.note}")
                continue
            _stacked_bars(ax, result)
            ax.set_title(f"{label}\n{len(result.neurons)} positional neurons", fontsize=9)
            ax.set_xlabel("layer index")
            ax.set_ylabel("neurons")
            legend = legend or ax
        for ax in row[len(panels):]:
            ax.set_visible(False)
    if legend is not None:
        legend.set_ylim(bottom=0)
        handles, labels = legend.get_legend_handles_labels()
        fig.legend(handles, labels, fontsize=7, loc="center right", title="type (strength)", title_fontsize=7)
    fig.suptitle(title)
    fig.tight_layout(rect=(0, 0, 1 - 1.9 / fig.get_figwidth(), 1))
    return save(fig, path, layout=False)


def positional_with_without(results: dict[str, PositionalResult], positional_embeddings: dict[str, bool],
                            path: str) -> str:
    """Fig. 10: positional neurons per layer by type and strength, a panel per model, with positional
    embeddings then without, side by side."""
    panels = [(f"{name} ({'with' if positional_embeddings[name] else 'without'} positional embeddings)", result)
              for name, result in results.items()]
    return _positional_panels([panels], "Fig. 10: positional neurons, models with and without positional "
                                        "embeddings", path)


def positional_by_checkpoint(series: dict[str, list[tuple[int, str, PositionalResult]]], path: str) -> str:
    """Fig. 11: positional neurons per layer by type and strength, a row per training run, a panel per
    checkpoint ordered by step."""
    rows = [[(f"{run}: step {step} ({name})", result) for step, name, result in checkpoints]
            for run, checkpoints in series.items()]
    return _positional_panels(rows, "Fig. 11: positional neurons over training (a panel per checkpoint)", path)


def positional_domains(result, path: str, name: str) -> str:
    """Positional neurons across domains: per layer in each domain (left), and each domain pair's fr(p) curve
    correlations of the neurons positional in both (right)."""
    plt = _pyplot()
    fig, (bars, hist) = plt.subplots(1, 2, figsize=(TYPES_WIDTH, TYPES_ROW_HEIGHT + 1.0))
    domains = result.domains
    if result.note:
        _text_panel(bars, f"{name}: {result.note}")
        _text_panel(hist, "")
        return save(fig, path)
    layers = result.counts.shape[1]
    width = 0.8 / len(domains)
    for i, domain in enumerate(domains):
        bars.bar(np.arange(layers) + (i - (len(domains) - 1) / 2) * width, result.counts[i], width,
                 color=f"C{i}", label=domain)
    bars.set_xticks(np.arange(layers)[::max(1, layers // 16)])
    bars.set_xlabel("layer index")
    bars.set_ylabel("positional neurons")
    bars.set_title(f"{name}: positional neurons per layer in each domain")
    bars.legend(fontsize=8)
    bars.grid(axis="y", alpha=0.3)
    bins = np.linspace(-1, 1, 41)
    drawn = False
    for i, pair in enumerate(result.pairs()):
        a, b = pair.split(" | ")
        values = [n["correlation"][pair] for n in result.neurons
                  if {a, b} <= set(n["positional_in"]) and n["correlation"][pair] is not None]
        if values:
            hist.hist(np.clip(values, -1, 1), bins=bins, alpha=0.6, color=f"C{i}", label=f"{pair} ({len(values)})")
            drawn = True
    if drawn:
        hist.legend(fontsize=8, loc="upper left")
    else:
        _text_panel(hist, "no neuron positional in two domains")
    some = sum(len(n["positional_in"]) < len(domains) for n in result.neurons)
    hist.set_title(f"fr(p) correlation between domains; {some} of {len(result.neurons)} positional "
                   "in some domains only", fontsize=9)
    hist.set_xlabel("Pearson correlation of the curves")
    hist.set_ylabel("neurons")
    return save(fig, path)


def ablation_figure(result: dict, path: str, smooth: int = 16) -> str:
    """Left: each neuron set's change of the mean next-token loss with its bootstrap 95% interval; right: the
    change by predicting position (a moving average over `smooth` positions)."""
    plt = _pyplot()
    variants = result["variants"]
    fig, (bars, curves) = plt.subplots(1, 2, figsize=(13, 0.45 * len(variants) + 3.6),
                                       gridspec_kw={"width_ratios": [1, 1.4]})
    labels = [f"{v['spec']}  ({v['neurons']} neurons)" for v in variants]
    changes = np.array([v["change"] for v in variants])
    low = changes - np.array([v["interval"][0] for v in variants])
    high = np.array([v["interval"][1] for v in variants]) - changes
    y = np.arange(len(variants))[::-1]
    bars.barh(y, changes, xerr=[low, high], color="tab:red", alpha=0.7, capsize=3)
    bars.axvline(0, color="black", lw=0.8)
    bars.set_yticks(y, labels, fontsize=8)
    bars.set_xlabel("change of the mean next-token loss (nats per token)")
    bars.set_title(f"edit: {result['edit']}; base loss {result['base_loss']:.3f} nats over "
                   f"{result['tokens']:,} predictions")
    for v in variants:
        values = np.array([np.nan if c is None else c for c in v["by_position"]], float)
        k = max(1, min(smooth, len(values) // 4 or 1))
        kernel = np.ones(k) / k
        filled = np.nan_to_num(values)
        weight = np.convolve(~np.isnan(values), kernel, mode="valid")
        curve = np.convolve(filled, kernel, mode="valid") / np.maximum(weight, 1e-12)
        curves.plot(np.arange(len(curve)) + (k - 1) / 2, curve, lw=1.2, label=v["spec"])
    curves.axhline(0, color="black", lw=0.8)
    curves.set_xlabel("position of the predicting token (0 = BOS)")
    curves.set_ylabel(f"change of the loss (nats; mean over {smooth} positions)")
    curves.set_title("change by position")
    curves.legend(fontsize=7)
    return save(fig, path)
