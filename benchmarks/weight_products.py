"""What the atlas's products with the weights cost: update scores and related neurons, numpy against jax.

    python -m benchmarks.weight_products --size 125m                  # one layer's 3072 neurons, both paths
    python -m benchmarks.weight_products --size 66b --neurons 512     # two blocks at 66b's widths, projected
    python -m benchmarks.weight_products --related --size 125m        # related neurons of one layer
    python -m benchmarks.weight_products --related --size 66b --neurons 256 --layers 2

The update scores (`analyses.neurons.facts`): every alive neuron's update E @ fc2[:, n] over the vocabulary and its
top k promoted and suppressed tokens. The baseline is the numpy path the atlas used before (blocks of SCORE_BLOCK
neurons: `analyses.suppression.update_scores`, BLAS through einsum, then `suppression.lowest` at both ends on the
host); against it the jax path (`analyses.neurons.products.top_products`: the same blocks on jax's default device,
`jax.lax.top_k` there). Random float32 weights of the size's dimensions, the same for both; the two alternate,
`--repeats` rounds after one warm-up call of each (the jax one compiles the block's shape: timed apart). Each
round's seconds per neuron, times the model's neurons (ffn x layers, all alive), is the projected whole model.

`--related`: the related neurons through the weights (`analyses.neurons.related`) of one layer's neurons against
`--layers` neighbouring layers (default 4: two downstream, two upstream; their fc1 rows, or fc2 columns, are alike
in shape), k = 10 each way. Baseline: the same in numpy (each neighbour's rows normalised once, then blocks of
query cosines through BLAS, `suppression.lowest` at both ends, the layers' lists merged as `related.merge` does);
against it `products.top_products` with `cosine=True` and the same merge. Projected: seconds per (query, neighbour
layer) pair times the model's pairs (each layer's ffn neurons times its neighbours within 2, both ways).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np

K = 10  # the atlas's top_k


def weights(size: str, neurons: int | None, seed: int = 0):
    """(config, E [v, e], project_out [e, d] or None, fc2 columns [d, neurons]): random float32 of `size`'s dims."""
    from opt_jax.config import for_size

    config = for_size(size)
    rng = np.random.default_rng(seed)
    embedding = rng.standard_normal((config.vocab_size, config.word_embed_proj_dim), np.float32)  # [v, e]
    project_out = (rng.standard_normal((config.word_embed_proj_dim, config.hidden_size), np.float32)
                   if config.has_projections else None)  # [e, d]
    fc2 = rng.standard_normal((config.hidden_size, neurons or config.ffn_dim), np.float32)  # [d, n]
    return config, embedding, project_out, fc2


def numpy_scores(embedding, project_out, fc2, block: int) -> np.ndarray:
    """The host path: promoted and suppressed ids [n, K] each, block by block."""
    from analyses import suppression

    out = []
    for start in range(0, fc2.shape[1], block):
        scores = suppression.update_scores(embedding, project_out, fc2[:, start:start + block])  # [b, v]
        out.append((suppression.lowest(-scores, K), suppression.lowest(scores, K)))
    return np.concatenate([o[0] for o in out])


def jax_scores(matrix, fc2, block: int) -> np.ndarray:
    """The device path: the same ids, top k on the device."""
    from analyses.neurons import products

    return products.top_products(matrix, fc2, K, block=block).high_ids


def measure(size: str, neurons: int | None = None, repeats: int = 3) -> dict:
    """Seconds of both paths over the same neurons, alternated; per neuron and projected to the whole model."""
    import jax

    from analyses.neurons import products
    from analyses.neurons.facts import SCORE_BLOCK

    config, embedding, project_out, fc2 = weights(size, neurons)
    start = time.perf_counter()
    matrix = products.on_device(embedding, project_out)
    jax.block_until_ready(matrix.rows)
    put = time.perf_counter() - start
    warm = fc2[:, :SCORE_BLOCK]
    start = time.perf_counter()
    jax_scores(matrix, warm, SCORE_BLOCK)
    first = time.perf_counter() - start  # compiles the block's shape
    numpy_scores(embedding, project_out, warm, SCORE_BLOCK)
    rounds = {"numpy": [], "jax": []}
    agree = None
    for _ in range(repeats):
        start = time.perf_counter()
        host = numpy_scores(embedding, project_out, fc2, SCORE_BLOCK)
        rounds["numpy"].append(time.perf_counter() - start)
        start = time.perf_counter()
        device = jax_scores(matrix, fc2, SCORE_BLOCK)
        rounds["jax"].append(time.perf_counter() - start)
        agree = float((host == device).mean())
    n = fc2.shape[1]
    total = config.ffn_dim * config.num_hidden_layers
    out = {"what": "update scores", "unit": "neuron", "size": size, "device": str(jax.devices()[0]), "neurons": n,
           "block": SCORE_BLOCK, "rows": config.vocab_size, "hidden": config.hidden_size, "model_neurons": total, "put_seconds": put, "first_block_seconds": first,
           "ids_agree": agree, "rounds": rounds}
    for path, seconds in rounds.items():
        median = statistics.median(seconds)
        out[path] = {"seconds": median, "per_neuron_ms": 1e3 * median / n, "projected_hours": median / n * total / 3600}
    out["numpy_over_jax"] = out["numpy"]["seconds"] / out["jax"]["seconds"]
    return out


def table(result: dict) -> str:
    """The result as a Markdown table."""
    unit = result["unit"]
    lines = [f"| path | seconds (median) | ms per {unit} | x jax | projected whole model, hours |", "|---|---|---|---|---|"]
    for path in ("numpy", "jax"):
        r = result[path]
        lines.append(f"| {path} | {r['seconds']:.2f} | {r['per_neuron_ms']:.3f} | "
                     f"{r['seconds'] / result['jax']['seconds']:.2f} | {r['projected_hours']:.2f} |")
    lines.append(f"\n{result['what']}: {result['neurons']} neurons of {result['size']} against {result['rows']} rows "
                 f"(hidden {result['hidden']}), blocks of {result['block']}, on {result['device']}; projected to "
                 f"{result['model_neurons']:,} {unit}s; put on the device {result['put_seconds']:.2f} s, first block "
                 f"(compiling) {result['first_block_seconds']:.2f} s; the two paths' first lists agree on "
                 f"{result['ids_agree']:.4%} of ids")
    return "\n".join(lines)


def related_weights(size: str, neurons: int | None, layers: int, seed: int = 0):
    """(config, queries [d, neurons], neighbours: `layers` matrices [ffn, d]): random float32 of `size`'s dims."""
    from opt_jax.config import for_size

    config = for_size(size)
    rng = np.random.default_rng(seed)
    queries = rng.standard_normal((config.hidden_size, neurons or config.ffn_dim), np.float32)  # [d, q]
    neighbours = [rng.standard_normal((config.ffn_dim, config.hidden_size), np.float32) for _ in range(layers)]
    return config, queries, neighbours


def numpy_related(queries, neighbours, block: int):
    """The host path: per neighbour, unit rows once, then block cosines and both ends; merged over neighbours."""
    from analyses import suppression
    from analyses.neurons import related
    from analyses.neurons.products import Top

    units = [m / np.linalg.norm(m, axis=1, keepdims=True) for m in neighbours]  # [r, d] each
    tops = []
    for layer, rows in enumerate(units):
        parts = []
        for start in range(0, queries.shape[1], block):
            q = queries[:, start:start + block].T  # [b, d]
            cos = (q / np.linalg.norm(q, axis=1, keepdims=True)) @ rows.T  # [b, r]
            high, low = suppression.lowest(-cos, K), suppression.lowest(cos, K)
            parts.append((high, np.take_along_axis(cos, high, 1), low, np.take_along_axis(cos, low, 1)))
        tops.append((layer, Top(*(np.concatenate([p[i] for p in parts]) for i in range(4)))))
    return related.merge(tops, K, queries.shape[1], True).neurons


def jax_related(matrices, queries, block: int):
    """The device path: the same lists, top k on the device."""
    from analyses.neurons import products, related

    tops = [(layer, products.top_products(m, queries, K, block=block)) for layer, m in enumerate(matrices)]
    return related.merge(tops, K, queries.shape[1], True).neurons


def model_pairs(config, depth: int = 2) -> int:
    """(query neuron, neighbour layer) pairs of a whole model: each layer's neurons times its layers within depth,
    downstream and upstream."""
    layers = config.num_hidden_layers
    return 2 * config.ffn_dim * sum(min(depth, layers - 1 - l) for l in range(layers))


def measure_related(size: str, neurons: int | None = None, layers: int = 4, repeats: int = 3) -> dict:
    """Seconds of both related paths over the same queries and neighbours, alternated; projected to the model."""
    import jax

    from analyses.neurons import products
    from analyses.neurons.facts import SCORE_BLOCK

    config, queries, neighbours = related_weights(size, neurons, layers)
    start = time.perf_counter()
    matrices = [products.on_device(m, cosine=True) for m in neighbours]
    jax.block_until_ready([m.inverse_norms for m in matrices])
    put = time.perf_counter() - start
    start = time.perf_counter()
    jax_related(matrices, queries[:, :SCORE_BLOCK], SCORE_BLOCK)
    first = time.perf_counter() - start
    numpy_related(queries[:, :SCORE_BLOCK], neighbours, SCORE_BLOCK)
    rounds = {"numpy": [], "jax": []}
    agree = None
    for _ in range(repeats):
        start = time.perf_counter()
        host = numpy_related(queries, neighbours, SCORE_BLOCK)
        rounds["numpy"].append(time.perf_counter() - start)
        start = time.perf_counter()
        device = jax_related(matrices, queries, SCORE_BLOCK)
        rounds["jax"].append(time.perf_counter() - start)
        agree = float((host == device).mean())
    n = queries.shape[1]
    pairs = model_pairs(config)
    out = {"what": f"related neurons, {layers} neighbouring layers", "unit": "pair", "size": size,
           "device": str(jax.devices()[0]), "neurons": n, "block": SCORE_BLOCK, "rows": config.ffn_dim,
           "hidden": config.hidden_size, "neighbours": layers, "model_neurons": pairs, "put_seconds": put,
           "first_block_seconds": first, "ids_agree": agree, "rounds": rounds}
    for path, seconds in rounds.items():
        median = statistics.median(seconds)
        out[path] = {"seconds": median, "per_neuron_ms": 1e3 * median / (n * layers),
                     "projected_hours": median / (n * layers) * pairs / 3600}
    out["numpy_over_jax"] = out["numpy"]["seconds"] / out["jax"]["seconds"]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="125m")
    parser.add_argument("--neurons", type=int, default=None, help="neurons scored (default: one layer's ffn)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--related", action="store_true", help="time the related neurons instead")
    parser.add_argument("--layers", type=int, default=4, help="--related: neighbouring layers scored against")
    args = parser.parse_args()
    result = (measure_related(args.size, args.neurons, args.layers, args.repeats) if args.related
              else measure(args.size, args.neurons, args.repeats))
    print(json.dumps(result))
    print(table(result))


if __name__ == "__main__":
    main()
