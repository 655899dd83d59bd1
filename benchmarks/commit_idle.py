"""How long a commit stops the step loop: collection's own flush (`analyses.collection.collect._flush`) on a store
of an OPT shape, committed in the step loop (`background_commits=False`, as before) and in the background.

Each mode runs the same random batches through a resident `Runner` (random weights of the shape), flushing
every `flush_every` batches into its own fresh store, the modes alternated round by round. Before each flush
the device finishes its dispatched steps (`Runner.wait`), so that the time counted is the flush's alone: in the
step loop the whole commit, in the background the n-gram settle, the wait for the previous commit and the
counters' snapshot. The run's last commit is in the step loop in both modes (its end waits for it anyway) and
is not counted as a flush; the wall time of the whole run (steps, flushes and that last commit) is reported too,
since on the CPU the background writer takes cores from the steps.

    python -m benchmarks.commit_idle                       # OPT-125m shape, 1 token layer, seq 128 x batch 8
    python -m benchmarks.commit_idle --token_layers 0,1 --batches 12 --flush_every 3 --rounds 2
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

import numpy as np

MODES = ("step_loop", "background")


def measure(mode: str, weights, config, batches: list, flush_every: int, token_layers: tuple, root: str) -> dict:
    """One run of `batches` with a flush every `flush_every`: seconds each flush blocked the step loop, and the wall."""
    from analyses.collection import statistics as st
    from analyses.collection.background import Behind
    from analyses.collection.collect import _flush, _zero_host
    from analyses.collection.plan import Options, make_plan
    from analyses.collection.runner import Runner
    from benchmarks.cpu import empty_store

    batch_size, seq_len = batches[0][0].shape
    options = Options(seq_len=seq_len, batch_size=batch_size, token_layers=token_layers, verbose=False,
                      background_commits=mode == "background")
    plan = make_plan(config, options)
    runner = Runner(weights, plan, options)
    store = empty_store(plan, root)
    commits, host, blocked, waited = Behind("commit"), _zero_host(plan), [], []
    start = time.perf_counter()
    for i, (ids, mask) in enumerate(batches):
        runner.run([(ids, mask)], [i * batch_size])
        for name, value in st.host_counts(ids, mask, plan.vocab).items():
            host[name] += value
        host["windows"].append((i * batch_size, np.where(mask, ids, -1).astype(np.int32)))
        if (i + 1) % flush_every == 0 and i + 1 < len(batches):
            runner.wait()
            flush_start = time.perf_counter()
            waited.append(commits.wait())  # the previous commit, when it is slower than the batches since
            _flush(runner, store, commits, host, {"next_batch": i + 1}, False)
            blocked.append(time.perf_counter() - flush_start)
            host = _zero_host(plan)
    _flush(runner, store, commits, host, {"next_batch": len(batches)}, True)
    commits.close()
    wall = time.perf_counter() - start
    runner.close()
    return {"mode": mode, "snapshot": runner.snapshot, "commits": len(blocked) + 1, "blocked_s": blocked,
            "waited_for_previous_s": waited, "wall_s": wall, "tokens": len(batches) * batch_size * seq_len}


def compare(config, seq_len: int = 128, batch_size: int = 8, batches: int = 12, flush_every: int = 3,
            token_layers: tuple = (0,), rounds: int = 2, workdir: str | None = None, seed: int = 0,
            log=lambda m: print(m, file=sys.stderr, flush=True)) -> list[dict]:
    """Both modes, alternated `rounds` times (the first run of each is a warm-up: compilation)."""
    from analyses.collection.runner import Weights
    from benchmarks.cpu import make_batches
    from opt_jax.model import init_params

    weights = Weights.in_memory(init_params(config, seed))
    data = make_batches(config, seq_len, batch_size, batches, seed)
    results = []
    with tempfile.TemporaryDirectory(dir=workdir) as directory:
        for mode in MODES:  # warm-up: compiles the step and the flush's slices
            measure(mode, weights, config, data[:2], 1, token_layers, os.path.join(directory, f"warm-{mode}"))
        for r in range(rounds):
            for mode in MODES if r % 2 == 0 else MODES[::-1]:
                result = measure(mode, weights, config, data, flush_every, token_layers,
                                 os.path.join(directory, f"{mode}-{r}"))
                log(f"round {r + 1}/{rounds} {mode}: blocked {np.mean(result['blocked_s']):.2f} s per flush, "
                    f"wall {result['wall_s']:.1f} s")
                results.append(result)
    return results


def markdown(results: list[dict], config, token_layers: tuple) -> str:
    """One row per mode: mean (and max) seconds a flush blocked the step loop, the run's wall time."""
    cells = config.vocab_size * config.ffn_dim * len(token_layers)
    lines = [f"tok_act {len(token_layers)} layer(s) x {config.vocab_size} x {config.ffn_dim} ({cells * 8 / 1e9:.2f} GB "
             f"int64 per commit), pos_act {config.num_hidden_layers} layers",
             "", "| mode | snapshot | flushes timed | blocked per flush, mean (max) | of which waiting for the previous "
             "commit | run wall time |", "|---|---|---|---|---|---|"]
    for mode in MODES:
        rows = [r for r in results if r["mode"] == mode]
        blocked = [b for r in rows for b in r["blocked_s"]]
        waited = [w for r in rows for w in r["waited_for_previous_s"]]
        lines.append(f"| {mode} | {rows[0]['snapshot'] or '-'} | {len(blocked)} | {np.mean(blocked):.2f} s "
                     f"({np.max(blocked):.2f} s) | {np.mean(waited):.2f} s | {np.mean([r['wall_s'] for r in rows]):.1f} s |")
    base = np.mean([b for r in results if r["mode"] == "step_loop" for b in r["blocked_s"]])
    ours = np.mean([b for r in results if r["mode"] == "background" for b in r["blocked_s"]])
    lines.append(f"\nblocked per flush: step loop / background = {base / ours:.0f}x")
    return "\n".join(lines)


def main(argv=None) -> None:
    import jax

    jax.config.update("jax_platforms", "cpu")
    import opt_jax

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="125m")
    parser.add_argument("--seq_len", type=int, default=128)
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--batches", type=int, default=12)
    parser.add_argument("--flush_every", type=int, default=3)
    parser.add_argument("--token_layers", default="0")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--workdir")
    args = parser.parse_args(argv)
    config = opt_jax.for_size(args.size)
    token_layers = tuple(int(t) for t in args.token_layers.split(","))
    results = compare(config, args.seq_len, args.batch_size, args.batches, args.flush_every, token_layers,
                      args.rounds, args.workdir)
    for r in results:
        print(json.dumps(r))
    print(markdown(results, config, token_layers))


if __name__ == "__main__":
    main()
