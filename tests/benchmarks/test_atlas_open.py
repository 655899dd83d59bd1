"""benchmarks/atlas_open.py on a small synthetic atlas: every step is timed in the browser, on neurons of the
blocks the atlas holds."""

import re

from benchmarks import atlas_open
from benchmarks.atlas_synthetic import write_atlas


def test_times_every_step_on_the_blocks_present(tmp_path, capsys):
    atlas = write_atlas(str(tmp_path / "atlas"), layers=2, ffn=64, block=16, blocks=[0, 3], vocab=40, seq_len=16,
                        examples=2)
    target = atlas_open.targets(atlas)
    assert target["layer"] == 1 and target["neurons"] == (0, 49), "the first and the last block written"
    atlas_open.main([atlas, "--repeats", "1"])
    out = capsys.readouterr().out
    for step in atlas_open.STEPS:  # a synthetic atlas has positional neurons: the filter shows rows
        found = re.search(rf"^  {re.escape(step)} +([0-9.]+) ms   x1\.00$", out, re.M)
        assert found and float(found.group(1)) > 0, step
    assert "2 layers x 64 neurons" in out and "L1N0, L1N49" in out
