"""Statistics collection speed against the baseline a researcher writes today, on the same batches.

Ours: `analyses.collection.Runner` with collect's defaults (forward without LM head, plus act, pos_act, tok_act
of the first half of the layers and the example sets, kept on the device), resident, resident without
examples, and streamed. Baseline: Hugging Face torch `OPTForCausalLM` in eval mode under
`torch.inference_mode()`, with forward hooks on every `fc1` counting the same act, pos_act and tok_act
(`HFCounter`), once as the full model call (logits included) and once as the decoder alone (no LM head). Both load the
same random weights, and every figure (numpy matmul rate included) is measured in one invocation, the
variants interleaved batch round by batch round so that a shared machine's changing load hits them alike. In the
suite each side runs in a process of its own (`benchmarks.isolated`), as it would in a researcher's.

FLOPs convention (`model_flops_per_token`): 2 per weight of the decoder layers' matrix products (q, k, v,
o, fc1, fc2), plus 2 * 2 * seq_len * hidden per layer for the attention score and value products over the
full (not causal-halved) sequence; embeddings, biases, norms, softmax and the LM head are not counted.

The device suite (`benchmarks.device`) and the n-gram cost (`benchmarks.ngram_cost`) reuse the runners, batches
and timing of this module; the commit benchmark (`benchmarks.commit_idle`) its batches and empty stores.
"""

from __future__ import annotations

import dataclasses
import gc
import json
import os
import platform
import sys
import tempfile
import time
from typing import Callable

import jax
import numpy as np

from analyses.collection import values
from benchmarks import floor
from benchmarks.conversion import peak_rss
from benchmarks.isolated import Worker
from benchmarks.isolated import variants as worker_variants
from opt_jax import heap
from opt_jax.config import OPTConfig
from opt_jax.errors import InputError
from opt_jax.model import param_shapes


@dataclasses.dataclass
class Models:
    """One set of random weights, as our converted checkpoint and as a torch `OPTForCausalLM`."""

    config: OPTConfig
    hf_dir: str
    converted_dir: str
    hf_model: object  # transformers.OPTForCausalLM, float32, eval mode


def build_models(config: OPTConfig, directory: str, seed: int = 0) -> Models:
    """Random weights -> HF checkpoint -> our converted checkpoint, plus the torch model loaded from the same file."""
    from opt_jax.hf.conversion import convert
    from opt_jax.hf.export import export_hf
    from opt_jax.model import init_params

    params = init_params(config, seed)
    hf_dir = export_hf(config, params, os.path.join(directory, "hf"))
    del params
    converted_dir = convert(hf_dir, os.path.join(directory, "converted"), verbose=False)
    return Models(config, hf_dir, converted_dir, load_hf(hf_dir))


def load_hf(hf_dir: str):
    """The torch `OPTForCausalLM` of an HF checkpoint directory, float32, eval mode."""
    import torch
    import transformers

    return transformers.OPTForCausalLM.from_pretrained(hf_dir, dtype=torch.float32).eval()


def batch_size_for(seq_len: int, tokens_per_batch: int) -> int:
    """Sequences per batch so that a batch holds about tokens_per_batch tokens (at least one sequence)."""
    return max(1, round(tokens_per_batch / seq_len))


def make_batches(config: OPTConfig, seq_len: int, batch_size: int, count: int, seed: int = 0) -> list:
    """`count` batches of random full-length windows (BOS first, no padding): [(ids int32, mask bool)]."""
    rng = np.random.default_rng([seed, seq_len])
    out = []
    for _ in range(count):
        ids = rng.integers(3, config.vocab_size, (batch_size, seq_len), dtype=np.int32)  # [b, s]
        ids[:, 0] = config.bos_token_id
        mask = np.ones((batch_size, seq_len), bool)  # [b, s]
        out.append((ids, mask))
    return out


def decoder_matmul_params(config: OPTConfig) -> int:
    """Weights of the decoder layers' matrix products (q, k, v, o, fc1, fc2), summed over layers."""
    return sum(int(np.prod(shape)) for path, shape in param_shapes(config).items()
               if path.startswith("layers/") and path.endswith("/weight") and "norm" not in path)


def model_flops_per_token(config: OPTConfig, seq_len: int) -> int:
    """Forward FLOPs per token without LM head: 2 * decoder matmul weights + 2 * 2 * seq_len * hidden per layer."""
    return 2 * decoder_matmul_params(config) + 4 * seq_len * config.hidden_size * config.num_hidden_layers


def numpy_matmul_rate(n: int = 2048, repeats: int = 5) -> float:
    """FLOP/s of a float32 n x n @ n x n `np.dot` (best of `repeats`, 2 * n^3 FLOPs each)."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n), dtype=np.float32)  # [n, n]
    b = rng.standard_normal((n, n), dtype=np.float32)  # [n, n]
    np.dot(a, b)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        np.dot(a, b)
        best = min(best, time.perf_counter() - start)
    return 2 * n ** 3 / best


def _rate(batches: list, seconds: list[float]) -> dict:
    tokens = int(sum(mask.sum() for _, mask in batches))
    total = float(sum(seconds))
    return {"tokens": tokens, "seconds": total, "tokens_per_s": tokens / total,
            "step_seconds": [float(f"{s:.4g}") for s in seconds]}  # 4 digits: a tiny step is not 0


def _ours_runner(model, config: OPTConfig, batch_shape: tuple[int, int], offload: bool, group_size: int | None,
                 chunk_batches: int, ngram_orders: tuple[int, ...] = (), token_layers: tuple[int, ...] | None = None,
                 examples: int = 16, value_bins_per_octave: int = 2, quantile_examples: int = 0,
                 mesh: str | None = None):
    from analyses.collection import Options, Runner, make_plan
    from analyses.collection.ngrams import NgramTable

    batch_size, seq_len = batch_shape
    options = Options(seq_len=seq_len, batch_size=batch_size, offload=offload, ngram_orders=tuple(ngram_orders),
                      group_size=group_size if offload else None, chunk_batches=chunk_batches,
                      token_layers=token_layers, examples=examples, value_bins_per_octave=value_bins_per_octave,
                      quantile_examples=quantile_examples, mesh=mesh, verbose=False)
    plan = make_plan(config, options)
    ngrams = NgramTable(ngram_orders, len(plan.token_layers), config.ffn_dim, config.vocab_size,
                        max_pairs=2**62) if ngram_orders else None
    return Runner(model, plan, options, ngrams=ngrams)


class Ours:
    """Our collection as a timed variant: `Runner.run` + `wait`, one batch per step (resident) or chunks (streamed).

    `model` is a converted checkpoint directory or an `analyses.collection.Weights`.
    """

    def __init__(self, model, config: OPTConfig, batch_shape: tuple[int, int], offload: bool = False,
                 group_size: int | None = 4, chunk_batches: int = 2, ngram_orders: tuple[int, ...] = (),
                 token_layers: tuple[int, ...] | None = None, examples: int = 16, value_bins_per_octave: int = 2,
                 quantile_examples: int = 0, mesh: str | None = None):
        self.runner = _ours_runner(model, config, batch_shape, offload, group_size, chunk_batches, ngram_orders,
                                   token_layers, examples, value_bins_per_octave, quantile_examples, mesh)
        self.chunk = chunk_batches if offload else 1
        self.batch_size = batch_shape[0]
        self.windows = 0  # windows run so far: each batch's are numbered on, as in a run (new to the sample)
        self.info = {"offload": offload, "chunk_batches": self.chunk,
                     "groups": [[g.start, g.stop] for g in self.runner.groups]}

    def step(self, batches: list) -> float:
        """Seconds to add len(batches) <= chunk batches into the device counters, their windows numbered on from
        the previous step's (the random sample's ranks hash the window: repeated numbers would repeat them)."""
        first = [self.windows + j * self.batch_size for j in range(len(batches))]
        self.windows += len(batches) * self.batch_size
        start = time.perf_counter()
        self.runner.run(batches, first)
        self.runner.wait()
        return time.perf_counter() - start

    def close(self) -> None:
        self.runner.close()
        del self.runner
        gc.collect()


class HFCounter:
    """Forward hooks on every decoder layer's fc1 counting what our default run counts, in int32 as ours does:
    act [L, ffn] and pos_act [L, seq, ffn] over real tokens (BOS included), tok_act [T, vocab, ffn] of the
    token layers over real non-BOS tokens (`index_add_` of the fired rows at their token ids), and value_hist
    [L, ffn, bins] of the fired values in our bins (`analyses.collection.values`: the float32 exponent and top
    mantissa bits, `bincount` of the fired cells; `per_octave` 0: none).

    Counts only while `mask` and `ids` are set (by `hf_step`, for its forward), so several counters can hook
    one model; `close` removes the hooks. pos_act sums the batch axis and act sums pos_act's sequence axis.
    """

    def __init__(self, model, seq_len: int, token_layers=(), per_octave: int = values.PER_OCTAVE):
        import torch

        layers = model.model.decoder.layers
        ffn = layers[0].fc1.out_features
        vocab = model.config.vocab_size
        self.token_layers = tuple(token_layers)
        self.act = torch.zeros(len(layers), ffn, dtype=torch.int32)  # [l, f]
        self.pos_act = torch.zeros(len(layers), seq_len, ffn, dtype=torch.int32)  # [l, s, f]
        self.tok_act = torch.zeros(len(self.token_layers), vocab, ffn, dtype=torch.int32)  # [t, v, f]
        self.per_octave = per_octave
        self.bins = values.num_bins(per_octave) if per_octave else 0
        self.value_hist = torch.zeros(len(layers), ffn, self.bins, dtype=torch.int32)  # [l, f, bins]
        self.mask = self.ids = None  # bool [b, s], int64 [b, s]
        self.hooks = [layer.fc1.register_forward_hook(self._hook(l)) for l, layer in enumerate(layers)]

    def _hook(self, layer: int):
        import torch

        t = self.token_layers.index(layer) if layer in self.token_layers else None

        def hook(module, inputs, out):  # out: [b * s, f] (HF flattens tokens before fc1)
            if self.mask is None:
                return
            b, s = self.mask.shape
            fired = (out.view(b, s, -1) > 0) & self.mask[:, :, None]  # [b, s, f]
            pos = fired.sum(0, dtype=self.pos_act.dtype)  # [s, f]
            self.pos_act[layer] += pos
            self.act[layer] += pos.sum(0, dtype=self.act.dtype)  # [f]
            if t is not None:
                rows = fired[:, 1:].reshape(b * (s - 1), -1).to(self.tok_act.dtype)  # [b * (s - 1), f], no BOS
                self.tok_act[t].index_add_(0, self.ids[:, 1:].reshape(-1), rows)  # [v, f]
            if self.bins:  # our bins from the float32 bits (`values.bin_index`), counted where it fired
                m = self.per_octave.bit_length() - 1
                bits = out.view(b, s, -1).contiguous().view(torch.int32)  # [b, s, f]
                index = ((bits >> (23 - m)) - ((127 + values.LOWEST) << m) + 1).clamp_(0, self.bins - 1)
                index += torch.arange(bits.shape[-1], dtype=torch.int32) * self.bins  # [b, s, f]: neuron * bins + bin
                counts = torch.bincount(index[fired], minlength=self.value_hist[layer].numel())  # [f * bins]
                self.value_hist[layer] += counts.view(-1, self.bins).to(torch.int32)  # [f, bins]
        return hook


    def close(self) -> None:
        for h in self.hooks:
            h.remove()


def hf_step(model, counter: HFCounter, ids: np.ndarray, mask: np.ndarray, decoder_only: bool) -> None:
    """One hooked torch forward: the full model (logits too) or the decoder alone (no LM head, no cache)."""
    import torch

    with torch.inference_mode():
        ids_t = torch.from_numpy(ids.astype(np.int64))  # [b, s]
        mask_t = torch.from_numpy(mask.astype(np.int64))  # [b, s]
        counter.mask, counter.ids = mask_t.bool(), ids_t  # [b, s] each
        try:
            if decoder_only:
                model.model.decoder(input_ids=ids_t, attention_mask=mask_t, use_cache=False)
            else:
                model(input_ids=ids_t, attention_mask=mask_t)
        finally:
            counter.mask = counter.ids = None


class HF:
    """The hooked torch baseline as a timed variant: one forward per batch, full model or decoder only."""

    chunk = 1

    def __init__(self, model, seq_len: int, decoder_only: bool, token_layers=(), counter: HFCounter | None = None):
        """`counter`: an `HFCounter` shared with other variants (its tok_act alone is 3.7 GB at 125m), else
        one of its own."""
        self.model, self.decoder_only = model, decoder_only
        self.owned = counter is None
        self.counter = counter or HFCounter(model, seq_len, token_layers)
        self.info = {"decoder_only": decoder_only, "attn_implementation": model.config._attn_implementation}

    def step(self, batches: list) -> float:
        """Seconds of the hooked forwards of these batches."""
        start = time.perf_counter()
        for ids, mask in batches:
            hf_step(self.model, self.counter, ids, mask, self.decoder_only)
        return time.perf_counter() - start

    def close(self) -> None:
        if self.owned:
            self.counter.close()


def time_interleaved(variants: dict, batches: list, warmup: int, matmul_n: int | None = None,
                     log: Callable[[str], None] | None = None) -> dict:
    """Tokens/s of each variant on batches[warmup:], interleaved round by round so load drift hits all alike.

    Each variant first runs the warm-up batches (one per step: this compiles everything). Then each round
    takes the next max(chunk) batches and gives them to every variant in turn (the order rotating between
    rounds), followed by one numpy matmul sample (`matmul_n`, best of 3) when asked. Returns
    {name: rate record} plus "numpy_samples" (FLOP/s, one per round); `log` hears about each round.
    """
    for variant in variants.values():
        for batch in batches[:warmup]:
            variant.step([batch])
    timed = batches[warmup:]
    size = max(v.chunk for v in variants.values())
    names = list(variants)
    seconds = {name: [] for name in names}
    samples = []
    rounds = range(0, len(timed), size)
    for r, i in enumerate(rounds):
        round_batches = timed[i:i + size]
        spent = {}
        for name in names[r % len(names):] + names[:r % len(names)]:
            v = variants[name]
            steps = [v.step(round_batches[j:j + v.chunk]) for j in range(0, len(round_batches), v.chunk)]
            seconds[name] += steps
            spent[name] = sum(steps)
        if matmul_n:
            samples.append(numpy_matmul_rate(matmul_n, repeats=3))
        if log:
            log(f"round {r + 1}/{len(rounds)}: " + ", ".join(f"{n} {t:.2f}s" for n, t in spent.items())
                + (f", numpy {samples[-1] / 1e9:.0f} GFLOP/s" if matmul_n else ""))
    out = {name: _rate(timed, seconds[name]) | variants[name].info for name in names}
    return out | {"numpy_samples": samples}


def ours_counts(converted_dir: str, config: OPTConfig, batch: tuple, token_layers: tuple[int, ...] = ()) -> dict:
    """act [L, ffn], pos_act [L, seq, ffn], tok_act [T, vocab, ffn] and value_hist [L, ffn, bins] (int64) of a fresh
    resident Runner (collect's defaults, no examples) after one batch."""
    runner = _ours_runner(converted_dir, config, batch[0].shape, False, None, 1, token_layers=token_layers,
                          examples=0)
    runner.run([batch])
    runner.wait()
    deltas = runner.counters.deltas()
    out = {"act": np.asarray(deltas["act"], np.int64),  # [l, f]
           "value_hist": np.asarray(deltas["value_hist"], np.int64),  # [l, f, bins]
           "pos_act": np.stack([runner.counters.layer_counts("pos_act", l) for l in range(runner.plan.num_layers)]),
           "tok_act": np.zeros((len(token_layers), config.vocab_size, config.ffn_dim), np.int32)}  # [t, v, f]
    for t in range(len(token_layers)):  # a layer at a time: int64 copies of them all would be 7.4 GB at 125m
        out["tok_act"][t] = runner.counters.layer_counts("tok_act", t)
    del runner, deltas
    gc.collect()
    return out  # pos_act: [l, s, f], tok_act: [t, v, f]


def hf_counts(model, batch: tuple, token_layers: tuple[int, ...] = ()) -> dict:
    """act [L, ffn], pos_act [L, seq, ffn], tok_act [T, vocab, ffn] and value_hist [L, ffn, bins] (int64) of the
    hooked torch decoder after one batch."""
    ids, mask = batch
    counter = HFCounter(model, ids.shape[1], token_layers)
    try:
        hf_step(model, counter, ids, mask, decoder_only=True)
    finally:
        counter.close()
    return {"act": counter.act.numpy().astype(np.int64), "pos_act": counter.pos_act.numpy().astype(np.int64),
            "value_hist": counter.value_hist.numpy().astype(np.int64), "tok_act": counter.tok_act.numpy()}  # tok_act int32, as counted (3.7 GB at 125m)


def agreement(ours: dict, hf: dict, tokens: int) -> dict:
    """Fraction of equal counts (act, pos_act, tok_act, value_hist), the largest act difference, the fraction of
    neurons firing."""
    return {"act_agreement": float(np.mean(ours["act"] == hf["act"])),
            "value_hist_agreement": float(np.mean(ours["value_hist"] == hf["value_hist"])),
            "pos_act_agreement": float(np.mean(ours["pos_act"] == hf["pos_act"])),
            "tok_act_agreement": float(np.mean([np.mean(a == b) for a, b in zip(ours["tok_act"], hf["tok_act"])]))
            if len(hf["tok_act"]) else None,  # layer by layer: no [t, v, f] temporary
            "act_max_abs_diff": int(np.max(np.abs(ours["act"] - hf["act"]))),
            "active_fraction": float(hf["act"].sum() / (tokens * hf["act"].size))}


def empty_store(plan, root: str):
    """A fresh statistics store at `root` for a run of `plan` (what a commit writes into): collection's own
    (`analyses.collection.collect._open_store`), without n-grams."""
    from analyses.collection.collect import _open_store
    from analyses.collection.plan import Options

    return _open_store(root, {}, plan, Options())


def commit_seconds(runner, directory: str) -> float:
    """Seconds of one commit of a runner's counters (and example sets) into a fresh store, in the step loop:
    collection's own commit (`analyses.collection.collect._commit`)."""
    from analyses.collection.collect import _commit, _zero_host

    store = empty_store(runner.plan, directory)
    start = time.perf_counter()
    _commit(store, runner.counters, _zero_host(runner.plan), {"next_batch": 0}, False, None)
    return time.perf_counter() - start


def machine() -> dict:
    """What this ran on: CPU model, core count, library versions."""
    import torch
    import transformers

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "jax": jax.__version__, "jax_backend": jax.default_backend(),
            "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
            "transformers": transformers.__version__, "numpy": np.__version__}


def _default_log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _default_emit(record: dict) -> None:
    print(json.dumps(record), flush=True)


VARIANTS = ("ours_resident", "ours_no_examples", "ours_streamed", "hf_full", "hf_decoder")
FLOOR_PARTS = (*(f"floor_products_{k}" for k in floor.KERNELS), "floor_attention_torch", "floor_attention_xla")


def _allocator(keep_freed_memory: bool) -> None:
    """A worker's malloc setting, made before it builds anything: freed memory kept (`opt_jax.heap`, the step-loop
    scripts' default on the CPU) or glibc's default. Every side of the suite gets the same, so that the allocator
    is not what differs (BENCHMARKS.md, "Freed memory kept")."""
    if keep_freed_memory:
        why_not = heap.keep_freed_memory()
        if why_not:
            raise InputError(f"--keep_freed_memory: {why_not}; run the suite with --nokeep_freed_memory")


def _build_ours(converted_dir: str, config: OPTConfig, shape: tuple[int, int], name: str,
                keep_freed_memory: bool = True, **options) -> dict:
    """A worker's variants (`benchmarks.isolated`): one `Ours` runner."""
    _allocator(keep_freed_memory)
    return {name: Ours(converted_dir, config, shape, **options)}


def _build_hf(hf_dir: str, seq_len: int, token_layers: tuple[int, ...], keep_freed_memory: bool = True) -> dict:
    """A worker's variants: HF full and HF decoder, hooked, counting into one `HFCounter`."""
    _allocator(keep_freed_memory)
    model = load_hf(hf_dir)
    counter = HFCounter(model, seq_len, token_layers)
    return {"hf_full": HF(model, seq_len, decoder_only=False, counter=counter),
            "hf_decoder": HF(model, seq_len, decoder_only=True, counter=counter)}


def _build_floor(hf_dir: str, batch: int, seq_len: int, seed: int, keep_freed_memory: bool = True) -> dict:
    """A worker's variants: the floor's timed parts (`benchmarks.floor.variants`)."""
    _allocator(keep_freed_memory)
    return floor.variants(load_hf(hf_dir), batch, seq_len, seed)


def _commit_variant(variant: "Ours", directory: str) -> float:
    return commit_seconds(variant.runner, directory)


def _peak_rss(variant) -> int:
    return peak_rss()


def run_suite(config: OPTConfig, seq_lens=(512, 2048), tokens_per_batch: int = 4096, batches: int = 6,
              warmup: int = 1, group_size: int = 4, chunk_batches: int = 2, workdir: str | None = None,
              seed: int = 0, matmul_n: int = 2048, keep_freed_memory: bool = True,
              emit: Callable[[dict], None] | None = _default_emit,
              log: Callable[[str], None] | None = _default_log) -> list[dict]:
    """The cpu suite: one record per measurement, one row per seq_len.

    Per seq_len, two phases: the side by side (ours resident and without examples, HF full and decoder, the floor's
    kernels) interleaved batch by batch on the same batches; then ours streamed against the same resident runner
    on fresh batches, in rounds of `chunk_batches`. Every worker keeps freed memory (`keep_freed_memory`, as the
    collection script does on the CPU) or none does."""
    if batches < 1 or warmup < 0:
        raise InputError(f"need batches >= 1 and warmup >= 0, got batches={batches}, warmup={warmup}")
    import torch

    if jax.default_backend() != "cpu":
        raise InputError(f"the cpu suite needs JAX on the CPU, but its default backend is "
                           f"{jax.default_backend()!r}; set JAX_PLATFORMS=cpu")
    torch.set_num_threads(os.cpu_count())
    emit = emit or (lambda record: None)
    log = log or (lambda message: None)
    t0 = time.perf_counter()

    def say(message):
        log(f"[{time.perf_counter() - t0:7.1f}s] {message}")

    def record(kind, seq_len=None, **fields):
        r = {"measurement": kind} | ({"seq_len": seq_len} if seq_len is not None else {}) | fields
        emit(r)
        return r

    record("machine", **machine())
    from analyses.collection import Options, make_plan

    token_layers = make_plan(config, Options()).token_layers  # our default: the first half of the layers
    rows = []
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        say(f"building the model ({config.num_hidden_layers} layers, hidden {config.hidden_size}, "
            f"ffn {config.ffn_dim}, random weights) in {tmp} ...")
        models = build_models(config, tmp, seed)
        for seq_len in seq_lens:
            b = batch_size_for(seq_len, tokens_per_batch)
            data = make_batches(config, seq_len, b, warmup + batches, seed)
            say(f"seq {seq_len} x batch {b}: starting a process for each side (ours, ours without examples, HF "
                "full and decoder, the floor's kernels) ...")
            # Each side in a process of its own (`benchmarks.isolated`): in one process the two sides' allocator
            # state, memory and threads changed each other's step times by 10-25% (BENCHMARKS.md, 2026-12-07).
            shape = (b, seq_len)
            kept = keep_freed_memory
            workers = [Worker(_build_ours, models.converted_dir, config, shape, name="ours_resident",
                              keep_freed_memory=kept),
                       Worker(_build_ours, models.converted_dir, config, shape, name="ours_no_examples", examples=0,
                              keep_freed_memory=kept),
                       Worker(_build_hf, models.hf_dir, seq_len, token_layers, keep_freed_memory=kept),
                       Worker(_build_floor, models.hf_dir, b, seq_len, seed, keep_freed_memory=kept)]
            resident = workers[0]
            try:
                side = worker_variants(workers)
                say(f"  side by side: warm-up ({warmup} batch each), then {batches} timed batches, the {len(side)} "
                    "variants interleaved batch by batch, one numpy matmul sample per round ...")
                timed = time_interleaved(side, data, warmup, matmul_n, log=lambda m: say("  " + m))
                side_peak = sum(w.call(w.names()[0], _peak_rss) for w in workers)
                for w in workers[1:]:
                    w.close()
                workers = [resident, Worker(_build_ours, models.converted_dir, config, shape, name="ours_streamed",
                                            offload=True, group_size=group_size, chunk_batches=chunk_batches,
                                            keep_freed_memory=kept)]
                say(f"  streamed against resident: {batches} more batches, interleaved in rounds of "
                    f"{chunk_batches} ...")
                pair = time_interleaved(worker_variants(workers),
                                        make_batches(config, seq_len, b, warmup + batches, seed + 1), warmup,
                                        log=lambda m: say("  " + m))
                commit = resident.call("ours_resident", _commit_variant, os.path.join(tmp, f"commit-{seq_len}"))
                workers_peak = max(side_peak, sum(w.call(w.names()[0], _peak_rss) for w in workers))
            finally:
                for w in workers:
                    w.close()
            timed["ours_streamed"] = pair["ours_streamed"]
            rounds = {name: np.array(timed[name]["step_seconds"]) for name in ("ours_resident", "hf_decoder")}
            common = {"batch_size": b, "warmup": warmup, "timed_batches": batches}
            for name in VARIANTS:
                record(name, seq_len, **common, **timed[name])
                say(f"  {name}: {timed[name]['tokens_per_s']:.0f} tok/s")
            per_batch = {name: float(np.median(timed[name]["step_seconds"])) for name in (*FLOOR_PARTS, "hf_decoder",
                                                                                        "ours_resident", "ours_no_examples")}
            for name in FLOOR_PARTS:
                record(name, seq_len, **common, **timed[name])
            bound = record("floor", seq_len, **floor.floor_seconds(per_batch), hf_decoder_s=per_batch["hf_decoder"],
                           ours_s=per_batch["ours_resident"])
            say(f"  floor {bound['floor_s']:.2f} s a batch ({bound['floor_products']} products, "
                f"{bound['floor_attention']} attention): HF decoder / floor {per_batch['hf_decoder'] / bound['floor_s']:.2f}")
            record("commit", seq_len, seconds=commit)
            say(f"  one commit of the resident runner's counters: {commit:.2f} s")
            for i, sample in enumerate(timed["numpy_samples"]):
                record("numpy_matmul", seq_len, n=matmul_n, round=i, flops_per_s=sample)
            numpy_rate = float(np.median(timed["numpy_samples"]))
            say(f"  numpy matmul {numpy_rate / 1e9:.1f} GFLOP/s (median of {len(timed['numpy_samples'])} rounds); "
                "checking act counts on the first timed batch ...")
            first = data[warmup]
            ours = ours_counts(models.converted_dir, config, first, token_layers)
            hf = hf_counts(models.hf_model, first, token_layers)
            agree = record("act_agreement", seq_len, **agreement(ours, hf, int(first[1].sum())))
            del ours, hf
            say(f"  act agreement {agree['act_agreement']:.6f}")
            flops = model_flops_per_token(config, seq_len)
            rows.append({
                "seq_len": seq_len, "batch_size": b, "timed_batches": batches, "flops_per_token": flops,
                "token_layers": list(token_layers), "keep_freed_memory": keep_freed_memory,
                **{f"{name}_tok_s": timed[name]["tokens_per_s"] for name in VARIANTS},
                "commit_s": commit, "batch_s": float(np.median(timed["ours_resident"]["step_seconds"])),
                "act_agreement": agree["act_agreement"], "pos_act_agreement": agree["pos_act_agreement"],
                "tok_act_agreement": agree["tok_act_agreement"], "value_hist_agreement": agree["value_hist_agreement"],
                "numpy_flops_per_s": numpy_rate, "numpy_samples": len(timed["numpy_samples"]), "matmul_n": matmul_n,
                **{f"{name}_s": per_batch[name] for name in FLOOR_PARTS},
                "floor_s": bound["floor_s"], "floor_kernels": f"{bound['floor_products']} + {bound['floor_attention']}",
                "hf_decoder_s": per_batch["hf_decoder"], "ours_s": per_batch["ours_resident"],
                "ours_no_examples_s": per_batch["ours_no_examples"],
                "workers_peak_rss_bytes": workers_peak,
                "ours_vs_hf_decoder_median_round": float(np.median(rounds["hf_decoder"] / rounds["ours_resident"])),
                "streamed_time_vs_resident": (pair["ours_resident"]["tokens_per_s"]
                                              / pair["ours_streamed"]["tokens_per_s"]),
            })
        del models
        gc.collect()
    rss = peak_rss()
    for row in rows:
        row |= {
            "ours_vs_hf_full": row["ours_resident_tok_s"] / row["hf_full_tok_s"],
            "ours_vs_hf_decoder": row["ours_resident_tok_s"] / row["hf_decoder_tok_s"],
            "no_examples_vs_hf_decoder": row["ours_no_examples_tok_s"] / row["hf_decoder_tok_s"],
            "examples_time": row["ours_no_examples_tok_s"] / row["ours_resident_tok_s"],
            "ours_flops_per_s": row["ours_resident_tok_s"] * row["flops_per_token"],
            "peak_rss_bytes": rss + row["workers_peak_rss_bytes"],
        }
        row["fraction_of_numpy"] = row["ours_flops_per_s"] / row["numpy_flops_per_s"]
        row["best_possible_vs_hf_decoder"] = row["hf_decoder_s"] / row["floor_s"]
        record("summary", **row)
    say(f"done; peak RSS {max(r['peak_rss_bytes'] for r in rows) / 1e9:.2f} GB (this process and one phase's workers)")
    return rows


def floor_table(rows: list[dict]) -> str:
    """The floor under any implementation (`benchmarks.floor`) beside the baseline and ours, seconds a batch."""
    lines = ["| seq len | products numpy / torch / XLA s | attention torch SDPA / ours s | floor s (kernels) "
             "| HF decoder s | ours s | ours, no examples s | HF decoder / floor | ours / floor |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(
            f"| {r['seq_len']} | {r['floor_products_numpy_s']:.2f} / {r['floor_products_torch_s']:.2f} / "
            f"{r['floor_products_xla_s']:.2f} | {r['floor_attention_torch_s']:.2f} / {r['floor_attention_xla_s']:.2f} "
            f"| {r['floor_s']:.2f} ({r['floor_kernels']}) | {r['hf_decoder_s']:.2f} | {r['ours_s']:.2f} "
            f"| {r['ours_no_examples_s']:.2f} | **{r['best_possible_vs_hf_decoder']:.2f}** | {r['ours_s'] / r['floor_s']:.2f} |")
    return "\n".join(lines + [
        "",
        "Seconds a batch (median step). The floor is the work any exact float32 forward to the last fc1 must do "
        "(every layer's q, k, v, o, fc1 products, every fc2 but the last, causal attention) on the fastest of the "
        "kernels measured, with no norm, bias, embedding or counter; 'HF decoder / floor' is therefore the most "
        "any implementation of the same statistics could be ahead of the baseline on this machine."])


def markdown_table(rows: list[dict]) -> str:
    """The rows of `run_suite` as a markdown table, with what each column means and the numpy rate below it."""
    lines = ["| seq len | batch | ours tok/s | ours, no examples | ours streamed | HF decoder tok/s | HF full tok/s "
             "| ours / HF decoder (median round) | ours / HF full | no examples / HF decoder | examples cost (time) "
             "| commit s (batches) | ours GFLOP/s (of numpy) | agreement act / pos_act / tok_act |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        tok = "-" if r["tok_act_agreement"] is None else f"{r['tok_act_agreement']:.6f}"
        lines.append(
            f"| {r['seq_len']} | {r['batch_size']} | {r['ours_resident_tok_s']:.0f} | {r['ours_no_examples_tok_s']:.0f} "
            f"| {r['ours_streamed_tok_s']:.0f} | {r['hf_decoder_tok_s']:.0f} | {r['hf_full_tok_s']:.0f} "
            f"| {r['ours_vs_hf_decoder']:.2f} ({r['ours_vs_hf_decoder_median_round']:.2f}) | {r['ours_vs_hf_full']:.2f} | {r['no_examples_vs_hf_decoder']:.2f} "
            f"| {r['examples_time']:.2f}x | {r['commit_s']:.2f} ({r['commit_s'] / r['batch_s']:.1f}) "
            f"| {r['ours_flops_per_s'] / 1e9:.1f} ({100 * r['fraction_of_numpy']:.0f}%) "
            f"| {r['act_agreement']:.6f} / {r['pos_act_agreement']:.6f} / {tok} |")
    if rows:
        lines += ["", floor_table(rows)]
        lines += [
            "",
            "Every variant counts the same statistics: act, pos_act and the value histogram (36 bins) of every layer "
            f"over real tokens, tok_act of layers {rows[0]['token_layers']} over real non-BOS tokens (the agreement "
            f"of the value histograms: " + ", ".join(f"{r['value_hist_agreement']:.6f} at seq {r['seq_len']}"
                                                     for r in rows) + "). Ours also keeps the example sets (16 top and "
            "16 sampled activations per neuron, its default), which the baseline does not; 'no examples' is ours "
            "without them. HF decoder calls `model.model.decoder` (no LM head, the like-for-like comparison), HF full "
            "the usual `model(ids, mask)` (logits too). Each side ran in a process of its own, "
            + ("every one keeping freed memory (`opt_jax.heap`: the collection script's default on the CPU; "
               "HF and the floor given the same malloc setting). " if rows[0]["keep_freed_memory"] else
               "every one with glibc's default malloc settings (--nokeep_freed_memory). ")
            + "Commit: one synchronous commit of the resident runner's "
            "counters into a fresh store, in seconds and in batches of ours. Median round: the median over the timed "
            "batches of HF decoder's seconds over ours' on the same batch. 'Ours streamed' ran in a second phase, "
            "interleaved with the resident runner on fresh batches (its rate there gives streamed / resident), so "
            "that the side by side holds three tok_act tables, not five.",
            f"Machine rate: numpy float32 `np.dot` of {rows[0]['matmul_n']}^3 (best of 3), sampled once per round "
            "between the variants, median: " + ", ".join(
                f"{r['numpy_flops_per_s'] / 1e9:.1f} GFLOP/s during seq {r['seq_len']}" for r in rows) + ".",
            "FLOPs per token: 2 per decoder-layer matmul weight plus 2 * 2 * seq * hidden of attention per layer "
            "(full sequence, no causal halving; no LM head): "
            + ", ".join(f"{r['flops_per_token'] / 1e6:.1f} M at seq {r['seq_len']}" for r in rows) + ".",
            f"Peak RSS: {max(r['peak_rss_bytes'] for r in rows) / 1e9:.2f} GB (this process's peak plus the peaks of "
            "the worker processes of one phase: an upper bound of what the machine held at once).",
        ]
    return "\n".join(lines)


def flag_cost(config: OPTConfig, without: dict, with_: dict, label: str, seq_lens=(512, 2048),
              tokens_per_batch: int = 4096, batches: int = 3, warmup: int = 1, workdir: str | None = None,
              seed: int = 0, log: Callable = _default_log) -> list[tuple[int, int, dict]]:
    """Resident collection (`Ours`) with the flags `without` and with `with_`, interleaved on the same batches, per
    seq_len: [(seq_len, batch_size, `time_interleaved`'s result for "without" and "with")]."""
    out = []
    with tempfile.TemporaryDirectory(dir=workdir) as directory:
        models = build_models(config, directory, seed)
        for seq_len in seq_lens:
            batch_size = batch_size_for(seq_len, tokens_per_batch)
            data = make_batches(config, seq_len, batch_size, warmup + batches, seed)
            shape = (batch_size, seq_len)
            variants = {"without": Ours(models.converted_dir, config, shape, **without),
                        "with": Ours(models.converted_dir, config, shape, **with_)}
            log(f"{label}: seq {seq_len} x batch {batch_size}, {batches} timed batches")
            result = time_interleaved(variants, data, warmup, log=log)
            for v in variants.values():
                v.close()
            out.append((seq_len, batch_size, result))
    return out
