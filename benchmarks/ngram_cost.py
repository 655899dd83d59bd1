"""What exact n-gram counting costs, and how much of it counting behind the next batches hides.

`ngram_cost` (`scripts/benchmark.py --ngram_cost`): resident collection without n-grams, with them counted in
the step loop (`background_ngrams=False`, as before) and counted in a background thread while the next batches
run, interleaved on the same batches. Each timed step runs `per_step` batches one `Runner.run` call each, as
collection's step loop makes them, and then waits for the device and the counting (`Runner.wait`), so that
the overlap of one batch's counting with the next batch's forward is inside the timed span.

`python -m benchmarks.ngram_cost --token_layers 0,1` runs `ngram_cost` with fewer token layers (less memory).
`candidate_pass` (`python -m benchmarks.ngram_cost --twins`): what `make run` does per shipped twin, the second
collection pass that counts n-grams of the first pass's candidate neurons, timed whole (a fresh store each
time) with the counting in the step loop and in the background, alternated.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import tempfile
import time
from typing import Callable

from benchmarks.cpu import Ours, _default_log, build_models, make_batches, time_interleaved
from opt_jax.config import OPTConfig


class _Sequential(Ours):
    """`Ours`, each of a step's batches its own `Runner.run` call, one `wait` (device and counting) per step."""

    def __init__(self, *args, per_step: int, background_ngrams: bool = True, **kwargs):
        super().__init__(*args, **kwargs)
        # Read at each run: the same runner counts in the step loop or behind it.
        self.runner.options = dataclasses.replace(self.runner.options, background_ngrams=background_ngrams)
        self.chunk = per_step

    def step(self, batches: list) -> float:
        start = time.perf_counter()
        for batch in batches:
            self.runner.run([batch])
        self.runner.wait()
        return time.perf_counter() - start


def ngram_cost(config: OPTConfig, seq_len: int = 512, batch_size: int = 8, batches: int = 6, warmup: int = 1,
               orders=(2, 3), per_step: int = 3, token_layers: tuple | None = None, workdir: str | None = None,
               seed: int = 0, log: Callable = _default_log) -> dict:
    """Tokens/s without n-grams, with them in the step loop and in the background (interleaved), and pairs held."""
    with tempfile.TemporaryDirectory(dir=workdir) as directory:
        models = build_models(config, directory, seed)
        data = make_batches(config, seq_len, batch_size, warmup + batches, seed)
        shape, common = (batch_size, seq_len), dict(per_step=per_step, token_layers=token_layers)
        variants = {"without_ngrams": _Sequential(models.converted_dir, config, shape, **common),
                    "ngrams_in_step_loop": _Sequential(models.converted_dir, config, shape, **common,
                                                       ngram_orders=tuple(orders), background_ngrams=False),
                    "ngrams_in_background": _Sequential(models.converted_dir, config, shape, **common,
                                                        ngram_orders=tuple(orders))}
        log(f"n-gram cost: seq {seq_len} x batch {batch_size}, {batches} timed batches ({per_step} per step), "
            f"orders {list(orders)}")
        result = time_interleaved(variants, data, warmup, log=log)
        tables = [variants[n].runner.ngrams for n in ("ngrams_in_step_loop", "ngrams_in_background")]
        same = all((a == b).all() for a, b in zip(tables[0].to_arrays().values(), tables[1].to_arrays().values()))
        pairs = tables[0].num_pairs()
        for v in variants.values():
            v.close()
    rates = {name: result[name]["tokens_per_s"] for name in variants}
    return {"seq_len": seq_len, "batch_size": batch_size, "orders": list(orders), "per_step": per_step,
            "token_layers": token_layers,
            "tokens_counted": (warmup + batches) * seq_len * batch_size,
            "without_ngrams_tok_s": rates["without_ngrams"], "with_ngrams_tok_s": rates["ngrams_in_step_loop"],
            "background_ngrams_tok_s": rates["ngrams_in_background"],
            "slowdown": rates["without_ngrams"] / rates["ngrams_in_step_loop"],
            "background_slowdown": rates["without_ngrams"] / rates["ngrams_in_background"],
            "background_speedup": rates["ngrams_in_background"] / rates["ngrams_in_step_loop"],
            "identical_tables": bool(same), "distinct_pairs": pairs, "pair_bytes": 16 * pairs}


def candidate_pass(out_dir: str, rounds: int = 2, max_tokens: int = 200_000, log: Callable = _default_log) -> list:
    """Seconds of each shipped twin's n-gram pass (as `analyses.study.run_study` runs it) with the counting in the
    step loop and in the background, alternated `rounds` times; the first pass is collected once beforehand."""
    from analyses.collection.collect import collect
    from opt_jax import shipped, stdlib_corpus

    corpus = [stdlib_corpus.write_jsonl(os.path.join(out_dir, "corpus", "stdlib.jsonl"))]
    flags = dict(seq_len=128, batch_size=16, max_tokens=max_tokens, full_length_only=True, verbose=False)
    rows = []
    for name in shipped.NAMES:
        model = shipped.path(name)
        first = collect(model, corpus, os.path.join(out_dir, name, "tokens"), **(flags | {"examples": 0}))
        for r in range(rounds):
            for background in (False, True) if r % 2 == 0 else (True, False):
                start = time.perf_counter()
                collect(model, corpus, os.path.join(out_dir, name, f"ngrams-{r}-{background}"),
                        ngram_orders=(2, 3), ngram_candidates_from=first, background_ngrams=background, **flags)
                seconds = time.perf_counter() - start
                log(f"{name} round {r + 1}/{rounds}, n-grams {'in the background' if background else 'in the step loop'}:"
                    f" {seconds:.1f} s")
                rows.append({"model": name, "round": r, "background_ngrams": background, "seconds": seconds})
    return rows


def main(argv=None) -> None:
    import jax

    jax.config.update("jax_platforms", "cpu")
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--twins", action="store_true", help="time the shipped twins' n-gram (candidate) pass")
    parser.add_argument("--rounds", type=int, default=2, help="--twins: rounds")
    parser.add_argument("--size", default="125m", help="otherwise: the shape of `ngram_cost`'s random model")
    parser.add_argument("--seq_len", type=int, default=512)
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--batches", type=int, default=3)
    parser.add_argument("--token_layers", help="layers with token statistics and n-grams (default: the first half)")
    parser.add_argument("--workdir")
    args = parser.parse_args(argv)
    if not args.twins:
        import opt_jax

        layers = tuple(int(t) for t in args.token_layers.split(",")) if args.token_layers else None
        print(json.dumps(ngram_cost(opt_jax.for_size(args.size), args.seq_len, args.batch_size, args.batches,
                                    token_layers=layers, workdir=args.workdir)))
        return
    with tempfile.TemporaryDirectory(dir=args.workdir) as directory:
        rows = candidate_pass(directory, args.rounds)
    for row in rows:
        print(json.dumps(row))
    print("| twin | n-grams in the step loop | in the background | ratio |\n|---|---|---|---|")
    for name in dict.fromkeys(r["model"] for r in rows):
        before = min(r["seconds"] for r in rows if r["model"] == name and not r["background_ngrams"])
        after = min(r["seconds"] for r in rows if r["model"] == name and r["background_ngrams"])
        print(f"| {name} | {before:.1f} s | {after:.1f} s | {before / after:.2f}x |")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
