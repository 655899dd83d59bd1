"""The 66b study's step on the device, in one short invocation (`scripts/benchmark.py --device_suite gpu
--study_step`): the check a session lent a GPU runs once, rehearsed on the CPU at shrunk shapes.

One size (default 66b) in bf16, random weights made on the device (`benchmarks.sources`), batches of
8 x 2048, tok_act for the first layer, act, pos_act, value_hist for all, and the example sets (k = 16), timed
through `benchmarks.cpu.Ours` (an `analyses.collection.Runner`) as the device suite times them
(`benchmarks.device`), in this order, so that what matters most comes out first:

1. Compute-only with the example sets and without (`examples=0`): one group's weights kept on the device answer
   every group (the step without its transfers), the two runners interleaved round by round on the same
   batches (`benchmarks.cpu.time_interleaved`, a round being one chunk of batches each). The sets' share of a
   step is 1 - without / with, per round, and its median. Both runners are held at once where the device has
   room for both (at 66b on an H200 that needs `XLA_PYTHON_CLIENT_MEM_FRACTION=0.95`); where the second is
   refused (`check_memory`'s `StatsError`), each round builds each runner afresh, one after the other (the
   compiled steps are reused, but the sets start empty every round), and the records say `pair: alternating`.
2. One flush's device-to-host copy (`flush_copy`): `Runner.take_counters` as a background commit takes it when
   its snapshot goes to the host (at 66b the device has no room for a second set of counters: docs/66b.md),
   i.e. one `jax.device_get` of every group's counters (act, pos_act, tok_act, value_hist, the example sets)
   while the step loop waits; the bytes moved and GB/s.
3. Streamed (that group's host copy moved to the device for every group, staged through page-locked memory as
   `GroupStream` does on an accelerator), on the same batches: streamed against compute-only, and the transfer
   hidden, as the device suite's table has them (`benchmarks.device._device_row`).
"""

from __future__ import annotations

import dataclasses
import gc
import time
from typing import Callable

import jax
import numpy as np

from benchmarks.cpu import Ours, _default_emit, _default_log, _rate, time_interleaved
from benchmarks.device import (DeviceSuite, _device_row, machine_and_matmul, measured_size, pinned_copy,
                               reporting, transfer_seconds)
from benchmarks.sources import RepeatedGroup, shrink_config
from opt_jax.errors import InputError, StatsError

WITH, WITHOUT = "compute_only", "compute_only_no_examples"


@dataclasses.dataclass(frozen=True)
class StudyStep:
    """Settings of the study-step check; the defaults are the GPU measurement, `shrink` > 1 a CPU-sized check."""

    size: str = "66b"
    shrink: int = 1  # divide heads, widths, vocabulary and layers by this (`shrink_config`)
    seq_len: int = 2048
    batch_size: int = 8
    batches: int = 12  # timed batches per variant: rounds of chunk_batches (the pair), chunks (streamed)
    warmup: int = 1  # untimed batches per variant first (compilation)
    chunk_batches: int = 4  # each group moves to the device once per chunk of this many batches
    group_size: int | None = None  # default: min(what 30% of device memory holds twice, a quarter of the layers)
    token_layers: int = 1  # tok_act for the first this many layers (a 66b layer's tok_act is 7.4 GB as int32)
    examples: int = 16  # k of the example sets (the runner without them: 0)
    flush_repeats: int = 2  # device-to-host copies of the counters timed (each into fresh host memory)
    dtype: str = "bfloat16"
    matmul_n: int = 8192
    seed: int = 0

    def suite(self) -> DeviceSuite:
        """The device suite's settings of the same measurement (for its rows' figures)."""
        return DeviceSuite(sizes=(self.size,), resident_sizes=(), shrink=self.shrink, seq_len=self.seq_len,
                           batch_size=self.batch_size, batches=self.batches, warmup=self.warmup,
                           chunk_batches=self.chunk_batches, group_size=self.group_size,
                           token_layers=self.token_layers, dtype=self.dtype, matmul_n=self.matmul_n, seed=self.seed)


def study_step(settings: StudyStep = StudyStep(), emit: Callable[[dict], None] | None = _default_emit,
               log: Callable[[str], None] | None = _default_log) -> list[dict]:
    """The compute-only pair, one flush's copy and the streamed step of one size; one summary row (in a list)."""
    import opt_jax

    s = settings
    config = shrink_config(opt_jax.for_size(s.size), s.shrink)  # an unknown size fails before anything is measured
    if s.batches < 1 or s.warmup < 0 or s.chunk_batches < 1 or s.flush_repeats < 1 or s.examples < 1:
        raise InputError(f"need batches, chunk_batches, flush_repeats, examples >= 1 and warmup >= 0, got {s}")
    say, record = reporting(emit, log)
    matmul = machine_and_matmul(s, say, record)

    m = measured_size(s.suite(), s.size)
    layers, token_layers, source, group_size, groups, largest, data, embed = (
        m.layers, m.token_layers, m.source, m.group_size, m.groups, m.largest, m.data, m.embed)
    shrunk = f" shape / {s.shrink}" if s.shrink > 1 else " shape"
    say(f"{s.size}{shrunk}: {layers} layers x hidden {config.hidden_size} x ffn {config.ffn_dim}, {len(groups)} "
        f"groups of <= {group_size} layers, batches {s.batch_size} x {s.seq_len}, {s.batches} timed per variant")

    def runner(layer_source, examples):
        from analyses.collection import Weights

        return Ours(Weights(embed, layer_source), config, (s.batch_size, s.seq_len), True, group_size,
                    s.chunk_batches, token_layers=token_layers, examples=examples)

    device_group = source.read(range(largest))
    on_device = RepeatedGroup(device_group, layers)  # one source for both runners: its slices made once,
    for length in sorted({len(g) for g in groups}):  # here, not by the two runners' reader threads at once
        on_device.read(range(length))
    pair, mode, kept = _compute_only_pair(s, lambda name: runner(on_device, s.examples if name == WITH else 0),
                                          data, say)
    for name in (WITH, WITHOUT):
        record(name, size=s.size, pair=mode, examples=s.examples if name == WITH else 0, **pair[name])
    share = examples_share(pair[WITH]["step_seconds"], pair[WITHOUT]["step_seconds"])
    record("examples_share", size=s.size, pair=mode, **share)
    say(f"  the example sets' share of a compute-only step: {100 * share['median']:.1f}% (rounds: "
        + ", ".join(f"{100 * x:.1f}%" for x in share["per_round"]) + ")")
    try:
        flush = record("flush", size=s.size, **flush_copy(kept.runner, s.flush_repeats))
    finally:
        kept.close()
    say(f"  one flush's device-to-host copy: {flush['bytes'] / 1e9:.3g} GB in "
        + ", ".join(f"{t:.3g}" for t in flush["seconds"]) + " s")
    del on_device, kept
    gc.collect()

    host_group = jax.device_get(device_group)  # one group's host copy, moved again for every group
    del device_group
    gc.collect()
    if jax.devices()[0].platform != "cpu":  # what GroupStream does on an accelerator: stage through pinned memory
        pinned = pinned_copy(host_group)
        transfer = transfer_seconds(pinned)
        del pinned
    else:
        transfer = transfer_seconds(host_group)
    say(f"  one group of {largest} layers to the device: {transfer:.3f} s as streamed")
    variant = runner(RepeatedGroup(host_group, layers), s.examples)
    try:
        streamed = time_interleaved({"streamed": variant}, data, s.warmup)["streamed"]
    finally:
        variant.close()
    record("streamed", size=s.size, **streamed)
    say(f"  streamed: {streamed['tokens_per_s']:.0f} tok/s")

    row = _device_row(s.suite(), s.size, config, {"compute_only": pair[WITH], "streamed": streamed}, groups,
                      group_size, transfer / largest, matmul)
    without = pair[WITHOUT]
    row |= {"examples": s.examples, "pair": mode, f"{WITHOUT}_tokens": without["tokens"],
            f"{WITHOUT}_tok_s": without["tokens_per_s"],
            f"{WITHOUT}_fraction_of_matmul": without["tokens_per_s"] * row["flops_per_token"] / matmul,
            "examples_share_per_round": share["per_round"], "examples_share": share["median"],
            "flush_bytes": flush["bytes"], "flush_s": flush["seconds"], "flush_bytes_per_s": flush["bytes_per_s"],
            "flush_snapshot_planned": flush["snapshot_planned"]}
    return [record("summary", **row)]


def _compute_only_pair(s: StudyStep, make: Callable[[str], Ours], data: list,
                       say: Callable) -> tuple[dict, str, Ours]:
    """The compute-only runners with and without the example sets, timed round by round on `data[s.warmup:]`:
    their rate records, how they ran ("together" or "alternating"), and a runner with the sets that has counted
    (for the flush; the caller closes it)."""
    variants = {}
    try:
        for name in (WITH, WITHOUT):
            variants[name] = make(name)
    except StatsError as e:  # the device has no room for the second runner beside the first
        say(f"  both compute-only runners do not fit at once ({e}); alternating fresh runners instead")
        for variant in variants.values():
            variant.close()
        variants = {}
    except BaseException:
        for variant in variants.values():
            variant.close()
        raise
    if variants:
        say(f"  compute-only with and without the example sets, together, {s.warmup} warm-up batch(es) each ...")
        try:
            timed = time_interleaved(variants, data, s.warmup, log=lambda message: say(f"    {message}"))
        except BaseException:
            for variant in variants.values():
                variant.close()
            raise
        variants[WITHOUT].close()
        return {name: timed[name] for name in (WITH, WITHOUT)}, "together", variants[WITH]

    say("  compute-only with and without the example sets, alternating: a fresh runner per round and variant ...")
    timed_batches = data[s.warmup:]
    seconds, info = {WITH: [], WITHOUT: []}, {}
    names = [WITH, WITHOUT]
    for r, i in enumerate(range(0, len(timed_batches), s.chunk_batches)):
        for name in names[r % 2:] + names[:r % 2]:
            variant = make(name)
            try:
                if r == 0:  # compiles; later rounds reuse the compiled steps
                    for batch in data[:s.warmup]:
                        variant.step([batch])
                seconds[name].append(variant.step(timed_batches[i:i + s.chunk_batches]))
                info[name] = variant.info
            finally:
                variant.close()
        say(f"    round {r + 1}: " + ", ".join(f"{n} {seconds[n][-1]:.2f}s" for n in names))
    kept = make(WITH)
    try:
        kept.step(timed_batches[:1])  # counters with counts in them, for the flush
    except BaseException:
        kept.close()
        raise
    return {n: _rate(timed_batches, seconds[n]) | info[n] for n in names}, "alternating", kept


def examples_share(with_seconds: list[float], without_seconds: list[float]) -> dict:
    """The example sets' share of a step: 1 - without / with for each round (the two runners' steps on the same
    batches), and the median of those."""
    if len(with_seconds) != len(without_seconds) or not with_seconds:
        raise InputError(f"need one step per round of each runner, got {len(with_seconds)} and "
                         f"{len(without_seconds)}")
    per_round = [1 - b / a for a, b in zip(with_seconds, without_seconds)]
    return {"per_round": per_round, "median": float(np.median(per_round))}


def flush_copy(runner, repeats: int = 2) -> dict:
    """Seconds of a flush's device-to-host copy of a runner's counters, `repeats` times (each into fresh host
    memory, as every flush's is): `Runner.take_counters` with its snapshot going to the host, which the step loop
    waits for when the device has no room for a second set of counters (one `jax.device_get` of every group's
    counters, then fresh zero counters on the device). The bytes are the host copy's; `snapshot_planned` is
    where `check_memory` placed this runner's snapshot ("device", "host" or None)."""
    runner.wait_steps()
    planned = runner.snapshot
    runner.snapshot = "host"
    seconds, moved = [], []
    try:
        for _ in range(repeats):
            start = time.perf_counter()
            taken = runner.take_counters()
            seconds.append(time.perf_counter() - start)
            moved.append(sum(int(a.nbytes) for a in jax.tree.leaves(taken.accs)))
            del taken
            gc.collect()
    finally:
        runner.snapshot = planned
    assert len(set(moved)) == 1, moved
    return {"bytes": moved[0], "seconds": seconds, "bytes_per_s": [moved[0] / t for t in seconds],
            "snapshot_planned": planned}


def study_step_markdown(rows: list[dict]) -> str:
    """The summary row of `study_step` as a markdown table for BENCHMARKS.md, with what it means below it."""
    lines = ["| model | layers x hidden x ffn | groups (layers) | compute-only tok/s (of matmul) | without the "
             "example sets tok/s (of matmul) | the sets' share of a step: median (rounds) | streamed tok/s (of "
             "matmul) | streamed / compute-only time | transfer hidden | one flush's copy to the host |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        rounds = ", ".join(f"{100 * x:.1f}" for x in r["examples_share_per_round"])
        flush = ", ".join(f"{t:.2f}" for t in r["flush_s"])
        rates = ", ".join(f"{b / 1e9:.1f}" for b in r["flush_bytes_per_s"])
        lines.append(
            f"| {r['size']}{' / ' + str(r['shrink']) if r['shrink'] > 1 else ''} "
            f"| {r['layers']} x {r['hidden']} x {r['ffn']} | {r['groups']} (<= {r['group_size']}) "
            f"| {_rate_cell(r, 'compute_only')} | {_rate_cell(r, WITHOUT)} "
            f"| {100 * r['examples_share']:.1f}% ({rounds}) | {_rate_cell(r, 'streamed')} "
            f"| {r['streamed_time_vs_compute_only']:.2f} | {100 * r['transfer_hidden']:.0f}% "
            f"| {r['flush_bytes'] / 1e9:.3g} GB in {flush} s ({rates} GB/s) |")
    if not rows:
        return "\n".join(lines)
    r = rows[0]
    lines += [
        "",
        f"Matmul rate in the same invocation ({r['dtype']} `jnp.einsum`, best of 3 rounds of 10): "
        f"{r['matmul_flops_per_s'] / 1e12:.2f} TFLOP/s; \"of matmul\" is tokens/s x {r['flops_per_token'] / 1e9:.4g} "
        "GFLOP per token over it.",
        f"Batches of {r['batch_size']} x {r['seq_len']} tokens, {r['timed_batches']} timed per variant after "
        f"{r['warmup']} warm-up, in chunks of {r['chunk_batches']} (each layer moves to the device once per chunk "
        f"when streamed); tok_act for the first {r['token_layers']} layer(s), act, pos_act and value_hist for all; "
        f"example sets k = {r['examples']} (top and random) except in \"without\".",
        f"Compute-only: one group's random weights kept on the device answer every group (no transfers). With and "
        f"without the example sets ran {r['pair']}"
        + (", interleaved round by round (a round: one chunk each, the order alternating); "
           if r["pair"] == "together" else
           " (the device had no room for both: a fresh runner per round and variant, the sets empty each round); ")
        + "the sets' share of a round is 1 - without / with. Streamed: that group's host copy moved to the device "
        "for every group (page-locked on an accelerator). Transfer hidden: as in the GPU suite's table.",
        f"One flush's copy: `Runner.take_counters` with the snapshot on the host (where a 66b run's goes), i.e. "
        f"`jax.device_get` of every counter, {r['flush_bytes'] / 1e9:.3g} GB, timed {len(r['flush_s'])} times into "
        f"fresh host memory; this runner's own snapshot would have gone to: {r['flush_snapshot_planned']}.",
        f"Peak RSS of the invocation: {r['peak_rss_bytes'] / 1e9:.2f} GB"
        + (f"; device peak {r['device_peak_bytes'] / 1e9:.1f} GB." if r["device_peak_bytes"] else "."),
    ]
    return "\n".join(lines)


def _rate_cell(row: dict, name: str) -> str:
    return f"{row[f'{name}_tok_s']:.0f} ({100 * row[f'{name}_fraction_of_matmul']:.0f}%)"
