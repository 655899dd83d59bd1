"""An ablation's files: `ablation.json` (everything), `ablation.csv` (one row a neuron set), `by_position.csv`
(the change at each predicting position), `triggers.csv` (each token detector's trigger repetition) and
`ablation.png` (`analyses.figures.ablation_figure`); each written atomically."""

from __future__ import annotations

import os

from opt_jax import atomic

SET_COLUMNS = ("spec", "neurons", "base_loss", "ablated_loss", "change", "interval_low", "interval_high", "kl")
TRIGGER_COLUMNS = ("spec", "layer", "neuron", "tokens", "positions", "base_logp", "change")


def write(result: dict, out_dir: str, figure: bool = True) -> list[str]:
    """Write the result's files into out_dir; returns their paths."""
    os.makedirs(out_dir, exist_ok=True)
    variants = result["variants"]
    rows = [{"spec": v["spec"], "neurons": v["neurons"], "base_loss": result["base_loss"],
             "ablated_loss": v["ablated_loss"], "change": v["change"], "interval_low": v["interval"][0],
             "interval_high": v["interval"][1], "kl": v["kl"]} for v in variants]
    positions = [{"position": p, "predictions": n, "base_loss": result["base_by_position"][p]}
                 | {f"change {v['spec']}": v["by_position"][p] for v in variants}
                 for p, n in enumerate(result["predictions_by_position"])]
    triggers = [{"spec": v["spec"]} | t | {"tokens": " ".join(map(str, t["tokens"]))}
                for v in variants for t in v["triggers"]]
    paths = [atomic.write_csv(os.path.join(out_dir, "ablation.csv"), rows, list(SET_COLUMNS)),
             atomic.write_csv(os.path.join(out_dir, "by_position.csv"), positions,
                              ["position", "predictions", "base_loss"] + [f"change {v['spec']}" for v in variants])]
    if triggers:
        paths.append(atomic.write_csv(os.path.join(out_dir, "triggers.csv"), triggers, list(TRIGGER_COLUMNS)))
    if figure:
        from analyses.figures import ablation_figure

        paths.append(ablation_figure(result, os.path.join(out_dir, "ablation.png")))
    paths.append(atomic.write_json(os.path.join(out_dir, "ablation.json"), result))  # last: the run is done
    return paths
