"""The device suite (`scripts/benchmark.py --device_suite gpu`): our collection alone on OPT shapes from 1.3b
to 66b in bf16 on the default JAX device (resident, streamed, and compute-only: streamed without transfers),
against the device's bf16 matmul rate measured in the same invocation. Random weights are made on the device
a group at a time (`benchmarks.sources`), so that no size needs its whole model in host memory.
"""

from __future__ import annotations

import dataclasses
import gc
import os
import time
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import SingleDeviceSharding

from benchmarks.conversion import peak_rss
from benchmarks.cpu import Ours, _default_emit, _default_log, make_batches, model_flops_per_token, time_interleaved
from benchmarks.sources import RandomLayers, RepeatedGroup, random_embed, shrink_config
from opt_jax.config import OPTConfig
from opt_jax.errors import InputError
from opt_jax.streaming import group_size_for

DEVICE_SIZES = ("1.3b", "6.7b", "30b", "66b")
DEVICE_RESIDENT_SIZES = ("1.3b", "6.7b")


@dataclasses.dataclass(frozen=True)
class DeviceSuite:
    """Settings of the device suite; the defaults are the GPU measurement, `shrink` > 1 a CPU-sized check of it."""

    sizes: tuple[str, ...] = DEVICE_SIZES
    resident_sizes: tuple[str, ...] = DEVICE_RESIDENT_SIZES  # also measured with every layer on the device
    shrink: int = 1  # divide heads, widths, vocabulary and layers by this (`shrink_config`)
    seq_len: int = 2048
    batch_size: int = 8
    batches: int = 8  # timed batches per variant
    warmup: int = 1  # untimed batches per variant first (compilation)
    chunk_batches: int = 4  # streamed: each group moves to the device once per chunk of this many batches
    group_size: int | None = None  # default: min(what 30% of device memory holds twice, a quarter of the layers)
    token_layers: int = 1  # tok_act for the first this many layers (a 66b layer's tok_act is 7.4 GB as int32)
    dtype: str = "bfloat16"
    matmul_n: int = 8192
    seed: int = 0


def device_matmul_rate(n: int = 8192, dtype: str = "bfloat16", repeats: int = 3, calls: int = 10) -> float:
    """FLOP/s of an n x n @ n x n jnp matmul on the default device: best of `repeats` rounds of `calls` matmuls."""
    key = jax.random.PRNGKey(0)
    a = jax.random.normal(key, (n, n), dtype)  # [n, n]
    b = jax.random.normal(jax.random.fold_in(key, 1), (n, n), dtype)  # [n, n]
    matmul = jax.jit(lambda x, y: jnp.einsum("ij,jk->ik", x, y))  # [n, n]
    matmul(a, b).block_until_ready()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready([matmul(a, b) for _ in range(calls)])
        best = min(best, time.perf_counter() - start)
    return calls * 2 * n ** 3 / best


def pinned_copy(host_params):
    """The tree copied into page-locked host memory of the default device (what `GroupStream` stages through)."""
    device = jax.devices()[0]
    return jax.block_until_ready(jax.device_put(host_params, SingleDeviceSharding(device, memory_kind="pinned_host")))


def transfer_seconds(host_params, repeats: int = 3) -> float:
    """Seconds to move a host parameter tree (pageable numpy or pinned jax arrays) to the default device (best
    of `repeats`)."""
    device = SingleDeviceSharding(jax.devices()[0], memory_kind="device")
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        moved = jax.block_until_ready(jax.device_put(host_params, device))
        best = min(best, time.perf_counter() - start)
        del moved
    return best


def transfer_overlap(host_params, n: int = 8192, dtype: str = "bfloat16") -> dict:
    """Whether a host -> device transfer runs beside device matmuls: seconds of the matmuls alone, the transfer
    alone, and both issued together (matmuls first); `hidden` = (alone + alone - together) / the shorter."""
    device = SingleDeviceSharding(jax.devices()[0], memory_kind="device")
    a = jax.random.normal(jax.random.PRNGKey(0), (n, n), dtype)  # [n, n]
    chain = jax.jit(lambda x: jax.lax.fori_loop(0, 32, lambda i, y: jnp.einsum("ij,jk->ik", y, x) * 1e-2, x))
    chain(a).block_until_ready()
    transfer = transfer_seconds(host_params, repeats=1)
    start = time.perf_counter()
    jax.block_until_ready(chain(a))
    per_call = time.perf_counter() - start
    calls = max(1, round(transfer / per_call))

    def timed(compute: bool, move: bool) -> float:
        start = time.perf_counter()
        outs = [chain(a) for _ in range(calls)] if compute else []
        moved = jax.device_put(host_params, device) if move else None
        jax.block_until_ready((outs, moved))
        return time.perf_counter() - start

    alone_compute, alone_transfer, together = timed(True, False), timed(False, True), timed(True, True)
    return {"compute_s": alone_compute, "transfer_s": alone_transfer, "together_s": together,
            "hidden": (alone_compute + alone_transfer - together) / min(alone_compute, alone_transfer)}


def device_machine() -> dict:
    """What the device suite ran on: the JAX backend, device kind and memory, host CPU cores."""
    device = jax.devices()[0]
    stats = device.memory_stats() if hasattr(device, "memory_stats") else None
    return {"jax": jax.__version__, "jax_backend": jax.default_backend(), "device_kind": device.device_kind,
            "devices": jax.device_count(), "device_bytes_limit": (stats or {}).get("bytes_limit"),
            "cores": os.cpu_count(), "numpy": np.__version__}


def reporting(emit: Callable[[dict], None] | None, log: Callable[[str], None] | None) -> tuple[Callable, Callable]:
    """say(message), logged with the seconds since this call, and record(kind, **fields), which emits
    {"measurement": kind, **fields} and returns it; None for either: silent."""
    emit = emit or (lambda record: None)
    log = log or (lambda message: None)
    t0 = time.perf_counter()

    def say(message):
        log(f"[{time.perf_counter() - t0:7.1f}s] {message}")

    def record(kind, **fields):
        r = {"measurement": kind} | fields
        emit(r)
        return r

    return say, record


def machine_and_matmul(settings, say: Callable, record: Callable) -> float:
    """Record the machine and the settings (a dataclass with `dtype` and `matmul_n`), then measure and record the
    device's matmul rate (FLOP/s), which every row is compared with."""
    record("machine", **device_machine(), settings=dataclasses.asdict(settings))
    say(f"{settings.dtype} matmul {settings.matmul_n}^3 on {device_machine()['device_kind']} ...")
    matmul = device_matmul_rate(settings.matmul_n, settings.dtype)
    record("matmul", n=settings.matmul_n, dtype=settings.dtype, flops_per_s=matmul)
    say(f"  {matmul / 1e12:.2f} TFLOP/s")
    return matmul


def device_suite(settings: DeviceSuite = DeviceSuite(), emit: Callable[[dict], None] | None = _default_emit,
                 log: Callable[[str], None] | None = _default_log) -> list[dict]:
    """Resident and streamed collection of each size against the device's measured matmul rate; one row per size."""
    import opt_jax

    for size in settings.sizes:
        opt_jax.for_size(size)  # an unknown size fails before anything is measured
    if settings.batches < 1 or settings.warmup < 0 or settings.chunk_batches < 1:
        raise InputError(f"need batches >= 1, warmup >= 0 and chunk_batches >= 1, got {settings}")
    say, record = reporting(emit, log)
    matmul = machine_and_matmul(settings, say, record)
    rows = []
    for size in settings.sizes:
        row = _device_size(settings, size, matmul, say, record)
        rows.append(record("summary", **row))
    return rows


@dataclasses.dataclass
class MeasuredSize:
    """What a measurement of one size runs on: its (shrunk) config, random layers, groups and batches."""

    config: OPTConfig
    layers: int
    token_layers: tuple[int, ...]  # the first `token_layers` of the settings
    source: RandomLayers
    group_size: int  # the settings' or min(what the device holds twice, a quarter of the layers)
    groups: list
    largest: int  # layers in the largest group
    data: list  # warmup + batches random batches
    embed: object  # the random embedding


def measured_size(s: DeviceSuite, size: str) -> MeasuredSize:
    """The config, random weights, groups and batches of one size under the suite's settings."""
    import opt_jax
    from analyses.collection import Options, make_plan

    config = shrink_config(opt_jax.for_size(size), s.shrink)
    layers = config.num_hidden_layers
    token_layers = tuple(range(min(s.token_layers, layers)))
    source = RandomLayers(config, s.dtype, s.seed)
    group_size = s.group_size or min(group_size_for(source), -(-layers // 4))
    groups = make_plan(config, Options(seq_len=s.seq_len, token_layers=token_layers)).groups(group_size)
    return MeasuredSize(config, layers, token_layers, source, group_size, groups, max(len(g) for g in groups),
                        make_batches(config, s.seq_len, s.batch_size, s.warmup + s.batches, s.seed),
                        random_embed(config, s.dtype, s.seed))


def _device_size(s: DeviceSuite, size: str, matmul: float, say: Callable, record: Callable) -> dict:
    """Every variant of one size, each alone (device memory), then the figures comparing them."""
    from analyses.collection import Weights

    m = measured_size(s, size)
    config, layers, token_layers, source, group_size, groups, largest, data, embed = (
        m.config, m.layers, m.token_layers, m.source, m.group_size, m.groups, m.largest, m.data, m.embed)
    say(f"{size}{_shrunk(s)}: {layers} layers x hidden {config.hidden_size} x ffn {config.ffn_dim}, "
        f"{len(groups)} groups of <= {group_size} layers, batches {s.batch_size} x {s.seq_len}")

    def measure(name, layer_source, offload):
        variant = Ours(Weights(embed, layer_source), config, (s.batch_size, s.seq_len), offload, group_size,
                       s.chunk_batches, token_layers=token_layers)
        try:
            result = time_interleaved({name: variant}, data, s.warmup)[name]
        finally:
            variant.close()
        record(name, size=size, **result)
        say(f"  {name}: {result['tokens_per_s']:.0f} tok/s")
        return result

    timed = {}
    if size in s.resident_sizes:
        timed["resident"] = measure("resident", source, False)
    device_group = source.read(range(largest))
    host_group = jax.device_get(device_group)  # one group's host copy, moved again for every group
    pageable = transfer_seconds(host_group)
    transfer = pageable
    if jax.devices()[0].platform != "cpu":  # what GroupStream does on an accelerator: stage through pinned memory
        pinned = pinned_copy(host_group)
        transfer = transfer_seconds(pinned)
        for name, tree in (("pageable", host_group), ("pinned", pinned)):
            overlap = transfer_overlap(tree, s.matmul_n, s.dtype)
            record("transfer_overlap", size=size, source=name, **overlap)
            say(f"  transfer beside matmuls, from {name} memory: {100 * overlap['hidden']:.0f}% hidden")
        del pinned
    say(f"  one group of {largest} layers to the device: {pageable:.3f} s from pageable memory, {transfer:.3f} s "
        "as streamed")
    timed["compute_only"] = measure("compute_only", RepeatedGroup(device_group, layers), True)
    del device_group
    gc.collect()
    timed["streamed"] = measure("streamed", RepeatedGroup(host_group, layers), True)
    row = _device_row(s, size, config, timed, groups, group_size, transfer / largest, matmul)
    return row | {"layer_transfer_pageable_s": pageable / largest}


def _shrunk(s: DeviceSuite) -> str:
    return f" shape / {s.shrink}" if s.shrink > 1 else " shape"


def _device_row(s: DeviceSuite, size: str, config: OPTConfig, timed: dict, groups: list, group_size: int,
                layer_transfer_s: float, matmul: float) -> dict:
    """The figures of one size: tokens/s, fraction of the matmul rate, how much of the transfer time is hidden."""
    flops = model_flops_per_token(config, s.seq_len)
    chunks = -(-s.batches // s.chunk_batches)
    streamed, compute = timed["streamed"], timed["compute_only"]
    per_chunk = layer_transfer_s * config.num_hidden_layers  # every layer moves once per chunk
    exposed = (streamed["seconds"] - compute["seconds"]) / chunks
    stats = jax.devices()[0].memory_stats() if hasattr(jax.devices()[0], "memory_stats") else None
    row = {
        "size": size, "shrink": s.shrink, "layers": config.num_hidden_layers, "hidden": config.hidden_size,
        "ffn": config.ffn_dim, "dtype": s.dtype, "seq_len": s.seq_len, "batch_size": s.batch_size,
        "timed_batches": s.batches, "warmup": s.warmup, "chunk_batches": s.chunk_batches, "chunks": chunks,
        "groups": len(groups), "group_size": group_size, "token_layers": min(s.token_layers, config.num_hidden_layers),
        "flops_per_token": flops, "matmul_flops_per_s": matmul,
        "layer_bytes": RandomLayers(config, s.dtype).layer_bytes, "layer_transfer_s": layer_transfer_s,
        "transfer_per_chunk_s": per_chunk, "exposed_transfer_per_chunk_s": exposed,
        "transfer_hidden": 1 - exposed / per_chunk,
        "streamed_time_vs_compute_only": streamed["seconds"] / compute["seconds"],
        "peak_rss_bytes": peak_rss(), "device_peak_bytes": (stats or {}).get("peak_bytes_in_use"),
    }
    for name, result in timed.items():
        row[f"{name}_tokens"] = result["tokens"]
        row[f"{name}_tok_s"] = result["tokens_per_s"]
        row[f"{name}_fraction_of_matmul"] = result["tokens_per_s"] * flops / matmul
    row["transfer_bytes_per_s"] = row["layer_bytes"] / layer_transfer_s
    if "resident" in timed:
        row["streamed_time_vs_resident"] = timed["resident"]["tokens_per_s"] / streamed["tokens_per_s"]
    return row


def device_markdown_table(rows: list[dict]) -> str:
    """The rows of `device_suite` as a markdown table, with the matmul rate and what the variants mean below it."""
    lines = ["| model | layers x hidden x ffn | groups (layers) | resident tok/s (of matmul) | streamed tok/s "
             "(of matmul) | compute-only tok/s (of matmul) | streamed / compute-only time | one layer to device "
             "ms (GB/s) | transfer per chunk s | transfer hidden |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(
            f"| {r['size']}{' / ' + str(r['shrink']) if r['shrink'] > 1 else ''} "
            f"| {r['layers']} x {r['hidden']} x {r['ffn']} | {r['groups']} (<= {r['group_size']}) "
            f"| {_rate_cell(r, 'resident')} | {_rate_cell(r, 'streamed')} | {_rate_cell(r, 'compute_only')} "
            f"| {r['streamed_time_vs_compute_only']:.2f} | {1e3 * r['layer_transfer_s']:.1f} "
            f"({r['transfer_bytes_per_s'] / 1e9:.1f}) | {r['transfer_per_chunk_s']:.3g} "
            f"| {100 * r['transfer_hidden']:.0f}% |")
    if not rows:
        return "\n".join(lines)
    r = rows[0]
    goal = [x for x in rows if x["size"] == "66b" and x["shrink"] == 1]
    lines += [
        "",
        f"Matmul rate, measured in the same invocation ({r['dtype']} `jnp.einsum` of square matrices, best of 3 "
        f"rounds of 10): {r['matmul_flops_per_s'] / 1e12:.2f} TFLOP/s; \"of matmul\" is tokens/s x FLOPs per token "
        "(the cpu suite's convention: 2 per decoder matmul weight plus full-sequence attention, no LM head) over it.",
        f"Batches of {r['batch_size']} x {r['seq_len']} tokens, {r['timed_batches']} timed after {r['warmup']} "
        f"warm-up; streamed in chunks of {r['chunk_batches']} batches (each layer moves to the device once per "
        f"chunk); tok_act for the first {r['token_layers']} layer(s), act and pos_act for all.",
        "Resident: every layer on the device (random weights made there, group by group). Streamed: one group's "
        "random weights made once and copied to host memory; that host copy stands in for every group, so each "
        "group is a full host -> device transfer of the same size as with real weights, without the host memory "
        "of a whole model. Compute-only: the same with the group kept on the device (no transfer). Transfer "
        "hidden: 1 - (streamed - compute-only time per chunk) / (transfer per chunk = one layer's measured "
        "transfer x layers).",
        f"Peak RSS of the invocation: {max(x['peak_rss_bytes'] for x in rows) / 1e9:.2f} GB"
        + (f"; device peak {max(x['device_peak_bytes'] for x in rows) / 1e9:.1f} GB."
           if all(x['device_peak_bytes'] for x in rows) else "."),
    ]
    if goal:
        fraction = goal[0]["streamed_fraction_of_matmul"]
        lines.append(f"Goal, 66b streamed >= 50% of the measured matmul rate: {100 * fraction:.0f}%, "
                     + ("met." if fraction >= 0.5 else "not met."))
    return "\n".join(lines)


def _rate_cell(row: dict, name: str) -> str:
    if f"{name}_tok_s" not in row:
        return "-"
    return f"{row[f'{name}_tok_s']:.0f} ({100 * row[f'{name}_fraction_of_matmul']:.0f}%)"
