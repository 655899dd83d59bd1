"""The floor under any exact float32 forward on this machine: the work no implementation can skip, on the
fastest kernels at hand.

A forward that yields every layer's fc1 output must do, over every token, each layer's q, k, v, o and fc1
products, every layer's fc2 but the last (no statistic reads the last layer's output), and each layer's
causal attention. `Products` times those products with one of three kernels (numpy's BLAS, torch's as HF
calls them, XLA's as ours does) and `Attention` the causal attention with torch's fused SDPA or ours
(`opt_jax.model.causal_attention`), on the weights of the benchmark's model and inputs of its batch shape.
Each is a variant of `cpu.time_interleaved`, so they are timed round by round beside ours and the baseline.

The floor of a batch is the fastest products plus the fastest attention. Norms, embeddings, biases, residuals
and every counter are left out, so no implementation can take less, and (baseline time) / floor bounds how
far ahead of the baseline any implementation of the same statistics can be on this machine.
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np

from opt_jax.model import causal_attention

PRODUCTS = ("q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2")  # HF's names, in a layer's order
KERNELS = ("numpy", "torch", "xla")


def layer_weights(hf_model) -> list[dict[str, np.ndarray]]:
    """Each decoder layer's product weights as float32 numpy views of the torch model's ([out, in], no copy)."""
    layers = []
    for layer in hf_model.model.decoder.layers:
        modules = {"q_proj": layer.self_attn.q_proj, "k_proj": layer.self_attn.k_proj,
                   "v_proj": layer.self_attn.v_proj, "out_proj": layer.self_attn.out_proj,
                   "fc1": layer.fc1, "fc2": layer.fc2}
        layers.append({name: m.weight.detach().numpy() for name, m in modules.items()})
    return layers


def needed(num_layers: int) -> list[tuple[int, str]]:
    """(layer, product) of every product a forward to the last fc1 must do: all but the last layer's fc2."""
    return [(l, p) for l in range(num_layers) for p in PRODUCTS if (l, p) != (num_layers - 1, "fc2")]


def product_flops(weights: list[dict[str, np.ndarray]], tokens: int) -> int:
    """FLOPs of the needed products over `tokens` tokens (2 per weight per token)."""
    return 2 * tokens * sum(weights[l][p].size for l, p in needed(len(weights)))


class _Part:
    """A timed variant (`cpu.time_interleaved`): one `run` of the part per batch given."""

    chunk = 1

    def run(self) -> list:
        raise NotImplementedError

    def step(self, batches: list) -> float:
        start = time.perf_counter()
        for _ in batches:
            self.run()
        return time.perf_counter() - start


class Products(_Part):
    """The needed products of one batch with one kernel: x [t, hidden] into q, k, v, fc1; a context [t, hidden]
    into o; a ReLU output [t, ffn] into fc2 (random inputs of the batch's shape; each output kept)."""

    def __init__(self, kernel: str, weights: list[dict[str, np.ndarray]], tokens: int, seed: int = 0):
        if kernel not in KERNELS:
            raise ValueError(f"unknown kernel {kernel!r}; known: {KERNELS}")
        self.kernel, self.weights = kernel, weights
        rng = np.random.default_rng(seed)
        hidden, ffn = weights[0]["fc1"].shape[1], weights[0]["fc1"].shape[0]
        x = rng.standard_normal((tokens, hidden), dtype=np.float32)  # [t, d]
        h = np.maximum(rng.standard_normal((tokens, ffn), dtype=np.float32), 0)  # [t, f]
        self.inputs = {p: (h if p == "fc2" else x) for p in PRODUCTS}  # out_proj's context: any [t, d]
        self.info = {"kernel": kernel, "flops": product_flops(weights, tokens)}
        if kernel == "torch":
            import torch

            self.inputs = {p: torch.from_numpy(a) for p, a in self.inputs.items()}
            self.outputs = {p: torch.empty(tokens, weights[0][p].shape[0]) for p in PRODUCTS}
        elif kernel == "numpy":
            self.outputs = {p: np.empty((tokens, weights[0][p].shape[0]), np.float32) for p in PRODUCTS}
        else:
            self.device_weights = [{p: jnp.asarray(w) for p, w in layer.items()} for layer in weights]
            self.inputs = {p: jnp.asarray(a) for p, a in self.inputs.items()}
            self.product = jax.jit(lambda a, w: jnp.einsum("td,od->to", a, w))  # [t, out]

    def run(self) -> list:
        """Every needed product once: the outputs (numpy and torch: written into kept buffers)."""
        if self.kernel == "xla":
            outs = [self.product(self.inputs[p], self.device_weights[l][p]) for l, p in needed(len(self.weights))]
            return jax.block_until_ready(outs)
        if self.kernel == "numpy":
            for l, p in needed(len(self.weights)):
                np.matmul(self.inputs[p], self.weights[l][p].T, out=self.outputs[p])  # [t, out]
            return [self.outputs[p] for p in PRODUCTS]
        import torch

        with torch.inference_mode():
            for l, p in needed(len(self.weights)):
                torch.matmul(self.inputs[p], torch.from_numpy(self.weights[l][p]).T, out=self.outputs[p])  # [t, out]
        return [self.outputs[p] for p in PRODUCTS]

    def close(self) -> None:
        self.inputs = self.outputs = self.device_weights = None


class Attention(_Part):
    """Every layer's causal attention over one batch (random q, k, v [batch, seq, heads, head_dim], no
    padding; q taken as scaled already, as ours takes it): torch's fused `scaled_dot_product_attention` once per
    layer, as HF calls it, or ours in one jitted scan over the layers, as our step runs it. The layers are
    chained, each one's output the next one's queries, so that neither can skip or reorder one."""

    def __init__(self, kernel: str, num_layers: int, batch: int, seq_len: int, heads: int, head_dim: int,
                 seed: int = 0):
        if kernel not in ("torch", "xla"):
            raise ValueError(f"unknown attention kernel {kernel!r}; known: torch, xla")
        self.kernel, self.num_layers = kernel, num_layers
        rng = np.random.default_rng(seed)
        q, k, v = (rng.standard_normal((batch, seq_len, heads, head_dim), dtype=np.float32) for _ in range(3))
        self.info = {"kernel": kernel}
        if kernel == "torch":
            import torch

            self.qkv = [torch.from_numpy(a).transpose(1, 2).contiguous() for a in (q, k, v)]  # [b, h, s, k] each
        else:
            self.qkv = [jnp.asarray(a) for a in (q, k, v)]  # [b, s, h, k] each
            mask = jnp.ones((batch, seq_len), bool)  # [b, s]

            def layers(q, k, v):  # [l, b, s, h, k]
                def layer(x, _):
                    y = causal_attention(x, k, v, mask)  # [b, s, h, k]
                    return y, y

                return jax.lax.scan(layer, q, None, length=num_layers)[1]

            self.attend = jax.jit(layers)

    def run(self):
        """Every layer's attention once: each layer's output, a list of [b, h, s, k] (torch) or one [l, b, s, h, k]
        array (ours: as the scan returns it; splitting it into layers would add copies to the timing)."""
        if self.kernel == "xla":
            return jax.block_until_ready(self.attend(*self.qkv))
        import torch

        q, k, v = self.qkv
        outputs = []
        with torch.inference_mode():
            for _ in range(self.num_layers):
                q = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True, scale=1.0)  # [b, h, s, k]
                outputs.append(q)
        return outputs

    def close(self) -> None:
        self.qkv = None


def variants(hf_model, batch: int, seq_len: int, seed: int = 0) -> dict:
    """The floor's timed parts for one batch shape: {'floor_products_<kernel>', 'floor_attention_<kernel>'}."""
    config = hf_model.config
    weights = layer_weights(hf_model)
    heads = config.num_attention_heads
    out = {f"floor_products_{k}": Products(k, weights, batch * seq_len, seed) for k in KERNELS}
    for k in ("torch", "xla"):
        out[f"floor_attention_{k}"] = Attention(k, len(weights), batch, seq_len, heads, config.hidden_size // heads,
                                                seed)
    return out


def floor_seconds(seconds: dict[str, float]) -> dict:
    """The floor of a batch from each part's seconds per batch: the fastest products plus the fastest attention,
    with which kernels those were."""
    products = min((k for k in seconds if k.startswith("floor_products_")), key=seconds.get)
    attention = min((k for k in seconds if k.startswith("floor_attention_")), key=seconds.get)
    return {"floor_s": seconds[products] + seconds[attention],
            "floor_products": products.rsplit("_", 1)[1], "floor_attention": attention.rsplit("_", 1)[1]}
