"""Corpus ingestion for statistics collection: files on disk -> documents -> BOS-led token windows -> batches."""

from __future__ import annotations

import dataclasses
import functools
import glob
import gzip
import hashlib
import io
import itertools
import json
import os
import zlib
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, BinaryIO

import numpy as np
import zstandard

from opt_jax.errors import CorpusError, InputError

_JSONL_SUFFIXES = (".jsonl", ".jsonl.gz", ".jsonl.zst")
_TXT_SUFFIXES = (".txt", ".txt.gz", ".txt.zst")
SUFFIXES = _JSONL_SUFFIXES + _TXT_SUFFIXES

_GLOB_CHARACTERS = "*?["
_HASH_BLOCK = 1 << 20
_READ_ERRORS = (OSError, EOFError, zlib.error, zstandard.ZstdError)


def expand_paths(paths: Sequence[str]) -> list[str]:
    """Files of the corpus, in a deterministic order."""
    if isinstance(paths, str):
        raise TypeError(f"paths must be a sequence of paths, not the string {paths!r}")
    files: dict[str, None] = {}
    for path in paths:
        files.update(dict.fromkeys(_files_of(path)))
    return list(files)


def _files_of(path: str) -> list[str]:
    """One argument's absolute file paths: the file itself, or the sorted corpus files of a directory or glob."""
    if os.path.isfile(path):
        if not path.endswith(SUFFIXES):
            raise CorpusError(f"{path}: unsupported file type (supported: {', '.join(SUFFIXES)})")
        return [os.path.abspath(path)]
    if os.path.isdir(path):
        found = [os.path.join(root, name) for root, _, names in os.walk(path) for name in names]
        where = "directory holds"
    elif any(character in path for character in _GLOB_CHARACTERS):
        found = glob.glob(path, recursive=True)
        where = "pattern matches"
    else:
        raise CorpusError(f"{path}: no such file or directory")
    files = sorted(os.path.abspath(f) for f in found if f.endswith(SUFFIXES) and os.path.isfile(f))
    if not files:
        raise CorpusError(f"{path}: {where} no corpus file ({', '.join(SUFFIXES)})")
    return files


def iter_documents(files: Sequence[str], text_key: str = "text") -> Iterator[str]:
    """The corpus's documents as strings, file by file."""
    for file in files:
        for document in _file_documents(file, text_key):
            if document.strip():
                yield document


def _file_documents(file: str, text_key: str) -> Iterator[str]:
    """A file's documents, empty ones included: one per JSON line, or the whole text file."""
    if file.endswith(_JSONL_SUFFIXES):
        return _jsonl_documents(file, text_key)
    if file.endswith(_TXT_SUFFIXES):
        return iter(["".join(line for _, line in _numbered_lines(file))])
    raise CorpusError(f"{file}: unsupported file type (supported: {', '.join(SUFFIXES)})")


def _jsonl_documents(file: str, text_key: str) -> Iterator[str]:
    """The text_key string of each non-blank line's JSON object."""
    for number, line in _numbered_lines(file):
        if line.strip():
            yield _json_text(line, text_key, f"{file}:{number}")


def _json_text(line: str, text_key: str, where: str) -> str:
    """The text_key string of one JSON line; `where` (file:line) names it in errors."""
    try:
        record = json.loads(line)
    except json.JSONDecodeError as error:
        raise CorpusError(f"{where}: invalid JSON: {error.msg} at column {error.colno}") from error
    if not isinstance(record, dict):
        raise CorpusError(f"{where}: expected a JSON object, got {type(record).__name__}")
    if text_key not in record:
        raise CorpusError(f"{where}: no {text_key!r} key (keys: {', '.join(map(repr, record))})")
    text = record[text_key]
    if not isinstance(text, str):
        raise CorpusError(f"{where}: {text_key!r} is {type(text).__name__}, not a string")
    return text


def _numbered_lines(file: str) -> Iterator[tuple[int, str]]:
    """The file's decompressed lines (newlines kept), decoded as strict UTF-8, numbered from 1."""
    try:
        with _open_decompressed(file) as stream:
            for number, raw in enumerate(stream, start=1):
                yield number, _decode(raw, f"{file}:{number}")
    except _READ_ERRORS as error:
        raise CorpusError(f"{file}: cannot read (corrupt or truncated?): {error}") from error


def _decode(raw: bytes, where: str) -> str:
    """raw as UTF-8; `where` (file:line) names it in errors."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise CorpusError(f"{where}: invalid UTF-8 at byte {error.start} of the line") from error


def _open_decompressed(file: str) -> BinaryIO:
    """A binary stream of the file's decompressed bytes, decompressed as it is read."""
    if file.endswith(".gz"):
        return gzip.open(file, "rb")
    if file.endswith(".zst"):
        return io.BufferedReader(_ZstdReader(open(file, "rb")))
    return open(file, "rb")


class _ZstdReader(io.RawIOBase):
    """The decompressed bytes of a zstd stream of one or more frames; EOFError where it ends inside a frame."""

    def __init__(self, compressed: BinaryIO):
        self._compressed = compressed
        self._decompressor = zstandard.ZstdDecompressor()
        self._frame = self._decompressor.decompressobj()
        self._inside_frame = False
        self._pending = memoryview(b"")

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        while not self._pending:
            block = self._compressed.read(zstandard.DECOMPRESSION_RECOMMENDED_INPUT_SIZE)
            if not block:
                if self._inside_frame:
                    raise EOFError("zstd stream ends inside a frame")
                return 0
            self._pending = memoryview(self._decompress(block))
        size = min(len(buffer), len(self._pending))
        buffer[:size] = self._pending[:size]
        self._pending = self._pending[size:]
        return size

    def _decompress(self, block: bytes) -> bytes:
        """Feed a compressed block, starting a new frame wherever one ends."""
        output = []
        while block:
            output.append(self._frame.decompress(block))
            self._inside_frame = not self._frame.eof
            block = b"" if self._inside_frame else self._frame.unused_data
            if not self._inside_frame:
                self._frame = self._decompressor.decompressobj()
        return b"".join(output)

    def close(self) -> None:
        self._compressed.close()
        super().close()


def corpus_fingerprint(files: Sequence[str]) -> str:
    """A hex digest identifying the corpus content: changes when any file's bytes, the file list or their order change."""
    corpus = hashlib.sha256()
    for file in files:
        size, digest = _size_and_digest(file)
        corpus.update(f"{os.path.basename(file)}\0{size}\0{digest}\n".encode())
    return corpus.hexdigest()


def _size_and_digest(file: str) -> tuple[int, str]:
    """The file's size in bytes and the sha256 hex digest of its bytes, read in 1 MiB blocks."""
    digest, size = hashlib.sha256(), 0
    try:
        with open(file, "rb") as stream:
            while block := stream.read(_HASH_BLOCK):
                digest.update(block)
                size += len(block)
    except OSError as error:
        raise CorpusError(f"{file}: cannot read: {error}") from error
    return size, digest.hexdigest()


def token_windows(documents: Iterable[str], tokenizer: Any, seq_len: int, bos_id: int,
                  full_length_only: bool = False, encode_batch: int = 64) -> Iterator[np.ndarray]:
    """Token windows (int32 arrays of at most seq_len tokens), each starting with BOS."""
    if seq_len < 2:
        raise InputError(f"seq_len must be at least 2 (BOS and one token), got {seq_len}")
    if encode_batch < 1:
        raise InputError(f"encode_batch must be at least 1, got {encode_batch}")
    windows = (window for tokens in _document_tokens(documents, tokenizer, encode_batch)
               for window in _cut(tokens, seq_len, bos_id))
    if full_length_only:
        return (window for window in windows if len(window) == seq_len)
    return windows


def _document_tokens(documents: Iterable[str], tokenizer: Any, encode_batch: int) -> Iterator[np.ndarray]:
    """Each document's tokens without special tokens, in order, tokenized encode_batch documents at a time."""
    for texts in _groups(documents, encode_batch):
        for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]:
            yield np.asarray(ids, dtype=np.int32)


def _cut(tokens: np.ndarray, seq_len: int, bos_id: int) -> Iterator[np.ndarray]:
    """BOS followed by each consecutive chunk of seq_len - 1 tokens."""
    bos = np.array([bos_id], dtype=np.int32)
    for start in range(0, len(tokens), seq_len - 1):
        yield np.concatenate((bos, tokens[start:start + seq_len - 1]))


def batches(windows: Iterable[np.ndarray], batch_size: int, seq_len: int, pad_id: int
            ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Fixed-shape batches: (ids int32 [batch, seq_len], mask bool [batch, seq_len]), right-padded with pad_id."""
    if batch_size < 1:
        raise InputError(f"batch_size must be at least 1, got {batch_size}")
    return (_padded(rows, batch_size, seq_len, pad_id) for rows in _groups(windows, batch_size))


def _padded(rows: list[np.ndarray], batch_size: int, seq_len: int, pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    """rows right-padded with pad_id into [batch_size, seq_len] ids and the mask of real tokens."""
    ids = np.full((batch_size, seq_len), pad_id, dtype=np.int32)
    mask = np.zeros((batch_size, seq_len), dtype=bool)
    for row, window in enumerate(rows):
        if len(window) > seq_len:
            raise InputError(f"a window of {len(window)} tokens does not fit seq_len {seq_len}")
        ids[row, :len(window)] = window
        mask[row, :len(window)] = True
    return ids, mask


def _groups(items: Iterable, size: int) -> Iterator[list]:
    """Consecutive lists of `size` items (the last one possibly shorter)."""
    iterator = iter(items)
    while group := list(itertools.islice(iterator, size)):
        yield group


@dataclasses.dataclass
class Corpus:
    """A corpus on disk turned into a deterministic stream of token windows."""

    paths: Sequence[str]
    tokenizer: Any = dataclasses.field(repr=False)
    seq_len: int
    bos_id: int
    text_key: str = "text"
    full_length_only: bool = False

    @functools.cached_property
    def files(self) -> list[str]:
        """The corpus's files: expand_paths(paths)."""
        return expand_paths(self.paths)

    def fingerprint(self) -> str:
        """corpus_fingerprint of the corpus's files."""
        return corpus_fingerprint(self.files)

    def windows(self, skip: int = 0) -> Iterator[np.ndarray]:
        """The corpus's token windows, less the first `skip` (to resume a run)."""
        if skip < 0:
            raise InputError(f"skip must be at least 0, got {skip}")
        return itertools.islice(self._windows_of(iter_documents(self.files, self.text_key)), skip, None)

    def check_not_empty(self) -> None:
        """Raise CorpusError unless the corpus yields a window, reading only until the first one."""
        documents = iter_documents(self.files, self.text_key)
        first = next(documents, None)
        if first is None:
            raise CorpusError(f"corpus {', '.join(self.paths)}: no documents (every one empty or whitespace)")
        if next(self._windows_of(itertools.chain([first], documents)), None) is None:
            wanted = f" of exactly {self.seq_len} tokens" if self.full_length_only else ""
            raise CorpusError(f"corpus {', '.join(self.paths)}: no windows{wanted}")

    def _windows_of(self, documents: Iterable[str]) -> Iterator[np.ndarray]:
        """token_windows of documents with this corpus's tokenizer and settings."""
        return token_windows(documents, self.tokenizer, self.seq_len, self.bos_id, self.full_length_only)


def model_corpus(model_dir: str, paths: Sequence[str], seq_len: int, text_key: str = "text",
                 full_length_only: bool = False) -> Corpus:
    """The corpus as a converted model's runs read it: its tokenizer (saved beside the model), its BOS id."""
    from transformers import AutoTokenizer

    from opt_jax.checkpoint import read_config

    config = read_config(model_dir)
    return Corpus(list(paths), AutoTokenizer.from_pretrained(model_dir), seq_len, config.bos_token_id,
                  text_key=text_key, full_length_only=full_length_only)


def limited_batches(corpus: Corpus, batch_size: int, pad_id: int, max_tokens: int | None = None,
                    skip_windows: int = 0) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """`batches` of the corpus's windows after the first `skip_windows`, stopping as collection stops: before
    the first batch that starts at or past `max_tokens` real tokens (a batch that crosses it is kept whole)."""
    seen = 0
    for ids, mask in batches(corpus.windows(skip=skip_windows), batch_size, corpus.seq_len, pad_id):
        if max_tokens is not None and seen >= max_tokens:
            return
        seen += int(mask.sum())
        yield ids, mask
