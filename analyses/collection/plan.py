"""What a collection run collects, and whether it fits: the flags (`Options`), the plan they make for a
model (`make_plan`: layers, token layers, groups), and the memory check done before anything is allocated."""

from __future__ import annotations

import dataclasses

from analyses.collection import examples as ex
from analyses.collection import statistics as st
from analyses.collection import values
from analyses.collection.store import CHUNK_CELLS, WRITES_IN_FLIGHT
from opt_jax.errors import StatsError
from opt_jax.sharding import parse_mesh
from opt_jax import heap, streaming


@dataclasses.dataclass(frozen=True)
class Options:
    """Collection flags; those in IDENTITY must match to resume a run."""

    seq_len: int = 2048
    batch_size: int = 8
    max_tokens: int | None = None
    full_length_only: bool = False
    offload: bool = False
    group_size: int | None = None  # layers per streamed group (default: from device memory)
    chunk_batches: int = 4  # batches per streamed chunk (each group moves once per chunk)
    max_layers: int | None = None
    token_layers: tuple[int, ...] | None = None  # default: the first half of the model's layers
    dtype: str | None = None
    text_key: str = "text"
    ngram_orders: tuple[int, ...] = ()  # exact n-gram counts of the token layers, e.g. (2, 3); () for none
    ngram_max_pairs: int = 50_000_000  # distinct (n-gram, neuron) pairs kept in host memory, 16 B each
    ngram_candidates_from: str | None = None  # a finished run: track only neurons few tokens cover there
    ngram_max_coverage: int = 50  # ... at most this many tokens
    ngram_coverage_fraction: float = 0.95  # ... covering this fraction of the neuron's activations
    examples: int = 16  # example activations kept per neuron and set (strongest, uniform sample); 0 for none
    value_bins_per_octave: int = values.PER_OCTAVE  # bins per octave of value_hist (1, 2, 4 or 8; 0: none)
    quantile_examples: int = 0  # K examples per neuron and value bin, uniform in each (0: none; bins x K slots)
    flush_every_s: float = 300.0
    flush_every_batches: int | None = None
    background_commits: bool = True  # commits written behind the run when a snapshot of the counters fits
    background_ngrams: bool = True  # a batch's n-grams counted while the next batches run
    overwrite: bool = False
    process_index: int = 0
    process_count: int = 1
    mesh: str | None = None  # "data=A,neurons=B" (`opt_jax.sharding`); None: every local device on data
    verbose: bool = True


IDENTITY = ("seq_len", "batch_size", "full_length_only", "max_layers", "token_layers", "dtype", "text_key",
            "ngram_orders", "ngram_candidates_from", "ngram_max_coverage", "ngram_coverage_fraction", "examples",
            "value_bins_per_octave", "quantile_examples")


def make_plan(config, options: Options) -> st.Plan:
    """What a run with these options collects from a model of this config; refuses impossible options."""
    num_layers = min(options.max_layers or config.num_hidden_layers, config.num_hidden_layers)
    token_layers = options.token_layers
    if token_layers is None:
        token_layers = tuple(range(min(config.num_hidden_layers // 2, num_layers)))
    token_layers = tuple(sorted(set(token_layers)))
    bad = [l for l in token_layers if not 0 <= l < num_layers]
    if bad:
        raise StatsError(f"token_layers {bad} are outside the {num_layers} collected layers")
    if options.seq_len > config.max_position_embeddings:
        raise StatsError(f"seq_len {options.seq_len} exceeds the model's {config.max_position_embeddings} positions")
    if options.seq_len < 2:
        raise StatsError(f"seq_len must be at least 2 (BOS and one token), got {options.seq_len}")
    if options.examples < 0:
        raise StatsError(f"examples must be 0 (none) or a number of examples per neuron, got {options.examples}")
    if options.quantile_examples < 0:
        raise StatsError(f"quantile_examples must be 0 (none) or a number of examples per neuron and value bin, got "
                         f"{options.quantile_examples}")
    if options.quantile_examples and not (options.examples and options.value_bins_per_octave):
        raise StatsError("quantile_examples samples each bin of the value histogram and keeps its windows with the "
                         "other examples: it needs --examples > 0 and --value_bins_per_octave > 0, got "
                         f"--examples {options.examples} and --value_bins_per_octave {options.value_bins_per_octave}")
    return st.Plan(config, num_layers, token_layers, options.seq_len, options.examples,
                   values.check(options.value_bins_per_octave), options.quantile_examples)


def working_bytes(plan: st.Plan, options: Options, itemsize: int) -> int:
    """An upper estimate of a step's temporaries: a layer's activations, masks and attention blocks, and in
    streamed mode the hidden states of every batch of the chunk (computed in `itemsize`-byte floats)."""
    config, tokens = plan.config, options.batch_size * plan.seq_len
    ffn = tokens * plan.ffn * (itemsize + 4 + 1)  # fc1 output, the int32 rows scattered into tok_act, the mask
    hidden = tokens * config.hidden_size * itemsize * 6  # residual, norms, q/k/v, attention and fc2 outputs
    attention = options.batch_size * config.num_attention_heads * min(plan.seq_len, 256) * plan.seq_len * 4 * 2
    chunk = options.chunk_batches * tokens * config.hidden_size * itemsize if options.offload else 0
    if plan.value_bins:  # a slice's flat (neuron, bin) indices, int32 (`values.count`), and the [ffn, bins] delta
        cells = options.batch_size * (plan.seq_len // values.chunks(options.batch_size, plan.seq_len))
        ffn += cells * plan.ffn * 4 + plan.ffn * values.num_bins(plan.value_bins) * 4
    if plan.examples:  # the top and random sets' update (block maxima, candidates and keys)
        ffn += ex.working_bytes(plan.seq_len, options.batch_size, plan.ffn, plan.examples)
    if plan.quantile:  # `examples.update_quantile`: a slice's (bin, rank, token) int32 [cells, ffn] x 3, the minima
        cells = options.batch_size * (plan.seq_len // values.chunks(options.batch_size, plan.seq_len))
        slots = plan.ffn * values.num_bins(plan.value_bins) * plan.quantile  # [ffn, bins, K]
        ffn += 3 * cells * plan.ffn * 4 + 10 * slots * 4  # rank and token [.., K], the merge's [.., 2K] x 4
    return ffn + hidden + attention + chunk


# Host memory of the interpreter, JAX and XLA's compiled programs beside the arrays (measured: about 1.5 GB).
RUNTIME_BYTES = 2 * 10**9


def flush_bytes() -> int:
    """Host memory of a commit: the blocks in flight, each at most one chunk (old, delta, sum) of int64."""
    return (WRITES_IN_FLIGHT + 3) * CHUNK_CELLS * 8


@dataclasses.dataclass(frozen=True)
class MemoryUse:
    """What a run needs where (bytes), from `memory_use`."""

    counters: int  # every group's counters (with one batch's packed masks when n-grams are counted)
    snapshot: int | None  # a second set of counters for background commits (None: not wanted)
    weights: int  # the layers on the device: all of them, or two groups in flight when streamed
    working: int  # a step's temporaries
    host: int  # host memory beside the device's: groups read ahead, a commit's blocks, the chunks' masks
    group: int  # the largest group's weights
    needed: int  # what must fit in `free`
    free: int  # the device's free memory (on the CPU: the available host memory)
    where: str  # the memory `free` is, in words
    on_host: bool  # the device is the host (the CPU)
    host_available: int
    split: int = 1  # with --mesh on accelerators, the neurons axis: the counters and weights above are 1/split

    def fits(self, budget: int | None = None) -> bool:
        """Whether the run fits: in the free memory, or in `budget` bytes of device memory when given."""
        return self.needed <= (self.free if budget is None else budget) and \
            (self.on_host or self.host <= self.host_available)


def memory_use(plan: st.Plan, groups: list[range], layer_bytes: int, options: Options, device,
               host_available: int | None = None) -> MemoryUse:
    """What a run with this plan and these layer groups needs of the device's memory and the host's, against what
    is free (see `check_memory`), computed without allocating anything."""
    on_host = shares_host(device)
    # With --mesh on accelerators, each device's share (`opt_jax.sharding`): 1/B of the counters and of the
    # weights plus the layers gathered whole, a step's temporaries for 1/A of the batch split B ways. On the CPU
    # the devices share the host's memory: the whole is counted there, as without --mesh.
    data, split = mesh_shape(options.mesh, on_host)
    batch = options.batch_size if options.ngram_orders and plan.token_layers else None
    counters = -(-st.accumulator_bytes(plan, groups, batch) // split)
    snapshot = -(-st.accumulator_bytes(plan, groups) // split) if options.background_commits else None
    masks = counters - -(-st.accumulator_bytes(plan, groups) // split) if batch else 0  # one batch's packed masks
    streamed = options.offload and len(groups) > 2
    itemsize = max(1, layer_bytes // streaming.layer_bytes(plan.config, 1))
    group = layer_bytes * max(len(g) for g in groups)  # on the host, read ahead: whole
    weights = device_weights(plan.config, plan.num_layers, max(len(g) for g in groups), layer_bytes, streamed, split)
    share = dataclasses.replace(options, batch_size=max(1, options.batch_size // data))
    working = -(-working_bytes(plan, share, itemsize) // split)
    if masks and options.background_ngrams and not options.offload:
        working += 2 * masks  # copies of the batch being counted and of the one just run
    # Groups read ahead: two; on an accelerator two pinned copies (`GroupStream` stages through page-locked
    # memory) and the read being staged.
    ahead = (2 if on_host else 3) * group if streamed else 0
    host = ahead + flush_bytes()  # groups read ahead, a commit's blocks
    if masks and options.offload:
        host += (2 if options.background_ngrams else 1) * options.chunk_batches * masks  # the chunks' masks
    if host_available is None:
        host_available = heap.host_available()
    free, where = free_memory(device, split, host_available)
    if on_host:
        # Loading the weights holds one group twice (read, then copied) before the counters exist.
        needed = max(weights + counters + working + host, weights + group) + RUNTIME_BYTES
    else:
        needed = weights + counters + working
    return MemoryUse(counters, snapshot, weights, working, host, group, needed, free, where, on_host, host_available,
                     split)


# Per device: the helpers every memory check of a run on a mesh shares (collection's, the contexts', the ablation's).

def shares_host(device) -> bool:
    """Whether `device` has no memory of its own to report (the CPU): its arrays are in the host's memory."""
    stats = device.memory_stats() if hasattr(device, "memory_stats") else None
    return not stats or "bytes_limit" not in stats


def mesh_shape(mesh: str | None, on_host: bool = False) -> tuple[int, int]:
    """(A, B): the parts of a batch and of the weights, neurons and counters that one device holds with `mesh`
    ("data=A,neurons=B", `opt_jax.sharding`; data left out: the rest of the local devices); (1, 1) without one,
    or on the CPU, where the devices share the host's memory and the whole is counted."""
    if mesh is None or on_host:
        return 1, 1
    import jax

    data, neurons = parse_mesh(mesh)
    return data or max(1, jax.local_device_count() // neurons), neurons


def device_weights(config, num_layers: int, group: int, layer_bytes: int, streamed: bool, split: int = 1) -> int:
    """Bytes of decoder layers (`layer_bytes` each, whole) on one device: all `num_layers`, or two groups of `group`
    in flight when `streamed`; on a neurons axis of `split` > 1, that device's share of each
    (`streaming.layer_bytes`: 1/split, the LayerNorms whole) plus two layers gathered whole (the one running and
    the next)."""
    if split == 1:
        return (2 * group if streamed else num_layers) * layer_bytes
    itemsize = max(1, layer_bytes // streaming.layer_bytes(config, 1))
    return (2 * group if streamed else num_layers) * streaming.layer_bytes(config, itemsize, split) + 2 * layer_bytes


def free_memory(device, split: int = 1, host_available: int | None = None) -> tuple[int, str]:
    """(bytes free, where in words) for a run's arrays on `device`: an accelerator's free memory (each device of a
    neurons axis of `split` when > 1), or on the CPU the host's available memory (`host_available`, default
    `opt_jax.heap.host_available()`)."""
    if shares_host(device):
        available = heap.host_available() if host_available is None else host_available
        return available, f"{device} (host memory, shared with the device)"
    stats = device.memory_stats()
    return stats["bytes_limit"] - stats.get("bytes_in_use", 0), \
        str(device) + (f" (each of the {split} devices of --mesh's neurons axis)" if split > 1 else "")


def group_layers(num_layers: int, layer_bytes: int, group_size: int | None, device) -> int:
    """Layers per streamed group: `group_size`, or by default as `streaming.group_size_for` sizes them for
    `device` (every layer on the CPU)."""
    if group_size:
        return group_size
    return streaming.group_size_for(_Sized(num_layers, layer_bytes), device)


class _Sized:
    """A stand-in layer source for `streaming.group_size_for`: only its size."""

    def __init__(self, num_layers: int, layer_bytes: int):
        self.num_layers, self.layer_bytes = num_layers, layer_bytes


def check_memory(plan: st.Plan, groups: list[range], layer_bytes: int, options: Options, device,
                 host_available: int | None = None) -> str | None:
    """Refuse, before allocating anything, a run that cannot fit in the device's or the host's memory; return
    where a background commit can keep its snapshot of the counters: "device", "host" or None (nowhere).

    On an accelerator: the counters, the weights on the device and a step's temporaries against its free
    memory, and the layer groups read ahead plus a commit's blocks against the host's. On the CPU the device
    is the host: all of it against the available host memory (`opt_jax.heap.host_available`), where a run that
    does not fit would otherwise be killed by the kernel. With `options.background_commits`, a second set of counters
    (without the n-gram masks) is then placed where it still fits, the device first: a commit writes that
    snapshot while the run counts into fresh counters. With n-grams counted in the background
    (`options.background_ngrams`), the masks of the batches being counted come on top: on the device when
    resident (two batches' copies), on the host when streamed (two chunks').
    """
    use = memory_use(plan, groups, layer_bytes, options, device, host_available)
    if use.needed > use.free:
        raise StatsError(too_large(use, plan) + " Collect fewer --token_layers per run (several runs, each with its "
                         "own --out, cover them all; scripts/study.py plans them and joins them), stream the weights "
                         "in smaller groups (--offload --group_size), use a 16-bit --dtype, or a smaller --batch_size")
    if not use.on_host and use.host > use.host_available:
        raise StatsError(f"host memory: the layer groups read ahead and a commit's blocks need {use.host / 1e9:.1f} "
                         f"GB; {use.host_available / 1e9:.1f} GB are available. Use a smaller --group_size")
    if use.snapshot is None:
        return None
    if use.needed + use.snapshot <= use.free:
        return "device"
    if not use.on_host and use.host + use.snapshot * use.split <= use.host_available:  # every device's share
        return "host"
    return None


def too_large(use: MemoryUse, plan: st.Plan, available: str | None = None) -> str:
    """What a run needs against what it may use (`available`, in words; default the device's free memory)."""
    token_layer = plan.vocab * plan.ffn * 4 // use.split
    available = available or f"{use.free / 1e9:.1f} GB are free"
    return (f"{use.where}: the counters ({use.counters / 1e9:.1f} GB, tok_act {len(plan.token_layers)} layers x "
            f"{token_layer / 1e9:.1f} GB of them), the weights on the device ({use.weights / 1e9:.1f} GB) and a "
            f"step's temporaries ({use.working / 1e9:.1f} GB)"
            + (f", the groups read ahead and a commit's blocks ({use.host / 1e9:.1f} GB)" if use.on_host else "")
            + f" need {use.needed / 1e9:.1f} GB; {available}.")


@dataclasses.dataclass(frozen=True)
class Run:
    """One run of a model's collection split by token layers: its `--token_layers`, `--max_layers` and `--examples`."""

    token_layers: tuple[int, ...]
    max_layers: int | None
    examples: int

    def options(self, options: Options) -> Options:
        """`options` for this run."""
        return dataclasses.replace(options, token_layers=self.token_layers, max_layers=self.max_layers,
                                   examples=self.examples)

    def to_json(self) -> dict:
        return {"token_layers": list(self.token_layers), "max_layers": self.max_layers, "examples": self.examples}

    @classmethod
    def from_json(cls, data: dict) -> "Run":
        return cls(tuple(data["token_layers"]), data["max_layers"], int(data["examples"]))


def plan_runs(config, options: Options, layer_bytes: int, device, budget: int | None = None,
              group_size: int | None = None, host_available: int | None = None) -> list[Run]:
    """The runs that together collect every token layer of `options` (default: the first half of the layers), as
    few as the memory allows (`memory_use`: the device's free memory, or `budget` bytes of it; layers of
    `layer_bytes`, streamed `group_size` at a time with `options.offload`). One run when everything fits: then no
    join is needed.

    The first run collects every layer (up to `options.max_layers`) with the example sets, and as many token
    layers as fit from the first. Each later one stops at its last token layer (`max_layers`) and keeps no
    example sets (the first has them for every layer); they are planned from the last token layer back, each
    holding as many as fit, so that each ends as early as it can: the layers they run cost the least.
    """
    wanted = make_plan(config, options).token_layers
    if not wanted:
        return [Run((), options.max_layers, options.examples)]

    def fits(run: Run) -> tuple[bool, MemoryUse, st.Plan]:
        plan = make_plan(config, run.options(options))
        use = memory_use(plan, plan.groups(group_size if options.offload else None), layer_bytes, run.options(options),
                         device, host_available)
        return use.fits(budget), use, plan

    def largest(run_of, most: int) -> Run:
        """run_of(count) for the largest count in 1..most that fits (fitting is monotone: fewer token layers and
        fewer layers need less), found by bisection; the refusal when not even one does."""
        fit, use, plan = fits(run_of(1))
        if not fit:
            available = None if budget is None else f"the budget is {budget / 1e9:.1f} GB (--device_memory_gb)"
            raise StatsError(too_large(use, plan, available) + " Not even one token layer per run fits: stream the "
                             "weights in smaller groups (--offload --group_size), use a 16-bit --dtype, or a smaller "
                             "--batch_size")
        low, high = 1, most  # run_of(low) fits
        while low < high:
            middle = (low + high + 1) // 2
            low, high = (middle, high) if fits(run_of(middle))[0] else (low, middle - 1)
        return run_of(low)

    first = largest(lambda count: Run(wanted[:count], options.max_layers, options.examples), len(wanted))
    runs, end = [], len(wanted)
    while end > len(first.token_layers):
        runs.insert(0, largest(lambda count: Run(wanted[end - count:end], wanted[end - 1] + 1, 0),
                               end - len(first.token_layers)))
        end -= len(runs[0].token_layers)
    return [first, *runs]
