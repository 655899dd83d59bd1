"""Training: the loss falls, snapshots load here and in transformers, SIGKILL + rerun = one run, devices agree."""

import dataclasses
import functools
import json
import os
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers

import opt_jax
from kill import kill_when
from opt_jax import stdlib_corpus, train
from opt_jax.checkpoint import read_config, read_params
from opt_jax.config import ConfigError, OPTConfig
from opt_jax.corpus import Corpus
from opt_jax.hf.export import export_hf
from opt_jax.model import flatten
from opt_jax.tokenizer import train_tokenizer
from helpers import ROOT, devices_env as _env

VOCAB, SEQ, STEPS = 320, 16, 20
SHAPE = dict(layers=2, hidden=32, heads=4, ffn=64, vocab_size=VOCAB, max_positions=SEQ)
OPTIONS = train.TrainOptions(seq_len=SEQ, batch_size=4, steps=STEPS, lr=1e-2, warmup_steps=2, save_steps=(5,),
                             shuffle_windows=8, log_every=1, verbose=False)
TEXTS = ["def neuron(x):\n    \"\"\"Fire on a few tokens.\"\"\"\n    return max(x, 0)\n",
         "the dead neurons of large language models never fire, " * 3,
         "class Positional:\n    def __init__(self, position):\n        self.position = position\n",
         "n-gram neurons fire on a few tokens and suppress them; positional neurons fire by position. " * 2]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """TEXTS, each 3 times, as one .jsonl file: a few dozen windows of SEQ tokens."""
    path = tmp_path_factory.mktemp("corpus") / "docs.jsonl"
    path.write_text("".join(json.dumps({"text": f"{i}: {t}"}) + "\n" for i in range(3) for t in TEXTS))
    return str(path)


@pytest.fixture(scope="module")
def tokenizer(corpus, tmp_path_factory):
    """A byte-level BPE of VOCAB tokens trained on the corpus."""
    texts = [json.loads(line)["text"] for line in open(corpus)]
    return train_tokenizer(texts, VOCAB, str(tmp_path_factory.mktemp("tok") / "tokenizer"))


@pytest.fixture(scope="module")
def reference(corpus, tokenizer, tmp_path_factory):
    """An uninterrupted run, in this process."""
    out = str(tmp_path_factory.mktemp("reference") / "run")
    return train.train(out, train.model_config(**SHAPE), OPTIONS, corpus=[corpus], tokenizer=tokenizer)


def _cli(out, corpus, tokenizer, *extra):
    return [sys.executable, "scripts/train.py", "--out", out, "--corpus", corpus, "--tokenizer", tokenizer,
            "--layers", "2", "--hidden", "32", "--heads", "4", "--ffn", "64", "--vocab", str(VOCAB),
            "--seq_len", str(SEQ), "--batch_size", "4", "--steps", str(STEPS), "--lr", "1e-2", "--warmup_steps", "2",
            "--save_steps", "5", "--shuffle_windows", "8", "--log_every", "1", *extra]


def _batch(corpus, tokenizer):
    """The first training batch: (ids, mask) [batch, seq]."""
    data = Corpus([corpus], transformers.AutoTokenizer.from_pretrained(tokenizer), SEQ, 2)
    return next(train.training_batches(data, OPTIONS, 1, {"epoch": 0, "window": 0}))[:2]


_init = train.initial_params  # the training runs' compilations serve here too
_loss = jax.jit(train.loss_fn, static_argnums=(0, 1))  # one compilation instead of one per operation


def test_tokenizer_has_opt_special_ids_and_training_is_deterministic(corpus, tokenizer, tmp_path):
    texts = [json.loads(line)["text"] for line in open(corpus)]
    again = train_tokenizer(texts, VOCAB, str(tmp_path / "again"))
    assert open(f"{again}/tokenizer.json").read() == open(f"{tokenizer}/tokenizer.json").read()
    tok = transformers.AutoTokenizer.from_pretrained(tokenizer)
    assert tok.convert_ids_to_tokens([0, 1, 2, 3]) == ["<s>", "<pad>", "</s>", "<unk>"]
    assert (tok.bos_token_id, tok.pad_token_id, tok.eos_token_id, len(tok)) == (2, 1, 2, VOCAB)
    text = "naïve 神经元 never seen\ttext"
    ids = tok(text)["input_ids"]
    assert ids[0] == 2 and tok.decode(ids, skip_special_tokens=True) == text


def test_stdlib_corpus_is_the_libraries_utf8_sources_in_a_fixed_order(tmp_path):
    files = stdlib_corpus.stdlib_files()
    assert files == stdlib_corpus.stdlib_files() and len(files) > 100
    assert not any("site-packages" in f or f"{os.sep}test{os.sep}" in f for f in files)
    root = stdlib_corpus.stdlib_root()
    assert {os.path.join(root, "os.py"), os.path.join(root, "json", "__init__.py")} <= set(files)
    path = stdlib_corpus.write_jsonl(str(tmp_path / "stdlib.jsonl"))
    with open(path) as f:
        first = json.loads(f.readline())
    with open(os.path.join(root, first["path"]), encoding="utf-8") as f:
        assert f.read() == first["text"]


def test_the_data_stream_is_a_permutation_per_epoch_and_resumes_at_any_batch(corpus, tokenizer):
    data = Corpus([corpus], transformers.AutoTokenizer.from_pretrained(tokenizer), SEQ, 2)
    in_order = [tuple(w) for w in data.windows()]
    epochs = [[tuple(w) for w in train.epoch_windows(data, OPTIONS, e)] for e in range(2)]
    assert sorted(epochs[0]) == sorted(epochs[1]) == sorted(in_order) and epochs[0] != epochs[1] != in_order
    assert len(in_order) > 2 * OPTIONS.shuffle_windows and len(in_order) % OPTIONS.batch_size  # blocks, a ragged end
    stream = train.training_batches(data, OPTIONS, 1, {"epoch": 0, "window": 0})
    run = [next(stream) for _ in range(2 * len(in_order) // OPTIONS.batch_size + 2)]  # into the third epoch
    assert run[-1][2]["epoch"] == 2
    for step in range(1, len(run)):
        resumed = train.training_batches(data, OPTIONS, 1, run[step - 1][2])
        for want in run[step:step + 2]:
            got = next(resumed)
            np.testing.assert_array_equal(got[0], want[0])
            assert got[2] == want[2]


def test_loss_is_mean_cross_entropy_over_real_targets():
    config = train.model_config(**SHAPE)
    params = _init(config, OPTIONS.seed)  # the compilation test_training_lowers_the_loss reuses
    rng = np.random.default_rng(0)
    ids = rng.integers(3, VOCAB, (3, SEQ)).astype(np.int32)  # [b, s]
    mask = np.arange(SEQ)[None, :] < np.array([[SEQ], [7], [1]])  # [b, s]: full, short, BOS only
    ids[~mask] = config.pad_token_id
    loss, count = _loss(config, jnp.float32, params, ids, mask)
    logits = np.asarray(opt_jax.Model(config, params).forward(ids, mask).logits, np.float64)  # [b, s, v]
    logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))  # [b, s, v]
    picked = [-logp[b, p, ids[b, p + 1]] for b in range(3) for p in range(SEQ - 1) if mask[b, p + 1]]
    assert int(count) == len(picked) == SEQ - 1 + 6
    np.testing.assert_allclose(float(loss), np.mean(picked), rtol=1e-5)


def test_weight_decay_applies_to_matrices_and_embeddings_only():
    params = jax.eval_shape(functools.partial(opt_jax.init_params, train.model_config(**SHAPE)))
    decayed = {path for path, decays in flatten(train.decay_mask(params)).items() if decays}
    assert decayed == {"embed/tokens", "embed/positions", "layers/attn/q_proj/weight", "layers/attn/k_proj/weight",
                       "layers/attn/v_proj/weight", "layers/attn/o_proj/weight", "layers/ffn/fc1/weight",
                       "layers/ffn/fc2/weight"}


def test_training_lowers_the_loss(reference, corpus, tokenizer):
    config = read_config(f"{reference}/step-{STEPS}")
    ids, mask = _batch(corpus, tokenizer)
    before = _loss(config, jnp.float32, _init(config, OPTIONS.seed), ids, mask)[0]
    after = _loss(config, jnp.float32, opt_jax.load(f"{reference}/step-{STEPS}").params, ids, mask)[0]
    assert float(after) < 0.8 * float(before)
    log = [json.loads(line) for line in open(f"{reference}/log.jsonl")]
    assert [line["step"] for line in log] == list(range(1, STEPS + 1))


def test_snapshots_load_and_the_hf_export_matches_transformers(reference):
    assert sorted(d for d in os.listdir(reference) if d.startswith("step-")) == ["step-20", "step-5"]
    step = f"{reference}/step-{STEPS}"
    model = opt_jax.load(step)
    torch_model = transformers.OPTForCausalLM.from_pretrained(f"{step}/hf").eval()
    tok = transformers.AutoTokenizer.from_pretrained(f"{step}/hf")
    ids = np.array([tok("def neuron(x):\n    return x")["input_ids"]] * 2)  # [b, s]
    mask = np.ones_like(ids)  # [b, s]
    mask[1, 6:] = 0
    with torch.no_grad():
        want = torch_model(input_ids=torch.as_tensor(ids), attention_mask=torch.as_tensor(mask)).logits.numpy()
    got = np.asarray(model.forward(ids, mask).logits)
    real = mask.astype(bool)
    assert np.abs(got - want)[real].max() <= 1e-4
    assert transformers.AutoTokenizer.from_pretrained(step)(["x"])["input_ids"] == [[2, *tok("x")["input_ids"][1:]]]


def test_no_positional_model_has_no_positions_and_collects(corpus, tokenizer, tmp_path):
    import analyses

    config = train.model_config(**SHAPE, positional=False)
    assert OPTConfig.from_dict(config.to_dict()) == config
    assert "positional_embeddings" not in train.model_config(**SHAPE).to_dict()  # older manifests still match
    params = _init(config, 0)
    assert "positions" not in params["embed"]
    x = opt_jax.embed(config, params, np.array([[5, 5, 5]]), np.ones((1, 3), bool))  # [1, 3, d]
    np.testing.assert_array_equal(x[0, 0], x[0, 2])  # the same token anywhere: the same vector
    with pytest.raises(ConfigError, match="no Hugging Face OPT equivalent"):
        export_hf(config, params, str(tmp_path / "hf"))
    assert not os.path.exists(tmp_path / "hf")
    options = dataclasses.replace(OPTIONS, steps=3, save_steps=())
    out = train.train(str(tmp_path / "run"), config, options, corpus=[corpus], tokenizer=tokenizer)
    step = f"{out}/step-3"
    assert sorted(os.listdir(step)) == ["opt_jax.json", "params", "tokenizer.json", "tokenizer_config.json"]
    assert read_config(step) == config
    assert not any(p.startswith("embed/positions") for p in read_params(step))
    stats = analyses.open_stats(analyses.collect(step, [corpus], str(tmp_path / "stats"), seq_len=SEQ,
                                                 batch_size=4, verbose=False))
    assert stats.tokens > 0 and np.asarray(stats.pos_act).shape == (2, SEQ, 64)


def test_a_killed_run_resumes_to_the_uninterrupted_parameters(reference, corpus, tokenizer, tmp_path, capfd):
    out = str(tmp_path / "run")
    proc = subprocess.Popen(_cli(out, corpus, tokenizer, "--save_every_s", "0"), cwd=ROOT, env=_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    kill_when(proc, f"{out}/train.json", lambda record: record["step"] >= 7)
    with open(f"{out}/train.json") as f:
        killed_at = json.load(f)["step"]
    assert 7 <= killed_at < STEPS
    train.train(out, train.model_config(**SHAPE), dataclasses.replace(OPTIONS, verbose=True), corpus=[corpus],
                tokenizer=tokenizer)  # the rerun, here rather than in a second subprocess
    assert f"resuming at step {killed_at}" in capfd.readouterr().out
    for step in (5, STEPS):
        want, got = read_params(f"{reference}/step-{step}"), read_params(f"{out}/step-{step}")
        assert want.keys() == got.keys()
        for path in want:
            np.testing.assert_array_equal(got[path], want[path], err_msg=f"step {step}: {path}")
    assert not os.path.exists(f"{out}/resume")
    logs = [[json.loads(line) for line in open(f"{run}/log.jsonl")] for run in (out, reference)]
    assert logs[0] == logs[1]  # every step once, with the uninterrupted run's loss


def test_four_simulated_devices_train_like_one(reference, corpus, tokenizer, tmp_path):
    four = str(tmp_path / "four")
    result = subprocess.run([*_cli(four, corpus, tokenizer), "--noexport_hf"], cwd=ROOT, env=_env(4),
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert re.search(r"train: 20/20 steps .*, loss \d+\.\d+, .* tokens/s", result.stderr), result.stderr
    losses = [[json.loads(line)["loss"] for line in open(f"{run}/log.jsonl")] for run in (reference, four)]
    np.testing.assert_allclose(losses[1], losses[0], rtol=1e-4)
    want, got = read_params(f"{reference}/step-{STEPS}"), read_params(f"{four}/step-{STEPS}")
    # The key bias shifts all of a query's scores alike: its gradient is rounding noise, which Adam scales up.
    for path in set(want) - {"layers/attn/k_proj/bias"}:
        np.testing.assert_allclose(got[path], want[path], rtol=1e-3, atol=1e-4, err_msg=path)
    ids, mask = _batch(corpus, tokenizer)
    logits = [np.asarray(opt_jax.load(f"{run}/step-{STEPS}").forward(ids, mask).logits) for run in (reference, four)]
    np.testing.assert_allclose(logits[1], logits[0], rtol=1e-3, atol=1e-3)


def test_a_finished_run_is_not_redone_and_other_settings_are_refused(reference, corpus, tokenizer, tmp_path):
    before = os.path.getmtime(f"{reference}/train.json")
    train.train(reference, train.model_config(**SHAPE), OPTIONS, corpus=[corpus], tokenizer=tokenizer)
    assert os.path.getmtime(f"{reference}/train.json") == before
    config = train.model_config(**SHAPE)
    with pytest.raises(train.TrainError, match="different options"):
        train.train(reference, config, dataclasses.replace(OPTIONS, lr=1e-3), corpus=[corpus], tokenizer=tokenizer)
    with pytest.raises(train.TrainError, match="save_steps"):
        train.train(reference, config, dataclasses.replace(OPTIONS, save_steps=(STEPS + 1,)), corpus=[corpus],
                    tokenizer=tokenizer)
    (tmp_path / "notes.txt").write_text("not a run")
    with pytest.raises(train.TrainError, match="is not a training run's directory"):
        train.train(str(tmp_path), config, OPTIONS, corpus=[corpus], tokenizer=tokenizer)


def test_resume_states_are_orbax_checkpoints_keeping_the_last_two(tmp_path):

    def state(step):
        return train.State({"w": jnp.full((2, 3), float(step))}, (jnp.int32(step),), step, {}, 0)

    out = str(tmp_path)
    with train.ResumeStates(out) as states:
        names = [states.save(state(step)) for step in (3, 5, 7)]
        assert names == ["resume/3", "resume/5", "resume/7"]
        assert sorted(os.listdir(f"{out}/resume")) == ["5", "7"]  # KEEP_RESUME_STATES
        template = jax.eval_shape(lambda: {"params": state(0).params, "opt_state": state(0).opt_state})
        restored = states.restore("resume/5", template)
        np.testing.assert_array_equal(restored["params"]["w"], np.full((2, 3), 5.0))
        assert int(restored["opt_state"][0]) == 5
        states.discard_after("resume/5")  # 7 was written but never committed
        assert sorted(os.listdir(f"{out}/resume")) == ["5"]
        with pytest.raises(train.TrainError, match="missing"):
            states.restore("resume/7", template)
        with pytest.raises(train.TrainError, match="does not match"):
            states.restore("resume/5", {"params": {"w": jax.ShapeDtypeStruct((4, 4), np.float32)},
                                        "opt_state": template["opt_state"]})


def test_a_full_disk_is_a_clear_error_and_the_run_resumes(reference, corpus, tokenizer, tmp_path):
    """The run directory's disk fills during training: a TrainError naming it, its last saved state kept; with
    room, the same call ends with the uninterrupted run's parameters."""
    from helpers import small_disk
    from opt_jax import disk

    with small_disk(tmp_path / "disk", disk.used_bytes(reference) * 3) as mount:
        out = str(mount / "run")
        ballast = mount / "ballast"
        ballast.write_bytes(b"\0" * (disk.free_bytes(str(mount)) - disk.used_bytes(reference) // 3))
        with pytest.raises(train.TrainError, match=r"run: training failed: No space left on device \(.* free\); "
                                                   r"the last saved state is kept"):
            train.train(out, train.model_config(**SHAPE), OPTIONS, corpus=[corpus], tokenizer=tokenizer)
        ballast.unlink()
        train.train(out, train.model_config(**SHAPE), OPTIONS, corpus=[corpus], tokenizer=tokenizer)
        for step in (5, STEPS):
            want, got = read_params(f"{reference}/step-{step}"), read_params(f"{out}/step-{step}")
            for path in want:
                np.testing.assert_array_equal(got[path], want[path], err_msg=f"step {step}: {path}")
