"""OPT in Flax, top-down: Linear -> LayerNorm -> Attention -> FFN -> DecoderLayer -> Embed -> Head.

Weights keep Hugging Face's layout ([out, in], heads split out), so a neuron's update is
`layers/fc2/weight[layer, :, neuron]` exactly as in the paper. The decoder layers are
stacked on a leading axis and run under one `jax.lax.scan`; `decoder_layer` is a pure
function of (one layer's params, hidden state, token mask), so the layers can also be
streamed from host memory a group at a time. Every entry point takes an optional `edit`
(`opt_jax.edit`): what fc2 reads in place of relu(fc1), to ablate, set or scale neurons.
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from opt_jax.bits import pack_masks
from opt_jax.config import OPTConfig
from opt_jax.edit import EditFn, apply as apply_edit
from opt_jax.sharding import constrain, gathered

Params = Any
_NEG = float(jnp.finfo(jnp.float32).min)


class Linear(nn.Module):
    """An einsum against a weight in HF layout, plus an optional bias."""

    equation: str  # e.g. "bsd,hkd->bshk"
    weight_shape: tuple[int, ...]
    bias_shape: tuple[int, ...] | None
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        weight = self.param("weight", nn.initializers.normal(0.02), self.weight_shape, self.param_dtype)
        y = jnp.einsum(self.equation, x, weight.astype(x.dtype))
        if self.bias_shape is not None:
            y = y + self.param("bias", nn.initializers.zeros, self.bias_shape, self.param_dtype).astype(x.dtype)
        return y


class LayerNorm(nn.Module):
    """LayerNorm computed in float32, optionally without learned scale and shift."""

    affine: bool
    eps: float
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):  # [b, s, d]
        x32 = x.astype(jnp.float32)  # [b, s, d]
        mean = x32.mean(-1, keepdims=True)  # [b, s, 1]
        var = jnp.square(x32 - mean).mean(-1, keepdims=True)  # [b, s, 1]
        y = (x32 - mean) * jax.lax.rsqrt(var + self.eps)  # [b, s, d]
        if self.affine:
            d = x.shape[-1]
            y = y * self.param("weight", nn.initializers.ones, (d,), self.param_dtype).astype(jnp.float32)
            y = y + self.param("bias", nn.initializers.zeros, (d,), self.param_dtype).astype(jnp.float32)
        return y.astype(x.dtype)


def layer_norm(config: OPTConfig, param_dtype, name: str) -> LayerNorm:
    """The LayerNorm OPT uses everywhere, as the config specifies it."""
    return LayerNorm(config.layer_norm_elementwise_affine, config.layer_norm_eps, param_dtype, name=name)


def causal_attention(q, key, value, token_mask, kind: str = "auto",
                     query_block: int = 128):  # [b, q, h, k], [b, t, h, k], [b, t, h, k], [b, t]
    """Softmax attention of each query over the real keys at or before it: [batch, seq, heads, head_dim].

    `kind` (static, `OPTConfig.attention`): "fused" is `jax.nn.dot_product_attention`, which an
    accelerator's fused kernels implement; "blocked" runs one (batch x head) row at a time, its queries
    in blocks of `query_block` positions, each block against only the keys up to its end: about half
    the work of the full causal matrix (BENCHMARKS.md); "auto" is blocked on the CPU, fused elsewhere.

    The blocked kind masks padded keys inside the score product: each query gains a coordinate 1 and
    each key one of 0 (real) or the dtype's most negative value (padding, the value HF's additive mask
    adds), so a real key's score is q.k + 0 and only the block on the diagonal needs a causal mask.
    """
    if kind == "auto":
        kind = "blocked" if jax.default_backend() == "cpu" else "fused"
    if kind == "fused":
        return jax.nn.dot_product_attention(q, key, value, mask=token_mask[:, None, None, :], scale=1.0,
                                            is_causal=True)
    b, s, h, k = q.shape
    padding = jnp.where(token_mask, 0, jnp.finfo(key.dtype).min).astype(key.dtype)  # [b, t]
    q = jnp.concatenate([q, jnp.ones((b, s, h, 1), q.dtype)], axis=-1)  # [b, q, h, k + 1]
    key = jnp.concatenate([key, jnp.broadcast_to(padding[:, :, None, None], (b, s, h, 1))],
                          axis=-1)  # [b, t, h, k + 1]
    rows = [jnp.transpose(t, (0, 2, 1, 3)).reshape(b * h, s, -1) for t in (q, key, value)]  # [b*h, s, ...]
    out = jax.lax.map(functools.partial(_blocked_row, query_block=query_block), rows)  # [b*h, s, k]
    return jnp.transpose(out.reshape(b, h, s, k), (0, 2, 1, 3))  # [b, s, h, k]


def _blocked_row(inputs, query_block: int):
    """Causal attention of one (batch, head) row, query block by query block: [seq, head_dim].

    A block's scores against the keys before its first query need no mask (padding is in them already);
    those against its own positions are masked causally. One softmax spans both parts, normalised last."""
    q, key, value = inputs  # [s, k + 1], [t, k + 1], [t, k]
    f32 = jnp.float32
    outputs = []
    for start in range(0, q.shape[0], query_block):
        stop = min(start + query_block, q.shape[0])
        block = q[start:stop]  # [q, k + 1]
        earlier = jnp.einsum("qk,tk->qt", block, key[:start], preferred_element_type=f32)  # [q, start]
        causal = jnp.arange(start, stop)[None, :] <= jnp.arange(start, stop)[:, None]  # [q, q]
        own = jnp.where(causal, jnp.einsum("qk,tk->qt", block, key[start:stop], preferred_element_type=f32),
                        _NEG)  # [q, q]
        peak = jnp.maximum(earlier.max(-1, keepdims=True, initial=_NEG), own.max(-1, keepdims=True))  # [q, 1]
        earlier, own = jnp.exp(earlier - peak), jnp.exp(own - peak)  # [q, start], [q, q]
        total = earlier.sum(-1, keepdims=True) + own.sum(-1, keepdims=True)  # [q, 1]
        mixed = (jnp.einsum("qt,tk->qk", earlier.astype(value.dtype), value[:start], preferred_element_type=f32)
                 + jnp.einsum("qt,tk->qk", own.astype(value.dtype), value[start:stop],
                              preferred_element_type=f32))  # [q, k]
        outputs.append((mixed / total).astype(value.dtype))  # [q, k]
    return jnp.concatenate(outputs, axis=0)  # [s, k]


class Attention(nn.Module):
    config: OPTConfig
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, token_mask):  # [b, s, d], [b, s]
        c = self.config
        h, k, d = c.num_attention_heads, c.head_dim, c.hidden_size
        bias = (h, k) if c.enable_bias else None

        def project(name):  # on a mesh (`opt_jax.sharding`): computed by token, then split by head
            y = Linear("bsd,hkd->bshk", (h, k, d), bias, self.param_dtype, name=name)(x)  # [b, s, h, k]
            return constrain(constrain(y, "data", "neurons", None, None), "data", None, "neurons", None)

        q = project("q_proj") * (k ** -0.5)  # [b, q, h, k]
        context = causal_attention(q, project("k_proj"), project("v_proj"), token_mask, c.attention,
                                   c.query_block)  # [b, q, h, k]
        # [b, q, h, k]: computed in q, k, v's split by head; without this XLA may split the query blocks by token
        # instead, which rounded differently from data parallelism (`opt_jax.sharding`, "Heads")
        context = constrain(context, "data", None, "neurons", None)
        context = constrain(context, "data", "neurons", None, None)  # [b, q, h, k]: back to split by token
        out_bias = (d,) if c.enable_bias else None
        out = Linear("bqhk,dhk->bqd", (d, h, k), out_bias, self.param_dtype, name="o_proj")(context)  # [b, q, d]
        return constrain(out, "data", "neurons", None)


class FFN(nn.Module):
    """fc1 -> ReLU (or an `edit` of it, given the model's `layer` index) -> fc2; also returns the fc1 output
    (the neuron fires where it is > 0, whatever the edit makes of it)."""

    config: OPTConfig
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, edit: EditFn | None = None, layer=0):  # [b, s, d]
        c = self.config
        f, d = c.ffn_dim, c.hidden_size
        pre = Linear("bsd,fd->bsf", (f, d), (f,) if c.enable_bias else None, self.param_dtype, name="fc1")(x)
        pre = constrain(pre, "data", "neurons", None)  # [b, s, f]: on a mesh, computed by token
        hidden = apply_edit(edit, pre, layer)  # [b, s, f]
        out = Linear("bsf,df->bsd", (d, f), (d,) if c.enable_bias else None, self.param_dtype, name="fc2")(hidden)
        out = constrain(out, "data", "neurons", None)  # [b, s, d]
        return out, constrain(pre, "data", None, "neurons")  # [b, s, d], [b, s, f] (on a mesh: split by neuron)


class DecoderLayer(nn.Module):
    """One OPT decoder layer, pre-LN or post-LN; returns the new hidden state and which FFN neurons fired
    (with `with_fc1`, also the fc1 output itself). `edit` and `layer`: see `FFN`."""

    config: OPTConfig
    param_dtype: Any = jnp.float32
    with_fc1: bool = False

    @nn.compact
    def __call__(self, x, token_mask, edit: EditFn | None = None, layer=0):  # [b, s, d], [b, s]
        c = self.config
        pre_ln = c.do_layer_norm_before
        attn_norm = layer_norm(c, self.param_dtype, "attn_norm")
        ffn_norm = layer_norm(c, self.param_dtype, "ffn_norm")

        x = constrain(x, "data", "neurons", None)  # [b, s, d]: on a mesh, split by token (`opt_jax.sharding`)
        attn_in = attn_norm(x) if pre_ln else x  # [b, s, d]
        x = x + Attention(c, self.param_dtype, name="attn")(attn_in, token_mask)  # [b, s, d]
        if not pre_ln:
            x = attn_norm(x)
        ffn_out, fc1 = FFN(c, self.param_dtype, name="ffn")(ffn_norm(x) if pre_ln else x, edit,
                                                      layer)  # [b, s, d], [b, s, f]
        x = x + ffn_out  # [b, s, d]
        if not pre_ln:
            x = ffn_norm(x)
        active = (fc1 > 0) & token_mask[:, :, None]  # [b, s, f]
        return (x, active, fc1) if self.with_fc1 else (x, active)


class Embed(nn.Module):
    """Token embeddings (through project_in where present) plus learned positions (offset 2), if the config has them."""

    config: OPTConfig
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, input_ids, token_mask):  # [b, s], [b, s]
        c = self.config
        init = nn.initializers.normal(0.02)
        tokens = self.param("tokens", init, (c.vocab_size, c.word_embed_proj_dim), self.param_dtype)
        x = jnp.take(tokens, input_ids, axis=0)  # [b, s, e]
        if c.has_projections:
            x = Linear("bse,de->bsd", (c.hidden_size, c.word_embed_proj_dim), None, self.param_dtype,
                       name="project_in")(x)  # [b, s, d]
        if not c.positional_embeddings:
            return x  # [b, s, d]
        positions = self.param("positions", init, (c.max_position_embeddings + 2, c.hidden_size),
                               self.param_dtype)
        mask = token_mask.astype(jnp.int32)  # [b, s]
        position_ids = jnp.cumsum(mask, axis=1) * mask - 1 + 2  # [b, s]
        return x + jnp.take(positions, position_ids, axis=0).astype(x.dtype)  # [b, s, d]


class Head(nn.Module):
    """Final LayerNorm (pre-LN models), project_out (350m-style), logits tied to the token embeddings."""

    config: OPTConfig
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, embedding):  # [b, s, d], [v, e]
        c = self.config
        if c.has_final_layer_norm:
            x = layer_norm(c, self.param_dtype, "final_norm")(x)
        if c.has_projections:
            x = Linear("bsd,ed->bse", (c.word_embed_proj_dim, c.hidden_size), None, self.param_dtype,
                       name="project_out")(x)  # [b, s, e]
        return jnp.einsum("bse,ve->bsv", x, embedding.astype(x.dtype),
                          preferred_element_type=jnp.float32)  # [b, s, v]


# Pure functions over parameter trees {"embed": ..., "layers": (stacked on axis 0), "head": ...}.

def embed(config: OPTConfig, params: Params, input_ids, token_mask):
    """Hidden states entering layer 0: [batch, seq, hidden]."""
    return Embed(config).apply({"params": params["embed"]}, input_ids, token_mask)


def decoder_layer(config: OPTConfig, layer_params: Params, x, token_mask, with_fc1: bool = False,
                  edit: EditFn | None = None, layer=0):
    """Apply one decoder layer: (hidden [batch, seq, hidden], active bool [batch, seq, ffn], False at padding),
    plus with `with_fc1` the fc1 output [batch, seq, ffn] in the compute dtype (before the ReLU; not masked).
    With `edit`, fc2 reads `edit(fc1, layer)` (`layer`: this layer's index in the model)."""
    return DecoderLayer(config, with_fc1=with_fc1).apply({"params": layer_params}, x, token_mask, edit, layer)


def decoder_layers(config: OPTConfig, stacked_params: Params, x, token_mask, probe, state, with_fc1: bool = False,
                   edit: EditFn | None = None, first_layer=0):
    """Scan the stacked layers (leading axis) over x, threading `state` through a probe; returns (hidden, state).

    After layer i, `state = probe(active [batch, seq, ffn], i, state)`, or with `with_fc1`
    `probe(active, i, state, fc1 [batch, seq, ffn])`. The state is carried through the scan, so a
    probe that updates slices of it (`state.at[i].set(...)`) works in place: `forward`'s probe
    writes the packed masks, a statistics probe adds counts and keeps example activations.
    With `edit`, layer i's fc2 reads `edit(fc1, first_layer + i)`: `first_layer` is the model index of the
    stack's first layer (a streamed group's start).
    """

    def step(carry, layer_inputs):
        h, state = carry
        layer_params, index = layer_inputs
        layer_params = gathered(layer_params)  # on a mesh: this layer's weights whole on every device
        h, active, *fc1 = decoder_layer(config, layer_params, h, token_mask, with_fc1, edit, first_layer + index)
        return (h, probe(active, index, state, *fc1)), None

    num_layers = jax.tree.leaves(stacked_params)[0].shape[0]
    (x, state), _ = jax.lax.scan(step, (x, state), (stacked_params, jnp.arange(num_layers)))
    return x, state


def _store_packed(active, index, masks):
    return masks.at[index].set(pack_masks(active))  # [l, b, s, f / 8]


def head(config: OPTConfig, params: Params, x):
    """Logits in float32: [batch, seq, vocab]."""
    return Head(config).apply({"params": params["head"]}, x, params["embed"]["tokens"])


def forward(config: OPTConfig, params: Params, input_ids, token_mask, edit: EditFn | None = None):
    """The whole model: (logits [batch, seq, vocab], masks [layers, batch, seq, ffn / 8]); with `edit`
    (`opt_jax.edit`), fc2 reads the edited activations (the masks stay those of fc1 > 0)."""
    token_mask = token_mask.astype(bool)
    x = embed(config, params, input_ids, token_mask)  # [b, s, d]
    b, s = input_ids.shape
    num_layers = jax.tree.leaves(params["layers"])[0].shape[0]
    masks = jnp.zeros((num_layers, b, s, config.mask_bytes), jnp.uint8)  # [l, b, s, f / 8]
    x, masks = decoder_layers(config, params["layers"], x, token_mask, _store_packed, masks,
                              edit=edit)  # [b, s, d]
    return head(config, params, x), masks


def init_params(config: OPTConfig, seed: int = 0, dtype=jnp.float32) -> Params:
    """Random parameters in HF's initialisation (normal 0.02 weights, zero biases, unit norms)."""
    keys = jax.random.split(jax.random.PRNGKey(seed), config.num_hidden_layers + 2)
    ids = jnp.zeros((1, 2), jnp.int32)  # [b, s]
    mask = jnp.ones((1, 2), bool)  # [b, s]
    x = jnp.zeros((1, 2, config.hidden_size), dtype)  # [b, s, d]
    emb = Embed(config, dtype).init(keys[0], ids, mask)["params"]
    layers = jax.vmap(lambda k: DecoderLayer(config, dtype).init(k, x, mask)["params"])(keys[2:])
    head_params = Head(config, dtype).init(keys[1], x, emb["tokens"]).get("params", {})
    return {"embed": emb, "layers": layers, "head": head_params}


def param_shapes(config: OPTConfig) -> dict[str, tuple[int, ...]]:
    """Every parameter's shape by its '/'-joined path (layers stacked on axis 0), without allocating."""
    shapes = jax.eval_shape(lambda: init_params(config))
    return {path: tuple(leaf.shape) for path, leaf in flatten(shapes).items()}


def flatten(tree: Params) -> dict[str, Any]:
    """{'a/b/c': leaf} from a nested dict."""
    flat = {}
    for keys, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        flat["/".join(k.key for k in keys)] = leaf
    return flat


def unflatten(flat: dict[str, Any]) -> Params:
    """The nested dict of `flatten`'s output."""
    tree: dict = {}
    for path, leaf in flat.items():
        node = tree
        *parents, last = path.split("/")
        for p in parents:
            node = node.setdefault(p, {})
        node[last] = leaf
    tree.setdefault("head", {})
    return tree
