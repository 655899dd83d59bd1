"""What the example sets cost: resident collection with `--examples 16` and with none, interleaved on the same
batches (`scripts/benchmark.py --examples_cost`); one layer's update with the sets as a long run has them
(`update_cost`); the update over a run with commits, its sets kept across them or emptied at each (`commit_cost`,
`--commit_every`); and the whole collection step late in a run (`late_cost`, `--whole`)."""

from __future__ import annotations

from typing import Callable

from benchmarks.cpu import _default_log, flag_cost
from opt_jax.config import OPTConfig


def examples_cost(config: OPTConfig, seq_lens=(512, 2048), tokens_per_batch: int = 4096, batches: int = 3,
                  warmup: int = 1, examples: int = 16, workdir: str | None = None, seed: int = 0,
                  log: Callable = _default_log) -> list[dict]:
    """Per seq_len: tokens/s of resident collection without and with `examples` per neuron and set."""
    rows = []
    for seq_len, batch_size, result in flag_cost(config, dict(examples=0), dict(examples=examples),
                                                 f"examples cost (k = {examples})", seq_lens, tokens_per_batch,
                                                 batches, warmup, workdir, seed, log):
        without, with_ = result["without"]["tokens_per_s"], result["with"]["tokens_per_s"]
        rows.append({"seq_len": seq_len, "batch_size": batch_size, "examples": examples,
                     "timed_batches": batches, "without_examples_tok_s": without, "with_examples_tok_s": with_,
                     "slowdown": without / with_})
    return rows


def _random_layer(ffn: int, seq_len: int, batch: int, seed: int):
    """A layer's batches as the one-layer benchmarks draw them: (counted bool [b, s], BOS left out; fc1(), a fresh
    random fc1 output [b, s, n] per call, each neuron firing on its own share of tokens, 1-70%)."""
    import jax.numpy as jnp
    import numpy as np

    rng = np.random.default_rng(seed)
    shift = rng.uniform(-2.3, 0.5, ffn).astype(np.float32)  # [n]: a neuron's share of tokens that fire
    counted = jnp.ones((batch, seq_len), bool).at[:, 0].set(False)  # [b, s]

    def fc1():  # [b, s, n], on the device before it is returned: the copy is asynchronous, and the first step to
        # read a batch still in flight waited for it (+30-45 ms of a ~25 ms update at 125m widths, 512 x 8)
        return jnp.asarray(rng.standard_normal((batch, seq_len, ffn), dtype=np.float32) + shift).block_until_ready()

    return counted, fc1


def update_cost(seen=(0, 16_384, 1_048_576), ffn: int = 3072, seq_len: int = 512, batch: int = 8, k: int = 16,
                rounds: int = 5, seed: int = 0, log: Callable = _default_log) -> list[dict]:
    """Milliseconds of one layer's `examples.update` (top and random sets) on a random fc1 output [batch, seq_len,
    ffn], gated by threshold (as collection runs it) and merging every neuron (`gated=False`, the same sets), the two
    interleaved on the same batches, with the sets as a run has them after each count of tokens in `seen`; and the
    merge the gated update ran per set and round (`examples.merge_tier`).

    Each neuron fires on its own share of tokens (1-70%). The sets are brought to a count by merging random batches
    (windows numbered on); each timed round then merges one more batch from the same state with both variants and
    counts the neurons whose sets it changed (the gated path merges only those when they are few)."""
    import time

    import jax
    import jax.numpy as jnp
    import numpy as np

    from analyses.collection import examples as ex

    counted, fc1 = _random_layer(ffn, seq_len, batch, seed)

    def step(gated):
        return jax.jit(lambda sets, x, w: ex.update(sets, 0, jnp.int32(3), x, counted, w, k, gated, return_tiers=True))

    steps = {gated: step(gated) for gated in (True, False)}
    tokens = batch * seq_len
    sets, windows = ex.zero_sets(1, ffn, k), 0
    rows = []
    for count in seen:
        while windows * seq_len < count:
            sets, windows = steps[True](sets, fc1(), jnp.int32(windows))[0], windows + batch
        times, changed, tiers = {"gated": [], "every": []}, [], []
        for r in range(rounds + 1):  # round 0 compiles
            x = fc1()
            order = (True, False) if r % 2 else (False, True)
            for gated in order:
                start = time.perf_counter()
                out, tier = jax.block_until_ready(steps[gated](sets, x, jnp.int32(windows)))
                if r:
                    times["gated" if gated else "every"].append(time.perf_counter() - start)
                if gated:
                    new = out
                    tiers.append("/".join(ex.TIERS[int(tier[kind])] for kind in ex.KINDS))
            changed.append(int(sum(np.any(np.asarray(new[kind]["window"]) != np.asarray(sets[kind]["window"]), -1).sum()
                                   for kind in ex.KINDS)))
            sets, windows = new, windows + batch
        row = {"tokens_seen": count, "ffn": ffn, "tokens_per_batch": tokens, "k": k,
               "neurons_changed_top_plus_random": changed[1:], "merges_top_random": tiers[1:],
               "gated_ms": float(np.median(times["gated"])) * 1000, "every_ms": float(np.median(times["every"])) * 1000}
        row["speedup"] = row["every_ms"] / row["gated_ms"]
        log(f"after {count} tokens: gated {row['gated_ms']:.1f} ms, every neuron {row['every_ms']:.1f} ms, "
            f"{row['speedup']:.2f}x; neurons changed {changed[1:]}; merges (top/random) {tiers[1:]}")
        rows.append(row)
    return rows


def commit_cost(batches: int = 200, commit_every: int = 48, ffn: int = 3072, seq_len: int = 512, batch: int = 8,
                k: int = 16, seed: int = 0, log: Callable = _default_log) -> dict:
    """Milliseconds of one layer's gated `examples.update` (top and random sets) over a run of `batches` batches
    with a commit every `commit_every`: the sets kept across commits (a run's since 2026-12-07) against emptied at
    each commit (before: every commit handed the run fresh sets), the two interleaved batch by batch on the same
    random fc1 outputs (`_random_layer`, each neuron firing on its own 1-70% of tokens), the order alternating.
    48 batches is what the default `--flush_every_s 300` is at 125m widths on the 2-core CPU (about 6 s a batch)."""
    import time

    import jax
    import jax.numpy as jnp
    import numpy as np

    from analyses.collection import examples as ex

    counted, fc1 = _random_layer(ffn, seq_len, batch, seed)
    step = jax.jit(lambda sets, x, w: ex.update(sets, 0, jnp.int32(3), x, counted, w, k, return_tiers=True))
    empty = ex.zero_sets(1, ffn, k)
    jax.block_until_ready(step(empty, fc1(), jnp.int32(0)))  # compiled
    sets = {"kept": empty, "emptied": empty}
    times = {name: [] for name in sets}
    tiers = {name: [] for name in sets}
    for b in range(batches):
        if b and b % commit_every == 0:
            sets["emptied"] = empty
        x, w = fc1(), jnp.int32(b * batch)
        for name in (("kept", "emptied") if b % 2 else ("emptied", "kept")):
            start = time.perf_counter()
            sets[name], tier = jax.block_until_ready(step(sets[name], x, w))
            times[name].append(time.perf_counter() - start)
            tiers[name].append("/".join(ex.TIERS[int(tier[kind])] for kind in ex.KINDS))
        if (b + 1) % commit_every == 0 or b + 1 == batches:
            first = b // commit_every * commit_every
            log(f"batches {first}-{b}: kept {1000 * np.mean(times['kept'][first:]):.1f} ms, emptied "
                f"{1000 * np.mean(times['emptied'][first:]):.1f} ms a batch")
    out = {"batches": batches, "commit_every": commit_every, "ffn": ffn, "tokens_per_batch": batch * seq_len, "k": k}
    last_commit = (batches - 1) // commit_every * commit_every  # the first batch after the run's last commit
    for name in sets:
        counts = {tier: sum(t.count(tier) for t in tiers[name]) for tier in ex.TIERS}  # of 2 * batches set merges
        out[name] = {"mean_ms": 1000 * float(np.mean(times[name])),
                     "last_commit_mean_ms": 1000 * float(np.mean(times[name][last_commit:])),  # since it
                     "merges": counts}
    out["emptied_over_kept"] = out["emptied"]["mean_ms"] / out["kept"]["mean_ms"]
    log(f"over {batches} batches: kept {out['kept']['mean_ms']:.1f} ms, emptied {out['emptied']['mean_ms']:.1f} ms a "
        f"batch ({out['emptied_over_kept']:.2f}x); merges kept {out['kept']['merges']}, emptied "
        f"{out['emptied']['merges']}")
    return out


def block_cost(sizes=(32, 16, 8), seen=(0, 16_384, 131_072), ffn: int = 3072, seq_len: int = 512, batch: int = 8,
               k: int = 16, rounds: int = 7, seed: int = 0, log: Callable = _default_log) -> list[dict]:
    """Milliseconds of one layer's gated `examples.update` with blocks of at most each of `sizes` tokens
    (`examples._MAX_BLOCK`, read when the update is traced), interleaved on the same batches and checked to give
    the same sets, with the sets as a run has them after each count of tokens in `seen` (as `update_cost`)."""
    import time

    import jax
    import jax.numpy as jnp
    import numpy as np

    from analyses.collection import examples as ex

    counted, fc1 = _random_layer(ffn, seq_len, batch, seed)
    sets, windows, steps = ex.zero_sets(1, ffn, k), 0, {}
    kept = ex._MAX_BLOCK
    try:
        for size in sizes:
            ex._MAX_BLOCK = size
            step = jax.jit(lambda sets, x, w: ex.update(sets, 0, jnp.int32(3), x, counted, w, k))
            jax.block_until_ready(step(sets, fc1(), jnp.int32(0)))  # traced (and compiled) with this block size
            steps[size] = step
    finally:
        ex._MAX_BLOCK = kept
    rows = []
    for count in seen:
        while windows * seq_len < count:
            sets, windows = steps[sizes[0]](sets, fc1(), jnp.int32(windows)), windows + batch
        times = {size: [] for size in sizes}
        for r in range(rounds):
            x, outs = fc1(), {}
            for size in (sizes if r % 2 else sizes[::-1]):
                start = time.perf_counter()
                outs[size] = jax.block_until_ready(steps[size](sets, x, jnp.int32(windows)))
                times[size].append(time.perf_counter() - start)
            for size in sizes[1:]:
                for kind in ex.KINDS:
                    for f in ex.FIELDS:
                        if not np.array_equal(outs[size][kind][f], outs[sizes[0]][kind][f]):
                            raise AssertionError(f"blocks of {size} gave other {kind} sets ({f}) than {sizes[0]}")
            sets, windows = outs[sizes[0]], windows + batch
        row = {"tokens_seen": count, "ffn": ffn, "seq_len": seq_len, "batch": batch, "k": k,
               "ms": {size: float(np.median(t)) * 1000 for size, t in times.items()}}
        log(f"after {count:,} tokens: " + ", ".join(f"blocks of {size} {ms:.1f} ms" for size, ms in row["ms"].items()))
        rows.append(row)
    return rows


def late_cost(config: OPTConfig, seen=(0, 262_144, 1_048_576), seq_len: int = 512, tokens_per_batch: int = 4096,
              rounds: int = 3, workdir: str | None = None, seed: int = 0, log: Callable = _default_log) -> list[dict]:
    """The example sets' share of a whole collection step as a run has them after each count of tokens in `seen`.

    Two resident runners (`benchmarks.cpu.Ours`, collect's defaults) on the same random weights: one with the
    example sets (k = 16) and one without. The first is brought to each count by collecting random windows
    (numbered on, so every token is new to the sets: the gate sees what a long run's step sees); then `rounds`
    fresh batches go to both, interleaved (the order alternating), and each round's two step times are kept.
    The runner without sets does the same work at any count, so it is the baseline of every row. Windows are
    i.i.d. random ids: a real corpus, with documents whose tokens cluster, lets more tokens into the sets."""
    import tempfile
    import time

    import numpy as np

    from benchmarks.cpu import Ours, batch_size_for, build_models, make_batches

    batch_size = batch_size_for(seq_len, tokens_per_batch)
    shape = (batch_size, seq_len)
    tokens = batch_size * seq_len
    rows = []
    with tempfile.TemporaryDirectory(dir=workdir) as directory:
        models = build_models(config, directory, seed)
        runners = {"with": Ours(models.converted_dir, config, shape), "without": Ours(models.converted_dir, config,
                                                                                      shape, examples=0)}
        rng_seed = seed
        primed = 0
        start = time.perf_counter()
        for count in seen:
            while primed < count:
                (batch,) = make_batches(config, seq_len, batch_size, 1, rng_seed)
                rng_seed += 1
                runners["with"].step([batch])
                primed += tokens
                if primed % (64 * tokens) == 0:
                    rate = primed / (time.perf_counter() - start)
                    log(f"priming: {primed:,} of {max(seen):,} tokens, {rate:,.0f} tokens/s, "
                        f"left {(max(seen) - primed) / rate / 60:.1f} min")
            times = {"with": [], "without": []}
            for r in range(rounds + 1):  # round 0 compiles (the first count) or settles
                (batch,) = make_batches(config, seq_len, batch_size, 1, rng_seed)
                rng_seed += 1
                for name in (("with", "without") if r % 2 else ("without", "with")):
                    t = runners[name].step([batch])
                    if r:
                        times[name].append(t)
            primed += tokens * (rounds + 1)
            with_s, without_s = float(np.median(times["with"])), float(np.median(times["without"]))
            row = {"tokens_seen": count, "layers": config.num_hidden_layers, "ffn": config.ffn_dim,
                   "seq_len": seq_len, "batch_size": batch_size, "rounds": rounds,
                   "with_s": times["with"], "without_s": times["without"],
                   "with_median_s": with_s, "without_median_s": without_s,
                   "examples_share_of_step": 1 - without_s / with_s,
                   "per_round_share": [1 - b / a for a, b in zip(times["with"], times["without"])]}
            log(f"after {count:,} tokens: step with sets {with_s:.3f} s, without {without_s:.3f} s, the sets "
                f"{100 * row['examples_share_of_step']:.1f}% of a step (rounds: "
                + ", ".join(f"{100 * x:.1f}%" for x in row["per_round_share"]) + ")")
            rows.append(row)
        for runner in runners.values():
            runner.close()
    return rows


if __name__ == "__main__":
    import argparse
    import json

    parser = argparse.ArgumentParser(description="One layer's example-set update at the 125m widths, gated by "
                                                 "threshold against merging every neuron (the whole collection's "
                                                 "cost: scripts/benchmark.py --examples_cost).")
    parser.add_argument("--seen", type=int, nargs="+", default=[0, 16_384, 1_048_576],
                        help="tokens merged into the sets before the timed batches")
    parser.add_argument("--rounds", type=int, default=5, help="timed batches per count (each both variants)")
    parser.add_argument("--ffn", type=int, default=3072)
    parser.add_argument("--seq_len", type=int, default=512)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--whole", action="store_true",
                        help="time the whole collection step (late_cost) of the 125m shape with --layers layers, "
                             "with the sets and without, instead of one layer's update")
    parser.add_argument("--layers", type=int, default=12, help="--whole: decoder layers of the 125m-width model")
    parser.add_argument("--workdir", default=None, help="--whole: where the random checkpoint goes")
    parser.add_argument("--commit_every", type=int, default=None,
                        help="time one layer's update over a run of --batches batches with a commit every this many, "
                             "the sets kept across commits against emptied at each (commit_cost) instead")
    parser.add_argument("--batches", type=int, default=200, help="--commit_every: batches of the run")
    parser.add_argument("--blocks", type=int, nargs="+", default=None,
                        help="time one layer's update with blocks of at most these many tokens (the first the "
                             "reference the others must equal) instead")
    args = parser.parse_args()
    if args.commit_every:
        results = [commit_cost(args.batches, args.commit_every, args.ffn, args.seq_len, args.batch)]
    elif args.blocks:
        results = block_cost(tuple(args.blocks), tuple(args.seen), args.ffn, args.seq_len, args.batch,
                             rounds=args.rounds)
    elif args.whole:
        import opt_jax

        config = opt_jax.for_size("125m", num_hidden_layers=args.layers)
        results = late_cost(config, tuple(args.seen), args.seq_len, args.seq_len * args.batch, args.rounds,
                            args.workdir)
    else:
        results = update_cost(tuple(args.seen), args.ffn, args.seq_len, args.batch, rounds=args.rounds)
    for result in results:
        print(json.dumps(result))
