"""What fires on my text: run a converted model over a text and list, for each of its tokens and each collected
layer, the neurons that fire there (fc1 output > 0, as the statistics count them), strongest first, with their
atlas labels.

The text is tokenized as collection tokenizes a document (no special tokens) after one BOS, and run as one
window. A text longer than the model's positions (`max_position_embeddings`, BOS included) is refused with an
`InputError` that says how many tokens it has and how many fit: no window is cut silently, since a neuron's
firing depends on its position in the window (split the text, or pass its first part).
"""

from __future__ import annotations

import dataclasses
import functools
import os

import jax
import jax.numpy as jnp
import numpy as np

from analyses.tokens import TokenStrings
from opt_jax import checkpoint as ckpt
from opt_jax.config import OPTConfig
from opt_jax.errors import InputError, MissingError
from opt_jax.model import decoder_layers, embed, unflatten


@dataclasses.dataclass
class FiredToken:
    """One token of the text: its position in the window (0 = BOS), id and decoded text, and per layer the
    neurons that fire on it as (neuron, fc1 value, label), largest value first."""

    position: int
    token: int
    text: str
    layers: dict  # layer -> [(neuron, value, label)]


def fired(model_dir: str, text: str, atlas: str | None = None, layers=None,
          dtype: str | None = None) -> list[FiredToken]:
    """For each token of `text` (BOS left out) and each collected layer, the neurons of the model at `model_dir`
    that fire on it, with their labels from `atlas`: an atlas folder (`build_atlas`'s output) or a statistics
    directory (labels computed from it). Without `atlas`, every layer of the model, with empty labels; `layers`
    restricts the layers; `dtype` the compute dtype (default: the stored one, as collection runs by default).
    Raises `InputError` when the text is longer than the model's positions."""
    config = ckpt.read_config(model_dir)
    strings = TokenStrings(model_dir)
    ids = [config.bos_token_id] + strings.encode(text)
    if len(ids) == 1:
        raise InputError("the text has no tokens")
    limit = config.max_position_embeddings
    if len(ids) > limit:
        raise InputError(f"the text is {len(ids) - 1} tokens long; {model_dir} takes at most {limit - 1} after BOS "
                         f"({limit} positions): split the text and run each part")
    labels, collected = _labels(atlas, model_dir) if atlas is not None else ({}, config.num_hidden_layers)
    wanted = sorted(set(range(collected) if layers is None else (int(l) for l in layers)))
    bad = [l for l in wanted if not 0 <= l < collected]
    if bad:
        raise InputError(f"layers {bad} are out of range: {collected} layers are collected")
    values = _fc1(model_dir, config, np.asarray(ids, np.int32), max(wanted) + 1, dtype)  # [layers, seq, ffn]
    texts = strings(ids)
    out = []
    for p in range(1, len(ids)):
        per_layer = {}
        for layer in wanted:
            row = values[layer, p]  # [ffn]
            on = np.flatnonzero(row > 0)
            on = on[np.argsort(-row[on], kind="stable")]
            names = labels.get(layer)
            per_layer[layer] = [(int(n), float(row[n]), names[n] if names else "") for n in on]
        out.append(FiredToken(p, int(ids[p]), texts[p], per_layer))
    return out


@functools.partial(jax.jit, static_argnums=0)
def _fc1_values(config: OPTConfig, params, ids):
    """fc1 outputs of every layer of `params` for one window: float32 [layers, seq, ffn] (0 where not > 0)."""
    ids = ids[None, :]  # [1, s]
    mask = jnp.ones(ids.shape, bool)  # [1, s]
    x = embed(config, params, ids, mask)  # [1, s, d]
    num_layers = jax.tree.leaves(params["layers"])[0].shape[0]
    state = jnp.zeros((num_layers, ids.shape[1], config.ffn_dim), jnp.float32)  # [l, s, f]

    def probe(active, i, state, fc1):  # [1, s, f], layer, [l, s, f], [1, s, f]
        return state.at[i].set(jnp.where(active, fc1, 0).astype(jnp.float32)[0])

    _, state = decoder_layers(config, params["layers"], x, mask, probe, state, with_fc1=True)
    return state


def _fc1(model_dir: str, config: OPTConfig, ids: np.ndarray, num_layers: int, dtype: str | None) -> np.ndarray:
    """fc1 outputs (> 0, else 0) of the first `num_layers` layers: float32 [layers, seq, ffn]."""
    params = unflatten(ckpt.read_params(model_dir, dtype, layers=slice(0, num_layers)))
    return np.asarray(_fc1_values(config, params, ids))


def _labels(atlas: str, model_dir: str) -> tuple[dict, int]:
    """({layer: [ffn] labels}, collected layers) from an atlas folder or a statistics directory."""
    if os.path.isfile(os.path.join(atlas, "data", "atlas.js")):
        from analyses.neurons.data_files import read_js

        _, manifest = read_js(os.path.join(atlas, "data", "atlas.js"))
        entry = _model_entry(manifest, atlas, model_dir)
        labels = {}
        for layer in entry["built"]:
            _, summary = read_js(os.path.join(atlas, "data", f"m{entry['index']}", f"L{layer}", "summary.js"))
            labels[layer] = summary["label"]
        return labels, entry["layers"]
    if os.path.isfile(os.path.join(atlas, "manifest.json")):
        from analyses.neurons import facts

        source = facts.open_source(atlas, model_dir=model_dir, scores=False)
        return facts.labels(source), source.collected_layers
    raise MissingError(f"{atlas}: neither an atlas folder (data/atlas.js) nor a statistics directory "
                       "(manifest.json)")


def _model_entry(manifest: dict, atlas: str, model_dir: str) -> dict:
    """The atlas's model whose converted model is model_dir (the only one, when the atlas holds one)."""
    models = manifest["models"]
    same = [m for m in models if m.get("model") and os.path.abspath(m["model"]) == os.path.abspath(model_dir)]
    if len(same) == 1 or len(models) == 1:
        return (same or models)[0]
    raise InputError(f"{atlas}: holds {len(models)} models ({', '.join(m['name'] for m in models)}), none of them "
                     f"(or several) made from {model_dir}")


def format_fired(tokens: list[FiredToken], top: int = 5) -> str:
    """The result of `fired` as text: a line per token and layer, its `top` strongest neurons with labels."""
    lines = []
    for t in tokens:
        lines.append(f"{t.position:4d} {t.text!r}")
        for layer, found in t.layers.items():
            shown = ", ".join(f"{n} ({v:.2f}{': ' + label if label else ''})" for n, v, label in found[:top])
            more = f" (+{len(found) - top} more)" if len(found) > top else ""
            lines.append(f"     L{layer}: {len(found)} fire: {shown}{more}")
    return "\n".join(lines)
