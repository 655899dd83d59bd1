"""`analyses.ablate` and scripts/ablate.py against an independent reference: the corpus cut into windows here
by hand, each window run through transformers' torch OPTForCausalLM with fc1 forward hooks zeroing the same
neurons; and on the planted model, whose dead neurons, detectors and their update directions are known."""

import json
import os

import numpy as np
import pytest
import torch
from transformers import AutoTokenizer

import analyses
from analyses.interventions import spec as specs
from helpers import devices_env, run_script
from opt_jax import checkpoint as ckpt
from opt_jax.errors import InputError, StatsError

from conftest import DOCS

SEQ = 16


def hand_windows(model_dir: str, docs, seq_len: int) -> list[np.ndarray]:
    """BOS + each consecutive seq_len - 1 tokens of each document, as the paper's setup cuts them."""
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    bos = ckpt.read_config(model_dir).bos_token_id
    out = []
    for doc in docs:
        ids = tokenizer(doc, add_special_tokens=False)["input_ids"]
        out += [np.array([bos] + ids[i:i + seq_len - 1]) for i in range(0, len(ids), seq_len - 1)]
    return out


def torch_log_probs(model, window: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    """float64 [seq, vocab] log-softmax of one unpadded window, fc1 outputs zeroed where mask [layers, ffn]."""
    hooks = []
    if mask is not None:
        for i, layer in enumerate(model.model.decoder.layers):
            gate = torch.as_tensor(mask[i])
            hooks.append(layer.fc1.register_forward_hook(lambda m, inp, out, g=gate: torch.where(g, 0.0, out)))
    try:
        with torch.no_grad():
            logits = model(input_ids=torch.as_tensor(window[None], dtype=torch.long)).logits[0]
    finally:
        for h in hooks:
            h.remove()
    return torch.log_softmax(logits.double(), -1).numpy()


@pytest.fixture(scope="module")
def small_run(tiny_model, tiny_corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("ablation")
    neurons = ["0:1,0:5,1:7,2:3", "random:20"]
    result = analyses.ablate(tiny_model, [tiny_corpus], neurons, str(out / "resident"), seq_len=SEQ, batch_size=4,
                             seed=3, verbose=False)
    return neurons, result, out


def test_losses_kl_and_positions_match_torch_hooks(small_run, tiny_model, pre_ln_model):
    neurons, result, _ = small_run
    sets = specs.resolve(neurons, ckpt.read_config(tiny_model), seed=3)
    windows = hand_windows(tiny_model, DOCS, SEQ)
    base = [torch_log_probs(pre_ln_model, w) for w in windows]
    predictions = sum(len(w) - 1 for w in windows)
    assert result["tokens"] == predictions and result["windows"] == len(windows)
    nll = lambda lp, w: -lp[np.arange(len(w) - 1), w[1:]]  # noqa: E731  [len - 1]
    base_loss = sum(nll(lp, w).sum() for lp, w in zip(base, windows)) / predictions
    assert result["base_loss"] == pytest.approx(base_loss, rel=1e-5)
    for s, variant in zip(sets, result["variants"]):
        edited = [torch_log_probs(pre_ln_model, w, s.mask) for w in windows]
        loss = sum(nll(lp, w).sum() for lp, w in zip(edited, windows)) / predictions
        assert variant["ablated_loss"] == pytest.approx(loss, rel=1e-5)
        assert variant["change"] == pytest.approx(loss - base_loss, abs=1e-5 * base_loss)
        assert abs(variant["change"]) > 1e-4, "the reference must see the ablation"
        kl = sum((np.exp(b[:-1]) * (b[:-1] - e[:-1])).sum() for b, e in zip(base, edited)) / predictions
        assert variant["kl"] == pytest.approx(kl, rel=1e-4, abs=1e-7)
        low, high = variant["interval"]
        assert low <= variant["change"] <= high and low < high
        for p in (0, 3, SEQ - 2):  # the change at predicting position p
            rows = [(nll(e, w)[p] - nll(b, w)[p]) for b, e, w in zip(base, edited, windows) if len(w) > p + 1]
            assert variant["by_position"][p] == pytest.approx(np.mean(rows), abs=1e-5)
    assert result["variants"][1]["neurons"] == 20 and sum(result["variants"][1]["per_layer"]) == 20


def test_streamed_and_four_devices_equal_resident(small_run, tiny_model, tiny_corpus):
    neurons, resident, out = small_run
    streamed = analyses.ablate(tiny_model, [tiny_corpus], neurons, str(out / "streamed"), seq_len=SEQ, batch_size=4,
                               seed=3, offload=True, group_size=1, verbose=False, figure=False)
    script = run_script("scripts/ablate.py", "--model", tiny_model, "--corpus", tiny_corpus, "--out",
                        str(out / "devices"), "--seq_len", str(SEQ), "--batch_size", "4", "--seed", "3",
                        *[a for n in neurons for a in ("--neurons", n)], env=devices_env(4))
    assert script.returncode == 0, script.stderr[-3000:]
    with open(out / "devices" / "ablation.json") as f:
        devices = json.load(f)
    for other in (streamed, devices):
        assert other["tokens"] == resident["tokens"]
        assert other["base_loss"] == pytest.approx(resident["base_loss"], rel=1e-6)
        for a, b in zip(other["variants"], resident["variants"]):
            assert a["ablated_loss"] == pytest.approx(b["ablated_loss"], rel=1e-6)
            assert a["kl"] == pytest.approx(b["kl"], rel=1e-4, abs=1e-8)
            assert a["interval"] == pytest.approx(b["interval"], rel=1e-3, abs=1e-6)


def test_the_files_beside_the_json(small_run):
    import csv

    _, result, out = small_run
    folder = out / "resident"
    with open(folder / "ablation.json") as f:
        assert json.load(f)["base_loss"] == result["base_loss"]
    with open(folder / "ablation.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["spec"] for r in rows] == [v["spec"] for v in result["variants"]]
    assert float(rows[1]["change"]) == pytest.approx(result["variants"][1]["change"])
    with open(folder / "by_position.csv") as f:
        assert len(list(csv.DictReader(f))) == SEQ - 1
    assert os.path.getsize(folder / "ablation.png") > 10_000


def test_dead_neurons_change_nothing_on_the_statistics_own_corpus(planted_run, tmp_path):
    import planted

    corpus = str(planted_run.root / "corpus.jsonl")
    result = analyses.ablate(planted_run.model, [corpus], [f"dead:{planted_run.stats}"], str(tmp_path),
                             seq_len=planted.SEQ, batch_size=16, verbose=False, figure=False)
    variant = result["variants"][0]
    want = np.zeros((planted.LAYERS, planted.FFN), bool)
    want[0, list(planted.DEAD)] = True
    want[1] = True  # layer 1 is all dead
    assert variant["neurons"] == want.sum() and variant["per_layer"] == want.sum(1).tolist()
    assert variant["change"] == 0.0 and variant["kl"] == 0.0
    assert result["tokens"] == len(planted.documents()) * (planted.SEQ - 1)


def test_ablating_a_suppressing_detector_raises_its_triggers_repetition(planted_run, tmp_path):
    """The planted detectors 0, 1, 3 write -trigger into the residual stream, detector 2 +trigger: ablated, the
    log-probability that a trigger follows a trigger rises for the first (and cannot rise for the second); the
    matched random control (same layer, as many neurons) moves it far less."""
    import planted

    corpus = str(planted_run.root / "corpus.jsonl")
    det = f"detectors:{planted_run.stats}"
    result = analyses.ablate(planted_run.model, [corpus], [det, f"match:{det}"], str(tmp_path),
                             seq_len=planted.SEQ, batch_size=16, verbose=False)
    detectors, control = result["variants"]
    assert detectors["per_layer"] == [len(planted.DETECTORS), 0, 0, 0] == control["per_layer"]
    by_neuron = {t["neuron"]: t for t in detectors["triggers"]}
    assert set(by_neuron) == set(planted.DETECTORS)
    for neuron, (words, direction) in planted.DETECTORS.items():
        t = by_neuron[neuron]
        assert sorted(t["tokens"]) == sorted(planted.token_id(planted.TRIGGERS[w]) for w in words)
        assert t["positions"] > 0
        if direction > 0:  # the model already repeats a token with p ~ 1 (tied embeddings): it can only fall
            assert t["change"] <= 1e-6, (neuron, t)
            continue
        assert t["change"] > 0.1, (neuron, t)
        controlled = next(c for c in control["triggers"] if c["neuron"] == neuron)
        assert abs(controlled["change"]) < t["change"] / 10
    with open(tmp_path / "triggers.csv") as f:
        assert len(f.readlines()) == 1 + 2 * len(planted.DETECTORS)


def test_positional_and_file_specs(planted_run, tmp_path):
    import planted

    config = ckpt.read_config(planted_run.model)
    (found,) = specs.resolve([f"positional:{planted_run.stats}"], config)
    assert set(np.flatnonzero(found.mask[0])) >= {n for n, (_, s) in planted.POSITIONAL.items() if s == "strong"}
    path = tmp_path / "n.json"
    path.write_text(json.dumps({"neurons": [[0, 6], [2, 3]]}))
    (listed,) = specs.resolve([f"file:{path}"], config)
    assert set(zip(*np.nonzero(listed.mask))) == {(0, 6), (2, 3)}


@pytest.mark.parametrize("neurons, error, message", [
    (["5:0"], InputError, "outside the model's 3 layers"),
    (["0:64"], InputError, "outside"),
    (["zero:1"], InputError, "is not LAYER:NEURON"),
    (["random:0"], InputError, "K >= 1"),
    (["random:5:0-9"], InputError, "outside the model's layers"),
    (["file:/nonexistent.json"], InputError, "does not exist"),
])
def test_bad_specs_are_clear_errors_and_write_nothing(tiny_model, tiny_corpus, tmp_path, neurons, error, message):
    with pytest.raises(error, match=message):
        analyses.ablate(tiny_model, [tiny_corpus], neurons, str(tmp_path / "out"), seq_len=SEQ, verbose=False)
    assert not (tmp_path / "out").exists()


def test_statistics_of_another_model_and_empty_sets_are_refused(tiny_model, tiny_corpus, planted_run, tmp_path):
    with pytest.raises(StatsError, match="statistics of another model"):
        analyses.ablate(tiny_model, [tiny_corpus], [f"detectors:{planted_run.stats}"], str(tmp_path / "a"),
                        seq_len=SEQ, verbose=False)
    empty = tmp_path / "empty.json"
    empty.write_text("[]")
    with pytest.raises(InputError, match="selects no neuron"):
        analyses.ablate(tiny_model, [tiny_corpus], [f"file:{empty}"], str(tmp_path / "b"), seq_len=SEQ, verbose=False)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_the_script_prints_a_summary_and_errors_without_traceback(tiny_model, tiny_corpus, tmp_path):
    ok = run_script("scripts/ablate.py", "--model", tiny_model, "--corpus", tiny_corpus, "--neurons", "0:1,1:2",
                    "--out", str(tmp_path / "ok"), "--seq_len", str(SEQ), "--edit", "set:2.0", "--batch_size", "2")
    assert ok.returncode == 0, ok.stderr[-3000:]
    assert "base loss" in ok.stdout and "0:1,1:2: 2 neurons" in ok.stdout
    with open(tmp_path / "ok" / "ablation.json") as f:
        assert json.load(f)["edit"] == "set:2"
    bad = run_script("scripts/ablate.py", "--model", tiny_model, "--corpus", tiny_corpus, "--neurons", "9:1",
                     "--out", str(tmp_path / "bad"), "--seq_len", str(SEQ))
    lines = bad.stderr.splitlines()  # the devices line first (opt_jax.env.announce), then the error alone
    assert bad.returncode == 1 and "Traceback" not in bad.stderr
    assert lines[0].startswith("devices: ") and lines[-1].startswith("error: --neurons 9:1") and len(lines) == 2
    assert not (tmp_path / "bad").exists()


GB = 10**9


def test_the_memory_check_plans_each_device_of_a_mesh():
    """OPT-66b in fp16, resident, two sets, 8 windows of 2048: on a node of 8 x 80 GB with --mesh neurons=8 each
    device holds the embedding, 1/8 of every layer (`layer_bytes(config, 2, 8)`) and two layers gathered whole
    (about 21 GB of weights) and the pass is accepted; on one 80 GB device the 131 GB of weights are refused with
    the sizes, as are devices too small for their share and a host that cannot hold the weights it reads."""
    import opt_jax
    from analyses.interventions.ablation import check_memory
    from helpers import FakeDevice
    from opt_jax.streaming import layer_bytes

    config = opt_jax.for_size("66b")
    outer = (config.vocab_size * config.word_embed_proj_dim + config.max_position_embeddings * config.hidden_size) * 2
    whole = outer + 64 * layer_bytes(config, 2)
    share = outer + 64 * layer_bytes(config, 2, 8) + 2 * layer_bytes(config, 2)  # 1/8 of each, two gathered whole
    assert 130 * GB < whole < 133 * GB and 20 * GB < share < 22 * GB
    args = (config, 2, 8, 2048, 1, "float16", False)
    check_memory(*args, available=2000 * GB, device=FakeDevice(80 * GB, name="H100"), mesh="data=1,neurons=8")
    with pytest.raises(InputError, match=rf"^H100: an ablation pass of 2 set\(s\), batch_size 8 x seq_len 2048, "
                                         rf"needs about 1\d\d\.\d GB \(the weights {whole / GB:.1f} GB, .*; 80.0 GB "
                                         "are free"):
        check_memory(*args, available=2000 * GB, device=FakeDevice(80 * GB, name="H100"))
    with pytest.raises(InputError, match=rf"^H100 \(each of the 8 devices of --mesh's neurons axis\): .* \(the "
                                         rf"weights {share / GB:.1f} GB, .*; 20.0 GB are free"):
        check_memory(*args, available=2000 * GB, device=FakeDevice(20 * GB, name="H100"), mesh="neurons=8")
    with pytest.raises(InputError, match=rf"host memory: the weights read .* need {whole / GB:.1f} GB; 100.0 GB"):
        check_memory(*args, available=100 * GB, device=FakeDevice(80 * GB, name="H100"), mesh="neurons=8")
