"""Hold the write locks of some directories (`opt_jax.lock`) until killed or until stdin closes, as another
writer would:

    python tests/hold_lock.py READY DIR [DIR ...]      # DIR=whole:PATH for a directory swapped in whole

READY is written once every lock is held.
"""

import contextlib
import sys

from opt_jax import lock


def main(ready: str, directories: list[str]) -> None:
    with contextlib.ExitStack() as stack:
        for d in directories:
            whole = d.startswith("whole:")
            stack.enter_context(lock.locked(d.removeprefix("whole:"), replaced_whole=whole))
        with open(ready, "w") as f:
            f.write("held\n")
        sys.stdin.read()  # until the test closes our stdin (or kills us)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
