"""The corpora researchers have: C4's `.json.gz` lines, parquet (FineWeb, the hub's datasets) and directories
written by HF `datasets`' save_to_disk (Arrow IPC streams), read as the `.jsonl` files are."""

import gzip
import json
import os
import re

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import transformers
import zstandard

import hf_models
from opt_jax.corpus import SUFFIXES, Corpus, CorpusError, corpus_fingerprint, expand_paths, iter_documents

TEXTS = [f"document {i}: " + ["the neurons are dead", "naïve — 神经元\nwith a newline", "a tab\t."][i % 3] * (i % 5 + 1)
         for i in range(30)]


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    """A small real byte-level BPE tokenizer (full byte alphabet: every text round-trips)."""
    directory = str(tmp_path_factory.mktemp("tokenizer"))
    hf_models.save_tokenizer(directory, 600)
    return transformers.AutoTokenizer.from_pretrained(directory)


def jsonl(records) -> bytes:
    """Records as JSON lines."""
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records).encode()


def write_parquet(path, columns: dict, row_group_size: int = 4) -> str:
    """A parquet file of these columns, in row groups of row_group_size rows; its path as a string."""
    pq.write_table(pa.table(columns), str(path), row_group_size=row_group_size)
    return str(path)


def write_arrow_stream(path, columns: dict, batch_size: int = 4) -> str:
    """An Arrow IPC stream of these columns in record batches of batch_size rows, as `datasets` writes one."""
    table = pa.table(columns)
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_stream(sink, table.schema) as writer:
        for batch in table.to_batches(batch_size):
            writer.write_batch(batch)
    return str(path)


def save_to_disk(directory, shards: list[list[str]], order=None) -> str:
    """A directory laid out as `datasets.Dataset.save_to_disk` writes one: a data-XXXXX-of-NNNNN.arrow stream
    per shard, dataset_info.json, and state.json listing the shards (in `order`, default theirs)."""
    os.makedirs(directory)
    names = [f"data-{i:05d}-of-{len(shards):05d}.arrow" for i in range(len(shards))]
    for name, texts in zip(names, shards):
        write_arrow_stream(os.path.join(directory, name), {"text": texts, "id": list(range(len(texts)))})
    info = {"citation": "", "description": "", "homepage": "", "license": "",
            "features": {"text": {"dtype": "string", "_type": "Value"}, "id": {"dtype": "int64", "_type": "Value"}}}
    state = {"_data_files": [{"filename": names[i]} for i in (order or range(len(names)))],
             "_fingerprint": "0123456789abcdef", "_format_columns": None, "_format_kwargs": {},
             "_format_type": None, "_output_all_columns": False, "_split": None}
    for name, record in [("dataset_info.json", info), ("state.json", state)]:
        with open(os.path.join(directory, name), "w") as f:
            json.dump(record, f, indent=2)  # pretty-printed: not JSON lines, so never read as a corpus file
    return str(directory)


def test_the_new_suffixes_are_supported():
    assert {".json", ".json.gz", ".json.zst", ".parquet", ".arrow"} <= set(SUFFIXES)


# --- parquet ---------------------------------------------------------------------------------------------------

def test_parquet_row_groups_give_the_documents_and_windows_of_the_same_jsonl(tmp_path, tokenizer):
    texts = TEXTS[:10] + ["", " \n"] + TEXTS[10:]  # blank documents are skipped in both
    (tmp_path / "p").mkdir()
    (tmp_path / "j").mkdir()
    parquet = write_parquet(tmp_path / "p" / "train-00000-of-00001.parquet",
                            {"id": list(range(len(texts))), "text": texts}, row_group_size=4)
    assert pq.ParquetFile(parquet).num_row_groups == 8
    lines = str(tmp_path / "j" / "train.jsonl")
    with open(lines, "wb") as f:
        f.write(jsonl({"text": t, "id": i} for i, t in enumerate(texts)))
    assert list(iter_documents([parquet])) == list(iter_documents([lines])) == TEXTS
    corpora = [Corpus([os.path.dirname(path)], tokenizer, seq_len=16, bos_id=2) for path in (parquet, lines)]
    windows = [[w.tolist() for w in corpus.windows()] for corpus in corpora]
    assert windows[0] == windows[1] and len(windows[0]) > 30
    for skip in [0, 1, 13, len(windows[0])]:
        assert [w.tolist() for w in corpora[0].windows(skip=skip)] == windows[0][skip:]


def test_text_key_selects_the_parquet_column(tmp_path):
    file = write_parquet(tmp_path / "c.parquet", {"text": [1, 2], "content": ["first", "second"]})
    assert list(iter_documents([file], text_key="content")) == ["first", "second"]


def test_parquet_is_read_one_row_group_at_a_time_and_only_the_text_column(tmp_path, monkeypatch):
    file = write_parquet(tmp_path / "c.parquet", {"text": TEXTS, "other": list(range(len(TEXTS)))},
                         row_group_size=7)
    groups = pq.ParquetFile(file).num_row_groups
    assert groups == 5
    reads = []
    read_row_group = pq.ParquetFile.read_row_group

    def recording(self, group, columns=None, **kwargs):
        reads.append((group, tuple(columns)))
        return read_row_group(self, group, columns=columns, **kwargs)

    def whole_file(*args, **kwargs):
        raise AssertionError("the whole parquet file was read at once")

    monkeypatch.setattr(pq.ParquetFile, "read_row_group", recording)
    monkeypatch.setattr(pq.ParquetFile, "read", whole_file)
    monkeypatch.setattr(pq, "read_table", whole_file)
    documents = iter_documents([file])
    assert [next(documents) for _ in range(7)] == TEXTS[:7]
    assert reads == [(0, ("text",))]  # the first group's documents come before the second group is read
    assert next(documents) == TEXTS[7]
    assert reads == [(0, ("text",)), (1, ("text",))]
    assert list(documents) == TEXTS[8:]
    assert reads == [(group, ("text",)) for group in range(groups)]


def test_a_parquet_file_without_the_column_names_its_columns(tmp_path):
    file = write_parquet(tmp_path / "c.parquet", {"content": ["a"], "url": ["u"]})
    with pytest.raises(CorpusError, match=f"^{re.escape(file)}: no 'text' column \\(columns: 'content', 'url'\\)"):
        list(iter_documents([file]))


@pytest.mark.parametrize("column, problem", [
    (TEXTS[:5] + [None] + TEXTS[6:9], "row 6: 'text' is NoneType, not a string"),  # row 6: in the second group
    ([1, 2], "row 1: 'text' is int, not a string"),
    ([b"bytes"], "row 1: 'text' is bytes, not a string"),
])
def test_null_or_non_string_values_are_fatal_with_file_and_row(tmp_path, column, problem):
    file = write_parquet(tmp_path / "c.parquet", {"text": column}, row_group_size=4)
    with pytest.raises(CorpusError, match=f"^{re.escape(file)}: {re.escape(problem)}"):
        list(iter_documents([file]))


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty", "footer"])
def test_a_corrupt_parquet_file_is_fatal_naming_it(tmp_path, damage):
    data = open(write_parquet(tmp_path / "good.parquet", {"text": TEXTS}), "rb").read()
    damaged = {"truncated": data[:len(data) // 2], "garbage": b"not a parquet file at all\n", "empty": b"",
               "footer": data[:-12] + bytes(8) + data[-4:]}[damage]  # footer: its length field zeroed
    path = str(tmp_path / "c.parquet")
    with open(path, "wb") as f:
        f.write(damaged)
    with pytest.raises(CorpusError, match=f"^{re.escape(path)}: cannot read"):
        list(iter_documents([path]))


def test_fingerprint_changes_when_a_parquet_file_changes(tmp_path):
    file = write_parquet(tmp_path / "c.parquet", {"text": TEXTS})
    digest = corpus_fingerprint(expand_paths([str(tmp_path)]))
    write_parquet(file, {"text": TEXTS[:-1] + [TEXTS[-1] + "!"]})
    assert corpus_fingerprint(expand_paths([str(tmp_path)])) != digest
    write_parquet(file, {"text": TEXTS})
    assert corpus_fingerprint(expand_paths([str(tmp_path)])) == digest


# --- JSON lines named .json ------------------------------------------------------------------------------------

@pytest.mark.parametrize("suffix", [".json", ".json.gz", ".json.zst"])
def test_c4_json_lines_are_read_as_jsonl(tmp_path, suffix):
    records = [{"text": t, "timestamp": "2019-04-25T12:57:54Z", "url": f"https://example.com/{i}"}
               for i, t in enumerate(TEXTS)]
    shards = [jsonl(records[:15]), jsonl(records[15:])]
    compress = {".json": bytes, ".json.gz": gzip.compress, ".json.zst": zstandard.ZstdCompressor().compress}[suffix]
    for i, shard in enumerate(shards):
        with open(tmp_path / f"c4-train.{i:05d}-of-01024{suffix}", "wb") as f:
            f.write(compress(shard))
    files = expand_paths([str(tmp_path / f"c4-*{suffix}")])
    assert [os.path.basename(f) for f in files] == [f"c4-train.{i:05d}-of-01024{suffix}" for i in range(2)]
    assert list(iter_documents(files)) == TEXTS


def test_a_json_file_that_is_not_json_lines_is_named_with_its_line(tmp_path):
    path = str(tmp_path / "c.json")
    with open(path, "w") as f:
        json.dump([{"text": "a"}], f, indent=2)
    with pytest.raises(CorpusError, match=f"^{re.escape(path)}:1: invalid JSON"):
        list(iter_documents([path]))


# --- save_to_disk directories ----------------------------------------------------------------------------------

def test_a_save_to_disk_directory_gives_its_rows_in_state_order(tmp_path, tokenizer):
    shards = [TEXTS[:11], TEXTS[11:20], TEXTS[20:]]
    dataset = save_to_disk(tmp_path / "dataset", shards)
    files = expand_paths([dataset])
    assert files == [os.path.join(dataset, f"data-{i:05d}-of-00003.arrow") for i in range(3)]
    assert list(iter_documents(files)) == TEXTS
    shuffled = save_to_disk(tmp_path / "shuffled", shards, order=[2, 0, 1])  # state.json's order, not sorted
    assert list(iter_documents(expand_paths([shuffled]))) == shards[2] + shards[0] + shards[1]
    lines = tmp_path / "lines.jsonl"
    lines.write_bytes(jsonl({"text": t} for t in TEXTS))
    windows = [[w.tolist() for w in Corpus([path], tokenizer, seq_len=16, bos_id=2).windows(skip=3)]
               for path in (dataset, str(lines))]
    assert windows[0] == windows[1]


def test_a_save_to_disk_directory_inside_a_walked_directory_or_glob_stands_for_its_arrow_files(tmp_path):
    dataset = save_to_disk(tmp_path / "corpus" / "b_dataset", [TEXTS[:3], TEXTS[3:6]], order=[1, 0])
    (tmp_path / "corpus" / "a.jsonl").write_bytes(jsonl([{"text": "first"}]))
    (tmp_path / "corpus" / "c.json").write_bytes(jsonl([{"text": "last"}]))
    expected = ["first"] + TEXTS[3:6] + TEXTS[:3] + ["last"]
    for argument in ["corpus/*", "corpus/**"]:
        assert list(iter_documents(expand_paths([str(tmp_path / argument)]))) == expected, argument
    # a directory walk skips the bare .json (test_a_directory_walk_skips_bare_json_files_...)
    assert list(iter_documents(expand_paths([str(tmp_path / "corpus")]))) == expected[:-1]
    assert expand_paths([str(tmp_path / "corpus/**/*.json")]) == [str(tmp_path / "corpus" / "c.json")]
    assert expand_paths([str(tmp_path / "corpus/**/*.arrow")]) == sorted(
        os.path.join(dataset, name) for name in os.listdir(dataset) if name.endswith(".arrow"))


def test_a_dataset_dict_asks_for_one_split(tmp_path):
    save_to_disk(tmp_path / "dict" / "train", [TEXTS[:3]])
    save_to_disk(tmp_path / "dict" / "validation", [TEXTS[3:6]])
    (tmp_path / "dict" / "dataset_dict.json").write_text(json.dumps({"splits": ["train", "validation"]}))
    with pytest.raises(CorpusError, match="dict: a datasets DatasetDict \\(splits: train, validation\\); pass one"):
        expand_paths([str(tmp_path / "dict")])
    assert list(iter_documents(expand_paths([str(tmp_path / "dict" / "validation")]))) == TEXTS[3:6]


def test_a_save_to_disk_directory_with_a_bad_state_is_named(tmp_path):
    dataset = save_to_disk(tmp_path / "dataset", [TEXTS[:3], TEXTS[3:6]])
    state = os.path.join(dataset, "state.json")
    os.remove(os.path.join(dataset, "data-00001-of-00002.arrow"))
    with pytest.raises(CorpusError, match=f"^{re.escape(state)}: lists data files missing .*data-00001-of-00002"):
        expand_paths([dataset])
    with open(state, "w") as f:
        f.write("{not json")
    with pytest.raises(CorpusError, match=f"^{re.escape(state)}: not a datasets state file"):
        expand_paths([dataset])


def test_arrow_streams_without_the_column_or_truncated_are_named(tmp_path):
    file = write_arrow_stream(tmp_path / "c.arrow", {"content": TEXTS})
    with pytest.raises(CorpusError, match=f"^{re.escape(file)}: no 'text' column \\(columns: 'content'\\)"):
        list(iter_documents([file]))
    data = open(write_arrow_stream(tmp_path / "good.arrow", {"text": TEXTS}), "rb").read()
    with open(file, "wb") as f:
        f.write(data[:len(data) - 100])
    with pytest.raises(CorpusError, match=f"^{re.escape(file)}: cannot read"):
        list(iter_documents([file]))


def test_fingerprint_covers_a_save_to_disk_directorys_files(tmp_path):
    dataset = save_to_disk(tmp_path / "dataset", [TEXTS[:3], TEXTS[3:6]])
    digest = corpus_fingerprint(expand_paths([dataset]))
    write_arrow_stream(os.path.join(dataset, "data-00001-of-00002.arrow"), {"text": TEXTS[3:5] + ["changed"]})
    assert corpus_fingerprint(expand_paths([dataset])) != digest


def test_a_directory_walk_skips_bare_json_files_but_a_glob_or_a_name_reads_them(tmp_path):
    """A folder's `.json` files are mostly metadata (a hub dataset's config.json): a directory walk reads the
    compressed C4 shards and skips them; named, or matched by a glob, a `.json` file is JSON lines."""
    (tmp_path / "config.json").write_text(json.dumps({"name": "not a corpus"}, indent=2))
    (tmp_path / "c4-train.00000-of-01024.json.gz").write_bytes(gzip.compress(jsonl([{"text": t} for t in TEXTS])))
    (tmp_path / "extra.json").write_bytes(jsonl([{"text": "named"}]))
    walked = expand_paths([str(tmp_path)])
    assert [os.path.basename(f) for f in walked] == ["c4-train.00000-of-01024.json.gz"]
    assert list(iter_documents(walked)) == TEXTS
    assert [os.path.basename(f) for f in expand_paths([str(tmp_path / "extra*")])] == ["extra.json"]
    assert list(iter_documents(expand_paths([str(tmp_path / "extra.json")]))) == ["named"]
