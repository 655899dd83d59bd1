"""Neuron sets named on the command line (`--neurons SPEC`), resolved against a model and its statistics.

    L:N,L:N,...              the listed (layer, neuron) pairs
    dead:STATS               the neurons that never fired in the statistics (of the layers they collected)
    detectors:STATS          the token detectors (paper Sec. 4.2: 1-5 tokens cover 95% of the activations),
                             each with its trigger tokens
    trigram-detectors:STATS  the trigram detectors (needs n-grams in the statistics)
    positional:STATS         the positional neurons (I(act; pos) > 0.05)
    random:K[:LAYERS]        K alive neurons drawn at random (seeded) from LAYERS (e.g. 0-3,6; default all)
    match:SPEC               alive neurons drawn at random, as many per layer as SPEC has, none of SPEC's: the
                             control for SPEC
    file:PATH                a JSON list of [layer, neuron] pairs (or {"neurons": [...]})

"Alive" is per the statistics the call names (a STATS of another spec, or `alive_from`); with none, every
neuron counts as alive. A neuron or layer out of range, statistics of another model, or an empty set is an
error that names the spec.
"""

from __future__ import annotations

import dataclasses
import json
import os
import zlib

import numpy as np

from analyses import coverage, detectors, positional
from analyses.collection import open_stats
from opt_jax.config import OPTConfig
from opt_jax.edit import neuron_mask
from opt_jax.errors import InputError, StatsError

STATS_KINDS = ("dead", "detectors", "trigram-detectors", "positional")


@dataclasses.dataclass
class NeuronSet:
    """A resolved spec: which neurons (bool [layers, ffn]) and, for token detectors, their trigger tokens."""

    spec: str
    mask: np.ndarray  # bool [layers, ffn]
    triggers: dict[tuple[int, int], np.ndarray] = dataclasses.field(default_factory=dict)  # (l, n) -> token ids
    stats: str | None = None  # the statistics directory it came from

    @property
    def count(self) -> int:
        return int(self.mask.sum())

    def per_layer(self) -> list[int]:
        return self.mask.sum(axis=1).astype(int).tolist()


def stats_dirs_of(specs) -> list[str]:
    """The statistics directories the specs name (for the alive neurons random sets draw from)."""
    found = []
    for spec in specs:
        inner = spec[len("match:"):] if spec.startswith("match:") else spec
        kind, _, rest = inner.partition(":")
        if kind in STATS_KINDS and rest not in found:
            found.append(rest)
    return found


def resolve(specs, config: OPTConfig, seed: int = 0, alive_from: str | None = None) -> list[NeuronSet]:
    """Each spec resolved to a `NeuronSet` of this model; all are checked before any is used."""
    if not specs:
        raise InputError("no --neurons given: name a neuron set (e.g. 3:117,5:20 or detectors:STATS)")
    shape = (config.num_hidden_layers, config.ffn_dim)
    pool_dir = alive_from or next(iter(stats_dirs_of(specs)), None)
    alive = _alive(_stats(pool_dir, config, "the alive neurons"), shape) if pool_dir else np.ones(shape, bool)
    out = []
    for i, spec in enumerate(specs):
        rng = np.random.default_rng([seed, i, zlib.crc32(spec.encode())])
        found = _resolve(spec, config, shape, alive, rng)
        if not found.count:
            raise InputError(f"--neurons {spec}: selects no neuron")
        out.append(found)
    return out


def _resolve(spec: str, config: OPTConfig, shape, alive: np.ndarray, rng) -> NeuronSet:
    kind, _, rest = spec.partition(":")
    if kind in STATS_KINDS:
        return _from_stats(spec, kind, _stats(rest, config, spec), shape)
    if kind == "random":
        count, _, layers = rest.partition(":")
        pool = alive & _layer_mask(layers, shape, spec)[:, None]  # [l, f]
        return NeuronSet(spec, _draw(pool, {None: _count(count, spec)}, rng, spec))
    if kind == "match":
        target = _resolve(rest, config, shape, alive, rng)
        wanted = {l: n for l, n in enumerate(target.per_layer()) if n}
        return NeuronSet(spec, _draw(alive & ~target.mask, wanted, rng, spec), stats=target.stats)
    if kind == "file":
        return NeuronSet(spec, _mask(_file_pairs(rest, spec), shape, spec))
    return NeuronSet(spec, _mask(_pairs(spec), shape, spec))


def _from_stats(spec: str, kind: str, stats, shape) -> NeuronSet:
    mask = np.zeros(shape, bool)
    triggers = {}
    collected = stats.act.shape[0]
    if kind == "dead":
        mask[:collected] = ~_alive(stats, (collected, shape[1]))
    elif kind == "positional":
        for n in positional.analyze_positional(stats).neurons:
            mask[n["layer"], n["neuron"]] = True
    else:
        order = 1 if kind == "detectors" else 3
        table = stats.ngram_table() if order == 3 else None
        if order == 3 and table is None:
            raise StatsError(f"--neurons {spec}: {stats.root} has no n-gram counts (collect with --ngram_orders 2,3)")
        occurrences = coverage.occurrences(stats, order, table)
        for t, layer in enumerate(stats.token_layers):
            found = detectors.detectors_of_order(layer, coverage.item_counts(stats, order, t, table), occurrences,
                                                 order, detectors.DetectorThresholds())
            mask[layer, found.neurons] = True
            if order == 1:
                triggers |= {(layer, int(n)): np.asarray(items, np.int64) for n, items in zip(found.neurons, found.items)}
    return NeuronSet(spec, mask, triggers, stats.root)


def _stats(path: str, config: OPTConfig, spec: str):
    if not path:
        raise InputError(f"--neurons {spec}: name a statistics directory (e.g. detectors:stats/opt-125m)")
    stats = open_stats(path)
    if stats.manifest["config"] != config.to_dict():
        raise StatsError(f"--neurons {spec}: {path} holds statistics of another model "
                         f"({stats.config.num_hidden_layers} layers x {stats.config.ffn_dim} neurons there, "
                         f"{config.num_hidden_layers} x {config.ffn_dim} in the model)")
    return stats


def _alive(stats, shape) -> np.ndarray:
    """bool [layers, ffn]: fired at least once in the statistics; layers it did not collect count as alive."""
    alive = np.ones(shape, bool)
    collected = stats.act.shape[0]
    alive[:collected] = np.asarray(stats.act[:collected]) > 0
    return alive


def _draw(pool: np.ndarray, wanted: dict, rng, spec: str) -> np.ndarray:
    """A random subset of `pool`: {layer: count}, or {None: count} over every layer."""
    mask = np.zeros(pool.shape, bool)
    for layer, count in wanted.items():
        candidates = np.flatnonzero(pool if layer is None else pool[layer])
        if len(candidates) < count:
            where = "" if layer is None else f" in layer {layer}"
            raise InputError(f"--neurons {spec}: wants {count} neurons{where}, only {len(candidates)} alive "
                             "neurons are left to draw from")
        picked = rng.choice(candidates, count, replace=False)
        if layer is None:
            mask.reshape(-1)[picked] = True
        else:
            mask[layer, picked] = True
    return mask


def _count(text: str, spec: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise InputError(f"--neurons {spec}: random:K wants a count K >= 1, got {text!r}")
    return int(text)


def _layer_mask(text: str, shape, spec: str) -> np.ndarray:
    """bool [layers] of 'a-b,c,...' (empty: every layer)."""
    layers = np.zeros(shape[0], bool)
    if not text:
        return ~layers
    for part in text.split(","):
        low, _, high = part.partition("-")
        try:
            a, b = int(low), int(high or low)
        except ValueError:
            raise InputError(f"--neurons {spec}: layers must be like 0-3,6, got {text!r}") from None
        if not 0 <= a <= b < shape[0]:
            raise InputError(f"--neurons {spec}: layers {part} are outside the model's layers 0..{shape[0] - 1}")
        layers[a:b + 1] = True
    return layers


def _pairs(spec: str) -> list[tuple[int, int]]:
    pairs = []
    for part in spec.split(","):
        layer, sep, neuron = part.strip().partition(":")
        if not sep or not layer.strip().isdigit() or not neuron.strip().isdigit():
            raise InputError(f"--neurons {spec}: {part!r} is not LAYER:NEURON (and {part.partition(':')[0]!r} is "
                             f"not one of dead, detectors, trigram-detectors, positional, random, match, file)")
        pairs.append((int(layer), int(neuron)))
    return pairs


def _file_pairs(path: str, spec: str) -> list:
    if not os.path.isfile(path):
        raise InputError(f"--neurons {spec}: {path} does not exist")
    try:
        with open(path) as f:
            data = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InputError(f"--neurons {spec}: {path} is not JSON ({e})") from None
    pairs = data.get("neurons") if isinstance(data, dict) else data
    if not isinstance(pairs, list) or not all(isinstance(p, list) and len(p) == 2 and
                                              all(isinstance(v, int) for v in p) for p in pairs):
        raise InputError(f"--neurons {spec}: {path} must hold a list of [layer, neuron] pairs of integers")
    return [tuple(p) for p in pairs]


def _mask(pairs, shape, spec: str) -> np.ndarray:
    try:
        return neuron_mask(pairs, shape)
    except InputError as e:
        raise InputError(f"--neurons {spec}: {e}") from None
