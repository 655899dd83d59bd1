"""Related neurons through the weights: which neurons of nearby layers a neuron's update excites and inhibits.

A neuron (l, n) writes its update w_out(l, n) = fc2[l][:, n] into the residual stream when it fires; a neuron
(l', m) of a later layer reads the stream through its fc1 row w_in(l', m) = fc1[l'][m, :]. Both are hidden-sized,
so the weights alone say how much firing (l, n) pushes (l', m) towards firing or away from it:

    score(l, n -> l', m) = cos(w_out(l, n), w_in(l', m)) = w_in . w_out / (|w_in| |w_out|)

Cosines, not raw dot products: neurons' weight norms differ widely (within a layer and from layer to layer), and
a raw product would list the neurons with the largest fc1 rows for every update alike; a cosine compares
directions and lies in [-1, 1] for every pair, so the lists of different layers merge on one scale. (The raw
product is the cosine times |w_in| |w_out|, both known from the weights.) LayerNorm between the two is ignored,
as the paper ignores the final one for suppression: its centring and per-unit scale would change the numbers,
not the weights' geometry this shows. A score is about the weights only: whether (l, n) fires at all, or how
often, is the statistics' business (a dead neuron's update is never written).

For each neuron, downstream: the k neurons of layers l+1 .. l+depth (those the model has) with the highest
scores (`excites`, highest first) and the k with the lowest (`inhibits`, lowest first); upstream: the k neurons
of layers l-depth .. l-1 whose updates score highest (`excited_by`) and lowest (`inhibited_by`) against this
neuron's own fc1 row (the same score, seen from the other end). The candidates are every neuron of those layers,
dead or not. Equal scores list the lower layer first, then the lower neuron.

Computed on jax's default device (`analyses.neurons.products`: one layer's matrix on the device, this layer's
vectors in blocks, float32 accumulation, top k there; each layer's k best are merged on the host).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from analyses.neurons import products
from opt_jax import checkpoint as ckpt
from opt_jax.errors import InputError

DEPTH = 2  # layers downstream (and upstream) searched
K = 10  # neurons listed each way
KINDS = ("excites", "inhibits", "excited_by", "inhibited_by")


@dataclasses.dataclass
class Links:
    """Per query neuron, its k related neurons: layer, neuron and cosine [q, k], in the list's order."""

    layers: np.ndarray  # int64 [q, k]
    neurons: np.ndarray  # int64 [q, k]
    scores: np.ndarray  # float32 [q, k]


@dataclasses.dataclass
class Related:
    """The related neurons of neurons `neurons` of `layer` (see the module docstring); k is cut to the neurons
    of the layers searched (0 where there are none: the last layer has no downstream, the first no upstream)."""

    layer: int
    neurons: np.ndarray  # int64 [q]
    depth: int
    excites: Links  # downstream, highest cosine first
    inhibits: Links  # downstream, lowest first
    excited_by: Links  # upstream, highest first
    inhibited_by: Links  # upstream, lowest first

    def of(self, row: int) -> dict:
        """The four lists of the row-th query neuron: {kind: [(layer, neuron, score)]}."""
        return {kind: list(zip(getattr(self, kind).layers[row].tolist(), getattr(self, kind).neurons[row].tolist(),
                               getattr(self, kind).scores[row].tolist())) for kind in KINDS}


class Weights:
    """A converted model's fc1 and fc2, read a layer at a time, and the layers' matrices on the device, kept while
    the next layers' queries still need them (an atlas build goes layer by layer)."""

    def __init__(self, model_dir: str):
        self.model_dir = model_dir
        self.layers = ckpt.read_config(model_dir).num_hidden_layers
        self._arrays = {name: ckpt.open_array(model_dir, f"layers/ffn/{name}/weight") for name in ("fc1", "fc2")}
        self._on_device = {}

    def read(self, name: str, layer: int) -> np.ndarray:
        """fc1 [ffn, d] or fc2 [d, ffn] of one layer, as stored."""
        return np.asarray(self._arrays[name][layer].read().result())

    def matrix(self, name: str, layer: int) -> products.Matrix:
        """A layer's neurons as rows on the device, for cosines: fc1's rows (w_in) or fc2's columns (w_out)."""
        key = (name, layer)
        if key not in self._on_device:
            weight = self.read(name, layer)
            self._on_device[key] = products.on_device(weight if name == "fc1" else weight.T, cosine=True)
        return self._on_device[key]

    def keep(self, keys) -> None:
        """Drop the device matrices other than `keys` [(name, layer)]."""
        self._on_device = {key: m for key, m in self._on_device.items() if key in set(keys)}


def related_neurons(model_dir: str, layer: int, neurons=None, depth: int = DEPTH, k: int = K,
                    block: int = products.BLOCK) -> Related:
    """The related neurons through the weights (module docstring) of `neurons` of `layer` (default all) of the
    converted model at `model_dir`: the k that each one's update most excites and inhibits among the next
    `depth` layers, and the k whose updates most excite and inhibit its fc1 row among the previous `depth`."""
    return related(Weights(model_dir), layer, neurons, depth, k, block)


def related(weights: Weights, layer: int, neurons=None, depth: int = DEPTH, k: int = K,
            block: int = products.BLOCK) -> Related:
    """`related_neurons` over `Weights` already open (an atlas build keeps one for every layer)."""
    if not isinstance(layer, (int, np.integer)) or not 0 <= layer < weights.layers:
        raise InputError(f"{weights.model_dir}: layer {layer!r} is out of range; the model has layers "
                         f"0..{weights.layers - 1}")
    if not isinstance(depth, (int, np.integer)) or depth < 0 or not isinstance(k, (int, np.integer)) or k < 1:
        raise InputError(f"depth must be at least 0 and k at least 1, got depth {depth!r} and k {k!r}")
    layer = int(layer)
    w_out, w_in = weights.read("fc2", layer), weights.read("fc1", layer)  # [d, n], [n, d]
    ffn = w_out.shape[1]
    neurons = np.arange(ffn) if neurons is None else np.asarray(neurons, np.int64).reshape(-1)
    if len(neurons) and not (neurons.min() >= 0 and neurons.max() < ffn):
        raise InputError(f"neurons must lie in 0..{ffn - 1} (layer {layer} has {ffn})")
    below = range(layer + 1, min(weights.layers, layer + depth + 1))
    above = range(max(0, layer - depth), layer)
    down = [(l, products.top_products(weights.matrix("fc1", l), w_out, k, neurons, block)) for l in below]
    up = [(l, products.top_products(weights.matrix("fc2", l), w_in.T, k, neurons, block)) for l in above]
    weights.keep([("fc1", l) for l in range(layer + 2, layer + depth + 2)] +
                 [("fc2", l) for l in range(layer + 1 - depth, layer + 1)])  # what layer + 1 will ask for again
    return Related(layer, neurons, int(depth), merge(down, k, len(neurons), True), merge(down, k, len(neurons), False),
                   merge(up, k, len(neurons), True), merge(up, k, len(neurons), False))


def merge(tops: list, k: int, queries: int, high: bool) -> Links:
    """The k best of several layers' top lists [(layer, products.Top)], layers in increasing order: highest (or
    lowest) scores first, equal scores by layer then neuron (a stable sort of the lists laid side by side, each
    in top_k's order)."""
    if not tops:
        return Links(np.zeros((queries, 0), np.int64), np.zeros((queries, 0), np.int64),
                     np.zeros((queries, 0), np.float32))
    ids = np.concatenate([t.high_ids if high else t.low_ids for _, t in tops], axis=1)  # [q, c]
    scores = np.concatenate([t.high if high else t.low for _, t in tops], axis=1)  # [q, c]
    layers = np.concatenate([np.full(t.high_ids.shape, l, np.int64) for l, t in tops], axis=1)  # [q, c]
    order = np.argsort(-scores if high else scores, axis=1, kind="stable")[:, :k]  # [q, k]
    return Links(*(np.take_along_axis(a, order, axis=1) for a in (layers, ids, scores)))
