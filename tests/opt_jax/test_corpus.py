"""Corpus ingestion: formats, path expansion, fatal errors, token windows, batches, fingerprint."""

import gzip
import json
import os
import random
import re
import shutil

import numpy as np
import pytest
import transformers
import zstandard

import hf_models
from opt_jax.corpus import (SUFFIXES, Corpus, CorpusError, batches, corpus_fingerprint, expand_paths,
                             iter_documents, token_windows)

DOCUMENTS = [
    "the neurons of large language models are dead, n-gram or positional",
    "naïve — 神经元 with a newline\nand a Windows one\r\nin it",
    'a {"json": "lookalike"} and a tab\t.',
]


def compress(data: bytes, suffix: str) -> bytes:
    """data as a file with this suffix holds it: raw, gzip or zstd."""
    if suffix.endswith(".gz"):
        return gzip.compress(data)
    if suffix.endswith(".zst"):
        return zstandard.ZstdCompressor().compress(data)
    return data


def write(path, data: bytes) -> str:
    """Write data to path, compressed as its suffix says; the path as a string."""
    path = str(path)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(compress(data, path))
    return path


def jsonl(*records) -> bytes:
    """Records as JSON lines."""
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records).encode()


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    """A small real byte-level BPE tokenizer (full byte alphabet: every text round-trips)."""
    directory = str(tmp_path_factory.mktemp("tokenizer"))
    hf_models.save_tokenizer(directory, 600)
    return transformers.AutoTokenizer.from_pretrained(directory)


def tokens_of(tokenizer, text: str) -> list[int]:
    """The text's tokens, tokenized alone, without special tokens."""
    return tokenizer(text, add_special_tokens=False)["input_ids"]


# The line-based formats; parquet and Arrow streams are tested in test_corpus_formats.py.
LINE_SUFFIXES = [suffix for suffix in SUFFIXES if suffix.startswith((".json", ".txt"))]


def expected_lengths(n_tokens: int, seq_len: int) -> list[int]:
    """Window lengths the spec gives a document of n_tokens tokens."""
    full, rest = divmod(n_tokens, seq_len - 1)
    return [seq_len] * full + ([rest + 1] if rest else [])


# --- formats ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("suffix", LINE_SUFFIXES)
def test_every_format_gives_the_same_documents(tmp_path, suffix):
    if suffix.startswith(".json"):
        records = [{"text": DOCUMENTS[0], "id": 1}, {"text": ""}, {"text": " \n\t"}, {"text": DOCUMENTS[1]},
                   {"text": DOCUMENTS[2], "meta": {"text": 5}}]
        data = jsonl(*records[:2]) + b"\n   \n" + jsonl(*records[2:])
        files = [write(tmp_path / f"corpus{suffix}", data)]
    else:
        files = [write(tmp_path / f"{i}{suffix}", text.encode()) for i, text in enumerate(DOCUMENTS)]
        files.insert(1, write(tmp_path / f"blank{suffix}", b" \n\n"))
    assert list(iter_documents(files)) == DOCUMENTS


def test_text_key_selects_the_field(tmp_path):
    file = write(tmp_path / "c.jsonl", jsonl({"content": "first", "text": 1}, {"content": "second"}))
    assert list(iter_documents([file], text_key="content")) == ["first", "second"]


@pytest.mark.parametrize("suffix", [".jsonl.gz", ".jsonl.zst"])
def test_large_compressed_files_stream_across_blocks_and_frames(tmp_path, suffix):
    rng = random.Random(0)
    texts = ["".join(rng.choice("abcdefghij klmnopqrstuvwxyz") for _ in range(300)) for _ in range(2000)]
    half = jsonl(*({"text": t} for t in texts[:1000])), jsonl(*({"text": t} for t in texts[1000:]))
    path = str(tmp_path / f"big{suffix}")
    with open(path, "wb") as f:  # two gzip members / two zstd frames, each larger than one read block
        f.write(compress(half[0], suffix) + compress(half[1], suffix))
    assert os.path.getsize(path) > 2 * zstandard.DECOMPRESSION_RECOMMENDED_INPUT_SIZE
    assert list(iter_documents([path])) == texts


# --- path expansion --------------------------------------------------------------------------------------------

@pytest.fixture
def tree(tmp_path):
    """A corpus directory with nested corpus files and files to skip."""
    root = tmp_path / "data"
    for name in ["b.jsonl", "a.txt", "sub/c.jsonl.gz", "sub/deeper/e.txt.zst", "sub/a.jsonl.zst"]:
        write(root / name, jsonl({"text": name}) if ".jsonl" in name else name.encode())
    for name in ["notes.md", "sub/x.csv", "sub/deeper/y.txt.bz2"]:
        write(root / name, b"skip me")
    return root


def test_directory_is_walked_recursively_sorted_and_skips_other_files(tree):
    names = ["a.txt", "b.jsonl", "sub/a.jsonl.zst", "sub/c.jsonl.gz", "sub/deeper/e.txt.zst"]
    assert expand_paths([str(tree)]) == sorted(str(tree / n) for n in names)


def test_arguments_keep_their_order_and_files_are_listed_once(tree, monkeypatch):
    monkeypatch.chdir(tree.parent)
    files = expand_paths(["data/**/*.jsonl*", "data", str(tree / "b.jsonl")])
    jsonl_files = sorted(str(tree / n) for n in ["b.jsonl", "sub/a.jsonl.zst", "sub/c.jsonl.gz"])
    assert files == jsonl_files + [str(tree / "a.txt"), str(tree / "sub/deeper/e.txt.zst")]
    assert all(os.path.isabs(f) for f in files)


def test_explicit_files_keep_the_given_order(tree):
    files = [str(tree / "sub/deeper/e.txt.zst"), str(tree / "a.txt")]
    assert expand_paths(files) == files
    assert list(iter_documents(files)) == ["sub/deeper/e.txt.zst", "a.txt"]


@pytest.mark.parametrize("relative, problem", [
    ("missing", "no such file or directory"),
    ("data/*.parquet", "pattern matches no corpus file"),
    ("data/**/*.md", "pattern matches no corpus file"),
    ("data/notes.md", "unsupported file type"),
    ("empty", "directory holds no corpus file"),
])
def test_unusable_paths_are_named(tree, relative, problem):
    os.makedirs(tree.parent / "empty")
    path = str(tree.parent / relative)
    with pytest.raises(CorpusError, match=f"{re.escape(path)}: {problem}"):
        expand_paths([str(tree), path])


# --- fatal file contents ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("bad_line, problem", [
    (b'{"text": "unterminated', "invalid JSON"),
    (b'["text", "a list"]', "expected a JSON object, got list"),
    (b'{"body": "no text key"}', "no 'text' key"),
    (b'{"text": 5}', "'text' is int, not a string"),
    (b'{"text": null}', "'text' is NoneType, not a string"),
])
@pytest.mark.parametrize("suffix", [".jsonl", ".jsonl.zst"])
def test_bad_json_lines_are_fatal_with_file_and_line(tmp_path, bad_line, problem, suffix):
    file = write(tmp_path / f"c{suffix}", jsonl({"text": "fine"}) + b"\n" + bad_line + b"\n" + jsonl({"text": "x"}))
    with pytest.raises(CorpusError, match=f"^{re.escape(file)}:3: {re.escape(problem)}"):
        list(iter_documents([file]))


@pytest.mark.parametrize("suffix", [".jsonl", ".txt", ".txt.gz", ".jsonl.zst"])
def test_invalid_utf8_is_fatal_with_file_and_line(tmp_path, suffix):
    good = jsonl({"text": "fine"}) if suffix.startswith(".jsonl") else b"fine\n"
    file = write(tmp_path / f"c{suffix}", good + b'{"text": "caf\xe9"}\n')
    with pytest.raises(CorpusError, match=f"^{re.escape(file)}:2: invalid UTF-8"):
        list(iter_documents([file]))


@pytest.mark.parametrize("suffix", [".jsonl.gz", ".txt.gz", ".jsonl.zst", ".txt.zst"])
@pytest.mark.parametrize("damage", ["truncated", "garbage"])
def test_corrupt_compressed_streams_are_fatal_naming_the_file(tmp_path, suffix, damage):
    text = "".join(f"line {i} of some text\n" for i in range(2000))
    data = jsonl({"text": text}) if suffix.startswith(".jsonl") else text.encode()
    compressed = compress(data, suffix)
    path = str(tmp_path / f"c{suffix}")
    with open(path, "wb") as f:
        f.write(compressed[:len(compressed) // 2] if damage == "truncated" else b"not compressed at all\n")
    with pytest.raises(CorpusError, match=f"^{re.escape(path)}: cannot read"):
        list(iter_documents([path]))


def test_unsupported_file_passed_to_iter_documents_is_named(tmp_path):
    file = write(tmp_path / "c.csv", b"text\nhello\n")
    with pytest.raises(CorpusError, match=f"^{re.escape(file)}: unsupported file type"):
        list(iter_documents([file]))


# --- token windows ---------------------------------------------------------------------------------------------

def fake_tokenizer(texts, add_special_tokens):
    """A tokenizer whose text 'n' is the n tokens 100..100+n-1."""
    assert add_special_tokens is False
    return {"input_ids": [list(range(100, 100 + int(t))) for t in texts]}


def test_documents_are_cut_into_bos_led_windows_of_seq_len_minus_one_tokens():
    windows = list(token_windows(["5000", "0", "2047", "1"], fake_tokenizer, 2048, bos_id=2))
    assert [len(w) for w in windows] == [2048, 2048, 907, 2048, 2]  # 5000 = 2047 + 2047 + 906
    assert all(w.dtype == np.int32 and w[0] == 2 for w in windows)
    assert np.array_equal(np.concatenate([w[1:] for w in windows[:3]]), np.arange(100, 5100))
    assert np.array_equal(windows[3][1:], np.arange(100, 2147))
    assert windows[4].tolist() == [2, 100]


@pytest.mark.parametrize("seq_len", [2, 5, 16, 64])
def test_windows_concatenate_back_to_each_documents_tokens(tokenizer, seq_len):
    texts = [DOCUMENTS[i % 3] * (i + 1) for i in range(7)]
    bos = tokenizer.bos_token_id
    windows = list(token_windows(texts, tokenizer, seq_len, bos, encode_batch=3))
    lengths = [n for t in texts for n in expected_lengths(len(tokens_of(tokenizer, t)), seq_len)]
    assert [len(w) for w in windows] == lengths
    assert all(w.dtype == np.int32 and w[0] == bos for w in windows)
    starts = np.cumsum([0] + [len(expected_lengths(len(tokens_of(tokenizer, t)), seq_len)) for t in texts])
    for text, start, end in zip(texts, starts[:-1], starts[1:]):
        assert np.concatenate([w[1:] for w in windows[start:end]]).tolist() == tokens_of(tokenizer, text)


def test_encode_batch_does_not_change_the_windows(tokenizer):
    texts = [DOCUMENTS[i % 3] * (i % 4 + 1) for i in range(10)]
    one_by_one = [w.tolist() for w in token_windows(texts, tokenizer, 8, 2, encode_batch=1)]
    assert [w.tolist() for w in token_windows(texts, tokenizer, 8, 2, encode_batch=4)] == one_by_one


def test_full_length_only_keeps_exactly_the_full_windows(tokenizer):
    texts = [DOCUMENTS[i % 3] * (i + 1) for i in range(5)]
    every = list(token_windows(texts, tokenizer, 16, 2))
    full = list(token_windows(texts, tokenizer, 16, 2, full_length_only=True))
    assert 0 < len(full) < len(every)
    assert all(len(w) == 16 for w in full)
    assert [w.tolist() for w in full] == [w.tolist() for w in every if len(w) == 16]


@pytest.mark.parametrize("seq_len", [0, 1])
def test_seq_len_below_two_is_refused(seq_len):
    with pytest.raises(ValueError, match="seq_len"):
        token_windows(["3"], fake_tokenizer, seq_len, 2)


# --- Corpus ----------------------------------------------------------------------------------------------------

@pytest.fixture
def corpus_dir(tmp_path):
    """Documents spread over formats and folders; DOCUMENTS repeated to give several windows each."""
    texts = [DOCUMENTS[i % 3] * (i + 2) for i in range(6)]
    write(tmp_path / "c/1.jsonl.zst", jsonl(*({"text": t} for t in texts[:3])))
    write(tmp_path / "c/2/a.txt.gz", texts[3].encode())
    write(tmp_path / "c/2/b.jsonl", jsonl(*({"text": t} for t in texts[4:])))
    return str(tmp_path / "c"), texts


def test_corpus_windows_follow_file_order_and_the_tokenizer(tokenizer, corpus_dir):
    directory, texts = corpus_dir
    corpus = Corpus([directory], tokenizer, seq_len=32, bos_id=tokenizer.bos_token_id)
    # sorted files: 1.jsonl.zst (texts 0-2), 2/a.txt.gz (text 3), 2/b.jsonl (texts 4-5)
    expected = [t for text in texts for t in tokens_of(tokenizer, text)]
    windows = list(corpus.windows())
    assert all(w[0] == tokenizer.bos_token_id and len(w) <= 32 for w in windows)
    assert np.concatenate([w[1:] for w in windows]).tolist() == expected


def test_windows_are_deterministic_and_skip_resumes(tokenizer, corpus_dir):
    directory, _ = corpus_dir
    corpus = Corpus([directory], tokenizer, seq_len=16, bos_id=2)
    first = [w.tolist() for w in corpus.windows()]
    again = Corpus([directory], tokenizer, seq_len=16, bos_id=2)
    assert [w.tolist() for w in again.windows()] == first
    for skip in [0, 1, 7, len(first) - 1, len(first), len(first) + 3]:
        assert [w.tolist() for w in corpus.windows(skip=skip)] == first[skip:]


def test_check_not_empty(tokenizer, tmp_path, corpus_dir):
    directory, _ = corpus_dir
    Corpus([directory], tokenizer, seq_len=16, bos_id=2).check_not_empty()
    blank = write(tmp_path / "blank/a.jsonl", jsonl({"text": ""}, {"text": "  \n"}))
    write(tmp_path / "blank/b.txt.gz", b"\n\t\n")
    with pytest.raises(CorpusError, match=f"{re.escape(os.path.dirname(blank))}: no documents"):
        Corpus([os.path.dirname(blank)], tokenizer, seq_len=16, bos_id=2).check_not_empty()
    short = write(tmp_path / "short.txt", b"short")
    Corpus([short], tokenizer, seq_len=4, bos_id=2, full_length_only=True).check_not_empty()
    with pytest.raises(CorpusError, match=f"{re.escape(short)}: no windows of exactly 64 tokens"):
        Corpus([short], tokenizer, seq_len=64, bos_id=2, full_length_only=True).check_not_empty()


# --- fingerprint -----------------------------------------------------------------------------------------------

def test_fingerprint_follows_bytes_list_and_order(tmp_path, corpus_dir):
    directory, _ = corpus_dir
    files = expand_paths([directory])
    digest = corpus_fingerprint(files)
    assert re.fullmatch("[0-9a-f]{64}", digest)
    assert Corpus([directory], None, seq_len=8, bos_id=2).fingerprint() == digest
    copy = shutil.copytree(directory, tmp_path / "copy")
    assert corpus_fingerprint(expand_paths([str(copy)])) == digest  # same names and bytes elsewhere
    assert corpus_fingerprint(files[::-1]) != digest
    assert corpus_fingerprint(files[:-1]) != digest
    last = files[-1]
    data = bytearray(open(last, "rb").read())
    data[5] ^= 1
    with open(last, "wb") as f:
        f.write(data)
    assert corpus_fingerprint(files) != digest
    data[5] ^= 1
    with open(last, "wb") as f:
        f.write(data)
    assert corpus_fingerprint(files) == digest
    os.rename(last, last + ".jsonl")
    assert corpus_fingerprint(files[:-1] + [last + ".jsonl"]) != digest


# --- batches ---------------------------------------------------------------------------------------------------

def test_batches_are_fixed_shape_right_padded_with_a_mask():
    windows = [np.arange(2, 2 + n, dtype=np.int32) for n in [6, 1, 3, 6, 2]]
    result = list(batches(iter(windows), batch_size=2, seq_len=6, pad_id=1))
    assert len(result) == 3
    for ids, mask in result:
        assert ids.shape == mask.shape == (2, 6)
        assert ids.dtype == np.int32 and mask.dtype == np.bool_
    rows = [(ids[r], mask[r]) for ids, mask in result for r in range(2)]
    for (ids, mask), window in zip(rows, windows + [np.zeros(0, np.int32)]):
        assert ids.tolist() == window.tolist() + [1] * (6 - len(window))
        assert mask.tolist() == [True] * len(window) + [False] * (6 - len(window))


def test_no_windows_no_batches_and_too_long_windows_are_refused():
    assert list(batches([], batch_size=4, seq_len=8, pad_id=1)) == []
    with pytest.raises(ValueError, match="does not fit seq_len 4"):
        list(batches([np.arange(5)], batch_size=2, seq_len=4, pad_id=1))
