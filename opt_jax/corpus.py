"""Corpus ingestion for statistics collection: files on disk -> documents -> BOS-led token windows -> batches.

The files: JSON lines (`.jsonl` or `.json`, C4's `c4-*.json.gz`) and text files, either raw or compressed
as `.gz` / `.zst`; parquet (FineWeb, the Hugging Face hub's datasets), read one row group at a time; and
Arrow IPC streams (`.arrow`), which is what a directory written by HF `datasets`' `save_to_disk` holds,
read one record batch at a time, in the order its `state.json` lists them. A JSON line's text is its
`text_key` field, a parquet or Arrow file's text its `text_key` column. pyarrow is imported only when a
parquet or Arrow file is read.
"""

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
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, BinaryIO

import numpy as np
import zstandard

from opt_jax.errors import CorpusError, InputError

_JSONL_SUFFIXES = (".jsonl", ".jsonl.gz", ".jsonl.zst", ".json", ".json.gz", ".json.zst")
_BARE_JSON = ".json"  # JSON lines too, but skipped in a directory walk (see _corpus_files)
_TXT_SUFFIXES = (".txt", ".txt.gz", ".txt.zst")
_PARQUET_SUFFIXES = (".parquet",)
_ARROW_SUFFIXES = (".arrow",)  # an Arrow IPC stream, as `datasets` writes them
SUFFIXES = _JSONL_SUFFIXES + _TXT_SUFFIXES + _PARQUET_SUFFIXES + _ARROW_SUFFIXES

# A directory written by `datasets`' save_to_disk holds these two beside its arrow files (state.json lists
# them, in order, under "_data_files"); one written by a DatasetDict holds dataset_dict.json and a
# directory of that kind per split.
_DATASET_STATE = "state.json"
_DATASET_INFO = "dataset_info.json"
_DATASET_DICT = "dataset_dict.json"
_ROWS_PER_BATCH = 1024  # rows of a parquet row group turned into Python strings at a time

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
    """One argument's absolute file paths: the file itself, or the sorted corpus files of a directory or glob
    (a `save_to_disk` directory among them standing, at its place, for its arrow files in state.json's order)."""
    if os.path.isfile(path):
        if not path.endswith(SUFFIXES):
            raise CorpusError(f"{path}: unsupported file type (supported: {', '.join(SUFFIXES)})")
        return [os.path.abspath(path)]
    if os.path.isdir(path):
        found = _walk(path)
        where = "directory holds"
    elif any(character in path for character in _GLOB_CHARACTERS):
        found = glob.glob(path, recursive=True)
        where = "pattern matches"
    else:
        raise CorpusError(f"{path}: no such file or directory")
    files = [file for entry in sorted(map(os.path.abspath, found))
             for file in _corpus_files(entry, walked=os.path.isdir(path))]
    if not files:
        raise CorpusError(f"{path}: {where} no corpus file ({', '.join(SUFFIXES)} or a datasets directory)")
    return files


def _walk(directory: str) -> list[str]:
    """Every file under directory, except that a save_to_disk directory is listed itself, not its files."""
    found = []
    for root, subdirectories, names in os.walk(directory):
        if _DATASET_DICT in names:
            raise CorpusError(f"{root}: a datasets DatasetDict (splits: {', '.join(sorted(subdirectories))}); "
                              f"pass one split's directory")
        if _is_dataset(root):
            subdirectories.clear()
            found.append(root)
        else:
            found.extend(os.path.join(root, name) for name in names)
    return found


def _corpus_files(entry: str, walked: bool) -> list[str]:
    """The corpus files a directory walk's or glob's entry stands for: a corpus file itself, a save_to_disk
    directory's arrow files, or none (other files and directories, a datasets directory's own JSON files, and in
    a directory walk an uncompressed `.json`: a folder's `.json` files are mostly metadata, such as a hub
    dataset's `config.json`; name such a file, or match it with a glob, to read it as JSON lines)."""
    if os.path.isdir(entry):
        return _dataset_files(entry) if _is_dataset(entry) else []
    if not entry.endswith(SUFFIXES) or not os.path.isfile(entry) or (walked and entry.endswith(_BARE_JSON)):
        return []
    name, directory = os.path.basename(entry), os.path.dirname(entry)
    if name == _DATASET_DICT or (name in (_DATASET_STATE, _DATASET_INFO) and _is_dataset(directory)):
        return []
    return [entry]


def _is_dataset(directory: str) -> bool:
    """Whether directory was written by `datasets`' save_to_disk (it holds state.json and dataset_info.json)."""
    return all(os.path.isfile(os.path.join(directory, name)) for name in (_DATASET_STATE, _DATASET_INFO))


def _dataset_files(directory: str) -> list[str]:
    """A save_to_disk directory's arrow files, in the order its state.json lists them."""
    state = os.path.join(directory, _DATASET_STATE)
    try:
        with open(state, "rb") as stream:
            names = [entry["filename"] for entry in json.load(stream)["_data_files"]]
    except OSError as error:
        raise CorpusError(f"{state}: cannot read: {error}") from error
    except (ValueError, KeyError, TypeError) as error:
        raise CorpusError(f"{state}: not a datasets state file (no _data_files list of filenames)") from error
    if not all(isinstance(name, str) and name == os.path.basename(name) for name in names):
        raise CorpusError(f"{state}: _data_files names files outside the directory: {names}")
    files = [os.path.join(directory, name) for name in names]
    missing = [name for name, file in zip(names, files) if not os.path.isfile(file)]
    if missing:
        raise CorpusError(f"{state}: lists data files missing from the directory: {', '.join(missing)}")
    return files


def iter_documents(files: Sequence[str], text_key: str = "text") -> Iterator[str]:
    """The corpus's documents as strings, file by file."""
    for file in files:
        for document in _file_documents(file, text_key):
            if document.strip():
                yield document


def _file_documents(file: str, text_key: str) -> Iterator[str]:
    """A file's documents, empty ones included: one per JSON line or parquet / Arrow row, or the whole text file."""
    if file.endswith(_JSONL_SUFFIXES):
        return _jsonl_documents(file, text_key)
    if file.endswith(_TXT_SUFFIXES):
        return iter(["".join(line for _, line in _numbered_lines(file))])
    if file.endswith(_PARQUET_SUFFIXES):
        return _column_documents(file, text_key, _parquet_columns)
    if file.endswith(_ARROW_SUFFIXES):
        return _column_documents(file, text_key, _arrow_columns)
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
    return _text(record[text_key], text_key, where)


def _text(value: Any, text_key: str, where: str) -> str:
    """value, a document's text_key field, if it is a string; `where` (file and line or row) names it in errors."""
    if not isinstance(value, str):
        raise CorpusError(f"{where}: {text_key!r} is {type(value).__name__}, not a string")
    return value


def _column_documents(file: str, text_key: str, columns: Callable[[str, str], Iterator[Any]]) -> Iterator[str]:
    """The strings of a parquet or Arrow file's text_key column, read by `columns` (file, text_key -> pieces
    of the column, pyarrow arrays) a piece at a time; rows, numbered from 1, name a bad value in errors."""
    import pyarrow

    row = 0
    try:
        for piece in columns(file, text_key):
            for value in piece.to_pylist():
                row += 1
                yield _text(value, text_key, f"{file}: row {row}")
    except (OSError, pyarrow.ArrowException) as error:
        raise CorpusError(f"{file}: cannot read (corrupt or truncated?): {error}") from error


def _parquet_columns(file: str, text_key: str) -> Iterator[Any]:
    """A parquet file's text_key column, read one row group at a time (that column only), in pieces of at
    most _ROWS_PER_BATCH rows."""
    import pyarrow.parquet

    with pyarrow.parquet.ParquetFile(file) as parquet:
        _check_column(file, text_key, parquet.schema_arrow.names)
        for group in range(parquet.num_row_groups):
            for batch in parquet.read_row_group(group, columns=[text_key]).to_batches(_ROWS_PER_BATCH):
                yield batch.column(text_key)


def _arrow_columns(file: str, text_key: str) -> Iterator[Any]:
    """An Arrow IPC stream's text_key column, read one record batch at a time."""
    import pyarrow

    with pyarrow.OSFile(file, "rb") as source, pyarrow.ipc.open_stream(source) as reader:
        _check_column(file, text_key, reader.schema.names)
        for batch in reader:
            yield batch.column(text_key)


def _check_column(file: str, text_key: str, columns: Sequence[str]) -> None:
    """Raise CorpusError naming the file and its columns unless text_key is one of them."""
    if text_key not in columns:
        raise CorpusError(f"{file}: no {text_key!r} column (columns: {', '.join(map(repr, columns))})")


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
