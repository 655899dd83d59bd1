"""The collection benchmark on a tiny model: structure and invariants (counts agree, FLOPs, ratios), never timings."""

import json

import numpy as np
import pytest

import opt_jax
from analyses.collection import values
from benchmarks import cpu, device, ngram_cost, sources
from benchmarks import conversion as bench
from opt_jax.errors import InputError
from helpers import offline_env, run_script

TINY = opt_jax.OPTConfig(num_hidden_layers=2, hidden_size=64, num_attention_heads=4, ffn_dim=256,
                         word_embed_proj_dim=64, vocab_size=500)
SEQ = 32


def test_flops_per_token_is_the_hand_count():
    per_layer_weights = 4 * 64 * 64 + 2 * 64 * 256  # q, k, v, o; fc1, fc2
    attention = 2 * 2 * SEQ * 64  # scores and values, full sequence
    assert cpu.decoder_matmul_params(TINY) == 2 * per_layer_weights
    assert cpu.model_flops_per_token(TINY, SEQ) == 2 * (2 * per_layer_weights) + 2 * attention == 212992


def test_batches_are_full_length_random_windows():
    data = cpu.make_batches(TINY, SEQ, cpu.batch_size_for(SEQ, 64), 3, seed=1)
    assert len(data) == 3
    for ids, mask in data:
        assert ids.shape == mask.shape == (2, SEQ) and ids.dtype.name == "int32" and mask.all()
        assert (ids[:, 0] == TINY.bos_token_id).all() and ((ids[:, 1:] >= 3) & (ids[:, 1:] < 500)).all()
    assert (data[0][0] != data[1][0]).any()
    assert cpu.batch_size_for(2048, 4096) == 2 and cpu.batch_size_for(4096, 1000) == 1


def test_suite_on_a_tiny_model(tmp_path):
    records, messages = [], []
    rows = cpu.run_suite(TINY, seq_lens=(SEQ,), tokens_per_batch=2 * SEQ, batches=2, warmup=1,
                               group_size=1, chunk_batches=2, workdir=str(tmp_path), matmul_n=128,
                               emit=records.append, log=messages.append)
    for r in records:
        json.dumps(r)  # every record is one JSON line
    kinds = [r["measurement"] for r in records]
    assert kinds == ["machine", *cpu.VARIANTS, *cpu.FLOOR_PARTS, "floor", "commit", "numpy_matmul", "numpy_matmul",
                     "act_agreement", "summary"]  # the side by side's two rounds of one batch: two numpy samples
    assert messages and list(tmp_path.iterdir()) == []  # progress went to log; the temp dir is gone
    by_kind = {r["measurement"]: r for r in records}
    for kind in cpu.VARIANTS:
        r = by_kind[kind]
        assert r["seq_len"] == SEQ and r["batch_size"] == 2 and r["tokens"] == 2 * 2 * SEQ
        assert r["tokens_per_s"] > 0 and r["tokens_per_s"] == pytest.approx(r["tokens"] / r["seconds"])
    assert len(by_kind["ours_resident"]["step_seconds"]) == 2  # one step per batch
    assert len(by_kind["ours_streamed"]["step_seconds"]) == 1  # one chunk of two batches
    assert by_kind["ours_streamed"]["groups"] == [[0, 1], [1, 2]]
    agree = by_kind["act_agreement"]
    assert 0.2 < agree["active_fraction"] < 0.8  # the counts are not trivially all zero or all one

    [row] = rows
    assert row["act_agreement"] == 1.0 and row["pos_act_agreement"] == 1.0 and row["tok_act_agreement"] == 1.0
    assert row["value_hist_agreement"] == 1.0
    assert row["token_layers"] == [0] and by_kind["commit"]["seconds"] > 0  # the first half of 2 layers
    assert row["flops_per_token"] == 212992
    for key in (*(f"{v}_tok_s" for v in cpu.VARIANTS), "numpy_flops_per_s", "peak_rss_bytes", "commit_s"):
        assert row[key] > 0, key
    assert row["ours_vs_hf_full"] == pytest.approx(row["ours_resident_tok_s"] / row["hf_full_tok_s"])
    assert row["ours_vs_hf_decoder"] == pytest.approx(row["ours_resident_tok_s"] / row["hf_decoder_tok_s"])
    assert row["examples_time"] == pytest.approx(row["ours_no_examples_tok_s"] / row["ours_resident_tok_s"])
    assert row["ours_vs_hf_decoder_median_round"] == pytest.approx(float(np.median(
        np.array(by_kind["hf_decoder"]["step_seconds"]) / by_kind["ours_resident"]["step_seconds"])), rel=1e-3)
    # streamed / resident comes from the second phase (both on the same fresh batches), not from the side by side
    assert 0 < row["streamed_time_vs_resident"] < 100
    assert row["fraction_of_numpy"] == pytest.approx(
        row["ours_resident_tok_s"] * row["flops_per_token"] / row["numpy_flops_per_s"])
    samples = [r["flops_per_s"] for r in records if r["measurement"] == "numpy_matmul"]
    assert row["numpy_flops_per_s"] == pytest.approx(float(np.median(samples)))

    table = cpu.markdown_table(rows).splitlines()
    assert table[0].startswith("| seq len |") and table[1].startswith("|---")
    assert table[2].startswith(f"| {SEQ} | 2 |") and table[2].count("|") == table[0].count("|")
    assert any("GFLOP/s" in line for line in table[3:]) and any("Peak RSS" in line for line in table[3:])
    # every side kept freed memory (the collection script's default on the CPU), and the notes say so
    assert row["keep_freed_memory"] is True and any("every one keeping freed memory" in line for line in table)


def test_a_suite_that_cannot_keep_freed_memory_says_what_to_do(monkeypatch):
    monkeypatch.setattr(cpu.heap, "keep_freed_memory", lambda: "the C library is not glibc")
    with pytest.raises(InputError, match="not glibc.*--nokeep_freed_memory"):
        cpu._allocator(True)
    cpu._allocator(False)  # glibc's defaults: nothing to set


def test_counts_agree_with_a_hand_count(tmp_path):
    """The hooked baseline's counters are (fc1 out > 0) summed as stated, against the model's own masks."""
    import numpy as np

    models = cpu.build_models(TINY, str(tmp_path))
    ids, mask = cpu.make_batches(TINY, SEQ, 2, 1, seed=3)[0]
    mask[1, -5:] = False  # the second window is 5 tokens short: padding at its end
    hf = cpu.hf_counts(models.hf_model, (ids, mask), token_layers=(0, 1))
    model = opt_jax.load(models.converted_dir)
    fired = opt_jax.unpack_masks(model.forward(ids, mask).masks, TINY.ffn_dim)  # [l, b, s, f], False at padding
    np.testing.assert_array_equal(hf["pos_act"], fired.sum(axis=1))
    np.testing.assert_array_equal(hf["act"], fired.sum(axis=(1, 2)))
    tok_act = np.zeros((2, TINY.vocab_size, TINY.ffn_dim), np.int64)  # [t, v, f]
    for b in range(2):
        for p in range(1, SEQ):  # BOS (position 0) is not counted by token
            tok_act[:, ids[b, p]] += fired[:, b, p]
    np.testing.assert_array_equal(hf["tok_act"], tok_act)
    assert tok_act.sum() > 0
    # value_hist: the fired fc1 outputs placed among the documented edges by a search, not by their bits
    import torch

    captured = []
    layers = models.hf_model.model.decoder.layers
    hooks = [layer.fc1.register_forward_hook(lambda m, i, out: captured.append(out.detach().numpy().copy()))
             for layer in layers]
    try:
        with torch.inference_mode():
            models.hf_model.model.decoder(input_ids=torch.from_numpy(ids.astype(np.int64)),
                                          attention_mask=torch.from_numpy(mask.astype(np.int64)), use_cache=False)
    finally:
        for h in hooks:
            h.remove()
    fc1 = np.stack(captured).reshape(TINY.num_hidden_layers, 2, SEQ, TINY.ffn_dim)  # [l, b, s, f]
    edges = values.edges(values.PER_OCTAVE)  # [bins - 1]
    hist = np.zeros(hf["value_hist"].shape, np.int64)  # [l, f, bins]
    for l in range(TINY.num_hidden_layers):
        for n in range(TINY.ffn_dim):
            v = np.asarray(fc1[l, ..., n], np.float32)[fired[l, ..., n]]
            hist[l, n] = np.bincount(np.searchsorted(edges, v, side="right"), minlength=len(edges) + 1)
    np.testing.assert_array_equal(hf["value_hist"], hist)
    np.testing.assert_array_equal(hist.sum(-1), hf["act"])
    assert (hist > 0).sum(-1).max() > 3, "the values spread over several bins"
    ours = cpu.ours_counts(models.converted_dir, TINY, (ids, mask), token_layers=(0, 1))
    agree = cpu.agreement(ours, hf, int(mask.sum()))
    assert (agree["act_agreement"] == agree["pos_act_agreement"] == agree["tok_act_agreement"]
            == agree["value_hist_agreement"] == 1.0)


def test_interleaved_rounds_rotate_and_chunk():
    """Rounds of max(chunk) batches; each variant steps its own chunk size; the order rotates between rounds."""
    calls = []

    class Fake:
        def __init__(self, name, chunk):
            self.name, self.chunk, self.info = name, chunk, {"fake": name}

        def step(self, batches):
            calls.append((self.name, len(batches)))
            return 0.5 * len(batches)

    data = cpu.make_batches(TINY, 4, 2, 5)  # one warm-up, four timed
    out = cpu.time_interleaved({"a": Fake("a", 1), "b": Fake("b", 2)}, data, warmup=1)
    assert calls == [("a", 1), ("b", 1),  # warm-up: one batch per step
                     ("a", 1), ("a", 1), ("b", 2),  # round 0
                     ("b", 2), ("a", 1), ("a", 1)]  # round 1, rotated
    assert out["a"]["step_seconds"] == [0.5] * 4 and out["b"]["step_seconds"] == [1.0, 1.0]
    assert out["a"]["tokens"] == 4 * 2 * 4 and out["a"]["tokens_per_s"] == pytest.approx(32 / 2.0)
    assert out["b"]["fake"] == "b" and out["numpy_samples"] == []


def test_ngram_cost_on_a_tiny_model(tmp_path):
    result = ngram_cost.ngram_cost(TINY, seq_len=SEQ, batch_size=2, batches=2, warmup=1, workdir=str(tmp_path),
                                  log=lambda message: None)
    assert result["distinct_pairs"] > 0 and result["pair_bytes"] == 16 * result["distinct_pairs"]
    assert result["tokens_counted"] == 3 * 2 * SEQ
    assert result["slowdown"] == pytest.approx(result["without_ngrams_tok_s"] / result["with_ngrams_tok_s"])
    assert result["background_speedup"] == pytest.approx(result["background_ngrams_tok_s"] /
                                                         result["with_ngrams_tok_s"])
    assert result["identical_tables"], "the tables counted in the step loop and behind it differ"


def test_commit_idle_times_both_modes_on_a_tiny_model(tmp_path):
    from benchmarks import commit_idle

    results = commit_idle.compare(TINY, seq_len=SEQ, batch_size=2, batches=4, flush_every=2, rounds=2,
                                  workdir=str(tmp_path), log=lambda message: None)
    assert [r["mode"] for r in results] == ["step_loop", "background", "background", "step_loop"]
    assert all(r["commits"] == 2 and len(r["blocked_s"]) == len(r["waited_for_previous_s"]) == 1 and
               r["tokens"] == 4 * 2 * SEQ for r in results)
    assert all(w <= b for r in results for w, b in zip(r["waited_for_previous_s"], r["blocked_s"]))
    assert {r["mode"]: r["snapshot"] for r in results} == {"step_loop": None, "background": "device"}
    table = commit_idle.markdown(results, TINY, (0,))
    assert "| step_loop | - | 2 |" in table and "| background | device | 2 |" in table


def test_examples_cost_on_a_tiny_model(tmp_path):
    from benchmarks.examples_cost import examples_cost

    rows = examples_cost(TINY, seq_lens=(SEQ,), tokens_per_batch=2 * SEQ, batches=2, warmup=1, workdir=str(tmp_path),
                         log=lambda message: None)
    assert [(r["seq_len"], r["batch_size"], r["examples"]) for r in rows] == [(SEQ, 2, 16)]
    assert rows[0]["slowdown"] == pytest.approx(rows[0]["without_examples_tok_s"] / rows[0]["with_examples_tok_s"])


def test_ablation_cost_on_a_tiny_model(tmp_path):
    """Both variants score the same losses (checked inside before timing) and the ratio is of the two rates."""
    from benchmarks.ablation_cost import ablation_cost

    rows = ablation_cost(TINY, seq_lens=(SEQ,), tokens_per_batch=2 * SEQ, batches=2, warmup=1, neurons=20,
                         workdir=str(tmp_path), log=lambda message: None)
    assert [(r["seq_len"], r["batch_size"], r["neurons"]) for r in rows] == [(SEQ, 2, 20)]
    assert rows[0]["ours_over_hf"] == pytest.approx(rows[0]["ours_tok_s"] / rows[0]["hf_hooks_tok_s"])
    assert rows[0]["ablated_loss"] != rows[0]["base_loss"]


def test_shrink_config_keeps_head_size_and_ratios():
    big = opt_jax.for_size("66b")
    small = sources.shrink_config(big, 32)
    assert small.head_dim == big.head_dim == 128 and small.num_attention_heads == 2
    assert (small.hidden_size, small.ffn_dim, small.num_hidden_layers, small.vocab_size) == (256, 1024, 4, 1571)
    assert sources.shrink_config(big, 1) == big
    assert sources.shrink_config(opt_jax.for_size("1.3b"), 64).num_attention_heads == 1
    with pytest.raises(ValueError, match="shrink"):
        sources.shrink_config(big, 0)


def test_random_layers_depend_only_on_seed_and_layer():
    config = sources.shrink_config(opt_jax.for_size("1.3b"), 32)
    # Groups of one size (one compilation: the count is static, the first layer and the seed are not).
    three = sources.random_layers(config, 0, 3, "bfloat16", 0)
    later = sources.random_layers(config, 1, 3, "bfloat16", 0)  # layers 1 and 2 made again in another group
    other = sources.random_layers(config, 1, 3, "bfloat16", 1)
    fc1 = np.asarray(three["ffn"]["fc1"]["weight"], np.float32)  # [3, f, d]
    np.testing.assert_array_equal(np.asarray(later["ffn"]["fc1"]["weight"], np.float32)[:2], fc1[1:3])
    assert not np.array_equal(np.asarray(other["ffn"]["fc1"]["weight"], np.float32)[:2], fc1[1:3])
    assert not np.array_equal(fc1[0], fc1[1]) and 0.015 < fc1.std() < 0.025
    assert three["ffn"]["fc1"]["weight"].dtype.name == "bfloat16"
    assert (np.asarray(three["attn_norm"]["weight"]) == 1).all()
    assert (np.asarray(three["ffn"]["fc1"]["bias"]) == 0).all()
    source = sources.RandomLayers(config)
    assert source.layer_bytes == bench.layer_bytes(config, 2) and source.num_layers == 4


def test_device_suite_script_on_tiny_shapes():
    """The gpu suite's whole code path on the CPU at 1/32 of the widths: records, tokens, and consistent figures."""
    result = run_script("scripts/benchmark.py", "--device_suite", "gpu", "--sizes", "1.3b,66b", "--shrink", "32",
                        "--seq_len", "16", "--batch_size", "2", "--batches", "4", "--chunk_batches", "2",
                        "--group_size", "1", "--matmul_n", "64", env=offline_env(JAX_PLATFORMS="cpu"))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    records = [json.loads(line) for line in lines if line.startswith("{")]
    kinds = [(r["measurement"], r.get("size")) for r in records]
    assert kinds == [("machine", None), ("matmul", None),
                     ("resident", "1.3b"), ("compute_only", "1.3b"), ("streamed", "1.3b"), ("summary", "1.3b"),
                     ("compute_only", "66b"), ("streamed", "66b"), ("summary", "66b")]
    matmul = records[1]["flops_per_s"]
    assert matmul > 0 and records[0]["jax_backend"] == "cpu"
    for r in records:
        if r["measurement"] in ("resident", "compute_only", "streamed"):
            assert r["tokens"] == 4 * 2 * 16 and r["tokens_per_s"] == pytest.approx(r["tokens"] / r["seconds"])
            assert len(r["step_seconds"]) == (4 if r["measurement"] == "resident" else 2)  # batches, or chunks of 2
    rows = [r for r in records if r["measurement"] == "summary"]
    for row in rows:
        assert (row["layers"], row["groups"], row["group_size"], row["chunks"]) == (4, 4, 1, 2)
        assert row["matmul_flops_per_s"] == matmul
        config = sources.shrink_config(opt_jax.for_size(row["size"]), 32)
        assert row["flops_per_token"] == cpu.model_flops_per_token(config, 16)
        for name in ("streamed", "compute_only") + (("resident",) if row["size"] == "1.3b" else ()):
            assert row[f"{name}_tokens"] == 4 * 2 * 16 and row[f"{name}_tok_s"] > 0
            assert row[f"{name}_fraction_of_matmul"] == pytest.approx(
                row[f"{name}_tok_s"] * row["flops_per_token"] / matmul)
        assert row["layer_transfer_s"] > 0 and row["transfer_per_chunk_s"] == pytest.approx(4 * row["layer_transfer_s"])
        streamed, compute = (next(r for r in records if r["measurement"] == n and r["size"] == row["size"])
                             for n in ("streamed", "compute_only"))
        assert row["exposed_transfer_per_chunk_s"] == pytest.approx((streamed["seconds"] - compute["seconds"]) / 2)
        assert row["transfer_hidden"] == pytest.approx(
            1 - row["exposed_transfer_per_chunk_s"] / row["transfer_per_chunk_s"])
        assert row["streamed_time_vs_compute_only"] == pytest.approx(streamed["seconds"] / compute["seconds"])
    assert "resident_tok_s" not in rows[1] and rows[0]["streamed_time_vs_resident"] == pytest.approx(
        rows[0]["resident_tok_s"] / rows[0]["streamed_tok_s"])
    table = [line for line in lines if line.startswith("|")]
    assert table[0].startswith("| model |") and len(table) == 4
    assert table[2].startswith("| 1.3b / 32 | 4 x 64 x 256 | 4 (<= 1) |") and table[3].startswith("| 66b / 32 |")
    assert "Command: `python scripts/benchmark.py --device_suite gpu" in result.stdout
    assert "Matmul rate" in result.stdout and "Goal" not in result.stdout  # the 66b goal is for the real shape


def test_device_suite_refuses_unknown_sizes():
    with pytest.raises(opt_jax.ConfigError):
        device.device_suite(device.DeviceSuite(sizes=("7b",)), emit=None, log=None)


STEP_ARGS = dict(shrink=32, seq_len=16, batch_size=2, batches=4, chunk_batches=2, group_size=1, matmul_n=64)


def _check_study_step(records: list[dict], pair: str, flush_repeats: int) -> dict:
    """The study step's records at STEP_ARGS agree with each other and with the counters' sizes from the plan."""
    assert [r["measurement"] for r in records] == ["machine", "matmul", "compute_only", "compute_only_no_examples",
                                                   "examples_share", "flush", "streamed", "summary"]
    _, matmul, with_, without, share, flush, streamed, row = records
    tokens = 4 * 2 * 16
    assert with_["tokens"] == without["tokens"] == streamed["tokens"] == tokens
    assert (with_["pair"], with_["examples"], without["examples"], row["pair"]) == (pair, 16, 0, pair)
    assert len(with_["step_seconds"]) == len(without["step_seconds"]) == len(streamed["step_seconds"]) == 2  # rounds
    per_round = [1 - b / a for a, b in zip(with_["step_seconds"], without["step_seconds"])]
    assert share["per_round"] == pytest.approx(per_round) and row["examples_share_per_round"] == share["per_round"]
    assert share["median"] == pytest.approx(np.median(per_round)) and row["examples_share"] == share["median"]
    # A flush moves every counter once, int32 / float32: act, pos_act, value_hist of every layer, tok_act of the
    # token layer, and the top and random sets (window, position, value; k = 16), counted here from the shapes.
    config = sources.shrink_config(opt_jax.for_size("66b"), 32)
    layers, ffn = config.num_hidden_layers, config.ffn_dim
    cells = (layers * ffn + layers * 16 * ffn + config.vocab_size * ffn + layers * ffn * values.num_bins(2)
             + 2 * 3 * layers * ffn * 16)
    assert flush["bytes"] == row["flush_bytes"] == 4 * cells
    assert len(flush["seconds"]) == flush_repeats and flush["bytes_per_s"] == pytest.approx(
        [flush["bytes"] / t for t in flush["seconds"]])
    assert row["compute_only_tokens"] == row["compute_only_no_examples_tokens"] == row["streamed_tokens"] == tokens
    assert row["compute_only_no_examples_tok_s"] == without["tokens_per_s"]
    assert row["compute_only_no_examples_fraction_of_matmul"] == pytest.approx(
        without["tokens_per_s"] * cpu.model_flops_per_token(config, 16) / matmul["flops_per_s"])
    assert (row["layers"], row["groups"], row["group_size"], row["chunks"], row["token_layers"]) == (4, 4, 1, 2, 1)
    assert row["streamed_time_vs_compute_only"] == pytest.approx(streamed["seconds"] / with_["seconds"])
    assert row["exposed_transfer_per_chunk_s"] == pytest.approx((streamed["seconds"] - with_["seconds"]) / 2)
    return row


def test_study_step_script_on_tiny_shapes():
    """The study-step check's whole code path on the CPU at 1/32 of 66b's widths, both runners held at once."""
    args = [f"--{name}={value}" for name, value in STEP_ARGS.items()]
    result = run_script("scripts/benchmark.py", "--device_suite", "gpu", "--study_step", *args,
                        env=offline_env(JAX_PLATFORMS="cpu"))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    row = _check_study_step([json.loads(line) for line in lines if line.startswith("{")], "together", 2)
    table = [line for line in lines if line.startswith("|")]
    assert len(table) == 3 and table[2].startswith("| 66b / 32 | 4 x 256 x 1024 | 4 (<= 1) |")
    assert f"{100 * row['examples_share']:.1f}% (" in table[2]
    assert "Command: `python scripts/benchmark.py --device_suite gpu --study_step" in result.stdout


def test_study_step_alternates_fresh_runners_where_two_do_not_fit(monkeypatch):
    """Where the device holds one runner at a time (the second refused as `check_memory` refuses it): a fresh
    runner per round and variant, never two open at once, and the same records."""
    from benchmarks import study_step
    from opt_jax.errors import StatsError

    open_runners = []

    class OneAtATime(study_step.Ours):
        def __init__(self, *args, **kwargs):
            if open_runners:
                raise StatsError("the device: no room for a second runner")
            super().__init__(*args, **kwargs)
            open_runners.append(self)

        def close(self):
            open_runners.remove(self)
            super().close()

    monkeypatch.setattr(study_step, "Ours", OneAtATime)
    records = []
    rows = study_step.study_step(study_step.StudyStep(**STEP_ARGS, flush_repeats=1), emit=records.append, log=None)
    assert rows == records[-1:] and not open_runners
    _check_study_step(records, "alternating", 1)


def test_ours_numbers_each_steps_windows_on(tmp_path):
    """The random sample's ranks hash the window: a benchmark step that reused window 0 would repeat them, and
    no later token could enter the sample. Two steps of the same batch therefore hold different ranks."""
    from benchmarks.cpu import Ours, build_models, make_batches

    models = build_models(TINY, str(tmp_path))
    ours = Ours(models.converted_dir, TINY, (2, SEQ), examples=4)
    (batch,) = make_batches(TINY, SEQ, 2, 1)
    ours.step([batch])
    ours.step([batch])
    windows = ours.runner.counters.example_sets(0)["random"]["window"]  # [ffn, k]
    ours.close()
    assert set(np.unique(windows[windows >= 0]).tolist()) == {0, 1, 2, 3}, "both steps' windows: 0, 1 then 2, 3"


def test_late_cost_primes_the_sets_and_times_both_runners(tmp_path):
    from benchmarks.examples_cost import late_cost

    rows = late_cost(TINY, seen=(0, 4 * SEQ), seq_len=SEQ, tokens_per_batch=2 * SEQ, rounds=2, workdir=str(tmp_path),
                     log=lambda message: None)
    assert [(r["tokens_seen"], r["layers"], r["batch_size"]) for r in rows] == [(0, 2, 2), (4 * SEQ, 2, 2)]
    for r in rows:
        assert len(r["with_s"]) == len(r["without_s"]) == 2
        assert r["examples_share_of_step"] == pytest.approx(1 - r["without_median_s"] / r["with_median_s"])


def test_block_cost_compares_block_sizes_on_equal_sets():
    from analyses.collection import examples as ex
    from benchmarks.examples_cost import block_cost

    kept = ex._MAX_BLOCK
    rows = block_cost(sizes=(8, 4), seen=(0, 256), ffn=64, seq_len=16, batch=2, k=4, rounds=2, log=lambda m: None)
    assert [r["tokens_seen"] for r in rows] == [0, 256] and all(set(r["ms"]) == {8, 4} for r in rows)
    assert ex._MAX_BLOCK == kept, "the module's block size is restored"


def test_update_cost_names_the_merge_each_round_ran():
    from benchmarks.examples_cost import update_cost

    rows = update_cost(seen=(0, 4096), ffn=64, seq_len=16, batch=4, k=4, rounds=2, log=lambda m: None)
    assert [r["tokens_seen"] for r in rows] == [0, 4096]
    assert [len(r["merges_top_random"]) for r in rows] == [2, 2]
    # The second batch of 64 tokens changes most of the 64 neurons' sets; after 4096 tokens few tokens enter them.
    assert "early" in rows[0]["merges_top_random"][0] and "early" not in "/".join(rows[1]["merges_top_random"])


def test_commit_cost_empties_only_one_variants_sets_at_each_commit():
    from benchmarks.examples_cost import commit_cost

    out = commit_cost(batches=12, commit_every=4, ffn=64, seq_len=16, batch=4, k=4, log=lambda m: None)
    kept, emptied = out["kept"]["merges"], out["emptied"]["merges"]
    assert sum(kept.values()) == sum(emptied.values()) == 2 * 12  # two sets a batch
    # Every commit sends the emptied sets back to the first batches' merge (all of a batch's neurons change); the
    # kept sets took it in batch 0 only.
    assert emptied["early"] >= 2 * 3 and kept["early"] < emptied["early"], (kept, emptied)
    assert out["emptied_over_kept"] == pytest.approx(out["emptied"]["mean_ms"] / out["kept"]["mean_ms"])
