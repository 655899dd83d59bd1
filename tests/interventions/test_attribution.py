"""Every neuron's estimated zero-ablation effect (`analyses.interventions.attribution`): the sums against torch's
autograd (a * dL/da at each layer's ReLU output, in float64), the estimate against exact ablation of every
neuron (`Model.forward(edit=...)` and `opt_jax.loss`), resident == streamed == 4 simulated devices, the stored
directory and its errors, and a pass at OPT-125m widths (marked `real`)."""

import copy
import dataclasses
import json
import os
import sys

import jax
import numpy as np
import pytest
import torch
from scipy.stats import spearmanr

import analyses
import hf_models
import opt_jax
from analyses.interventions.attribution import Attributor, check_memory, read_attribution
from helpers import FakeDevice, ROOT, devices_env, run_script
from opt_jax.corpus import limited_batches, model_corpus
from opt_jax.edit import Edit
from opt_jax.errors import InputError, MissingError
from opt_jax.loss import mean_next_token_nll

SEQ, BATCH = 12, 4


@pytest.fixture(scope="module")
def windows(tiny_model, tiny_corpus):
    """The tiny corpus's batches, cut as collection cuts them."""
    config = opt_jax.load(tiny_model).config
    return list(limited_batches(model_corpus(tiny_model, [tiny_corpus], SEQ), BATCH, config.pad_token_id))


@pytest.fixture(scope="module")
def resident(tiny_model, windows):
    runner = Attributor.of_checkpoint(tiny_model, BATCH, SEQ)
    return runner.run(windows)


def torch_sums(model, windows) -> tuple[np.ndarray, float, int]:
    """(sum over counted predictions of a * dL/da [layers, ffn], summed loss, count) by torch autograd, float64,
    a taken by a forward hook on each layer's activation (what fc2 reads)."""
    model = copy.deepcopy(model).double()
    total, loss_sum, count = None, 0.0, 0
    for ids, mask in windows:
        captured = []

        def keep(module, inputs, out):
            out.retain_grad()
            captured.append(out)

        hooks = [layer.activation_fn.register_forward_hook(keep) for layer in model.model.decoder.layers]
        try:
            logits = model(input_ids=torch.as_tensor(ids, dtype=torch.long),
                           attention_mask=torch.as_tensor(mask, dtype=torch.long)).logits  # [b, s, v]
        finally:
            for h in hooks:
                h.remove()
        targets = torch.as_tensor(ids[:, 1:], dtype=torch.long)  # [b, s - 1]
        nll = -torch.log_softmax(logits[:, :-1], -1).gather(-1, targets[..., None])[..., 0]  # [b, s - 1]
        counted = torch.as_tensor(mask[:, 1:] & mask[:, :-1])  # [b, s - 1]
        loss = torch.where(counted, nll, 0.0).sum()
        loss.backward()
        grads = np.stack([(a * a.grad).reshape(-1, a.shape[-1]).sum(0).detach().numpy() for a in captured])
        total = grads if total is None else total + grads  # [l, f]
        loss_sum += float(loss.detach())
        count += int(counted.sum())
    return total, loss_sum, count


def test_sums_match_torch_autograd(pre_ln_model, resident, windows):
    want, loss, count = torch_sums(pre_ln_model, windows)
    assert resident.count == count > 0
    assert resident.loss == pytest.approx(loss, rel=1e-5)
    scale = np.abs(want).max()
    assert scale > 0
    assert np.abs(resident.grad - want).max() <= 1e-4 * scale, (np.abs(resident.grad - want).max(), scale)
    np.testing.assert_allclose(resident.effect, -want / count, atol=1e-4 * scale / count)


def exact_effects(model, windows, neurons) -> np.ndarray:
    """The change of the token-weighted mean loss when zero-ablating each neuron alone, by edited forwards."""
    def mean_loss(edit):
        sums = [mean_next_token_nll(model.forward(ids, mask, edit=edit).logits, ids, mask) for ids, mask in windows]
        return sum(float(m) * float(c) for m, c in sums) / sum(float(c) for _, c in sums)

    base = mean_loss(None)
    identity = Edit.identity(model.config)
    return np.array([mean_loss(identity.zero([neuron])) - base for neuron in neurons])


def test_estimate_ranks_neurons_as_exact_ablation_does(tiny_model, resident, windows):
    model = opt_jax.load(tiny_model)
    c = model.config
    neurons = [(l, n) for l in range(c.num_hidden_layers) for n in range(c.ffn_dim)]
    exact = exact_effects(model, windows, neurons)
    estimate = np.array([resident.effect[l, n] for l, n in neurons])
    alive = np.abs(exact) > 0
    assert alive.sum() > 0.8 * len(neurons)
    rho = spearmanr(estimate[alive], exact[alive]).statistic
    assert rho > 0.7, rho
    # the biggest estimated effects are among the biggest exact ones
    top = np.argsort(-np.abs(estimate))[:10]
    assert np.median(np.abs(exact[top])) > np.quantile(np.abs(exact), 0.75)


@pytest.mark.parametrize("group_size,chunk", [(1, 2), (2, 1), (3, 3)])
def test_streamed_equals_resident(tiny_model, resident, windows, group_size, chunk):
    runner = Attributor.of_checkpoint(tiny_model, BATCH, SEQ, offload=True, group_size=group_size,
                                      chunk_batches=chunk)
    try:
        streamed = runner.run(windows)
    finally:
        runner.close()
    assert len(runner.groups) == -(-3 // group_size)
    assert streamed.count == resident.count
    assert streamed.loss == pytest.approx(resident.loss, rel=1e-6)
    np.testing.assert_allclose(streamed.grad, resident.grad, rtol=1e-5, atol=1e-6 * np.abs(resident.grad).max())


def _script(model, corpus, out, *extra, env=None):
    return run_script("scripts/attribute.py", "--model", model, "--corpus", corpus, "--out", out, "--seq_len",
                      str(SEQ), "--batch_size", str(BATCH), *extra, env=env)


@pytest.fixture(scope="module")
def stored(tiny_model, tiny_corpus, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("attribution") / "a")
    return analyses.attribute(tiny_model, [tiny_corpus], out, seq_len=SEQ, batch_size=BATCH, verbose=False)


def test_stored_result(stored, resident, tiny_model, tiny_corpus):
    result = read_attribution(stored)
    np.testing.assert_allclose(result.effect, resident.effect, rtol=1e-6)
    assert result.effect.dtype == np.float64
    m = result.manifest
    assert m["tokens"] == resident.count and m["base_loss"] == pytest.approx(resident.base_loss, rel=1e-6)
    assert m["model"] == os.path.abspath(tiny_model) and m["seq_len"] == SEQ and m["mode"] == "resident"
    assert m["corpus"]["fingerprint"] == model_corpus(tiny_model, [tiny_corpus], SEQ).fingerprint()
    assert "zero-ablating" in m["reading"]
    assert sorted(os.listdir(stored)) == ["attribution.json", "effect"]
    assert not os.path.exists(f"{stored}.partial")


@pytest.mark.parametrize("extra", [(), ("--offload", "--group_size", "1", "--chunk_batches", "2")],
                         ids=["resident", "streamed"])
def test_four_simulated_devices_equal_one(stored, tiny_model, tiny_corpus, tmp_path, extra):
    out = str(tmp_path / "a")
    result = _script(tiny_model, tiny_corpus, out, *extra, env=devices_env(4))
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().endswith(f"attribution: {out}")
    assert "attribute:" in result.stderr  # the progress lines
    got, want = read_attribution(out), read_attribution(stored)
    assert got.manifest["tokens"] == want.manifest["tokens"]
    scale = np.abs(want.effect).max()
    np.testing.assert_allclose(got.effect, want.effect, rtol=1e-5, atol=1e-6 * scale)


def test_bad_inputs_are_refused_and_nothing_is_written(tiny_model, tiny_corpus, tmp_path):
    with pytest.raises(MissingError, match="not an attribution directory"):
        read_attribution(str(tmp_path))
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    with pytest.raises(InputError, match="is not an attribution directory"):
        analyses.attribute(tiny_model, [tiny_corpus], str(other), seq_len=SEQ, batch_size=BATCH, verbose=False)
    assert os.listdir(other) == ["notes.txt"]
    with pytest.raises(InputError, match="exceeds the model's"):
        analyses.attribute(tiny_model, [tiny_corpus], str(tmp_path / "a"), seq_len=4096, batch_size=BATCH,
                           verbose=False)
    assert not os.path.exists(tmp_path / "a")
    result = _script(tiny_model, tiny_corpus, str(tmp_path / "b"), "--batch_size", "3", env=devices_env(2))
    assert result.returncode == 1 and "error: batch_size 3 is not divisible by the 2 local devices" in result.stderr
    assert "Traceback" not in result.stderr and not os.path.exists(tmp_path / "b")
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "attribution.json").write_text("{")
    with pytest.raises(InputError, match="not valid JSON"):
        read_attribution(str(broken))
    (broken / "attribution.json").write_text(json.dumps({"format": "opt_jax.attribution", "version": 1,
                                                         "layers": 3, "ffn": 64}))
    with pytest.raises(InputError, match="cannot read the effect array"):
        read_attribution(str(broken))


def test_memory_refused_up_front():
    config = opt_jax.for_size("125m", num_hidden_layers=2)
    from opt_jax.streaming import layer_bytes
    with pytest.raises(InputError, match=r"--batch_size.*--offload"):
        check_memory(config, [range(2)], layer_bytes(config), 8, 2048, 4, False, 1, FakeDevice(8 * 10**9))
    check_memory(config, [range(2)], layer_bytes(config), 1, 512, 4, False, 1, FakeDevice(80 * 10**9))
    with pytest.raises(InputError, match="host memory"):
        check_memory(config, [range(1), range(1, 2)], layer_bytes(config), 1, 512, 4, True, 4, "cpu",
                     host_available=10**9)


@pytest.mark.real
def test_real_widths_125m(tmp_path):
    """125m widths (hidden 768, ffn 3072, vocab 50272), 2 layers, seq 512: the sums against torch's autograd,
    and resident == streamed."""
    fields = dict(num_hidden_layers=2, hidden_size=768, num_attention_heads=12, ffn_dim=3072, vocab_size=50272,
                  max_position_embeddings=2048)
    model = hf_models.random_model(hf_models.hf_config(**fields), seed=5)
    hf_models.save(model, str(tmp_path / "hf"), "safetensors")
    converted = opt_jax.convert(str(tmp_path / "hf"), str(tmp_path / "converted"), verbose=False)
    ids, mask = hf_models.padded_batch(fields["vocab_size"], [512, 300], 512, left=False, seed=2)
    windows = [(ids.astype(np.int32), mask.astype(bool))]
    resident = Attributor.of_checkpoint(converted, 2, 512, "float32").run(windows)
    runner = Attributor.of_checkpoint(converted, 2, 512, "float32", offload=True, group_size=1)
    try:
        streamed = runner.run(windows)
    finally:
        runner.close()
    want, loss, count = torch_sums(model, windows)
    scale = np.abs(want).max()
    assert resident.count == streamed.count == count == 511 + 299
    assert resident.loss == pytest.approx(loss, rel=1e-4)
    # float32 sums of 810 predictions whose logits run to ~60 nats (random weights) against float64: measured
    # 1.7e-3 of the largest at layer 0, where the error of the whole backward chain lands.
    assert np.abs(resident.grad - want).max() <= 5e-3 * scale, (np.abs(resident.grad - want).max(), scale)
    assert np.corrcoef(resident.grad.ravel(), want.ravel())[0, 1] > 0.9999
    np.testing.assert_allclose(streamed.grad, resident.grad, rtol=1e-5, atol=1e-6 * scale)


def test_atlas_script_shows_the_attribution(stored, tiny_model, tiny_corpus, tmp_path):
    from analyses.neurons.data_files import read_js

    stats = analyses.collect(tiny_model, [tiny_corpus], str(tmp_path / "stats"), seq_len=SEQ, batch_size=BATCH,
                             verbose=False)
    out = str(tmp_path / "atlas")
    result = run_script("scripts/atlas.py", "--stats", f"tiny={stats}", "--attribution", f"tiny={stored}",
                        "--out", out, env=devices_env(1))
    assert result.returncode == 0, result.stderr[-3000:]
    effect = read_attribution(stored).effect
    for layer in range(effect.shape[0]):
        _, summary = read_js(os.path.join(out, "data", "m0", f"L{layer}", "summary.js"))
        np.testing.assert_allclose(summary["effect"], effect[layer], rtol=1e-3, atol=1e-12)
    _, manifest = read_js(os.path.join(out, "data", "atlas.js"))
    assert manifest["models"][0]["attribution"]["tokens"] == read_attribution(stored).tokens
    result = run_script("scripts/atlas.py", "--stats", f"tiny={stats}", "--attribution", f"other={stored}",
                        "--out", str(tmp_path / "atlas2"), env=devices_env(1))
    assert result.returncode == 1 and "which name no model of the atlas" in result.stderr
    assert "Traceback" not in result.stderr
