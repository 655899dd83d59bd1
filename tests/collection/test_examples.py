"""Example activations (`--examples K`): each one real, `top` the exact top-k, `random` an unbiased sample.

The reference is `transformers`' torch `OPTForCausalLM` with forward hooks on every fc1, run on each window
of the corpus alone (tokenised here, independently of the store). Resident and streamed runs must store the
same sets bit for bit; `test_collect_runs.py` checks 4 simulated devices, 2 processes merged and a run
killed and resumed against a resident run the same way.
"""

import importlib
import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from transformers import AutoTokenizer

import analyses
import opt_jax
from analyses.collection import examples as ex
from analyses.collection.store import StatsError, example_layouts

from conftest import DOCS
from hf_models import torch_fc1

SEQ, K = 12, 4


def _windows(model_dir, docs, seq_len=SEQ):
    """The corpus's window stream, as docs/collection.md documents it: BOS + the next seq_len - 1 tokens."""
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    windows = []
    for doc in docs:
        ids = tokenizer(doc, add_special_tokens=False)["input_ids"]
        windows += [[2] + ids[s:s + seq_len - 1] for s in range(0, len(ids), seq_len - 1)]
    return windows


def _collect(model, corpus, out, **flags):
    return analyses.open_stats(analyses.collect(model, [corpus], out, seq_len=SEQ, batch_size=4, examples=K,
                                                verbose=False, **flags))


@pytest.fixture(scope="module")
def resident(tiny_model, tiny_corpus, tmp_path_factory):
    return _collect(tiny_model, tiny_corpus, str(tmp_path_factory.mktemp("resident") / "stats"))


@pytest.fixture(scope="module")
def activations(tiny_model, pre_ln_model):
    """torch's activations at real, non-BOS positions: {(layer, neuron): [(window, position, value)]} in stream
    order, and the windows."""
    windows = _windows(tiny_model, DOCS)
    fired = {}
    for w, window in enumerate(windows):
        fc1 = torch_fc1(pre_ln_model, np.array(window))  # [l, s, f]
        for layer, p, n in zip(*np.nonzero(fc1[:, 1:] > 0)):
            fired.setdefault((int(layer), int(n)), []).append((w, int(p) + 1, float(fc1[layer, p + 1, n])))
    for acts in fired.values():
        acts.sort(key=lambda a: (a[0], a[1]))
    return fired, windows


def _sets(stats, kind):
    return {f: np.asarray(stats.array(ex_name).read().result())
            for f, ex_name in ((f, f"examples_{kind}_{f}") for f in ex.FIELDS)}


def test_windows_are_the_stream(resident, activations):
    _, windows = activations
    assert resident.num_windows >= len(windows)
    for i, window in enumerate(windows):
        np.testing.assert_array_equal(resident.window(i), window)


def test_every_example_is_a_real_activation(resident, pre_ln_model):
    layers, ffn = resident.manifest["layers"], resident.config.ffn_dim
    cache, seen = {}, 0
    for layer in range(layers):
        for neuron in range(ffn):
            for kind in ex.KINDS:
                for e in resident.examples(layer, neuron, kind):
                    if e.window not in cache:
                        cache[e.window] = torch_fc1(pre_ln_model, e.tokens)  # [l, s, f]
                    torch_value = cache[e.window][layer, e.position, neuron]
                    assert e.position > 0 and e.value > 0 and torch_value > 0, (layer, neuron, e)
                    np.testing.assert_allclose(e.value, torch_value, rtol=1e-5, atol=1e-5)
                    seen += 1
    assert seen > layers * ffn, "most neurons fire in this corpus"


def test_top_is_the_exact_top_k(resident, activations):
    fired, _ = activations
    full = 0
    for layer in range(resident.manifest["layers"]):
        for neuron in range(resident.config.ffn_dim):
            acts = fired.get((layer, neuron), [])
            want = sorted(acts, key=lambda a: (-a[2], a[0], a[1]))[:K]
            got = resident.examples(layer, neuron, "top")
            assert len(got) == len(want) == min(K, len(acts))
            values = [e.value for e in got]
            assert values == sorted(values, reverse=True)
            np.testing.assert_allclose(values, [a[2] for a in want], rtol=1e-5, atol=1e-5)
            others = [a[2] for a in acts]
            for e, a in zip(got, want):
                if sum(abs(v - a[2]) < 1e-4 for v in others) == 1:  # its value is distinct: the place is fixed
                    assert (e.window, e.position) == (a[0], a[1]), (layer, neuron, e, a)
            full += len(acts) > K
    assert full > 0, "some neurons fire more than K times, so the selection is tested"


def test_random_is_the_k_smallest_ranks_of_the_activations(resident, activations):
    """The definition: the K activations with the smallest 30-bit rank (ties: earlier token), all when fewer."""
    fired, _ = activations
    sampled = 0
    for layer in range(resident.manifest["layers"]):
        neuron_h = ex.neuron_hash(np, np.uint32(layer), np.arange(resident.config.ffn_dim, dtype=np.uint32))
        for neuron in range(resident.config.ffn_dim):
            acts = fired.get((layer, neuron), [])
            rank = [int(ex.sample_rank(np, ex.token_hash(np, np.uint32(w), np.uint32(p)), neuron_h[neuron]))
                    for w, p, _ in acts]
            want = [a[:2] for _, a in sorted(zip(rank, acts), key=lambda ra: (ra[0], ra[1][0], ra[1][1]))[:K]]
            got = [(e.window, e.position) for e in resident.examples(layer, neuron, "random")]
            assert got == want, (layer, neuron)
            sampled += len(acts) > K
    assert sampled > 0


def test_streamed_run_stores_the_same_sets(resident, tiny_model, tiny_corpus, tmp_path):
    streamed = _collect(tiny_model, tiny_corpus, str(tmp_path / "streamed"), offload=True, group_size=1,
                        chunk_batches=2, flush_every_batches=1)
    for name in example_layouts(1, 1, 1, 2):
        np.testing.assert_array_equal(np.asarray(streamed.array(name).read().result()),
                                      np.asarray(resident.array(name).read().result()), err_msg=name)


def test_random_sample_is_unbiased_over_the_stream(tiny_model, tmp_path):
    """Each sampled activation's place in its neuron's activation stream, normalised to [0, 1], averages 0.5.

    Under uniform sampling each normalised rank has mean 0.5 and variance about 1/12; the N samples of all
    neurons are at most as variable as independent ones (samples of one neuron, drawn without replacement,
    are negatively correlated), so the mean's standard deviation is at most sqrt(1 / (12 N)): the test
    allows 4 of them. A "first k seen" or "last k seen" sample is shown to fail it.
    """
    rng = np.random.default_rng(0)
    words = ["dead", "neurons", "fire", "on", "tokens", "positional", "models", "the", "n-gram", "language"]
    corpus = tmp_path / "long.jsonl"
    corpus.write_text("\n".join(json.dumps({"text": " ".join(rng.choice(words, 60))}) for _ in range(40)) + "\n")
    k = 16
    stats = analyses.open_stats(analyses.collect(tiny_model, [str(corpus)], str(tmp_path / "stats"), seq_len=SEQ,
                                                 batch_size=4, examples=k, verbose=False, flush_every_batches=7))
    model = opt_jax.load(tiny_model)
    ffn, layers = model.config.ffn_dim, stats.manifest["layers"]
    streams = [[[] for _ in range(ffn)] for _ in range(layers)]  # (window, position) of each activation, in order
    for w in range(stats.sequences):
        window = stats.window(w)
        fired = opt_jax.unpack_masks(model.forward(window[None]).masks, ffn)[:, 0]  # [l, s, n]
        for layer, p, n in zip(*np.nonzero(fired[:, 1:])):
            streams[layer][n].append((w, int(p) + 1))
    ranks, first, last = [], [], []
    for layer in range(layers):
        for n in range(ffn):
            stream = streams[layer][n]
            if len(stream) <= 4 * k:
                continue
            where = {a: i for i, a in enumerate(stream)}
            got = [where[(e.window, e.position)] for e in stats.examples(layer, n, "random")]
            assert len(got) == k
            ranks += [i / (len(stream) - 1) for i in got]
            first += [i / (len(stream) - 1) for i in range(k)]
            last += [1 - i / (len(stream) - 1) for i in range(k)]
    tolerance = 4 * np.sqrt(1 / (12 * len(ranks)))
    assert len(ranks) >= 50 * k, "enough neurons fire often enough"
    assert abs(np.mean(ranks) - 0.5) < tolerance, (np.mean(ranks), tolerance)
    assert abs(np.mean(first) - 0.5) > tolerance and abs(np.mean(last) - 0.5) > tolerance


def test_bad_requests_are_clear_errors(resident, tiny_model, tiny_corpus, tmp_path):
    layers, ffn = resident.manifest["layers"], resident.config.ffn_dim
    with pytest.raises(StatsError, match=rf"layer {layers} is out of range; the store holds layers 0..{layers - 1}"):
        resident.examples(layers, 0)
    with pytest.raises(StatsError, match=r"layer -1 is out of range"):
        resident.examples(-1, 0, "top")
    with pytest.raises(StatsError, match=rf"neuron {ffn} is out of range; layers have neurons 0..{ffn - 1}"):
        resident.examples(0, ffn)
    with pytest.raises(StatsError, match=r"unknown example kind 'best'"):
        resident.examples(0, 0, "best")
    with pytest.raises(StatsError, match=rf"{resident.root}: window {resident.num_windows} is past the end"):
        resident.window(resident.num_windows)
    none = analyses.open_stats(analyses.collect(tiny_model, [tiny_corpus], str(tmp_path / "none"), seq_len=SEQ,
                                                batch_size=4, examples=0, verbose=False))
    assert not any(name.startswith("examples") or name == "windows" for name in none.manifest["arrays"])
    with pytest.raises(StatsError, match=r"none: holds no example activations \(collected with --examples 0\)"):
        none.examples(0, 0)
    with pytest.raises(StatsError, match=r"none: keeps no windows"):
        none.window(0)
    broken = str(tmp_path / "broken")
    shutil.copytree(resident.root, broken, symlinks=True)
    shutil.rmtree(os.path.join(broken, f"data-{resident.manifest['generation']:06d}", "windows"))
    with pytest.raises(StatsError, match=r"broken: \d+ chunk file\(s\) of the committed generation are missing "
                                         r"\(.*/windows/c/"):
        analyses.open_stats(broken).examples(0, 0)
    with pytest.raises(StatsError, match=r"examples must be 0"):
        analyses.collect(tiny_model, [tiny_corpus], str(tmp_path / "neg"), seq_len=SEQ, examples=-1, verbose=False)


@pytest.mark.parametrize("snapshot", ["device", "host", None])
def test_the_running_sets_go_on_across_commits_and_a_resume(resident, tiny_model, tiny_corpus, tmp_path, monkeypatch,
                                                            snapshot):
    """The device's sets are the run's, not the batches' since the last commit: each commit writes them as they
    stand, the next batches merge into them (so their thresholds go on rising), and a resumed run starts from the
    committed ones (`Runner.prime_examples`). Every commit's device sets hold examples from before the previous
    commit (the first run's) or before the resume (the second's), and the store ends equal to one plain run."""
    from analyses.collection.runner import Runner

    collect_module = importlib.import_module("analyses.collection.collect")
    seen = []  # per commit: the newest batch it covers and the oldest window in its device sets
    commit = collect_module._commit

    def recording(store, counters, host, cursor, complete, ngrams):
        windows = np.concatenate([counters.example_sets(layer)[kind]["window"].ravel()
                                  for layer in range(store.manifest["layers"]) for kind in ex.KINDS])
        seen.append((cursor["next_batch"], int(windows[windows != ex.EMPTY].min())))
        return commit(store, counters, host, cursor, complete, ngrams)

    monkeypatch.setattr(collect_module, "_commit", recording)
    init = Runner.__init__

    def placing(self, *args, **kwargs):  # the snapshot where the parameter says (None: commits in the step loop)
        init(self, *args, **kwargs)
        self.snapshot = snapshot

    monkeypatch.setattr(Runner, "__init__", placing)
    out = str(tmp_path / "s")
    half = resident.tokens // 2
    _collect(tiny_model, tiny_corpus, out, flush_every_batches=1, max_tokens=half)
    first_run = len(seen)
    stats = _collect(tiny_model, tiny_corpus, out, flush_every_batches=1)
    assert first_run >= 2 and len(seen) >= first_run + 2, seen
    # Window 0 (batch 0) enters some set in batch 0; it stays in the device's sets at every later commit.
    assert all(oldest < 4 for _, oldest in seen[1:]), seen
    assert seen[first_run][1] < 4 * seen[first_run - 1][0], seen  # the resumed run's first commit
    for name in example_layouts(1, 1, 1, 2):
        np.testing.assert_array_equal(np.asarray(stats.array(name).read().result()),
                                      np.asarray(resident.array(name).read().result()), err_msg=name)


def test_windows_grow_commit_by_commit_and_untouched_chunks_are_linked(tmp_path, monkeypatch):
    from analyses.collection import store as store_module
    from analyses.collection.store import StatsStore, appended_windows, array_layouts, open_stats

    monkeypatch.setattr(store_module, "CHUNK_CELLS", 2 * 5)  # two rows of 5 tokens a chunk
    layouts = array_layouts(1, 0, 5, 3, 1) | {"windows": example_layouts(1, 1, 1, 5)["windows"]}
    manifest = {"layers": 1, "config": {}, "flags": {}, "examples": 1}
    store = StatsStore.create(str(tmp_path / "s"), manifest, layouts)
    rng = np.random.default_rng(0)
    want = np.full((0, 5), -1, np.int32)
    inodes = {}
    for commit in range(4):
        batch = rng.integers(0, 50, (3, 5)).astype(np.int32)  # 3 windows a batch: chunks and batches misalign
        batch[1, 3:] = -1
        value, shape = appended_windows(store.array("windows"), [(3 * commit, batch)])
        store.commit({}, {}, values={"windows": value}, shapes={"windows": shape})
        want = np.concatenate([want, batch])
        np.testing.assert_array_equal(np.asarray(store.array("windows").read().result()), want)
        inodes[commit] = [os.stat(os.path.join(store.generation_dir, "windows", "c", str(c), "0")).st_ino
                          for c in range(2)]
    assert inodes[0][0] == inodes[1][0] == inodes[2][0] == inodes[3][0]  # rows 0-1: written once, then linked
    assert inodes[0][1] != inodes[1][1] == inodes[2][1] == inodes[3][1]  # rows 2-3: row 3 came in commit 1
    stats = open_stats(store.root)
    assert stats.num_windows == 12
    np.testing.assert_array_equal(stats.window(4), want[4, :3])


def _device_update_against_the_host_merge(b, s, n, k, seed):
    """Batches merged into one layer's sets on the device (`ex.update`) against the host merge of every batch's
    activations (`ex.merge_sets`, numpy), each batch drawn so that the `top` set takes a chosen merge
    (`ex.merge_tier`). Batch 1 fills every neuron's sets (EARLY: every neuron on all blocks); in batch 2 only a few
    planted neurons fire, drawn as in batch 1, so some of their tokens enter the sets and some do not; in batch 3
    one planted neuron has one new best token (LATE: one neuron, few blocks); in batch 4 the planted neurons have
    new best tokens in more blocks than the cheap merges rank (LATE_WIDE); in batch 5 every neuron has one new best
    token and the planted ones have them in many blocks (MIDDLE: every neuron on few blocks, the planted on all);
    batch 6 is dense again, with values rounded so that equal keys occur (EARLY)."""
    rng = np.random.default_rng(seed)
    layer = 3
    counted = np.ones((b, s), bool)
    counted[:, 0] = False  # BOS
    counted[-1, s // 2:] = False  # padding
    planted = rng.choice(n, max(1, ex._budget(n) // 2), replace=False)
    shift = rng.uniform(-1.5, 0.5, n).astype(np.float32)
    kb = min(k, b * s)
    c, few = ex.block_tokens(s, b, kb), ex._few_blocks(kb)
    assert few < kb, "the cheap merges rank fewer blocks than the full one"
    spread = np.arange(few + 1) * c + 1  # [few + 1]: a counted token in each of the first few + 1 blocks

    def quiet():  # [b, s, n]
        return -np.abs(rng.standard_normal((b, s, n))).astype(np.float32)

    def at_tokens(x, tokens, neurons, value):  # x with `value` at the flat tokens of the neurons
        x = x.reshape(b * s, n)
        x[np.asarray(tokens)[:, None], np.asarray(neurons)[None, :]] = value
        return x.reshape(b, s, n)

    batches = [rng.standard_normal((b, s, n)).astype(np.float32) + shift]
    drawn = quiet()
    drawn[:, :, planted] = rng.standard_normal((b, s, len(planted))).astype(np.float32) + shift[planted]
    batches.append(drawn)
    batches.append(at_tokens(quiet(), [spread[0]], planted[:1], 100.0))
    batches.append(at_tokens(quiet(), spread, planted, 200.0))
    counted_tokens = np.flatnonzero(counted.reshape(-1))
    middle = quiet().reshape(b * s, n)
    middle[counted_tokens[np.arange(n) % len(counted_tokens)], np.arange(n)] = 300.0  # every neuron once
    batches.append(at_tokens(middle.reshape(b, s, n), spread, planted, 400.0))
    batches.append(np.round(rng.standard_normal((b, s, n)) + 0.5, 1).astype(np.float32))
    update = jax.jit(lambda sets, x, w: ex.update(sets, 0, layer, x, counted, w, k, return_tiers=True))
    device = ex.zero_sets(1, n, k)
    host = {kind: ex.empty_sets(n, k) for kind in ex.KINDS}
    changed, tiers = [], []
    for j, x in enumerate(batches):
        before = {kind: np.asarray(device[kind]["window"][0]) for kind in ex.KINDS}
        device, tier = update(device, x, np.int32(j * b))
        tiers.append({kind: int(t) for kind, t in tier.items()})
        fired = counted[..., None] & (x > 0)  # [b, s, n]
        window = np.broadcast_to((j * b + np.arange(b))[:, None, None], x.shape)  # [b, s, n]
        position = np.broadcast_to(np.arange(s)[None, :, None], x.shape)  # [b, s, n]
        batch = {"window": np.where(fired, window, ex.EMPTY).reshape(b * s, n).T.astype(np.int32),
                 "position": np.where(fired, position, ex.EMPTY).reshape(b * s, n).T.astype(np.int32),
                 "value": np.where(fired, x, 0).reshape(b * s, n).T}  # [n, b * s] each
        rows = set()
        for kind in ex.KINDS:
            host[kind] = ex.merge_sets(kind, layer, host[kind], batch)
            for f in ex.FIELDS:
                np.testing.assert_array_equal(np.asarray(device[kind][f][0]), host[kind][f], err_msg=(j, kind, f))
            rows |= set(np.nonzero((before[kind] != host[kind]["window"]).any(axis=1))[0].tolist())
        changed.append(rows)
    top = [t["top"] for t in tiers]
    assert top[1] in (ex.LATE, ex.LATE_WIDE) and top[:1] + top[2:] == [ex.EARLY, ex.LATE, ex.LATE_WIDE, ex.MIDDLE,
                                                                         ex.EARLY], tiers
    assert changed[1] and changed[1] <= set(planted.tolist()), "batch 2 changes only planted neurons"
    assert changed[2] == {int(planted[0])} and changed[3] == set(planted.tolist())
    assert len(changed[0]) > ex._budget(n) and len(changed[4]) == n and len(changed[5]) > ex._budget(n)


def test_device_update_by_threshold_is_the_host_merge():
    _device_update_against_the_host_merge(b=3, s=12, n=64, k=4, seed=0)


@pytest.mark.real
def test_device_update_by_threshold_is_the_host_merge_at_125m_widths():
    _device_update_against_the_host_merge(b=2, s=2048, n=3072, k=16, seed=1)


@pytest.mark.parametrize("b, s, n, k", [(3, 12, 64, 4), pytest.param(2, 2048, 3072, 16, marks=pytest.mark.real),
                                        pytest.param(8, 512, 3072, 16, marks=pytest.mark.real)])
def test_working_bytes_bounds_the_compiled_update(b, s, n, k):
    """The memory check's estimate of the update's temporaries (`ex.working_bytes`) against XLA's own count."""
    counted = jnp.ones((b, s), bool)
    step = jax.jit(lambda sets, x: ex.update(sets, 0, 3, x, counted, 0, k))
    compiled = step.lower(ex.zero_sets(1, n, k), jnp.zeros((b, s, n), jnp.float32)).compile()
    temp = compiled.memory_analysis().temp_size_in_bytes
    assert 0 < temp <= ex.working_bytes(s, b, n, k), (temp, ex.working_bytes(s, b, n, k))
