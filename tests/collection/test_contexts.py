"""Context activations (`add_contexts`, scripts/contexts.py): every example of every neuron and kind with the neuron's
fc1 output at each token of a span around it.

The reference is `transformers`' torch `OPTForCausalLM` with forward hooks on every fc1, run on each example's window
alone (its ids read from the store). Streamed and resident runs store the same spans bit for bit; a run killed
mid-way leaves the store readable and resumes to the same spans; a store joined from two runs works as any other.
The real-dimension check is in test_contexts_real.py.
"""

import os
import shutil

import numpy as np
import pytest

import analyses
from analyses.collection import contexts as cx
from analyses.collection.store import EXAMPLE_KINDS, StatsError, context_name

from hf_models import torch_fc1
from helpers import FakeDevice, run_script
from opt_jax.errors import InputError

SEQ, K, BEFORE, AFTER = 12, 4, 3, 2


def _collect(model, corpus, out, **flags):
    return analyses.collect(model, [corpus], out, **({"seq_len": SEQ, "batch_size": 4, "examples": K, "verbose": False}
                                                     | flags))


@pytest.fixture(scope="module")
def collected(tiny_model, tiny_corpus, tmp_path_factory):
    """A store with example sets and no contexts: each test copies it."""
    return _collect(tiny_model, tiny_corpus, str(tmp_path_factory.mktemp("collected") / "stats"))


def _copy(collected, tmp_path, name="stats"):
    return shutil.copytree(collected, str(tmp_path / name), symlinks=True)


@pytest.fixture(scope="module")
def resident(collected, tmp_path_factory):
    root = _copy(collected, tmp_path_factory.mktemp("resident"))
    cx.add_contexts(root, before=BEFORE, after=AFTER, verbose=False)
    return analyses.open_stats(root)


def _spans(stats):
    return {kind: np.asarray(stats.array(context_name(kind)).read().result()) for kind in EXAMPLE_KINDS}


def test_every_context_is_torch_fc1_around_the_example(resident, pre_ln_model):
    """Top and random examples of every neuron: the span's ids are the window's slice around the example, its
    values torch's fc1 there (float16's error), the example's own value exactly the record's."""
    cache, seen, cut = {}, 0, 0
    for layer in range(resident.manifest["layers"]):
        for neuron in range(resident.config.ffn_dim):
            for kind in EXAMPLE_KINDS:
                for e in resident.examples(layer, neuron, kind):
                    if e.window not in cache:
                        cache[e.window] = torch_fc1(pre_ln_model, e.tokens)  # [l, s, f]
                    start = max(1, e.position - BEFORE)
                    stop = min(len(e.tokens), e.position + AFTER + 1)
                    assert e.context_index == e.position - start
                    np.testing.assert_array_equal(e.context_tokens, e.tokens[start:stop])
                    want = cache[e.window][layer, start:stop, neuron]  # [stop - start]
                    np.testing.assert_allclose(e.context_values, want, rtol=2**-11, atol=1e-5)
                    assert e.context_values.dtype == np.float32 and e.context_values[e.context_index] == e.value
                    seen += 1
                    cut += stop - start < BEFORE + AFTER + 1
    assert seen > resident.manifest["layers"] * resident.config.ffn_dim and cut > 0, "spans cut at both window ends"
    entry = resident.contexts
    assert entry["complete"] and entry["center_deviation"] < 1e-6 and entry["span"] == BEFORE + AFTER + 1
    assert entry["windows"] == len({e.window for layer in range(3) for n in range(resident.config.ffn_dim)
                                    for kind in EXAMPLE_KINDS for e in resident.examples(layer, n, kind)})


def test_streamed_run_stores_the_same_spans(resident, collected, tmp_path):
    root = _copy(collected, tmp_path)
    cx.add_contexts(root, before=BEFORE, after=AFTER, offload=True, group_size=1, chunk_batches=2, verbose=False)
    streamed, want = _spans(analyses.open_stats(root)), _spans(resident)
    for kind in EXAMPLE_KINDS:
        np.testing.assert_array_equal(streamed[kind], want[kind], err_msg=kind)


def test_a_killed_run_stays_readable_and_resumes(resident, collected, tmp_path, monkeypatch):
    root = _copy(collected, tmp_path)
    commit, calls = cx._commit, []

    def killed_after_two(*args, **kwargs):
        if len(calls) == 2:
            raise KeyboardInterrupt
        calls.append(1)
        commit(*args, **kwargs)

    monkeypatch.setattr(cx, "_commit", killed_after_two)
    with pytest.raises(KeyboardInterrupt):
        cx.add_contexts(root, before=BEFORE, after=AFTER, flush_every_s=0, verbose=False)
    monkeypatch.setattr(cx, "_commit", commit)
    stats = analyses.open_stats(root)
    assert stats.manifest["contexts"]["next_batch"] == 2 and stats.contexts is None  # partial: not read
    assert stats.examples(0, 0, "top")[0].context_values is None and stats.examples(0, 0, "top")[0].value > 0

    ran = []
    step = cx.resident_step
    monkeypatch.setattr(cx, "resident_step", lambda *a: ran.append(1) or step(*a))
    entry = cx.add_contexts(root, before=BEFORE, after=AFTER, verbose=False)
    assert len(ran) == entry["batches"] - 2, "only the batches after the last commit run again"
    for kind, spans in _spans(analyses.open_stats(root)).items():
        np.testing.assert_array_equal(spans, _spans(resident)[kind], err_msg=kind)


def test_a_joined_store_works_as_any_other(resident, tiny_model, tiny_corpus, tmp_path):
    """Two runs split by token layers (the second without example sets) joined: its contexts are the unsplit
    store's."""
    first = _collect(tiny_model, tiny_corpus, str(tmp_path / "run-1"), token_layers=(0,))
    second = _collect(tiny_model, tiny_corpus, str(tmp_path / "run-2"), token_layers=(1,), max_layers=2)
    joined = analyses.join_stats([first, second], str(tmp_path / "joined"), verbose=False)
    cx.add_contexts(joined, before=BEFORE, after=AFTER, verbose=False)
    got, want = _spans(analyses.open_stats(joined)), _spans(resident)
    for kind in EXAMPLE_KINDS:
        np.testing.assert_array_equal(got[kind], want[kind], err_msg=kind)
    assert analyses.open_stats(joined).examples(2, 5, "top")[0].context_values is not None


def test_collecting_on_makes_the_contexts_stale_and_a_new_span_recomputes(collected, tiny_model, tiny_corpus,
                                                                         tmp_path):
    root = _collect(tiny_model, tiny_corpus, str(tmp_path / "part"), max_tokens=100)
    cx.add_contexts(root, before=BEFORE, after=AFTER, verbose=False)
    assert analyses.open_stats(root).contexts is not None
    _collect(tiny_model, tiny_corpus, root)  # on to the corpus's end: the example sets change
    stats = analyses.open_stats(root)
    assert stats.contexts is None and stats.examples(1, 3, "random")[0].context_values is None
    entry = cx.add_contexts(root, before=1, after=0, verbose=False)
    stats = analyses.open_stats(root)
    assert entry["tokens"] == stats.tokens and stats.array(context_name("top")).shape[-1] == 2
    for e in stats.examples(1, 3, "random"):
        np.testing.assert_array_equal(e.context_tokens, e.tokens[max(1, e.position - 1):e.position + 1])


def test_bad_requests_are_clear_errors(collected, tiny_model, tiny_corpus, tmp_path):
    import hf_models
    import opt_jax

    no_examples = _collect(tiny_model, tiny_corpus, str(tmp_path / "none"), examples=0, max_tokens=50)
    with pytest.raises(StatsError, match="holds no example activations"):
        cx.add_contexts(no_examples, verbose=False)
    root = _copy(collected, tmp_path)
    with pytest.raises(StatsError, match="fits|need .* GB"):
        cx.add_contexts(root, verbose=False, host_available=10**6)
    with pytest.raises(InputError, match=r"--mesh data=1,neurons=2 needs 2 devices; there are 1 local devices"):
        cx.add_contexts(root, verbose=False, mesh="neurons=2")  # on 8 devices: tests/collection/test_mesh.py
    assert "contexts" not in analyses.open_stats(root).manifest, "refused before anything is written"
    # Other weights of the same config: the span centers do not reproduce the example values.
    hf = hf_models.random_model(hf_models.hf_config(**hf_models.PRE_LN), seed=7)
    other = opt_jax.convert(hf_models.save(hf, str(tmp_path / "hf"), "safetensors"), str(tmp_path / "other"),
                            verbose=False)
    with pytest.raises(StatsError, match="does not reproduce the example values"):
        cx.add_contexts(root, model=other, verbose=False)


def test_the_script_runs_and_refuses_another_config_or_no_examples(collected, tmp_path, tiny_model, tiny_corpus):
    import hf_models
    import opt_jax

    bare = _collect(tiny_model, tiny_corpus, str(tmp_path / "bare"), examples=0, max_tokens=50)
    result = run_script("scripts/contexts.py", "--stats", bare)
    assert result.returncode == 1 and result.stderr.splitlines()[-1] == (
        f"error: {os.path.abspath(bare)}: holds no example activations (collected with --examples 0); collect again "
        "with --examples K"), result.stderr
    root = _copy(collected, tmp_path)
    hf = hf_models.random_model(hf_models.hf_config(**hf_models.POST_LN_350M), seed=2)
    other = opt_jax.convert(hf_models.save(hf, str(tmp_path / "hf"), "safetensors"), str(tmp_path / "other"),
                            verbose=False)
    result = run_script("scripts/contexts.py", "--stats", root, "--model", other)
    assert result.returncode == 1 and "a model of another config" in result.stderr.splitlines()[-1], result.stderr
    result = run_script("scripts/contexts.py", "--stats", root, "--before", "2", "--after", "1", "--mesh", "data=1")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "contexts: 2 tokens before and 1 after every example" in result.stdout
    assert "contexts:" in result.stderr and "devices:" in result.stderr  # progress and where it ran
    assert analyses.open_stats(root).contexts["span"] == 4


GB = 10**9


def test_the_memory_check_counts_each_device_of_a_mesh():
    """OPT-66b in fp16, resident, 64 layers' spans of 32 examples x 41 tokens (plus each example's window, position
    and value: 94 bytes a slot): on 8 x 80 GB with --mesh neurons=8 each device holds 1/8 of the spans, the
    embeddings, 1/8 of each layer and two layers gathered whole, and fits; on one 80 GB device the same run is
    refused with its sizes."""
    import opt_jax
    from opt_jax.streaming import layer_bytes

    config = opt_jax.for_size("66b")
    args = (config, 64, 32, 41, 8, 2048, 2, False, 64, 4, FakeDevice(80 * GB, name="H100"), 2000 * GB)
    one, node = cx.memory_use(*args), cx.memory_use(*args, mesh="data=1,neurons=8")
    spans = 64 * config.ffn_dim * 32 * (41 * 2 + 12)  # 7.1 GB
    assert one.spans == spans and node.spans == spans // 8
    assert node.weights - one.weights == 64 * (layer_bytes(config, 2, 8) - layer_bytes(config, 2)) + \
        2 * layer_bytes(config, 2)  # the embeddings whole on both
    assert one.working > node.working and node.needed < 40 * GB
    cx.check_memory(node, 2000 * GB)
    assert node.where == "H100 (each of the 8 devices of --mesh's neurons axis)"
    with pytest.raises(StatsError, match=rf"^H100: the context spans \(7.1 GB\), the weights \({one.weights / GB:.1f} "
                                         rf"GB\) .* need {one.needed / GB:.1f} GB; 80.0 GB are free"):
        cx.check_memory(one, 2000 * GB)
