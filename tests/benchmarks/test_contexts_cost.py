"""The context-activation benchmark (`benchmarks/contexts_cost.py`) on a tiny model: both variants run every batch,
the ratio is of their rates, and the sizes are those of the spans it gathered."""

import pytest

import opt_jax

TINY = opt_jax.OPTConfig(num_hidden_layers=2, hidden_size=64, num_attention_heads=4, ffn_dim=256,
                         word_embed_proj_dim=64, vocab_size=500)


def test_contexts_cost_on_a_tiny_model(tmp_path):
    from benchmarks.contexts_cost import contexts_cost

    row = contexts_cost(TINY, seq_len=32, batch_size=2, batches=2, warmup=1, before=3, after=2,
                        workdir=str(tmp_path), log=lambda message: None)
    assert row["ratio"] == pytest.approx(row["collection_tok_s"] / row["contexts_tok_s"])
    assert len(row["collection_step_s"]) == len(row["contexts_step_s"]) == 2
    assert row["raw_bytes"] == 2 * 256 * 32 * 6 * 2 and 0 < row["stored_bytes"]
    assert row["raw_bytes_66b"] == 64 * 36864 * 32 * 6 * 2 and row["filled_slots"] > 0.5
    assert row["stored_bytes_66b_projected"] == int(row["raw_bytes_66b"] * row["stored_bytes"] / row["raw_bytes"])
