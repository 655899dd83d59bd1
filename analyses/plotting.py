"""Figure helpers shared by the analyses: headless matplotlib, per-layer curves on two depth axes, PNG output."""

from __future__ import annotations

import dataclasses
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

DPI = 110


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


def save(fig, path: str) -> str:
    """Write `fig` as a PNG (atomically: a killed run never leaves half a file) and close it."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    partial = path + ".partial.png"
    fig.tight_layout()
    fig.savefig(partial, dpi=DPI)
    plt.close(fig)
    os.replace(partial, path)
    return path
