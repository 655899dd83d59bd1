"""The atlas's token search index (docs/atlas-format.md): per model, which neurons a token triggers most, which
detect it, promote it or suppress it, bucketed by the FNV-1a hash of the token's search key (the page computes
the same hash of what is typed)."""

from __future__ import annotations

import numpy as np

from analyses.neurons import facts as nf
from analyses.neurons.data_files import significant

TOKEN_BUCKETS = 256
INDEX_LIMIT = 50  # entries kept per list of a token's index entry
INDEX_KINDS = ("triggers", "detects", "promotes", "suppresses")


def fnv1a32(text: str) -> int:
    """FNV-1a 32-bit hash of the UTF-8 bytes of text (the page computes the same)."""
    h = 2166136261
    for byte in text.encode("utf-8"):
        h = ((h ^ byte) * 16777619) & 0xFFFFFFFF
    return h


def token_key(text: str) -> str:
    """The search key of a token text: stripped of surrounding whitespace and lower-cased; a text of whitespace
    only keeps it (lower-cased), so that newline and space tokens can be searched."""
    stripped = text.strip()
    return (stripped or text).lower()


def bucket_of(key: str, buckets: int = TOKEN_BUCKETS) -> int:
    """The token-index file holding `key`."""
    return fnv1a32(key) % buckets


def index_entries(facts: nf.LayerFacts) -> dict:
    """A layer's entries of the token index: kind -> {token, neuron, order, value} arrays (order: smaller first)."""
    n_ids = np.arange(facts.neurons)
    out = {}
    has = facts.trigger_ids >= 0  # [n, T]
    shares = facts.trigger_shares()
    out["triggers"] = (facts.trigger_ids[has], np.broadcast_to(n_ids[:, None], has.shape)[has], -shares[has],
                       shares[has])
    tokens, neurons, order = [np.zeros(0)], [np.zeros(0)], [np.zeros(0)]
    for n, items in list(facts.token_items.items()) + list(facts.trigram_items.items()):
        unique = np.unique(items)  # a trigram detector: every token of its trigrams
        tokens.append(unique)
        neurons.append(np.full(len(unique), n))
        order.append(np.full(len(unique), float(len(items))))  # fewer items: a more specific detector first
    order = np.concatenate(order)
    out["detects"] = (np.concatenate(tokens), np.concatenate(neurons), order, order)
    if facts.promoted is not None:
        alive = ~facts.dead  # [n]
        for kind, ids, scores, sign in (("promotes", facts.promoted, facts.promoted_scores, -1.0),
                                        ("suppresses", facts.suppressed, facts.suppressed_scores, 1.0)):
            rows = np.broadcast_to(n_ids[:, None], ids.shape)[alive]  # [a, k]
            out[kind] = (ids[alive].reshape(-1), rows.reshape(-1), sign * scores[alive].reshape(-1).astype(np.float64),
                         scores[alive].reshape(-1).astype(np.float64))
    return {kind: {"token": np.asarray(t, np.int64), "neuron": np.asarray(n, np.int64),
                   "order": np.asarray(o, np.float64), "value": np.asarray(v, np.float64),
                   "layer": np.full(len(t), facts.layer, np.int64)} for kind, (t, n, o, v) in out.items()}


def _best(entries: dict, limit: int = INDEX_LIMIT) -> dict:
    """The `limit` best entries per token (smallest order; ties by layer, then neuron)."""
    if not len(entries["token"]):
        return entries
    order = np.lexsort((entries["neuron"], entries["layer"], entries["order"], entries["token"]))  # [e]
    tokens = entries["token"][order]
    first = np.searchsorted(tokens, tokens, side="left")  # [e]
    keep = order[np.arange(len(order)) - first < limit]
    return {k: v[keep] for k, v in entries.items()}


class TokenIndex:
    """One model's token index, kept at INDEX_LIMIT entries per token and list as layers are added."""

    def __init__(self):
        empty = {f: np.zeros(0, np.float64 if f in ("order", "value") else np.int64)
                 for f in ("token", "neuron", "order", "value", "layer")}
        self.kept = {kind: dict(empty) for kind in INDEX_KINDS}

    def add(self, entries: dict) -> None:
        """Add one layer's `index_entries`."""
        for kind, new in entries.items():
            both = {f: np.concatenate([self.kept[kind][f], new[f]]) for f in new}
            self.kept[kind] = _best(both)

    def buckets(self, text, buckets: int = TOKEN_BUCKETS) -> list[dict]:
        """The index as `buckets` dicts key -> entry (docs/atlas-format.md), tokens sharing a key merged."""
        by_key = {}
        spans = {}
        for kind, e in self.kept.items():
            order = np.lexsort((e["neuron"], e["layer"], e["order"], e["token"]))
            e = {f: v[order] for f, v in e.items()}
            self.kept[kind] = e
            tokens, firsts, counts = np.unique(e["token"], return_index=True, return_counts=True)
            spans[kind] = {int(t): (int(a), int(a + c)) for t, a, c in zip(tokens, firsts, counts)}
            for t in tokens.tolist():
                by_key.setdefault(token_key(text(t)), set()).add(t)
        out = [{} for _ in range(buckets)]
        for key, tokens in by_key.items():
            tokens = sorted(tokens)
            entry = {"texts": sorted({text(t) for t in tokens})}
            for kind, e in self.kept.items():
                rows = np.concatenate([np.arange(*spans[kind][t]) for t in tokens if t in spans[kind]] or
                                      [np.zeros(0, np.int64)])
                rows = rows[np.lexsort((e["neuron"][rows], e["layer"][rows], e["order"][rows]))][:INDEX_LIMIT]
                if kind == "detects":
                    entry[kind] = [[int(e["layer"][r]), int(e["neuron"][r])] for r in rows]
                else:
                    entry[kind] = [[int(e["layer"][r]), int(e["neuron"][r]), significant(e["value"][r], 4)] for r in rows]
            out[bucket_of(key, buckets)][key] = entry
        return out
