"""How the scripts end: a line on stdout when the work is done, or, for an error a user can cause (an
`opt_jax.errors.OptJaxError`: bad input named with its file), `error: message` on stderr and exit status 1.
Any other exception is a bug: it propagates, shows its traceback and the script exits with status 1."""

from __future__ import annotations

import sys
from collections.abc import Callable

from opt_jax import env, heap
from opt_jax.errors import OptJaxError


# The corpus flags' help, shared by every script that reads a corpus (opt_jax.corpus reads them all).
CORPUS_HELP = ("corpus files, directories or globs: .jsonl/.json/.txt (each also .gz/.zst), .parquet, HF datasets "
               "save_to_disk directories (docs/collection.md)")
TEXT_KEY_HELP = "the text's key in JSON lines, its column in parquet and Arrow files"


def run(action: Callable[[], object], done: Callable[[object], str], devices: bool | str = False,
        keep_freed_memory: str | None = None, streamed: bool = False) -> int:
    """Exit status of `action()`: 0 after printing `done(result)`; 1 after printing an `OptJaxError`.

    `devices`: first say which backend and devices the work runs on (`opt_jax.env.announce`), with a warning
    where a GPU goes unused or a large model (a converted checkpoint's path, when given) would run on the CPU.
    `keep_freed_memory`: the script's `--keep_freed_memory` (`define_heap_flag`), applied before the work, for a
    run whose weights are `streamed` (`--offload`) or resident (`opt_jax.heap.apply_choice`)."""
    env.quiet_backend_probe()
    try:
        if devices:
            env.announce(devices if isinstance(devices, str) else None)
        if keep_freed_memory is not None:
            import jax

            _, warning = heap.apply_choice(keep_freed_memory, jax.default_backend(), streamed)
            if warning:
                print(warning, file=sys.stderr, flush=True)
        result = action()
    except OptJaxError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(done(result))
    return 0


def headless_figures() -> None:
    """Draw figures without a display (the Agg backend); scripts call this, libraries never choose a backend."""
    import matplotlib

    matplotlib.use("Agg")


def define_lock_flag() -> None:
    """`--wait_for_lock`, for every script that writes a directory (`opt_jax.lock`)."""
    from absl import flags

    flags.DEFINE_bool("wait_for_lock", False, "when another process is writing the output directory, wait for it "
                      "to finish instead of stopping with an error")


def define_heap_flag() -> None:
    """`--keep_freed_memory`, for the scripts that run a model step after step (`opt_jax.heap`)."""
    from absl import flags

    flags.DEFINE_enum("keep_freed_memory", "auto", list(heap.CHOICES), "keep the host memory each step frees "
                      "mapped for the next (glibc): on the CPU about 5% faster steps for a few % more peak memory; "
                      "auto: when jax runs on the CPU, the weights resident (opt_jax/heap.py)")
