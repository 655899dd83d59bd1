"""One model's statistics in as many runs as its token layers need, joined into one store (`collect_runs`).

The token statistics (`tok_act`) of every token layer stay on the device for a whole run; at OPT-66b those of the 32
first-half layers do not fit at once. `collect_runs` plans the runs from what fits (`plan.plan_runs`: the device's
free memory, or a forced budget), collects them one after another and joins them (`join.join_stats`) into out_dir,
which every tool then reads as one model. When one run holds everything it is collected straight into out_dir,
and no join is needed.

Layout, when split: out_dir (the joined store) and beside it `<out_dir>-runs/`: `plan.json` (the runs, planned once)
and `run-1` ... `run-N` (a statistics store each). Resuming: rerun the same call. The plan is read back from
`plan.json` (not planned again from the memory free now), a run whose manifest says it is finished is not
collected again, the others resume where their last commit left off (`collect`), and the join is made again only
when a run has committed since.
"""

from __future__ import annotations

import json
import os

import jax

from analyses.collection.collect import collect, finished
from analyses.collection.join import join_stats, layer_ranges
from analyses.collection.plan import Options, Run, plan_runs
from analyses.collection.store import MANIFEST, read_manifest
from opt_jax import atomic
from opt_jax import checkpoint as ckpt
from opt_jax import lock
from opt_jax.streaming import CheckpointLayers, group_size_for

PLAN = "plan.json"
PLAN_FORMAT = "opt_jax.runs"


def runs_dir(out_dir: str) -> str:
    """Where the runs of a split collection into out_dir live."""
    return f"{os.path.abspath(out_dir).rstrip(os.sep)}-runs"


@lock.writes("out_dir")
def collect_runs(model_path: str, corpus_paths, out_dir: str, device_memory_gb: float | None = None,
                 **flags) -> str:
    """Collect the model's statistics over the corpus into out_dir (`collect`'s flags), in as many runs as the token
    layers need, joined; returns out_dir's absolute path. `device_memory_gb` plans the runs for that much device
    memory (on the CPU: host memory, the runtime included) instead of what the device has free: to plan an
    accelerator's runs elsewhere, or to force a split."""
    options = Options(**flags)
    runs = _planned(model_path, out_dir, options, device_memory_gb)
    if len(runs) == 1:
        _say(options, f"{out_dir}: one run holds every token layer: no join needed")
        return collect(model_path, corpus_paths, out_dir, **flags)
    parts = []
    for i, run in enumerate(runs, 1):
        where = os.path.join(runs_dir(out_dir), f"run-{i}")
        what = (f"run {i}/{len(runs)}: token layers {layer_ranges(list(run.token_layers))}"
                f"{f', layers 0-{run.max_layers - 1}' if run.max_layers else ''} -> {where}")
        if not options.overwrite and _finished(where, run.options(options)):
            _say(options, f"{what}: finished")
        else:
            _say(options, what)
            collect(model_path, corpus_paths, where, **(flags | _flags(run)))
        parts.append(where)
    return join_stats(parts, out_dir, overwrite=options.overwrite, verbose=options.verbose)


def _flags(run: Run) -> dict:
    return {"token_layers": run.token_layers, "max_layers": run.max_layers, "examples": run.examples}


def _say(options: Options, message: str) -> None:
    if options.verbose:
        print(message, flush=True)


def _finished(where: str, options: Options) -> bool:
    """Whether the run at `where` is finished with these options, from its manifest alone."""
    if not os.path.isfile(os.path.join(where, MANIFEST)):
        return False
    return finished(read_manifest(where), options)


def _planned(model_path: str, out_dir: str, options: Options, device_memory_gb: float | None) -> list[Run]:
    """The runs: one into a store out_dir already holds as one run; those of `plan.json` when it is for these
    options; else planned now (and written to `plan.json` when there are several)."""
    path = os.path.join(runs_dir(out_dir), PLAN)
    identity = _identity(model_path, options)
    if not options.overwrite:
        if os.path.isfile(os.path.join(out_dir, MANIFEST)) and "join" not in read_manifest(out_dir):
            return [Run(tuple(options.token_layers or ()), options.max_layers, options.examples)]  # resumed whole
        if os.path.isfile(path):
            with open(path) as f:
                saved = json.load(f)
            if saved.get("format") == PLAN_FORMAT and saved.get("identity") == identity:
                _say(options, f"{out_dir}: the {len(saved['runs'])} runs planned before ({path})")
                return [Run.from_json(r) for r in saved["runs"]]
    config = ckpt.read_config(model_path)
    source = CheckpointLayers(model_path, options.dtype, options.max_layers)
    group_size = (options.group_size or group_size_for(source)) if options.offload else None
    budget = None if device_memory_gb is None else int(device_memory_gb * 1e9)
    device = jax.local_devices()[0]
    runs = plan_runs(config, options, source.layer_bytes, device, budget, group_size)
    if len(runs) > 1:
        where = f"{budget / 1e9:g} GB (--device_memory_gb)" if budget else f"{device}'s free memory"
        _say(options, f"{out_dir}: {len(runs)} runs for {sum(len(r.token_layers) for r in runs)} token layers in "
                      f"{where}, then joined")
        atomic.write_json(path, {"format": PLAN_FORMAT, "identity": identity, "device": str(device),
                                 "budget_bytes": budget, "runs": [r.to_json() for r in runs]})
    return runs


def _identity(model_path: str, options: Options) -> dict:
    """What a saved plan is for: the model and the flags that decide the runs' contents."""
    fields = ("seq_len", "batch_size", "max_layers", "token_layers", "dtype", "ngram_orders", "examples", "offload",
              "group_size", "chunk_batches")
    values = {k: getattr(options, k) for k in fields}
    return json.loads(json.dumps({"model": os.path.abspath(model_path)} | values))
