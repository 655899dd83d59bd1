"""What the atlas's products with the weights cost: the update scores, numpy against jax, at any OPT size.

    python -m benchmarks.weight_products --size 125m                  # one layer's 3072 neurons, both paths
    python -m benchmarks.weight_products --size 66b --neurons 512     # two blocks at 66b's widths, projected

The update scores (`analyses.neurons.facts`): every alive neuron's update E @ fc2[:, n] over the vocabulary and its
top k promoted and suppressed tokens. The baseline is the numpy path the atlas used before (blocks of SCORE_BLOCK
neurons: `analyses.suppression.update_scores`, BLAS through einsum, then `suppression.lowest` at both ends on the
host); against it the jax path (`analyses.neurons.products.top_products`: the same blocks on jax's default device,
`jax.lax.top_k` there). Random float32 weights of the size's dimensions, the same for both; the two alternate,
`--repeats` rounds after one warm-up call of each (the jax one compiles the block's shape: timed apart). Each
round's seconds per neuron, times the model's neurons (ffn x layers, all alive), is the projected whole model.
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
    out = {"size": size, "device": str(jax.devices()[0]), "neurons": n, "block": SCORE_BLOCK, "vocab": config.vocab_size,
           "hidden": config.hidden_size, "model_neurons": total, "put_seconds": put, "first_block_seconds": first,
           "ids_agree": agree, "rounds": rounds}
    for path, seconds in rounds.items():
        median = statistics.median(seconds)
        out[path] = {"seconds": median, "per_neuron_ms": 1e3 * median / n, "projected_hours": median / n * total / 3600}
    out["numpy_over_jax"] = out["numpy"]["seconds"] / out["jax"]["seconds"]
    return out


def table(result: dict) -> str:
    """The result as a Markdown table."""
    lines = ["| path | seconds (median) | ms per neuron | x jax | projected whole model, hours |", "|---|---|---|---|---|"]
    for path in ("numpy", "jax"):
        r = result[path]
        lines.append(f"| {path} | {r['seconds']:.2f} | {r['per_neuron_ms']:.3f} | "
                     f"{r['seconds'] / result['jax']['seconds']:.2f} | {r['projected_hours']:.2f} |")
    lines.append(f"\n{result['neurons']} neurons of {result['size']} (vocab {result['vocab']}, hidden {result['hidden']}), "
                 f"blocks of {result['block']}, on {result['device']}; projected to {result['model_neurons']:,} neurons; "
                 f"E put on the device {result['put_seconds']:.2f} s, first block (compiling) "
                 f"{result['first_block_seconds']:.2f} s; the two paths' promoted ids agree on "
                 f"{result['ids_agree']:.4%}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="125m")
    parser.add_argument("--neurons", type=int, default=None, help="neurons scored (default: one layer's ffn)")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    result = measure(args.size, args.neurons, args.repeats)
    print(json.dumps(result))
    print(table(result))


if __name__ == "__main__":
    main()
