"""The flush-memory benchmark runs both modes, each in its own process, and the whole-layer copy shows."""

from benchmarks import flush


def test_flush_benchmark_measures_both_modes(tmp_path):
    results = flush.compare(vocab=50272, ffn=1000, workdir=str(tmp_path))
    assert [r["mode"] for r in results] == list(flush.MODES)
    layer = 50272 * 1000 * 4
    whole = next(r for r in results if r["mode"] == "whole_layer")
    assert whole["peak_above_before"] >= 0.9 * layer, "the old flush holds the whole layer on the host"
    assert all(r["seconds"] > 0 and r["layer_bytes_int32"] == layer for r in results)
    assert "| blocks | 50272 x 1000 |" in flush.markdown(results)
