"""Progress lines: done, total, rate (of this run only), time left."""

import io

from opt_jax import progress as progress_module
from opt_jax.progress import Progress


def test_lines_with_and_without_a_total(monkeypatch):
    clock = {"t": 100.0}
    monkeypatch.setattr(progress_module.time, "monotonic", lambda: clock["t"])
    out = io.StringIO()
    bar = Progress("collect", 1000, " tokens", stream=out, initial=200, every=0)
    clock["t"] = 110.0
    bar.update(300)  # 300 tokens in 10 s of this run; 500 of 1000 done
    assert out.getvalue().strip() == "collect: 500/1,000 tokens (50%), 30 tokens/s, elapsed 0m10s, left 0m16s"
    open_ended = Progress("convert", None, " MB", scale=1e6, stream=io.StringIO())
    clock["t"] = 112.0
    assert open_ended.line(clock["t"]) == "convert: 0.0 MB, 0.0 MB/s, elapsed 0m02s"
    slow = Progress("layers", 64, "", stream=io.StringIO())
    slow.done = 9
    clock["t"] = 112.0 + 53
    assert slow.line(clock["t"]) == "layers: 9/64 (14%), 0.17/s, elapsed 0m53s, left 5m23s"


def test_prints_at_most_every_interval_and_at_the_end(monkeypatch):
    clock = {"t": 0.0}
    monkeypatch.setattr(progress_module.time, "monotonic", lambda: clock["t"])
    out = io.StringIO()
    bar = Progress("x", 10, "", stream=out, every=5)
    for _ in range(10):
        clock["t"] += 1
        bar.update(1)
    lines = out.getvalue().splitlines()
    assert len(lines) == 2 and lines[0].startswith("x: 5/10 (50%)") and lines[-1].startswith("x: 10/10 (100%)")


def test_a_run_past_its_total_reads_finished(monkeypatch):
    """Collection and its passes keep the batch that crosses --max_tokens whole: 2,048 of 2,000 is 100%, none left."""
    clock = {"t": 0.0}
    monkeypatch.setattr(progress_module.time, "monotonic", lambda: clock["t"])
    bar = Progress("ablate", 2000, " tokens", stream=io.StringIO())
    clock["t"] = 4.0
    bar.update(2048)
    line = bar.line(clock["t"])
    assert line.startswith("ablate: 2,048/2,000 tokens (100%), 512 tokens/s") and line.endswith("left 0m00s")
