"""A collection at OPT-125m's dimensions (12 layers, 3072 neurons, vocab 50272) forced by a memory budget into two
runs (token layer 0 with every layer, then token layer 1 with layers 0-1) and joined: equal to one run with both
token layers, array by array. Marked `real`: about a minute and 4 GB."""

import jax
import pytest

import analyses
import hf_models
import opt_jax
import scale_data as sd
from analyses.collection.plan import Options, make_plan, memory_use
from analyses.collection.runs import collect_runs, runs_dir
from analyses.verify import verify
from helpers import assert_same_stats
from opt_jax.streaming import CheckpointLayers

pytestmark = pytest.mark.real
FLAGS = dict(seq_len=512, batch_size=2, full_length_only=True, ngram_orders=(2, 3), verbose=False)


def test_opt_125m_dimensions_split_into_two_runs_and_joined_equal_one_run(tmp_path):
    model = sd.sparse_random_model(sd.OPT_125M, seed=3)
    hf_dir = hf_models.save(model, str(tmp_path / "hf"), "safetensors")
    words = sd.write_word_tokenizer(hf_dir)
    converted = opt_jax.convert(hf_dir, str(tmp_path / "converted"), verbose=False)
    docs = sd.zipf_documents(2, (1100, 1300), len(words), seed=5)  # 2 windows of 512 each
    corpus = sd.write_corpus(str(tmp_path / "corpus.jsonl"), docs, words)

    one = analyses.collect(converted, [corpus], str(tmp_path / "one"), token_layers=(0, 1), **FLAGS)
    options = Options(**FLAGS, token_layers=(0,))
    plan = make_plan(opt_jax.checkpoint.read_config(converted), options)
    use = memory_use(plan, plan.groups(), CheckpointLayers(converted).layer_bytes, options, jax.local_devices()[0])
    joined = collect_runs(converted, [corpus], str(tmp_path / "joined"), device_memory_gb=(use.needed + 100) / 1e9,
                          token_layers=(0, 1), **FLAGS)

    parts = [p["path"] for p in analyses.open_stats(joined).manifest["join"]["parts"]]
    assert parts == [f"{runs_dir(joined)}/run-1", f"{runs_dir(joined)}/run-2"]
    assert [analyses.open_stats(p).manifest["layers"] for p in parts] == [12, 2]
    stats = analyses.open_stats(joined)
    assert stats.tok_act.shape == (2, 50272, 3072) and stats.sequences == 4
    assert_same_stats(stats, analyses.open_stats(one))
    assert verify(joined, verbose=False).ok
