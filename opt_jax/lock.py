"""One writer at a time for every directory opt_jax and the analyses write.

A writer holds an OS lock (`fcntl.flock`, exclusive) on a lock file while it writes: `<dir>/.lock` for a
directory updated in place (a statistics store, a converted checkpoint, a training run, a report, an ablation
or attribution), `<dir>.lock` beside a directory that is built elsewhere and swapped in whole (the atlas).
The kernel releases the lock when the holder's process ends, however it ends (SIGKILL included): there is
never a stale lock to remove by hand, and the lock file itself may stay. A second writer is refused at once
with `LockedError`, naming the directory and its holder (pid, host, command, since when, from what the holder
wrote into the lock file), or waits for it (`wait=True`, the scripts' `--wait_for_lock`). Readers take no
lock: they read committed generations only (see `opt_jax.atomic`).

Locks are re-entrant within a process (the study takes its output directory and then each tool takes its
own), and are not shared across the processes of a multi-host run, which write separate directories.
flock works on local file systems and on NFSv4 (where Linux maps it to a byte-range lock).
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import fcntl
import functools
import inspect
import json
import os
import socket
import sys
import threading

from opt_jax import atomic
from opt_jax.errors import OptJaxError

LOCK_NAME = ".lock"

_held: dict[str, int] = {}  # lock file (real path) -> nesting depth, in this process
_guard = threading.Lock()


class LockedError(OptJaxError, RuntimeError):
    """Another process is writing the directory; the message names it and that process."""


def lock_path(directory: str, replaced_whole: bool = False) -> str:
    """The lock file of `directory`: inside it, or beside it (`<dir>.lock`) for one that is swapped in whole."""
    directory = os.path.abspath(directory)
    return f"{directory}.lock" if replaced_whole else os.path.join(directory, LOCK_NAME)


def entries(directory: str) -> list[str]:
    """The names in `directory` but its lock file: what a writer checks for "empty" or "foreign" contents."""
    return [name for name in os.listdir(directory) if name != LOCK_NAME]


def holder(path: str) -> str:
    """Who holds (or last held) the lock file at `path`, in words; "unknown" when it says nothing readable."""
    try:
        with open(path) as f:
            info = json.load(f)
        return (f"pid {info['pid']} on {info['host']}, since {info['since']}, running: {info['command']}")
    except (OSError, ValueError, KeyError, TypeError):
        return "holder unknown"


@contextlib.contextmanager
def locked(directory: str, wait: bool = False, replaced_whole: bool = False, say=None):
    """Hold the write lock of `directory` for the `with` block (the directory is created for it if missing, and
    removed again if it is left empty).

    Refused at once with `LockedError` while another process holds it, unless `wait`: then this blocks until it
    is free, after `say(message)` (default: a line on stderr) names the holder once. On release the lock file
    is removed (a writer still waiting on it sees that and takes a new one).
    """
    directory = os.path.abspath(directory)
    path = lock_path(directory, replaced_whole)
    created = not os.path.isdir(directory)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    key = os.path.realpath(path)
    with _guard:
        depth = _held.get(key, 0)
        _held[key] = depth + 1
    try:
        if depth:  # this process holds it already
            yield path
            return
        fd = _acquire(path, directory, wait, say)
        try:
            yield path
        finally:
            atomic.remove(path)  # before the unlock: nobody can take the lock of a file about to vanish
            os.close(fd)
            if created and not replaced_whole:
                try:
                    os.rmdir(directory)  # only when nothing but the lock file was ever written there
                except OSError:
                    pass
    finally:
        with _guard:
            _held[key] -= 1
            if not _held[key]:
                del _held[key]


def writes(argument: str, replaced_whole: bool = False):
    """Decorate a function that writes the directory named by its parameter `argument`: each call holds that
    directory's lock (`locked`) and takes one more keyword, `wait_for_lock` (default False: refuse at once)."""
    def decorate(function):
        signature = inspect.signature(function)

        @functools.wraps(function)
        def holding(*args, wait_for_lock: bool = False, **kwargs):
            directory = signature.bind_partial(*args, **kwargs).arguments[argument]
            with locked(str(directory), wait=wait_for_lock, replaced_whole=replaced_whole):
                return function(*args, **kwargs)

        return holding

    return decorate


def _acquire(path: str, directory: str, wait: bool, say) -> int:
    """An open descriptor of `path` holding its exclusive flock, with this process's details written in."""
    waiting = False
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise LockedError(f"{directory}: cannot open its lock file {path} ({os.strerror(e.errno)})") from None
        try:
            _flock(fd, path, directory, wait and waiting)
        except BlockingIOError:
            os.close(fd)
            if not wait:
                raise LockedError(f"{directory}: another process is writing it ({holder(path)}); wait for it to "
                                  f"finish, or pass --wait_for_lock (wait=True) to wait") from None
            (say or _stderr)(f"{directory}: waiting for the process writing it ({holder(path)})")
            waiting = True
            continue
        except BaseException:
            os.close(fd)
            raise
        try:
            same = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)  # its holder removed that file on release: take the lock of the one there now
    try:
        info = {"pid": os.getpid(), "host": socket.gethostname(), "command": " ".join(sys.argv) or sys.executable,
                "since": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")}
        data = json.dumps(info).encode()
        os.ftruncate(fd, 0)
        os.pwrite(fd, data, 0)
        return fd
    except BaseException:
        os.close(fd)
        raise


def _flock(fd: int, path: str, directory: str, block: bool) -> None:
    """flock(fd) exclusively, blocking or not (BlockingIOError while another holds it)."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | (0 if block else fcntl.LOCK_NB))
    except OSError as e:  # BlockingIOError (held) is re-raised as it is
        if e.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.EINVAL):
            raise LockedError(f"{directory}: its file system does not support locks ({path}: "
                              f"{os.strerror(e.errno)}); write to a local disk") from None
        raise


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)
