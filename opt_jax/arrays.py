"""The zarr3 arrays opt_jax writes (converted checkpoints, statistics stores): checksummed chunks, an inventory
of the chunk files a commit wrote, and reads that turn a damaged chunk into the caller's clear error.

Every chunk ends with a crc32c checksum of its encoded bytes (zarr3's `crc32c` codec, last in the chain), so a
flipped or truncated chunk is always an error, never other numbers. zarr3 reads a chunk file that does not
exist as the fill value, and a chunk equal to the fill value is not written at all: the inventory (the chunk
keys of each array, recorded in the manifest when it is committed) is what tells a deleted chunk from one never
written. `Checked` wraps a tensorstore array so that any read failing on a chunk raises the caller's
`OptJaxError`, naming the array, the chunk file and what to do.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable

CHECKSUM = {"name": "crc32c"}
_CHUNK_FILE = re.compile(r'Error reading local file "([^"]+)"')


def chunk_keys(array_dir: str) -> list[str]:
    """The chunk files of one zarr3 array directory, as keys relative to its `c/` folder ("0/3/1"), sorted."""
    base = os.path.join(array_dir, "c")
    keys = []
    for dirpath, _, filenames in os.walk(base):
        keys += [os.path.relpath(os.path.join(dirpath, name), base) for name in filenames]
    return sorted(keys)


def inventory(root: str, names) -> dict[str, list[str]]:
    """{name: chunk keys} of the arrays `names` under root (what a manifest records when it commits them)."""
    return {name: chunk_keys(os.path.join(root, name)) for name in names}


def missing_chunks(root: str, recorded: dict) -> list[str]:
    """The chunk files that `recorded` (an `inventory`) names under root and that are gone."""
    return [os.path.join(root, name, "c", key) for name, keys in recorded.items() for key in keys
            if not os.path.isfile(os.path.join(root, name, "c", key))]


def chunk_file(error: Exception) -> str | None:
    """The chunk file a tensorstore read error names (None when it names none)."""
    found = _CHUNK_FILE.search(str(error))
    return found.group(1) if found else None


class Checked:
    """A tensorstore array, or a view of one, whose reads raise `damaged(chunk file or None, cause)` (an
    `OptJaxError` of the caller's) instead of tensorstore's `ValueError`. Everything else passes through."""

    def __init__(self, store, damaged: Callable[[str | None, str], Exception]):
        self._store = store
        self._damaged = damaged

    def __getitem__(self, index) -> "Checked":
        return Checked(self._store[index], self._damaged)

    @property
    def oindex(self) -> "_Indexer":
        return _Indexer(self._store.oindex, self._damaged)

    def read(self) -> "_Read":
        return _Read(self._store.read(), self._damaged)

    def __getattr__(self, name):
        return getattr(self._store, name)


class _Indexer:
    def __init__(self, indexer, damaged):
        self._indexer, self._damaged = indexer, damaged

    def __getitem__(self, index) -> Checked:
        return Checked(self._indexer[index], self._damaged)


class _Read:
    def __init__(self, future, damaged):
        self._future, self._damaged = future, damaged

    def result(self):
        try:
            return self._future.result()
        except ValueError as e:
            chunk = chunk_file(e)
            cause = str(e).split(f'"{chunk}": ', 1)[-1] if chunk else str(e)
            raise self._damaged(chunk, cause) from None
