"""A full disk (and the other OS errors of writing: quota, permissions, a read-only or failing file system) as a
clear error, and free space checked before a write whose size is known.

`writing(directory, ...)` turns such an error, whether Python's `OSError` or tensorstore's `ValueError` carrying
the OS error code, into the caller's `OptJaxError`: it names the directory, the OS's reason, the space needed
(where known) and free, and what to do. Every writer in opt_jax commits atomically (`opt_jax.atomic`), so what
the message promises holds: the last commit is intact, and the same command resumes once there is room.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re

# The OS errors of writing that a user can cause and mend: no space, a quota, permissions, a read-only or a
# failing file system.
WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.EROFS, errno.EIO}
_OS_CODE = re.compile(r"os_error_code='(\d+)'")


def free_bytes(path: str) -> int:
    """Bytes free to this user on the file system holding `path` (or its nearest existing parent)."""
    path = os.path.abspath(path)
    while not os.path.exists(path):
        path = os.path.dirname(path)
    stat = os.statvfs(path)
    return stat.f_bavail * stat.f_frsize


def used_bytes(path: str) -> int:
    """Bytes a directory tree takes on disk (its files' allocated blocks)."""
    total = 0
    for dirpath, _, filenames in os.walk(path):
        for name in filenames:
            try:
                total += os.lstat(os.path.join(dirpath, name)).st_blocks * 512
            except FileNotFoundError:
                pass
    return total


def size(n: float) -> str:
    """Bytes in words: '1.3 GB', '12 MB', '900 B' (decimal units)."""
    for unit, scale in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.{1 if n < 10 * scale else 0}f} {unit}"
    return f"{int(n)} B"


def write_errno(error: BaseException) -> int | None:
    """The OS error code of a failed write (OSError, or tensorstore's ValueError), None for any other error."""
    if isinstance(error, OSError):
        code = error.errno
    elif isinstance(error, ValueError):
        found = _OS_CODE.search(str(error))
        code = int(found.group(1)) if found else None
    else:
        return None
    return code if code in WRITE_ERRNOS else None


def check_free(directory: str, needed: int, error, what: str, then: str) -> None:
    """Refuse, before writing, `what` (e.g. "the conversion") of `needed` bytes into directory when less is free."""
    free = free_bytes(directory)
    if free < needed:
        raise error(f"{directory}: {what} needs about {size(needed)} and only {size(free)} is free there; {then}")


@contextlib.contextmanager
def writing(directory: str, error, what: str, then: str, needed=None):
    """Run the block; an OS error of writing (see WRITE_ERRNOS) becomes `error(message)`: the directory, `what`
    failed, the reason, the space `needed` (bytes, or a function giving them, where known) and free, and `then`
    (what to do). Other errors pass unchanged."""
    try:
        yield
    except (OSError, ValueError) as e:
        code = write_errno(e)
        if code is None:
            raise
        need = needed() if callable(needed) else needed
        space = (f"about {size(need)} needed, " if need else "") + f"{size(free_bytes(directory))} free"
        raise error(f"{directory}: {what} failed: {os.strerror(code)} ({space}); {then}") from None
