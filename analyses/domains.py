"""Positional neurons across domains (the paper, Section 5: the patterns do not change across domains).

Input: one statistics store per domain, all of the same model (the same layers and neurons), each
collected over that domain's corpus alone. For every layer, each domain's I(act; pos) and types come
from `analyses.positional` with the same thresholds. Every neuron positional in at least one domain
is listed with, per domain, its MI, type, strength and whether it is positional there, and for each
pair of domains the Pearson correlation of its fr(p) curves over the positions kept in both (None
when either curve is flat there, e.g. a neuron that always fires in one domain). A neuron positional
in some domains only is flagged (`positional_in` lists where it is).

Memory: one layer of `pos_act` per domain at a time.
"""

from __future__ import annotations

import dataclasses
import itertools

import numpy as np

from analyses import positional as pn
from opt_jax.errors import AnalysisError


@dataclasses.dataclass
class DomainsResult:
    """Neurons positional in any domain, compared across domains."""

    domains: list[str]
    neurons: list[dict]  # {layer, neuron, positional_in, per_domain: {domain: {...}}, correlation: {"a | b": r}}
    counts: np.ndarray  # int64 [domains, layers]: positional neurons per layer in each domain
    note: str | None = None

    def pairs(self) -> list[str]:
        """The domain pairs, 'a | b', in order."""
        return [pair_name(a, b) for a, b in itertools.combinations(self.domains, 2)]

    def to_json(self) -> dict:
        everywhere = sum(len(n["positional_in"]) == len(self.domains) for n in self.neurons)
        return {"domains": self.domains, "per_layer": {d: self.counts[i].tolist() for i, d in enumerate(self.domains)},
                "positional_in_all": everywhere, "positional_in_some_only": len(self.neurons) - everywhere,
                "neurons": self.neurons, "note": self.note}


def pair_name(a: str, b: str) -> str:
    return f"{a} | {b}"


def analyze_domains(stores: dict, thresholds: pn.PositionalThresholds = pn.PositionalThresholds()) -> DomainsResult:
    """Compare positional neurons across domains: `stores` maps domain name -> an opened statistics store."""
    domains = list(stores)
    if len(domains) < 2:
        raise AnalysisError(f"comparing domains needs at least two, got {domains}")
    shapes = {d: tuple(s.pos_act.shape[::2]) for d, s in stores.items()}  # (layers, ffn)
    if len(set(shapes.values())) > 1:
        raise AnalysisError(f"domain stores of different models (layers, neurons): {shapes}")
    layers = next(iter(shapes.values()))[0]
    result = DomainsResult(domains, [], np.zeros((len(domains), layers), np.int64))
    empty = [d for d, s in stores.items() if s.full_length_sequences == 0]
    if empty:
        result.note = f"no full-length sequences in {', '.join(empty)}: domains not compared"
        return result
    tokens = {d: np.asarray(s.pos_tokens, np.int64) for d, s in stores.items()}  # [p] each
    kept = {d: pn.kept_positions(tokens[d], thresholds.include_bos) for d in domains}  # [k] each
    for layer in range(layers):
        acts = {d: np.asarray(s.pos_act[layer], np.int64) for d, s in stores.items()}  # [p, n] each
        mi = {d: pn.mutual_information(acts[d], tokens[d], thresholds.include_bos) for d in domains}  # [n] each
        positional = np.stack([mi[d] > thresholds.mi_threshold for d in domains])  # [domains, n]
        result.counts[:, layer] = positional.sum(axis=1)
        chosen = np.flatnonzero(positional.any(axis=0))  # [c]
        if not len(chosen):
            continue
        kinds = {d: pn.classify(acts[d][:, chosen], tokens[d], thresholds) for d in domains}  # ([c], [c]) each
        curves = {d: pn.frequencies(acts[d][:, chosen], tokens[d], kept[d]) for d in domains}  # [k, c] each
        correlations = {pair_name(a, b): _correlations(kept[a], curves[a], kept[b], curves[b])
                        for a, b in itertools.combinations(domains, 2)}  # [c] each
        for i, n in enumerate(chosen.tolist()):
            result.neurons.append({
                "layer": layer, "neuron": n,
                "positional_in": [d for j, d in enumerate(domains) if positional[j, n]],
                "per_domain": {d: {"mi": float(mi[d][n]), "positional": bool(positional[j, n]),
                                   "type": pn.TYPES[kinds[d][0][i]],
                                   "strength": pn.STRENGTHS[0 if kinds[d][1][i] else 1]}
                               for j, d in enumerate(domains)},
                "correlation": {pair: (None if np.isnan(r[i]) else float(r[i])) for pair, r in correlations.items()}})
    return result


def _correlations(kept_a, curves_a, kept_b, curves_b) -> np.ndarray:
    """Pearson correlation per neuron of two curves over the positions both keep: float [c], NaN if flat."""
    common, ia, ib = np.intersect1d(kept_a, kept_b, return_indices=True)  # [m]
    a, b = curves_a[ia], curves_b[ib]  # [m, c]
    a = a - a.mean(axis=0)
    b = b - b.mean(axis=0)
    norm = np.sqrt((a ** 2).sum(axis=0) * (b ** 2).sum(axis=0))  # [c]
    flat = norm <= pn.ROUNDING
    return np.where(flat, np.nan, (a * b).sum(axis=0) / np.where(flat, 1.0, norm))  # [c]
