"""Collection: every array against a numpy recomputation from Model.forward masks; modes agree; resume."""

import os
import re

import numpy as np
import pytest
from transformers import AutoTokenizer

import analyses
import opt_jax
from analyses.collection.store import StatsError

from conftest import DOCS
from helpers import run_script

SEQ = 12


def reference(model_dir, seq_len, full_length_only=False, token_layers=None, max_layers=None):
    """Plain numpy: each window run alone (no padding), counts added with loops over positions."""
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = opt_jax.load(model_dir)
    c = model.config
    layers = max_layers or c.num_hidden_layers
    token_layers = list(range(c.num_hidden_layers // 2)) if token_layers is None else token_layers
    windows = []
    for doc in DOCS:
        ids = tokenizer(doc, add_special_tokens=False)["input_ids"]
        for start in range(0, len(ids), seq_len - 1):
            window = [c.bos_token_id] + ids[start:start + seq_len - 1]
            if len(window) == seq_len or not full_length_only:
                windows.append(window)
    ref = {"act": np.zeros((layers, c.ffn_dim), np.int64), "pos_act": np.zeros((layers, seq_len, c.ffn_dim), np.int64),
           "pos_tokens": np.zeros(seq_len, np.int64), "token_occ": np.zeros(c.vocab_size, np.int64),
           "tok_act": np.zeros((len(token_layers), c.vocab_size, c.ffn_dim), np.int64)}
    for order in (2, 3):
        ref["occ", order], ref["pairs", order] = {}, {}
    for window in windows:
        fired = opt_jax.unpack_masks(model.forward(np.array([window])).masks, c.ffn_dim)[:layers, 0]  # [l, s, n]
        for p, token in enumerate(window):
            ref["pos_tokens"][p] += 1
            ref["act"] += fired[:, p]
            ref["pos_act"][:, p] += fired[:, p]
            if p > 0:
                ref["token_occ"][token] += 1
                for t, layer in enumerate(token_layers):
                    ref["tok_act"][t, token] += fired[layer, p]
        for order in (2, 3):  # n-grams wholly after BOS: positions p >= order
            for p in range(order, len(window)):
                gram = tuple(window[p - order + 1:p + 1])
                ref["occ", order][gram] = ref["occ", order].get(gram, 0) + 1
                for t, layer in enumerate(token_layers):
                    for n in np.flatnonzero(fired[layer, p]):
                        key = (t, int(n), gram)
                        ref["pairs", order][key] = ref["pairs", order].get(key, 0) + 1
    ref["tokens"] = sum(len(w) for w in windows)
    ref["sequences"] = len(windows)
    ref["full_length_sequences"] = sum(len(w) == seq_len for w in windows)
    return ref


def assert_matches(stats, ref):
    for name in ("act", "pos_act", "pos_tokens", "token_occ", "tok_act"):
        np.testing.assert_array_equal(np.asarray(getattr(stats, name)), ref[name], err_msg=name)
    assert stats.tokens == ref["tokens"] and stats.sequences == ref["sequences"]
    assert stats.full_length_sequences == ref["full_length_sequences"]
    table = stats.ngram_table()
    assert table is not None, "these runs count n-grams"
    for order in (2, 3):
        grams, counts = table.occurrences(order)
        got = {tuple(g): c for g, c in zip(table.decode(grams, order).tolist(), counts.tolist())}
        assert got == ref["occ", order]
        pairs = {}
        for t in range(len(stats.token_layers)):
            grams, neurons, counts = table.pairs(order, t)
            for g, n, c in zip(table.decode(grams, order).tolist(), neurons.tolist(), counts.tolist()):
                pairs[t, n, tuple(g)] = c
        assert pairs == ref["pairs", order]


def test_every_array_equals_a_numpy_recomputation(tiny_model, tiny_corpus, tmp_path):
    out = analyses.collect(tiny_model, [tiny_corpus], str(tmp_path / "stats"), seq_len=SEQ, batch_size=3,
                           ngram_orders=(2, 3), verbose=False)
    stats = analyses.open_stats(out)
    ref = reference(tiny_model, SEQ)
    assert ref["sequences"] > 6 and ref["full_length_sequences"] > 2 and ref["tokens"] > 60
    assert_matches(stats, ref)
    assert stats.token_layers == [0] and stats.manifest["complete"]
    assert stats.act[1].shape == (64,)
    assert ref["act"].min() < ref["tokens"] and ref["act"].max() > 0


def test_streamed_equals_resident_and_options(tiny_model, tiny_corpus, tmp_path):
    kwargs = dict(seq_len=SEQ, batch_size=2, verbose=False, token_layers=(0, 2), full_length_only=True,
                  ngram_orders=(2, 3))
    resident = analyses.open_stats(analyses.collect(tiny_model, [tiny_corpus], str(tmp_path / "r"), **kwargs))
    streamed = analyses.open_stats(analyses.collect(tiny_model, [tiny_corpus], str(tmp_path / "s"), offload=True,
                                                    group_size=1, chunk_batches=3, **kwargs))
    ref = reference(tiny_model, SEQ, full_length_only=True, token_layers=[0, 2])
    assert_matches(resident, ref)
    assert_matches(streamed, ref)


def test_max_layers(tiny_model, tiny_corpus, tmp_path):
    stats = analyses.open_stats(analyses.collect(tiny_model, [tiny_corpus], str(tmp_path / "s"), seq_len=SEQ,
                                                 batch_size=4, max_layers=2, ngram_orders=(2, 3), verbose=False))
    assert stats.act.shape == (2, 64)
    assert_matches(stats, reference(tiny_model, SEQ, max_layers=2))


def test_refuses_another_run_in_the_same_directory(tiny_model, tiny_corpus, tmp_path):
    out = str(tmp_path / "s")
    analyses.collect(tiny_model, [tiny_corpus], out, seq_len=SEQ, batch_size=4, verbose=False)
    with pytest.raises(StatsError, match=rf"other flags \(--seq_len {SEQ} there, {SEQ - 1} now\)"):
        analyses.collect(tiny_model, [tiny_corpus], out, seq_len=SEQ - 1, batch_size=4, verbose=False)
    analyses.collect(tiny_model, [tiny_corpus], out, seq_len=SEQ - 1, batch_size=4, verbose=False, overwrite=True)
    assert analyses.open_stats(out).pos_act.shape[1] == SEQ - 1


def test_seq_len_above_positions_is_refused(tiny_model, tiny_corpus, tmp_path):
    with pytest.raises(StatsError, match="exceeds the model's 40 positions"):
        analyses.collect(tiny_model, [tiny_corpus], str(tmp_path / "s"), seq_len=41, verbose=False)


def test_max_tokens_stops_at_a_batch_boundary_and_can_be_extended(tiny_model, tiny_corpus, tmp_path):
    out = str(tmp_path / "s")
    full = analyses.open_stats(analyses.collect(tiny_model, [tiny_corpus], str(tmp_path / "full"), seq_len=SEQ,
                                                batch_size=2, verbose=False))
    first = analyses.open_stats(analyses.collect(tiny_model, [tiny_corpus], out, seq_len=SEQ, batch_size=2,
                                                 max_tokens=30, verbose=False))
    assert 30 <= first.tokens < full.tokens and first.sequences % 2 == 0
    assert first.tokens - 2 * SEQ < 30, "stops at the first batch boundary past max_tokens"
    extended = analyses.open_stats(analyses.collect(tiny_model, [tiny_corpus], out, seq_len=SEQ, batch_size=2,
                                                    verbose=False))
    for name in ("act", "pos_act", "tok_act", "token_occ", "pos_tokens"):
        np.testing.assert_array_equal(np.asarray(getattr(extended, name)), np.asarray(getattr(full, name)))


def test_half_precision_collection_runs(tiny_model, tiny_corpus, tmp_path):
    f32 = analyses.open_stats(analyses.collect(tiny_model, [tiny_corpus], str(tmp_path / "f32"), seq_len=SEQ,
                                               batch_size=4, verbose=False))
    bf16 = analyses.open_stats(analyses.collect(tiny_model, [tiny_corpus], str(tmp_path / "bf16"), seq_len=SEQ,
                                                batch_size=4, dtype="bfloat16", verbose=False))
    assert bf16.manifest["flags"]["dtype"] == "bfloat16" and bf16.tokens == f32.tokens
    a, b = np.asarray(f32.act), np.asarray(bf16.act)
    assert np.abs(a - b).sum() <= 0.02 * a.sum()


@pytest.mark.parametrize("make_corpus, match", [
    (lambda d: str(d / "missing.jsonl"), "no such file or directory"),
    (lambda d: (d / "bad.jsonl").write_text('{"text": "fine"}\n{not json}\n') and str(d / "bad.jsonl"),
     r"bad.jsonl:2"),
    (lambda d: (d / "bytes.txt").write_bytes(b"ok\n\xff\xfe broken") and str(d / "bytes.txt"), "UTF-8"),
    (lambda d: (d / "empty.jsonl").write_text("\n\n") and str(d / "empty.jsonl"), "no documents|no windows"),
    (lambda d: (d / "notext.jsonl").write_text('{"body": "x"}\n') and str(d / "notext.jsonl"), "text"),
])
def test_bad_corpus_gets_a_clear_message_from_the_cli(tiny_model, tmp_path, make_corpus, match):
    import re

    corpus = make_corpus(tmp_path)
    result = run_script("scripts/collect.py", "--model", tiny_model, "--corpus", corpus,
                        "--out", str(tmp_path / "out"), "--seq_len", "8", timeout=None)
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    assert re.search(match, result.stderr), result.stderr
    assert not os.path.exists(tmp_path / "out" / "manifest.json")


def test_cli_shows_progress_and_seq_len_error(tiny_model, tiny_corpus, tmp_path):
    base = ["scripts/collect.py", "--model", tiny_model, "--corpus", tiny_corpus]
    ok = run_script(*base, "--out", str(tmp_path / "ok"), "--seq_len", "8", "--batch_size", "2", "--max_tokens", "40",
                    timeout=None)
    assert ok.returncode == 0, ok.stderr
    assert re.search(r"collect: [\d,]+/40 tokens \(\d+%\)", ok.stdout + ok.stderr) and "tokens/s" in ok.stdout + ok.stderr
    assert "left" in ok.stdout + ok.stderr
    bad = run_script(*base, "--out", str(tmp_path / "bad"), "--seq_len", "64", timeout=None)
    assert bad.returncode == 1 and "exceeds the model's 40 positions" in bad.stderr


def test_ngram_budget_stops_the_run_cleanly_and_a_larger_budget_finishes_it(tiny_model, tiny_corpus, tmp_path):
    from analyses.collection.ngrams import NgramBudgetError

    out = str(tmp_path / "s")
    kwargs = dict(seq_len=SEQ, batch_size=2, verbose=False, flush_every_batches=1, ngram_orders=(2, 3))
    with pytest.raises(NgramBudgetError, match="max_pairs"):
        analyses.collect(tiny_model, [tiny_corpus], out, ngram_max_pairs=300, **kwargs)
    partial = analyses.open_stats(out)
    assert not partial.manifest["complete"] and partial.ngram_table().num_pairs() <= 300
    analyses.collect(tiny_model, [tiny_corpus], out, **kwargs)
    assert_matches(analyses.open_stats(out), reference(tiny_model, SEQ))


def test_without_ngrams(tiny_model, tiny_corpus, tmp_path):
    stats = analyses.open_stats(analyses.collect(tiny_model, [tiny_corpus], str(tmp_path / "s"), seq_len=SEQ,
                                                 batch_size=4, verbose=False))
    assert stats.ngram_table() is None and not [n for n in stats.manifest["arrays"] if n.startswith("ngram")]
    np.testing.assert_array_equal(np.asarray(stats.act), reference(tiny_model, SEQ)["act"])


def test_ngrams_of_candidate_neurons_only(tiny_model, tiny_corpus, tmp_path):
    """Second pass: n-grams only for neurons that at most K tokens cover (95%) in a first, unigram run."""
    first = analyses.collect(tiny_model, [tiny_corpus], str(tmp_path / "first"), seq_len=SEQ, batch_size=4,
                             verbose=False)
    ref = reference(tiny_model, SEQ)
    coverage = []  # plain loops: tokens sorted by count until 95% of the neuron's activations
    for n in range(ref["tok_act"].shape[2]):
        column = sorted(ref["tok_act"][0, :, n].tolist(), reverse=True)
        total, running, k = sum(column), 0, 0
        while total and running < 0.95 * total:
            running, k = running + column[k], k + 1
        coverage.append(k)
    limit = int(np.median([c for c in coverage if c]))
    tracked = np.array([[1 <= c <= limit for c in coverage]])  # [t, n]
    assert 0 < tracked.sum() < tracked.size
    second = analyses.open_stats(analyses.collect(
        tiny_model, [tiny_corpus], str(tmp_path / "second"), seq_len=SEQ, batch_size=4, ngram_orders=(2, 3),
        ngram_candidates_from=first, ngram_max_coverage=limit, verbose=False))
    np.testing.assert_array_equal(second.tracked_neurons(), tracked)
    assert second.manifest["ngram_candidates_source"]["tracked_neurons"] == tracked.sum()
    table = second.ngram_table()
    for order in (2, 3):
        pairs = {}
        grams, neurons, counts = table.pairs(order, 0)
        for g, n, c in zip(table.decode(grams, order).tolist(), neurons.tolist(), counts.tolist()):
            pairs[0, n, tuple(g)] = c
        assert pairs == {k: v for k, v in ref["pairs", order].items() if tracked[0, k[1]]}
    with pytest.raises(StatsError, match="no token statistics for layers"):
        analyses.collect(tiny_model, [tiny_corpus], str(tmp_path / "third"), seq_len=SEQ, batch_size=4,
                         token_layers=(0, 1), ngram_orders=(2,), ngram_candidates_from=first, verbose=False)


def test_progress_counts_a_chunk_once_its_steps_have_finished(tiny_model, tiny_corpus, tmp_path, monkeypatch, capsys):
    """A device taking 0.2 s a step: no progress line reports more than one batch's tokens per 0.2 s (before, the
    first line counted a batch the moment it was handed to the device, at rates thousands of times too high)."""
    import functools
    import time

    import importlib

    collect_module = importlib.import_module("analyses.collection.collect")
    from analyses.collection.runner import Runner
    from opt_jax.progress import Progress

    step_s, batch_size = 0.2, 2
    wait_steps = Runner.wait_steps

    def slow_device(self):
        time.sleep(step_s)  # what an accelerator still computing the dispatched chunk would take
        wait_steps(self)

    monkeypatch.setattr(Runner, "wait_steps", slow_device)
    monkeypatch.setattr(collect_module, "Progress", functools.partial(Progress, every=0.0))
    analyses.collect(tiny_model, [tiny_corpus], str(tmp_path / "stats"), seq_len=SEQ, batch_size=batch_size,
                     max_tokens=120, verbose=True)
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("collect: ")]
    rates = [float(re.search(r", ([\d,.]+) tokens/s", line).group(1).replace(",", "")) for line in lines]
    assert len(rates) >= 3 and rates[-1] > 0, lines
    assert max(rates) <= batch_size * SEQ / step_s * 1.05, lines
