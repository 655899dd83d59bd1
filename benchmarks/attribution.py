"""How good and how costly the attribution is, on the shipped twin over the standard library's text.

Quality: for a seeded sample of alive neurons (fired at least once on these windows), the attribution's
estimate against the exact change of the mean loss when zero-ablating each neuron alone (`Model.forward`
with `Edit.zero`, `opt_jax.loss`), over the same windows; their Spearman and Pearson correlations.
Cost: one attribution pass (forward + backward of every batch, `Attributor.run`) against one plain forward pass
with its loss over the same batches (`Model.forward` + `mean_next_token_nll`), interleaved round by round after
a warm-up, medians reported.

  python -m benchmarks.attribution [--model stdlib-4l] [--seq_len 128] [--batch_size 8] [--max_tokens 32768]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import jax
import numpy as np
from scipy.stats import pearsonr, spearmanr

import opt_jax
from analyses.interventions.attribution import Attributor
from opt_jax import shipped, stdlib_corpus
from opt_jax.corpus import limited_batches, model_corpus
from opt_jax.edit import Edit
from opt_jax.loss import mean_next_token_nll


def mean_loss(model, batches, edit=None) -> float:
    """The token-weighted mean next-token loss over the batches."""
    sums = [mean_next_token_nll(model.forward(ids, mask, edit=edit).logits, ids, mask) for ids, mask in batches]
    return sum(float(m) * float(c) for m, c in sums) / sum(float(c) for _, c in sums)


def alive_neurons(model, batches) -> np.ndarray:
    """bool [layers, ffn]: the neurons that fired on at least one real token of the batches."""
    fired = np.zeros((model.config.num_hidden_layers, model.config.ffn_dim), bool)
    for ids, mask in batches:
        masks = opt_jax.unpack_masks(np.asarray(model.forward(ids, mask).masks), model.config.ffn_dim)  # [l, b, s, f]
        fired |= masks.any(axis=(1, 2))
    return fired


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="stdlib-4l")
    parser.add_argument("--seq_len", type=int, default=128)
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--max_tokens", type=int, default=32768)
    parser.add_argument("--neurons", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    path = shipped.path(args.model)
    corpus_file = stdlib_corpus.write_jsonl(os.path.join(tempfile.gettempdir(), "opt_jax-stdlib.jsonl"))
    model = opt_jax.load(path, "float32")
    corpus = model_corpus(path, [corpus_file], args.seq_len)
    batches = list(limited_batches(corpus, args.batch_size, model.config.pad_token_id, args.max_tokens))
    tokens = sum(int(m.sum()) for _, m in batches)
    print(f"{args.model} (float32) over {len(batches)} batches of {args.batch_size} x {args.seq_len} "
          f"({tokens:,} tokens) of the standard library ({stdlib_corpus.describe()['python']}); "
          f"{jax.default_backend()}, {os.cpu_count()} cores")

    sums = Attributor.of_params(model.config, model.params, args.batch_size, args.seq_len).run(batches)
    alive = alive_neurons(model, batches)
    candidates = np.argwhere(alive)  # [k, 2]
    rng = np.random.default_rng(args.seed)
    sample = candidates[rng.choice(len(candidates), min(args.neurons, len(candidates)), replace=False)]
    base = mean_loss(model, batches)
    identity = Edit.identity(model.config)
    exact = np.array([mean_loss(model, batches, identity.zero([tuple(p)])) - base for p in sample])
    estimate = sums.effect[sample[:, 0], sample[:, 1]]
    print(f"base loss {base:.4f} nats (attribution's {sums.base_loss:.4f}); alive {alive.sum()} of {alive.size}")
    print(f"{len(sample)} sampled alive neurons: Spearman {spearmanr(estimate, exact).statistic:.3f}, "
          f"Pearson {pearsonr(estimate, exact).statistic:.3f}; median |exact| {np.median(np.abs(exact)):.2e}, "
          f"median |estimate| {np.median(np.abs(estimate)):.2e} nats/token; same sign "
          f"{np.mean(np.sign(estimate) == np.sign(exact)):.0%}")

    def attribution_pass():
        return Attributor.of_params(model.config, model.params, args.batch_size, args.seq_len).run(batches).grad

    def forward_pass():
        return [mean_next_token_nll(model.forward(ids, mask).logits, ids, mask)[0] for ids, mask in batches]

    times = {"attribution": [], "forward": []}
    for name, run in (("attribution", attribution_pass), ("forward", forward_pass)):
        jax.block_until_ready(run())  # compiled and warm
    for _ in range(args.rounds):
        for name, run in (("attribution", attribution_pass), ("forward", forward_pass)):
            start = time.perf_counter()
            jax.block_until_ready(run())
            times[name].append(time.perf_counter() - start)
    a, f = (float(np.median(times[k])) for k in ("attribution", "forward"))
    print(f"one pass over the windows (median of {args.rounds}): attribution {a:.2f} s ({tokens / a:,.0f} tokens/s), "
          f"plain forward + loss {f:.2f} s ({tokens / f:,.0f} tokens/s); attribution / forward {a / f:.2f}x")


if __name__ == "__main__":
    main()
