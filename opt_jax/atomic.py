"""The commit protocol, in one place: every file opt_jax and the analyses write goes through here.

A write goes to a temporary name beside its target, is flushed to disk (the file, then its directory),
and only then takes the target's name with `os.replace`: a reader, or a run killed at any moment, sees
the old file or the whole new one, never a part. Directories are replaced the same way (the old one is
kept until the new one is complete). Removal takes files, links and trees alike.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from collections.abc import Callable
from typing import IO


def fsync_file(path: str) -> None:
    """Flush one file's contents to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: str) -> None:
    """Flush a directory's entries (names created, renamed or removed in it) to disk."""
    fd = os.open(path or ".", os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(path: str) -> None:
    """Flush every file and directory under path to disk (before a manifest points at it)."""
    for dirpath, _, filenames in os.walk(path):
        for name in filenames:
            fsync_file(os.path.join(dirpath, name))
        fsync_dir(dirpath)


def remove(path: str) -> None:
    """Remove a file, a link or a directory tree; nothing when path does not exist."""
    if os.path.islink(path) or os.path.isfile(path):
        os.remove(path)
    elif os.path.isdir(path):
        shutil.rmtree(path)


def write_file(path: str, write: Callable[[IO], object], binary: bool = False) -> str:
    """Write path through `write(f)` (f open for writing, text or binary), atomically and durably."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    tmp = f"{path}.tmp"
    try:
        with open(tmp, "wb" if binary else "w", **({} if binary else {"newline": "", "encoding": "utf-8"})) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
    except BaseException:  # a full disk, say: no half-written temporary left behind
        with contextlib.suppress(OSError):
            remove(tmp)
        raise
    os.replace(tmp, path)
    fsync_dir(directory)
    return path


def write_text(path: str, text: str) -> str:
    """Write a text file atomically and durably."""
    return write_file(path, lambda f: f.write(text))


def write_json(path: str, data) -> str:
    """Write JSON (indented) so that readers see either the old file or the whole new one."""
    return write_file(path, lambda f: json.dump(data, f, indent=2))


def read_json(path: str):
    """What `write_json` left at path, or None where there is none or it does not parse (a resumable build's state:
    absent or foreign means start afresh)."""
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def write_csv(path: str, rows: list[dict], columns: list[str]) -> str:
    """Write rows (dicts) as CSV with a header of `columns`, atomically."""
    import csv

    def write(f):
        writer = csv.DictWriter(f, columns)
        writer.writeheader()
        writer.writerows(rows)

    return write_file(path, write)


def append_line(path: str, line: str) -> None:
    """Append one line to a log and flush it to disk (a crash loses at most a line being written)."""
    with open(path, "a") as f:
        f.write(line.rstrip("\n") + "\n")
        f.flush()
        os.fsync(f.fileno())


def replace_dir(tmp_dir: str, final_dir: str) -> str:
    """Give the complete directory tmp_dir the name final_dir; the old final_dir goes only after that.

    tmp_dir is flushed to disk first. An old final_dir is first renamed aside (`<final>.old`), so at
    every moment either the old or the new directory is complete under one of the two names; `old_dir`
    (`recover_dir`) puts a stranded old one back.
    """
    fsync_tree(tmp_dir)
    old = f"{final_dir}.old"
    remove(old)
    if os.path.exists(final_dir):
        os.replace(final_dir, old)
    os.replace(tmp_dir, final_dir)
    fsync_dir(os.path.dirname(os.path.abspath(final_dir)))
    remove(old)
    return final_dir


def recover_dir(final_dir: str) -> None:
    """After a crash inside `replace_dir`: when only `<final>.old` exists, it becomes final_dir again."""
    old = f"{final_dir}.old"
    if os.path.exists(old) and not os.path.exists(final_dir):
        os.replace(old, final_dir)
    else:
        remove(old)
