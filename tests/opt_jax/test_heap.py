"""`opt_jax.heap`: with freed memory kept, repeated large allocations stop faulting their pages in again (measured
in a fresh process, as a script's process sets it); the choice applies only where asked."""

import json
import sys

import pytest

from opt_jax import heap
from opt_jax.errors import InputError
from tests.helpers import run_script

# A step's pattern: the same 64 MB buffer allocated, written and freed, 20 times; prints the minor page faults
# and how much of the freed memory stays resident.
_STEPS = """
import json, os, resource, sys
import numpy as np
if sys.argv[1] == "keep":
    from opt_jax import heap
    assert heap.keep_freed_memory() is None
def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
def resident():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
np.ones(2**10)  # numpy's first use, outside the count
before, rss = faults(), resident()
for _ in range(20):
    buffer = np.ones(2**23)  # 64 MB, every page written
    del buffer
print(json.dumps({"faults": faults() - before, "resident": resident() - rss}))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux") or heap._libc() is None, reason="glibc's malloc only")
def test_kept_memory_is_not_faulted_in_again():
    runs = {}
    for mode in ("default", "keep"):
        result = run_script("-c", _STEPS, mode)
        assert result.returncode == 0, result.stderr
        runs[mode] = json.loads(result.stdout)
    # by default each freed buffer goes back to the system and the next one faults in afresh (fewer faults where
    # transparent huge pages are on, but never none); kept, the buffer stays resident and the next reuses it
    assert runs["default"]["resident"] < 2**24 and runs["default"]["faults"] >= 20, runs
    assert runs["keep"]["resident"] > 2**25 and runs["keep"]["faults"] < runs["default"]["faults"] / 8, runs


def test_apply_choice_keeps_memory_only_where_asked(monkeypatch):
    calls = []
    monkeypatch.setattr(heap, "keep_freed_memory", lambda: calls.append(1))
    assert heap.apply_choice("no", "cpu") == (False, None) and heap.apply_choice("auto", "gpu") == (False, None)
    assert not calls
    assert heap.apply_choice("auto", "cpu") == (True, None) and len(calls) == 1
    assert heap.apply_choice("yes", "gpu") == (True, None) and len(calls) == 2
    # streamed weights (--offload): each group read and freed would stay in the heap, so auto leaves malloc alone
    assert heap.apply_choice("auto", "cpu", streamed=True) == (False, None) and len(calls) == 2
    assert heap.apply_choice("yes", "cpu", streamed=True) == (True, None) and len(calls) == 3
    with pytest.raises(InputError, match="one of auto, yes, no"):
        heap.apply_choice("always", "cpu")


def test_scripts_apply_their_flag_before_the_work(monkeypatch, capsys):
    """`cli.run(..., keep_freed_memory=...)`, as the step-loop scripts call it: kept before the action runs (jax
    runs on the CPU here, so `auto` keeps), untouched for `no`; where glibc is missing, a warning."""
    from opt_jax import cli

    order = []
    monkeypatch.setattr(heap, "keep_freed_memory", lambda: order.append("kept"))
    assert cli.run(lambda: order.append("work"), lambda r: "done", keep_freed_memory="auto") == 0
    assert cli.run(lambda: order.append("work"), lambda r: "done", keep_freed_memory="no") == 0
    assert cli.run(lambda: order.append("work"), lambda r: "done", keep_freed_memory="auto", streamed=True) == 0
    assert order == ["kept", "work", "work", "work"]
    monkeypatch.setattr(heap, "keep_freed_memory", lambda: "the C library is not glibc")
    assert cli.run(lambda: None, lambda r: "done", keep_freed_memory="yes") == 0
    assert "warning: --keep_freed_memory=yes: the C library is not glibc" in capsys.readouterr().err


def test_without_glibc_nothing_changes_and_the_log_says_so(monkeypatch):
    monkeypatch.setattr(heap, "_libc", lambda: None)
    assert "not glibc" in heap.keep_freed_memory()
    kept, warning = heap.apply_choice("yes", "cpu")
    assert not kept and "not glibc" in warning
    with pytest.raises(InputError, match="top_pad_bytes"):
        heap.keep_freed_memory(2**31)


# After keeping freed memory, 512 MB allocated and freed: the process holds it free, and counts it as available.
_HELD = """
import json
import numpy as np
import psutil
from opt_jax import heap
assert heap.free_held_bytes() == 0  # nothing kept yet
assert heap.keep_freed_memory() is None
buffer = np.ones(2**26)  # 512 MB
held_while_used = heap.free_held_bytes()
del buffer
freed, system, available = heap.free_held_bytes(), psutil.virtual_memory().available, heap.host_available()
print(json.dumps({"used": held_while_used, "freed": freed, "above_system": available - system}))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux") or heap._libc() is None, reason="glibc's malloc only")
def test_memory_held_free_counts_as_available():
    result = run_script("-c", _HELD)
    assert result.returncode == 0, result.stderr
    held = json.loads(result.stdout)
    assert held["used"] < 2**26  # the buffer in use is not free
    assert 0.9 * 2**29 <= held["freed"] <= 2**29 + 2**26, held  # freed: held for reuse, less the untouched top pad
    # host_available: the system's available memory plus the held bytes (the two read a moment apart)
    assert abs(held["above_system"] - held["freed"]) < 2**26, held
