"""Figure helpers shared by the analyses: headless matplotlib, per-layer curves on two depth axes, PNG output."""

from __future__ import annotations

import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

DPI = 110


def relative_depth(num_layers: int) -> np.ndarray:
    """Layer l of L at depth l / (L - 1) (0 = first layer, 1 = last): float [layers]."""
    return np.arange(num_layers) / max(num_layers - 1, 1)


def per_layer_figure(title: str, ylabel: str, series: dict[str, np.ndarray], path: str,
                     dashed: dict[str, np.ndarray] | None = None, percent: bool = False,
                     note: str | None = None) -> str:
    """One curve per model against the layer index (left) and the relative depth (right); saved as a PNG.

    `series` maps a model name to its values per layer; `dashed` adds a dashed curve of the same colour
    (e.g. a cumulative count). Returns the path written.
    """
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5), sharey=True)
    for i, (name, values) in enumerate(series.items()):
        colour = f"C{i % 10}"
        values = np.asarray(values, float)  # [layers]
        for ax, x in zip(axes, (np.arange(len(values)), relative_depth(len(values)))):
            ax.plot(x, values, "o-", color=colour, markersize=3, label=name)
            if dashed is not None and name in dashed:
                ax.plot(x, np.asarray(dashed[name], float), "--", color=colour, label=f"{name} (cumulative)")
    axes[0].set_xlabel("layer index")
    axes[1].set_xlabel("relative depth (layer / (layers - 1))")
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
