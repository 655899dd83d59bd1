"""The paper's readings tested causally on one model (`causal_checks`), for the study and its claims.

On held-out text (the windows of the statistics' corpus after those the statistics saw, cut the same way),
one ablation pass zero-ablates:
  dead:STATS                               "dead neurons are unused": the loss should not move;
  detectors:STATS and match:detectors:...  token detectors against as many random alive neurons per layer:
                                           the loss, and their triggers' repetition (Sec. 4.4's suppression);
  positional:STATS and match:positional:... positional neurons against their matched control, by position.
A set the statistics do not have (no dead neurons, no detectors) is left out with a note. Results go to
OUT/ablation.json (`analyses.interventions.ablation`); a finished run with the same inputs is reused.
"""

from __future__ import annotations

import json
import os

from analyses.collection import open_stats
from analyses.interventions import spec as specs
from analyses.interventions.ablation import ablate
from opt_jax import atomic
from opt_jax import checkpoint as ckpt
from opt_jax.errors import InputError

KINDS = ("dead", "detectors", "positional")  # the sets; detectors and positional come with a matched control
CONTROLLED = ("detectors", "positional")


def causal_specs(stats_dir: str, config, seed: int = 0) -> tuple[list[str], dict[str, str]]:
    """(the specs an ablation runs, {kind: why it is left out}) for the sets the statistics have."""
    wanted, notes = [], {}
    for kind in KINDS:
        spec = f"{kind}:{stats_dir}"
        chosen = [spec, f"match:{spec}"] if kind in CONTROLLED else [spec]
        try:
            specs.resolve(chosen, config, seed, alive_from=stats_dir)
        except InputError as e:
            if "selects no neuron" not in str(e) and "alive neurons are left" not in str(e):
                raise
            notes[kind] = f"left out: {e}"
            continue
        wanted += chosen
    return wanted, notes


def held_out_windows(stats) -> int | None:
    """Windows of the statistics' stream that its run consumed (the held-out text starts after them), or None
    when the run read its whole corpus."""
    cursor = stats.manifest["cursor"]
    if cursor.get("exhausted"):
        return None
    return int(cursor["next_batch"]) * int(stats.manifest["flags"]["batch_size"])


def causal_checks(model_dir: str, stats_dir: str, corpus_paths, out_dir: str, max_tokens: int | None = 50_000,
                  batch_size: int = 16, seed: int = 0, verbose: bool = True) -> dict | None:
    """Ablate the statistics' dead neurons, token detectors and positional neurons (with matched controls) on
    held-out text; returns the ablation result (with `held_out` and `notes`), or None when no set exists."""
    stats = open_stats(stats_dir)
    config = ckpt.read_config(model_dir)
    wanted, notes = causal_specs(stats_dir, config, seed)
    if not wanted:
        return None
    skip = held_out_windows(stats)
    if skip is None:
        notes["held_out"] = "the statistics read the whole corpus: measured on the same text (in sample)"
    flags = stats.manifest["flags"]
    inputs = {"specs": wanted, "skip_windows": skip or 0, "max_tokens": max_tokens, "seq_len": flags["seq_len"],
              "fingerprint": stats.manifest["corpus"]["fingerprint"], "model": os.path.abspath(model_dir)}
    done = _finished(out_dir, inputs)
    if done is not None:
        return done
    result = ablate(model_dir, corpus_paths, wanted, out_dir, seq_len=flags["seq_len"], max_tokens=max_tokens,
                    batch_size=batch_size, seed=seed, skip_windows=skip or 0, alive_from=stats_dir,
                    text_key=flags.get("text_key", "text"), full_length_only=bool(flags.get("full_length_only")),
                    verbose=verbose)
    result |= {"held_out": skip is not None, "notes": notes, "inputs": inputs}
    atomic.write_json(os.path.join(out_dir, "ablation.json"), result)
    return result


def _finished(out_dir: str, inputs: dict) -> dict | None:
    path = os.path.join(out_dir, "ablation.json")
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        result = json.load(f)
    return result if result.get("inputs") == inputs else None


def summary(result: dict | None) -> dict | None:
    """What the report keeps of a causal ablation: per set its size, change, interval and KL, the difference
    from its control, and the detectors' trigger repetition against the control's."""
    if result is None:
        return None
    out = {"held_out": result.get("held_out"), "tokens": result["tokens"], "base_loss": result["base_loss"],
           "notes": result.get("notes", {}), "sets": {}}
    by_spec = {v["spec"]: v for v in result["variants"]}
    for v in result["variants"]:
        kind = v["spec"].split(":")[0]
        if kind not in KINDS:
            continue
        entry = {k: v[k] for k in ("spec", "neurons", "per_layer", "change", "interval", "kl")}
        if "against_control" in v:
            entry["against_control"] = {k: v["against_control"][k] for k in ("control", "difference", "interval")}
        if kind == "detectors" and "against_control" in v:
            control = by_spec[v["against_control"]["control"]]["triggers"]
            entry["triggers"] = [{"layer": t["layer"], "neuron": t["neuron"], "positions": t["positions"],
                                  "change": t["change"], "control_change": c["change"]}
                                 for t, c in zip(v["triggers"], control) if t["positions"]]
        out["sets"][kind] = entry
    return out
