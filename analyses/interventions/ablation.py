"""`ablate`: what zero-ablating (or setting, or scaling) sets of FFN neurons does to a model's next-token loss.

For a converted model, a corpus cut into windows exactly as collection cuts them (BOS + up to seq_len - 1
tokens; position t predicts t + 1; padding is neither input nor target), and one or more neuron sets
(`spec`), one pass (`passes`) computes the base and every edited model on the same tokens and writes
`OUT/ablation.json`:
  base_loss, tokens (predictions counted), windows; and per set (`variants`; the first also at the top):
  ablated_loss, change (= ablated - base, nats per token), interval (a bootstrap 95% interval of the change
  over windows), kl (mean KL(base || edited) of the next-token distributions, nats), by_position (the change
  at each predicting position), and for token detectors (of any set in the call) `triggers`: after a
  detector's trigger token, the change in log p(next token is one of its triggers) (the suppression
  reading: a detector that removes its trigger from the residual stream, ablated, should raise it); a set
  given with its control `match:SPEC` also gets `against_control`: its change minus the control's, with a
  bootstrap interval paired over the same windows, overall and by position
beside `ablation.csv` (one row a set), `by_position.csv`, `triggers.csv` and `ablation.png`.
"""

from __future__ import annotations

import dataclasses
import os

import jax
import numpy as np

from analyses.interventions import spec as specs
from analyses.interventions.passes import Model, Pass
from opt_jax import atomic, heap
from opt_jax import lock
from opt_jax import checkpoint as ckpt
from opt_jax.corpus import limited_batches, model_corpus
from opt_jax.edit import Edit
from opt_jax.errors import InputError
from opt_jax.progress import Progress
from opt_jax.sharding import run_mesh

BOOTSTRAP = 1000  # resamples of the windows for each interval


@dataclasses.dataclass(frozen=True)
class Operation:
    """What is done to the chosen neurons: "zero", "set" (to `value`) or "scale" (by `value`)."""

    kind: str = "zero"
    value: float = 0.0

    @classmethod
    def parse(cls, text: str) -> "Operation":
        """'zero', 'set:V' or 'scale:F'."""
        kind, _, value = text.partition(":")
        if kind == "zero" and not value:
            return cls()
        if kind in ("set", "scale") and value:
            try:
                return cls(kind, float(value))
            except ValueError:
                pass
        raise InputError(f"--edit {text!r}: expected zero, set:VALUE or scale:FACTOR")

    def edit(self, config, mask: np.ndarray) -> Edit:
        e = Edit.identity(config)
        if self.kind == "zero":
            return e.zero(mask)
        return e.set(mask, self.value) if self.kind == "set" else e.scale_by(mask, self.value)

    def __str__(self) -> str:
        return "zero" if self.kind == "zero" else f"{self.kind}:{self.value:g}"


@lock.writes("out_dir")
def ablate(model_dir: str, corpus_paths, neurons, out_dir: str, seq_len: int = 2048, max_tokens: int | None = None,
           batch_size: int = 8, dtype: str | None = None, offload: bool = False, seed: int = 0,
           edit: str = "zero", skip_windows: int = 0, alive_from: str | None = None, text_key: str = "text",
           full_length_only: bool = False, group_size: int | None = None, chunk_batches: int = 4,
           figure: bool = True, verbose: bool = True, mesh: str | None = None) -> dict:
    """Base and edited next-token losses over the corpus's windows for each neuron set (`neurons`: specs, or
    one); writes OUT/ablation.json (+ CSVs and a figure) and returns its content. Nothing is written when a
    set, the corpus or the memory check fails."""
    neurons = [neurons] if isinstance(neurons, str) else list(neurons)
    config = ckpt.read_config(model_dir)
    if seq_len > config.max_position_embeddings or seq_len < 2:
        raise InputError(f"seq_len {seq_len}: must lie in 2..{config.max_position_embeddings} (the model's positions)")
    operation = Operation.parse(edit)
    sets = specs.resolve(neurons, config, seed, alive_from)
    corpus = model_corpus(model_dir, corpus_paths, seq_len, text_key, full_length_only)
    corpus.check_not_empty()
    detectors = _detectors(sets)
    gather = np.unique(np.concatenate([t for _, t in detectors])) if detectors else np.zeros(1, np.int64)
    devices = run_mesh(config, batch_size, mesh)  # `mesh`: "data=A,neurons=B" (`opt_jax.sharding`)
    computed = dtype or ckpt.read_manifest(model_dir)["dtype"]
    check_memory(config, len(sets), batch_size, seq_len, len(gather), computed, offload, mesh=mesh,
                 group_size=group_size)
    model = Model.load(model_dir, dtype, offload, group_size, mesh=devices if mesh else None)
    runner = Pass(model, [operation.edit(config, s.mask) for s in sets], gather, batch_size, chunk_batches,
                  devices if mesh else None)
    tally = Tally(len(sets), seq_len, gather, detectors, _controls([s.spec for s in sets]))
    progress = Progress("ablate", max_tokens, " tokens", enabled=verbose)
    try:
        chunk = []
        for ids, mask in limited_batches(corpus, batch_size, config.pad_token_id, max_tokens, skip_windows):
            chunk.append((ids, mask))
            if len(chunk) == runner.chunk_batches:
                _add(runner, tally, chunk, progress)
                chunk = []
        if chunk:
            _add(runner, tally, chunk, progress)
    finally:
        runner.close()
    progress.update(0, force=True)
    if not sum(int(c.sum()) for c in tally.count):
        raise InputError(f"corpus {', '.join(corpus_paths)}: no prediction to score after skipping {skip_windows} "
                         "windows (each window needs two tokens)")
    result = tally.result(np.random.default_rng(seed)) | {
        "model": os.path.abspath(model_dir), "edit": str(operation), "seed": seed, "seq_len": seq_len,
        "batch_size": batch_size, "dtype": computed,
        "corpus": {"paths": list(corpus.files), "fingerprint": corpus.fingerprint(), "skip_windows": skip_windows,
                   "full_length_only": full_length_only}}
    for variant, s in zip(result["variants"], sets):
        variant |= {"spec": s.spec, "neurons": s.count, "per_layer": s.per_layer(), "stats": s.stats}
        if "against_control" in variant:
            variant["against_control"]["control"] = sets[variant["against_control"]["control"]].spec
    result |= {k: result["variants"][0][k] for k in ("ablated_loss", "change", "interval", "kl")}
    from analyses.interventions import results

    results.write(result, out_dir, figure)
    return result


def _add(runner: Pass, tally: "Tally", chunk: list, progress: Progress) -> None:
    for (ids, mask), out in zip(chunk, runner.run(chunk)):
        tally.add(ids, out)
        progress.update(int(mask.sum()))


def _controls(spec_names: list[str]) -> dict[int, int]:
    """{index of a set: index of its control}, for every `match:SPEC` given with its SPEC."""
    return {spec_names.index(name[len("match:"):]): i for i, name in enumerate(spec_names)
            if name.startswith("match:") and name[len("match:"):] in spec_names}


def _detectors(sets) -> list[tuple[tuple[int, int], np.ndarray]]:
    """Every token detector of the sets, with its trigger tokens, once each: [((layer, neuron), tokens)]."""
    seen = {}
    for s in sets:
        for key, tokens in s.triggers.items():
            seen.setdefault(key, tokens)
    return sorted(seen.items())


def check_memory(config, num_sets: int, batch_size: int, seq_len: int, gathered: int, dtype, offload: bool,
                 available: int | None = None, device=None, mesh: str | None = None,
                 group_size: int | None = None) -> None:
    """Refuse, before loading anything, a pass whose weights and per-batch arrays do not fit.

    On the CPU the device is the host: all of it against the host's available memory. On an accelerator, per device
    as collection plans it (`analyses.collection.plan`: `mesh_shape`, `device_weights`, `free_memory`): the embedding
    whole, the layers (all, or two streamed groups; with `mesh` "data=A,neurons=B" 1/B of each plus two gathered
    whole) and a batch's arrays for 1/A of its rows (the layers' split B ways by token) against the device's free
    memory; the weights read on the host (all of them resident, groups read ahead streamed) against the host's."""
    from analyses.collection.plan import (RUNTIME_BYTES, device_weights, free_memory, group_layers, mesh_shape,
                                          shares_host)
    from opt_jax.streaming import layer_bytes

    device = device or jax.local_devices()[0]
    on_host = shares_host(device)
    data, split = mesh_shape(mesh, on_host)
    itemsize = 2 if dtype in ("bfloat16", "float16") else 4
    layer = layer_bytes(config, itemsize)
    layers = config.num_hidden_layers
    group = group_layers(layers, layer, group_size, device) if offload else layers
    streamed = offload and -(-layers // group) > 2
    outer = (config.vocab_size * config.word_embed_proj_dim + config.max_position_embeddings * config.hidden_size) \
        * itemsize
    weights = outer + device_weights(config, layers, group, layer, streamed, split)
    rows = -(-batch_size // data)
    tokens = rows * seq_len
    hidden = -(-(num_sets + 2) * tokens * config.hidden_size * 4 * 4 // split)  # base and edits, a layer's temporaries
    ffn = -(-tokens * config.ffn_dim * 4 * 3 // split)
    block = rows * min(seq_len, 256) * config.vocab_size * 4 * 5  # a block's logits, log-probs, probs
    out = (num_sets + 1) * tokens * (2 + gathered) * 4 * 2
    read = outer + (3 * group if streamed else layers) * layer  # on the host: read, then moved
    free, where = free_memory(device, split, available)
    if on_host:
        needed = weights + (2 * group * layer if streamed else 0) + hidden + ffn + block + out + RUNTIME_BYTES
    else:
        needed = weights + hidden + ffn + block + out
    if needed > free:
        raise InputError(f"{where}: an ablation pass of {num_sets} set(s), batch_size {batch_size} x seq_len "
                         f"{seq_len}, needs about {needed / 1e9:.1f} GB (the weights {weights / 1e9:.1f} GB, a "
                         f"batch's arrays {(needed - weights) / 1e9:.1f} GB); {free / 1e9:.1f} GB are free. Use a "
                         "smaller --batch_size, fewer --neurons per call, a 16-bit --dtype, --offload, or with several "
                         "devices --mesh neurons=B")
    host = heap.host_available() if available is None else available
    if not on_host and read > host:
        raise InputError(f"host memory: the weights read before they move to the devices need {read / 1e9:.1f} GB; "
                         f"{host / 1e9:.1f} GB are available. Use --offload (with a smaller --group_size)")


class Tally:
    """Host sums of a pass: per window, per position, KL, and the trigger log-probabilities of each detector."""

    def __init__(self, num_sets: int, seq_len: int, gather: np.ndarray, detectors: list,
                 controls: dict[int, int] | None = None):
        self.num_sets = num_sets
        self.controls = controls or {}  # set -> its matched control: their difference gets a paired interval
        self.base, self.edited, self.count = [], [], []  # per window: [w], [e, w], [w]
        self.pos_base = np.zeros(seq_len, np.float64)  # [s]
        self.pos_edited = np.zeros((num_sets, seq_len), np.float64)  # [e, s]
        self.pos_count = np.zeros(seq_len, np.int64)  # [s]
        self.kl = np.zeros(num_sets, np.float64)  # [e]
        self.detectors = detectors
        column = {int(t): i for i, t in enumerate(gather)}
        self.columns = [np.array([column[int(t)] for t in tokens]) for _, tokens in detectors]
        self.trig_base = np.zeros(len(detectors), np.float64)  # [d]
        self.trig_edited = np.zeros((num_sets, len(detectors)), np.float64)  # [e, d]
        self.trig_count = np.zeros(len(detectors), np.int64)  # [d]

    def add(self, ids: np.ndarray, out: dict) -> None:
        counted = out["counted"]  # [b, s]
        rows = counted.any(axis=1)  # [b]: windows with a prediction
        base = np.where(counted, out["base_nll"], 0.0).astype(np.float64)  # [b, s]
        edited = np.where(counted, out["nll"], 0.0).astype(np.float64)  # [e, b, s]
        self.base.append(base.sum(1)[rows])
        self.edited.append(edited.sum(2)[:, rows])
        self.count.append(counted.sum(1)[rows])
        self.pos_base += base.sum(0)
        self.pos_edited += edited.sum(1)
        self.pos_count += counted.sum(0)
        self.kl += np.where(counted, out["kl"], 0.0).sum((1, 2))
        for d, ((_, tokens), cols) in enumerate(zip(self.detectors, self.columns)):
            after = counted & np.isin(ids, tokens)  # [b, s]: a trigger, followed by a real token
            if not after.any():
                continue
            self.trig_base[d] += _logsumexp(out["base_gathered"][after][:, cols]).sum()
            self.trig_edited[:, d] += _logsumexp(out["gathered"][:, after][:, :, cols]).sum(-1)
            self.trig_count[d] += int(after.sum())

    def result(self, rng) -> dict:
        base, edited = np.concatenate(self.base), np.concatenate(self.edited, axis=1)  # [w], [e, w]
        count = np.concatenate(self.count).astype(np.float64)  # [w]
        total = count.sum()
        base_loss = base.sum() / total
        pairs = sorted(self.controls.items())
        diffs = np.concatenate([edited - base[None]] + [edited[[a]] - edited[[b]] for a, b in pairs])  # [e + c, w]
        intervals = _bootstrap(diffs, count, rng)  # [e + c, 2]
        predicting = self.pos_count > 0
        variants = []
        for e in range(self.num_sets):
            loss = edited[e].sum() / total
            by_position = np.where(predicting, (self.pos_edited[e] - self.pos_base) / np.maximum(self.pos_count, 1),
                                   np.nan)
            triggers = [{"layer": l, "neuron": n, "tokens": tokens.tolist(), "positions": int(c),
                         "base_logp": float(b / c) if c else None,
                         "change": float((t - b) / c) if c else None}
                        for ((l, n), tokens), b, t, c in zip(self.detectors, self.trig_base, self.trig_edited[e],
                                                             self.trig_count)]
            variants.append({"ablated_loss": float(loss), "change": float(loss - base_loss),
                             "interval": [float(v) for v in intervals[e]], "kl": float(self.kl[e] / total),
                             "by_position": [None if np.isnan(v) else float(v) for v in by_position[:-1]],
                             "triggers": triggers})
        for k, (a, b) in enumerate(pairs):  # paired over the same windows: the set's change minus its control's
            variants[a]["against_control"] = {
                "control": b, "difference": variants[a]["change"] - variants[b]["change"],
                "interval": [float(v) for v in intervals[self.num_sets + k]],
                "by_position": [None if x is None or y is None else x - y
                                for x, y in zip(variants[a]["by_position"], variants[b]["by_position"])]}
        return {"base_loss": float(base_loss), "tokens": int(total), "windows": len(count),
                "base_by_position": [None if not p else float(v / p) for v, p in
                                     zip(self.pos_base[:-1], self.pos_count[:-1])],
                "predictions_by_position": self.pos_count[:-1].tolist(), "variants": variants}


def _logsumexp(a: np.ndarray) -> np.ndarray:
    """log sum exp over the last axis, in float64."""
    a = np.asarray(a, np.float64)
    top = a.max(-1, keepdims=True)
    return (top + np.log(np.exp(a - top).sum(-1, keepdims=True)))[..., 0]


def _bootstrap(diff: np.ndarray, count: np.ndarray, rng, resamples: int = BOOTSTRAP) -> np.ndarray:
    """2.5th and 97.5th percentiles of sum(diff[:, windows]) / sum(count[windows]) over windows drawn with
    replacement: [sets, 2]."""
    w = len(count)
    stats = np.zeros((diff.shape[0], resamples))
    for start in range(0, resamples, 50):
        n = min(50, resamples - start)
        picks = np.stack([np.bincount(rng.integers(0, w, w), minlength=w) for _ in range(n)]).astype(np.float64)
        stats[:, start:start + n] = (diff @ picks.T) / (picks @ count)[None]
    return np.percentile(stats, [2.5, 97.5], axis=1).T


def write_json(out_dir: str, result: dict) -> str:
    os.makedirs(out_dir, exist_ok=True)
    return atomic.write_json(os.path.join(out_dir, "ablation.json"), result)
