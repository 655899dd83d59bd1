"""`--mesh data=A,neurons=B`: the same statistics as one device, bit for bit, on 8 simulated CPU devices.

One subprocess with 8 devices collects with data=8, data=2,neurons=4 (stopped half way and resumed with
neurons=8) and neurons=8 streamed (--offload, one layer per group); each store is compared array by
array with a one-device run in this process (`assert_same_stats`: counts, value histograms, example sets,
windows, n-gram tables). The model is small but 128 wide: at 32 or 64 hidden units XLA:CPU's LayerNorm
rounds differently for another number of rows, so that plain data parallelism (no --mesh) already differs
there by an ulp (docs/collection.md, "Several devices"). Its 4 heads do not divide 8: neurons=8 runs every
head on every device.
"""

import subprocess
import sys

import pytest

import analyses
import hf_models
import opt_jax
from helpers import ROOT, assert_same_stats, devices_env
from opt_jax.errors import InputError
from opt_jax.sharding import check_divisible, parse_mesh

SEQ, BATCH = 32, 8
WIDE = dict(num_hidden_layers=3, hidden_size=128, num_attention_heads=4, ffn_dim=256, vocab_size=97,
            max_position_embeddings=40)
FLAGS = dict(seq_len=SEQ, batch_size=BATCH, ngram_orders=(2, 3), verbose=False)

RUNS = """
import sys
import analyses
model, corpus, out, half = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
flags = dict(seq_len={seq}, batch_size={batch}, ngram_orders=(2, 3), verbose=False)
analyses.collect(model, [corpus], out + "/data8", mesh="data=8", **flags)
analyses.collect(model, [corpus], out + "/resumed", mesh="data=2,neurons=4", max_tokens=half, **flags)
analyses.collect(model, [corpus], out + "/resumed", mesh="neurons=8", **flags)
analyses.collect(model, [corpus], out + "/streamed", mesh="neurons=8", offload=True, group_size=1, **flags)
""".format(seq=SEQ, batch=BATCH)


@pytest.fixture(scope="module")
def wide_model(tmp_path_factory):
    directory = str(tmp_path_factory.mktemp("wide_hf"))
    hf_models.save(hf_models.random_model(hf_models.hf_config(**WIDE), seed=3), directory, "safetensors")
    hf_models.save_tokenizer(directory, WIDE["vocab_size"])
    return opt_jax.convert(directory, str(tmp_path_factory.mktemp("wide") / "m"), verbose=False)


def test_every_mesh_equals_one_device(wide_model, tiny_corpus, tmp_path):
    single = analyses.open_stats(analyses.collect(wide_model, [tiny_corpus], str(tmp_path / "single"), **FLAGS))
    half = single.manifest["tokens"] // 2
    result = subprocess.run([sys.executable, "-c", RUNS, wide_model, tiny_corpus, str(tmp_path), str(half)],
                            cwd=ROOT, env=devices_env(8), capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    for name in ("data8", "resumed", "streamed"):
        assert_same_stats(analyses.open_stats(str(tmp_path / name)), single)


def test_a_neurons_axis_must_divide_the_ffn():
    config = opt_jax.for_size("125m")
    check_divisible(config, 8)  # 3072 neurons; its 12 heads need not divide
    with pytest.raises(InputError, match="neurons=5 must divide the model's ffn_dim 3072"):
        check_divisible(config, 5)


def test_mesh_flag_parsing():
    assert parse_mesh("data=2,neurons=4") == (2, 4)
    assert parse_mesh("neurons=8") == (0, 8)
    for bad in ("data=2,data=2", "neurons=0", "tensor=2", "data=x"):
        with pytest.raises(InputError, match="--mesh"):
            parse_mesh(bad)
