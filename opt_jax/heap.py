"""Freed host memory kept by this process (glibc's malloc), so that a step loop on the CPU stops page-faulting.

XLA on the CPU allocates a step's large buffers (hidden states, fc1, logits) with malloc and frees them when the
step ends. glibc serves each request above its mmap threshold (at most 32 MB) with a mapping of its own and
unmaps it on free, and it returns the top of its heap to the kernel once more than the trim threshold is free. So
the next step's buffers, the same sizes again, are faulted in page by page: about 224k minor faults and 0.8 s of
system time per 4096-token step of OPT-125m on 2 cores, 5-6% of the step (BENCHMARKS.md, "A lead for item 3").

`keep_freed_memory()` tells glibc (`mallopt`) to serve large requests from the heap and never to trim it: freed
pages stay mapped and the next step reuses them. The cost is memory: the process holds on to its peak heap (the
collection's peak RSS grew 3-7% in the measurement). The setting is the whole process's and lasts until it exits,
so it is a script's choice (`--keep_freed_memory`, `opt_jax.cli.define_heap_flag`), never made on import or by
a library function; `auto` keeps freed memory when jax runs on the CPU with the weights resident, where the step's
buffers live in the host's memory, and leaves a GPU run's host allocations (checkpoint reads, commits) as glibc
does them, and a streamed run's too (`--offload`: each layer group read, used and freed, gigabytes at 66b widths,
would stay in the heap; a 66b-width streamed collection was killed on a 24 GB machine with it).

The memory held free that way is this process's to reuse, but the system no longer counts it as available: the
memory checks that run before a collection, a contexts pass, an ablation or an attribution read `host_available()`,
the system's available memory plus what this process holds free (a study runs several collections in one process).

Only glibc has these settings (Linux); elsewhere `keep_freed_memory` changes nothing and says so.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools

import psutil

from opt_jax.errors import InputError

# mallopt(3) parameters (glibc's malloc.h).
M_TRIM_THRESHOLD = -1
M_TOP_PAD = -2
M_MMAP_MAX = -4
# Heap growth asked of the kernel beyond each request (glibc's default: 128 KiB): fewer, larger brk calls.
TOP_PAD_BYTES = 256 * 2**20
CHOICES = ("auto", "yes", "no")
_kept = {"top_pad": None}  # set by keep_freed_memory: the top pad it asked for


class _MallInfo2(ctypes.Structure):
    """glibc's `struct mallinfo2` (2.33 and later), every field a size_t."""

    _fields_ = [(name, ctypes.c_size_t) for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                      "fsmblks", "uordblks", "fordblks", "keepcost")]


@functools.cache
def _libc():
    """The C library's handle when it is glibc (has `mallopt` and `gnu_get_libc_version`), else None; loaded once,
    its functions' signatures set there."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None
    if not (hasattr(libc, "mallopt") and hasattr(libc, "gnu_get_libc_version")):
        return None
    libc.mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    libc.mallopt.restype = ctypes.c_int
    if hasattr(libc, "mallinfo2"):  # glibc 2.33 and later
        libc.mallinfo2.restype = _MallInfo2
    return libc


def keep_freed_memory(top_pad_bytes: int = TOP_PAD_BYTES) -> str | None:
    """Make this process keep the memory it frees (see the module docstring); None when done, else why not.

    Large requests come from the heap (`M_MMAP_MAX` 0), the heap is never trimmed (`M_TRIM_THRESHOLD` -1) and
    grows `top_pad_bytes` beyond each request (`M_TOP_PAD`). Allocations made before keep their mappings."""
    if not 0 <= top_pad_bytes < 2**31:
        raise InputError(f"top_pad_bytes must be in [0, 2^31), got {top_pad_bytes}")
    libc = _libc()
    if libc is None:
        return "the C library is not glibc: freed memory goes back to the system as before"
    for param, value in ((M_MMAP_MAX, 0), (M_TRIM_THRESHOLD, -1), (M_TOP_PAD, top_pad_bytes)):
        if libc.mallopt(param, value) != 1:
            return f"glibc refused mallopt({param}, {value})"
    _kept["top_pad"] = top_pad_bytes
    return None


def free_held_bytes() -> int:
    """Memory this process's malloc holds free for reuse since `keep_freed_memory` (0 when it was not called, or
    without glibc 2.33's `mallinfo2`): its free bytes less the top pad, which may never have been touched and is
    then still counted by the system as available."""
    libc = _libc() if _kept["top_pad"] is not None else None
    if libc is None or not hasattr(libc, "mallinfo2"):
        return 0
    return max(0, int(libc.mallinfo2().fordblks) - _kept["top_pad"])


def host_available() -> int:
    """Host memory a run of this process may still use: the system's available memory (`psutil`) plus what this
    process's malloc holds free (`free_held_bytes`)."""
    return psutil.virtual_memory().available + free_held_bytes()


def apply_choice(choice: str, backend: str, streamed: bool = False) -> tuple[bool, str | None]:
    """A script's `--keep_freed_memory` (`auto`, `yes`, `no`) on a run whose jax backend is `backend`, its weights
    `streamed` or resident: keep freed memory for `yes`, and for `auto` when `backend` is "cpu" and the weights are
    resident. Returns whether it is kept and, when it was asked for but could not be, a warning for the log."""
    if choice not in CHOICES:
        raise InputError(f"--keep_freed_memory must be one of {', '.join(CHOICES)}, got {choice!r}")
    if choice == "no" or (choice == "auto" and (backend != "cpu" or streamed)):
        return False, None
    why_not = keep_freed_memory()
    return why_not is None, (f"warning: --keep_freed_memory={choice}: {why_not}" if why_not else None)
