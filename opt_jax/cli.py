"""How the scripts end: a line on stdout when the work is done, or, for an error they expect (bad input
named with its file), `error: message` on stderr and exit status 1, never a traceback."""

from __future__ import annotations

import sys
from collections.abc import Callable


def run(action: Callable[[], object], expected: tuple[type[BaseException], ...],
        done: Callable[[object], str]) -> int:
    """Exit status of `action()`: 0 after printing `done(result)`; 1 after printing an expected error."""
    try:
        result = action()
    except expected as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(done(result))
    return 0
