"""Corpus -> forward passes -> activation statistics in a resumable tensorstore directory (`collect`).

The window stream is cut into fixed batches (global batch b holds windows b*B .. b*B+B-1).
Process p of P takes the batches with b % P == p. Weights are either resident on the device
(one jitted step per batch) or streamed a layer group at a time over a chunk of batches
(layer-major: each group crosses to the device once per chunk), read lazily from the converted
checkpoint (or sliced from parameters a caller holds in memory) two groups ahead. Statistics
stay on the device until a flush commits them (see `analyses.collection.store`); the manifest's cursor
is the next global batch, so a rerun continues exactly where the last commit left off.

A flush takes the counters (and the n-gram table's arrays and the host's counts) as they stand at its
cursor, hands the run fresh counters, and writes the commit in a background thread while the batches after
the cursor are counted (`Runner.take_counters`; where no second set of counters fits, the run waits for the
commit instead). One commit is in flight at a time: the next flush, and the run's end, wait for it, and its
error is raised there. The cursor moves only with the generation it describes (`StatsStore.commit` writes
both at once), so a crash mid-commit resumes from the previous one.
"""

from __future__ import annotations

import functools
import os
import time

import numpy as np

from analyses.collection import statistics as st
from analyses.collection import values
from analyses.collection.background import Behind
from analyses.collection.candidates import ngram_candidates
from analyses.collection.plan import IDENTITY, Options, make_plan
from analyses.collection.runner import Runner
from analyses.collection.store import (StatsStore, appended_windows, array_layouts, example_layouts, example_merges,
                                       open_stats, read_manifest, stored_examples, value_layouts)
from opt_jax import checkpoint as ckpt
from opt_jax import lock
from opt_jax.corpus import Corpus, batches, model_corpus
from opt_jax.errors import StatsError
from opt_jax.progress import Progress


def _identity(model_path: str, config, corpus: Corpus, plan: st.Plan, options: Options, source: dict | None) -> dict:
    flags = {k: getattr(options, k) for k in IDENTITY}
    flags["token_layers"] = list(plan.token_layers)
    flags["ngram_orders"] = list(options.ngram_orders)
    return {"model": os.path.abspath(model_path), "config": config.to_dict(), "ngram_candidates_source": source,
            "corpus": {"paths": list(corpus.files), "fingerprint": corpus.fingerprint(),
                       "text_key": options.text_key},
            "flags": flags, "process": {"index": options.process_index, "count": options.process_count}}


# Flags added after stores were written with the default they now have: the value those stores were collected with.
_BEFORE_FLAG = {"value_bins_per_octave": 0, "quantile_examples": 0}


def _flag_differences(stored: dict, now: dict) -> list[str]:
    """What differs between a store's flags and a run's, one phrase each."""
    out = []
    for key in sorted(set(stored) | set(now)):
        if key not in stored:
            out.append(f"--{key} did not exist when it was written")
        elif stored[key] != now.get(key):
            older = " (it was written before that flag existed)" if key in _BEFORE_FLAG else ""
            out.append(f"--{key} {stored[key]!r} there{older}, {now.get(key)!r} now")
    return out


def _open_store(out_dir: str, identity: dict, plan: st.Plan, options: Options) -> StatsStore:
    if os.path.isfile(os.path.join(out_dir, "manifest.json")) and not options.overwrite:
        manifest = read_manifest(out_dir)
        if isinstance(manifest.get("flags"), dict):  # a store written before a flag existed was collected without it
            manifest["flags"] = {k: v for k, v in _BEFORE_FLAG.items() if k in identity["flags"]} | manifest["flags"]
        for key in identity:
            if key == "flags" and manifest.get(key) != identity[key]:
                raise StatsError(f"{out_dir}: holds statistics collected with other flags ("
                                 + "; ".join(_flag_differences(manifest.get(key) or {}, identity[key]))
                                 + "); pass the same flags to continue it, or use another --out or --overwrite")
            if manifest.get(key) != identity[key]:
                raise StatsError(f"{out_dir}: holds statistics of a different {key} "
                                 f"({manifest.get(key)!r} there, {identity[key]!r} now); "
                                 "use another --out or pass --overwrite")
        return StatsStore.open(out_dir)
    if os.path.isdir(out_dir) and lock.entries(out_dir) and not options.overwrite:
        raise StatsError(f"{out_dir}: exists, is not empty and is not a statistics directory")
    layouts = array_layouts(plan.num_layers, len(plan.token_layers), plan.seq_len, plan.vocab, plan.ffn)
    bins = values.num_bins(plan.value_bins) if plan.value_bins else 0
    layouts |= example_layouts(plan.num_layers, plan.ffn, plan.examples, plan.seq_len, plan.quantile * bins)
    layouts |= value_layouts(plan.num_layers, plan.ffn, bins)
    value_edges = {"value_edges": values.edges(plan.value_bins).tolist()} if bins else {}
    start = identity | value_edges | {"token_layers": list(plan.token_layers), "layers": plan.num_layers,
                        "ngram_orders": list(options.ngram_orders), "examples": plan.examples,
                        "quantile_examples": plan.quantile, "tokens": 0,
                        "sequences": 0, "full_length_sequences": 0, "cursor": {"next_batch": 0, "stream_tokens": 0},
                        "complete": False}
    return StatsStore.create(out_dir, start, layouts)


@lock.writes("out_dir")
def collect(model_path: str, corpus_paths, out_dir: str, **flags) -> str:
    """Collect activation statistics of the model at model_path over the corpus into out_dir (holding its write
    lock, `opt_jax.lock`: `wait_for_lock=True` waits for another writer instead of refusing)."""
    options = Options(**flags)
    config = ckpt.read_config(model_path)
    plan = make_plan(config, options)
    corpus = model_corpus(model_path, corpus_paths, options.seq_len, options.text_key, options.full_length_only)
    corpus.check_not_empty()
    tracked, source = _ngram_neurons(plan, options) if options.ngram_orders else (None, None)
    identity = _identity(model_path, config, corpus, plan, options, source)
    store = _open_store(out_dir, identity, plan, options)
    if store.manifest["complete"] and _reached(store.manifest, options):
        _say(options, f"{out_dir}: already complete ({store.manifest['tokens']:,} tokens)")
        return store.root
    counting = options.ngram_orders and plan.token_layers
    ngrams = open_stats(store.root).ngram_table(options.ngram_max_pairs) if counting else None
    runner = Runner(model_path, plan, options, ngrams=ngrams, ngram_neurons=tracked if counting else None)
    if plan.examples and store.manifest["tokens"]:
        runner.prime_examples(stored_examples(store))  # the run's sets go on from the last commit's
    _say(options, "devices: " + ", ".join(f"{axis}={size}" for axis, size in runner.mesh.shape.items())
         + ("" if options.mesh else " (--mesh data=A,neurons=B splits the neurons)"))
    _say(options, _commit_mode(runner))
    commits = Behind("commit")
    try:
        _run(runner, store, commits, corpus, options, config.pad_token_id)
    except BaseException as e:  # no commit or count may still be running when the caller sees the error
        commits.close(e)
        runner.close(e)
        raise
    commits.close()
    runner.close()
    return store.root


def _commit_mode(runner: Runner) -> str:
    if not runner.options.background_commits:
        return "commits: in the step loop (--nobackground_commits)"
    if runner.snapshot is None:
        return ("commits: in the step loop: no room for a second set of counters on the device or the host "
                "(fewer --token_layers make room)")
    return f"commits: in the background, the counters' snapshot kept on the {runner.snapshot}"


def _ngram_neurons(plan: st.Plan, options: Options) -> tuple[np.ndarray | None, dict | None]:
    """The neurons whose n-grams are counted, bool [token_layers, ffn] (None: all), and where they came from."""
    if not options.ngram_candidates_from:
        return None, None
    source = open_stats(options.ngram_candidates_from)
    where = options.ngram_candidates_from
    if source.manifest["config"] != plan.config.to_dict():
        raise StatsError(f"{where}: statistics of another model; n-gram candidates must come from the same one")
    if not source.manifest["complete"]:
        raise StatsError(f"{where}: the run is not complete; finish it before choosing n-gram candidates from it")
    missing = [l for l in plan.token_layers if l not in source.token_layers]
    if missing:
        raise StatsError(f"{where}: has no token statistics for layers {missing}")
    rows = [source.tok_act.view(source.token_layers.index(l)) for l in plan.token_layers]  # lazy [v, n] each
    tracked = ngram_candidates(rows, options.ngram_max_coverage, options.ngram_coverage_fraction)  # [t, n]
    return tracked, {"path": os.path.abspath(where), "corpus_fingerprint": source.manifest["corpus"]["fingerprint"],
                     "tokens": source.tokens, "tracked_neurons": int(tracked.sum())}


def finished(manifest: dict, options: Options) -> bool:
    """Whether a store's manifest says its run is done for these options: complete, collected with the same flags
    (`IDENTITY`: token layers, max_layers, examples, ...), and its corpus exhausted or `max_tokens` reached.
    `collect` returns at once on such a run too, but only after reading the corpus and any n-gram candidates; this
    reads the manifest alone."""
    flags = {k: getattr(options, k) for k in IDENTITY}
    flags["ngram_orders"] = list(options.ngram_orders)
    if options.token_layers is not None:
        flags["token_layers"] = sorted(set(options.token_layers))
    return bool(manifest.get("complete")) and all(manifest["flags"].get(k) == v for k, v in flags.items()
                                                  if v is not None or k != "token_layers") and \
        _reached(manifest, options)


def _reached(manifest: dict, options: Options) -> bool:
    limit = options.max_tokens
    return manifest["cursor"].get("exhausted", False) or (limit is not None and
                                                          manifest["cursor"]["stream_tokens"] >= limit)


def _say(options: Options, message: str) -> None:
    if options.verbose:
        print(message, flush=True)


def _run(runner: Runner, store: StatsStore, commits: Behind, corpus: Corpus, options: Options, pad_id: int) -> None:
    cursor = dict(store.manifest["cursor"])
    next_batch, stream_tokens = cursor["next_batch"], cursor["stream_tokens"]
    windows = corpus.windows(skip=next_batch * options.batch_size)
    stream = batches(windows, options.batch_size, options.seq_len, pad_id)
    host = _zero_host(runner.plan)
    progress = Progress("collect", options.max_tokens, " tokens", enabled=options.verbose, initial=stream_tokens)
    chunk_size = options.chunk_batches if options.offload else 1
    chunk, first_windows, pending_tokens, batches_since_flush, last_flush = [], [], 0, 0, time.monotonic()
    read_tokens = running_tokens = 0  # stream tokens read since the last dispatch; those of the chunk in flight
    exhausted = True
    for ids, mask in stream:
        if options.max_tokens is not None and stream_tokens >= options.max_tokens:
            exhausted = False
            break
        batch_tokens = int(mask.sum())
        stream_tokens += batch_tokens
        if next_batch % options.process_count == options.process_index:
            chunk.append((ids, mask))
            first_windows.append(next_batch * options.batch_size)
            for name, value in st.host_counts(ids, mask, runner.plan.vocab).items():
                host[name] += value
            if runner.plan.examples:
                host["windows"].append((first_windows[-1], np.where(mask, ids, -1).astype(np.int32)))  # [b, s]
            pending_tokens += batch_tokens
        next_batch += 1
        read_tokens += batch_tokens
        if len(chunk) == chunk_size:
            # The progress counts a chunk once its steps have finished, not when they were dispatched: the next
            # chunk is read and prepared while the previous one computes, then waits for it (one chunk in flight).
            runner.wait_steps()
            progress.update(running_tokens)
            runner.run(chunk, first_windows)
            running_tokens, read_tokens = read_tokens, 0
            chunk, first_windows, batches_since_flush = [], [], batches_since_flush + 1
            due = (options.flush_every_batches and batches_since_flush >= options.flush_every_batches) or \
                time.monotonic() - last_flush >= options.flush_every_s or \
                pending_tokens + chunk_size * options.batch_size * options.seq_len > st.MAX_TOKENS_PER_FLUSH
            if due:
                _flush(runner, store, commits, host, {"next_batch": next_batch, "stream_tokens": stream_tokens},
                       False)
                host, pending_tokens, batches_since_flush, last_flush = _zero_host(runner.plan), 0, 0, time.monotonic()
    if chunk:
        runner.run(chunk, first_windows)
    _flush(runner, store, commits, host,
           {"next_batch": next_batch, "stream_tokens": stream_tokens, "exhausted": exhausted}, True)
    progress.update(running_tokens + read_tokens, force=True)


def _zero_host(plan: st.Plan) -> dict:
    return {"tokens": np.int64(0), "pos_tokens": np.zeros(plan.seq_len, np.int64),
            "token_occ": np.zeros(plan.vocab, np.int64), "sequences": np.int64(0),
            "full_length_sequences": np.int64(0), "windows": []}


def _flush(runner: Runner, store: StatsStore, commits: Behind, host: dict, cursor: dict, complete: bool) -> None:
    """Commit device and host counts with the cursor they reach, and go on with empty counters.

    In the background when the runner has room for a snapshot of its counters, except the run's last commit
    (its end would wait for it anyway); the previous commit is waited for first either way."""
    runner.settle()  # the n-grams of every batch up to the cursor
    ngrams = _ngram_arrays(runner)  # arrays the table never changes in place: safe to write behind it
    commits.wait()  # one commit in flight; the next reads the generation the previous one wrote
    if runner.snapshot is None or complete:
        _commit(store, runner.counters, host, cursor, complete, ngrams)
        runner.reset()
        return
    commits.submit(f"committing the batches before {cursor['next_batch']} to {store.root}",
                   functools.partial(_commit, store, runner.take_counters(), host, cursor, complete, ngrams))


def _commit(store: StatsStore, counters, host: dict, cursor: dict, complete: bool, ngrams: dict | None) -> None:
    """Write old totals + `counters` (a `Counters`) + host counts as the store's next generation, with `cursor`.

    Example sets are written as the device holds them (the run's sets since the store's first batch: a resumed run
    starts from the committed ones, `Runner.prime_examples`), the batches' windows appended."""
    deltas = counters.deltas() | {"pos_tokens": host["pos_tokens"], "token_occ": host["token_occ"]}
    values, shapes = {}, {}
    if counters.plan.examples:
        values = example_merges([counters.example_sets], store.manifest)
        values["windows"], shapes["windows"] = appended_windows(store.array("windows"), host["windows"])
    m = store.manifest
    store.commit(deltas, {
        "tokens": int(m["tokens"] + host["tokens"]), "sequences": int(m["sequences"] + host["sequences"]),
        "full_length_sequences": int(m["full_length_sequences"] + host["full_length_sequences"]),
        "cursor": cursor, "complete": complete,
    }, replacements=ngrams, values=values, shapes=shapes)


def _ngram_arrays(runner: Runner) -> dict | None:
    """The n-gram tables as 1-D arrays, and `tracked_neurons` (flat t * ffn + n) when only some are tracked."""
    if runner.ngrams is None:
        return None
    arrays = runner.ngrams.to_arrays()
    if runner.ngram_neurons is not None:
        arrays["tracked_neurons"] = np.flatnonzero(runner.ngram_neurons)  # [m]
    return arrays
