"""Data layouts beyond single files: datasets save_to_disk folders (Dataset, DatasetDict with a split),
Arrow files (IPC stream and file format), folders of shards and globs, with errors that name the
shard, the row within it, and what an entry may be.

Fixtures made by the real libraries: ``datasets`` in the tests that import it (skipped without it),
pyarrow for Parquet / Arrow, and tests/fixtures/data/hf_sft_dict (written by ``datasets``'
save_to_disk with make_hf_datasets.py) for the tests that run everywhere.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from npu_retu.data import BadRowCounter, DataError, load_rl, load_sft, read_rows
from npu_retu.data.readers import data_files

FIXTURES = Path(__file__).parent / "fixtures" / "data"
sys.path.insert(0, str(FIXTURES))
from make_hf_datasets import SFT_ROWS  # noqa: E402  (the rows the committed DatasetDict holds)


def sft_row(i: int) -> dict:
    return {"messages": [{"role": "user", "content": f"question {i}"}, {"role": "assistant", "content": f"answer {i}"}]}


def contents(examples) -> list[str]:
    return [e.messages[-1]["content"] for e in examples]


@pytest.fixture
def data_dir(tmp_path, monkeypatch):
    """Work in tmp_path so messages name files as a user types them: data/..."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").mkdir()
    return tmp_path / "data"


def write_parquet(path: Path, rows: list[dict], row_group_size: int = 1024) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), path, row_group_size=row_group_size)


def write_jsonl(path: Path, lines: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")


# --------------------------------------------------------------------------------------------
# datasets folders


def test_committed_dataset_dict_fixture_reads_each_split_by_name():
    folder = FIXTURES / "hf_sft_dict"
    train = load_sft(f"{folder}:train")
    test = load_sft(f"{folder}:test")
    assert [e.messages for e in train] == [r["messages"] for r in SFT_ROWS[:5]]
    assert [e.reference_answer for e in train] == ["5", "8", "17", "2", "15"]
    assert [e.messages for e in test] == [r["messages"] for r in SFT_ROWS[5:]]
    # two Arrow shards of 3 + 2 rows, in state.json's order; rows count from 0 in each shard
    shard = folder / "train"
    assert [e.source for e in train] == [
        f"{shard}/data-00000-of-00002.arrow:0", f"{shard}/data-00000-of-00002.arrow:1", f"{shard}/data-00000-of-00002.arrow:2",
        f"{shard}/data-00001-of-00002.arrow:0", f"{shard}/data-00001-of-00002.arrow:1",
    ]
    # a split folder of a DatasetDict is a Dataset folder of its own
    assert load_sft(folder / "test") == test


def test_dataset_dict_without_a_split_lists_the_splits():
    folder = FIXTURES / "hf_sft_dict"
    with pytest.raises(DataError) as caught:
        load_sft(folder)
    assert str(caught.value) == (
        f"{folder}: a datasets DatasetDict folder with splits train, test: name one after a colon, e.g. {folder}:train"
    )
    with pytest.raises(DataError) as caught:
        load_sft(f"{folder}:validation")
    assert str(caught.value) == f"{folder}:validation: no split 'validation' in this DatasetDict: its splits are train, test"
    with pytest.raises(DataError) as caught:
        load_sft(f"{folder / 'train'}:train")
    assert str(caught.value) == (
        f"{folder / 'train'}:train: ':train' names a split, but {folder / 'train'} is not a datasets DatasetDict folder "
        "(no dataset_dict.json)"
    )


def test_datasets_save_to_disk_folder_and_its_arrow_shards():
    datasets = pytest.importorskip("datasets", reason="the real `datasets` package (test extra) writes this fixture")
    import tempfile

    rows = [sft_row(i) for i in range(10)]
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "ds"
        datasets.Dataset.from_list(rows).save_to_disk(str(folder), num_shards=3)
        examples = load_sft(folder)
        assert contents(examples) == [f"answer {i}" for i in range(10)]
        shards = data_files(folder)
        assert shards == [f"{folder}/data-0000{i}-of-00003.arrow" for i in range(3)]
        # each shard alone is an .arrow file (the IPC stream format datasets writes)
        per_shard = [contents(load_sft(shard)) for shard in shards]
        assert sum(per_shard, []) == [f"answer {i}" for i in range(10)]
        assert examples[len(per_shard[0])].source == f"{shards[1]}:0"

        # a DatasetDict with one split needs no suffix
        single = Path(tmp) / "single"
        datasets.DatasetDict({"train": datasets.Dataset.from_list(rows[:4])}).save_to_disk(str(single))
        assert contents(load_sft(single)) == [f"answer {i}" for i in range(4)]

        # RL rows through the same reader: nested reward_model, the Skywork-OR1 JSON-list ground truth
        rl_rows = [{"prompt": [{"role": "user", "content": "1 + 1?"}], "reward_model": {"ground_truth": '["2"]'}, "data_source": "x"}]
        rl_folder = Path(tmp) / "rl"
        datasets.Dataset.from_list(rl_rows).save_to_disk(str(rl_folder))
        rl = load_rl(rl_folder)
        assert [(e.prompt, e.ground_truth, e.data_source) for e in rl] == [([{"role": "user", "content": "1 + 1?"}], ["2"], "x")]


def test_incomplete_dataset_folder_names_the_missing_shard(tmp_path):
    import shutil

    folder = tmp_path / "copy"
    shutil.copytree(FIXTURES / "hf_sft_dict" / "train", folder)
    (folder / "data-00001-of-00002.arrow").unlink()
    with pytest.raises(DataError) as caught:
        load_sft(folder)
    assert str(caught.value) == (
        f"{folder}/state.json: lists data-00001-of-00002.arrow, which is not in the folder (an incomplete copy?)"
    )
    (folder / "state.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(DataError) as caught:
        load_sft(folder)
    assert str(caught.value).startswith(f"{folder}/state.json: not readable JSON: ")


# --------------------------------------------------------------------------------------------
# Arrow files


def test_arrow_ipc_file_format_and_stream_format_read_alike(data_dir):
    table = pa.Table.from_pylist([sft_row(i) for i in range(2500)])  # several 1024-row batches
    with pa.OSFile(str(data_dir / "file.arrow"), "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
        for batch in table.to_batches(max_chunksize=700):
            writer.write_batch(batch)
    with pa.OSFile(str(data_dir / "stream.arrow"), "wb") as sink, pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table, max_chunksize=2000)
    from_file = load_sft("data/file.arrow")
    from_stream = load_sft("data/stream.arrow")
    assert contents(from_file) == contents(from_stream) == [f"answer {i}" for i in range(2500)]
    assert [e.source for e in from_file[:2]] == ["data/file.arrow:0", "data/file.arrow:1"]
    assert from_file[2499].source == "data/file.arrow:2499"
    assert [row for row, _ in read_rows("data/stream.arrow")] == list(range(2500))


def test_bad_rows_in_arrow_name_the_row_and_field(data_dir):
    rows = [sft_row(0), {"messages": None}, sft_row(2), {"prompt": "only a prompt"}]
    table = pa.Table.from_pylist(rows)
    with pa.OSFile(str(data_dir / "mixed.arrow"), "wb") as sink, pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    with pytest.raises(DataError) as caught:
        load_sft("data/mixed.arrow")
    assert str(caught.value) == "data/mixed.arrow: row 1, field 'messages': expected a list of messages, got null"
    counter = BadRowCounter()
    kept = load_sft("data/mixed.arrow", skip_bad_rows=True, counter=counter)
    assert contents(kept) == ["answer 0", "answer 2"]
    assert [(s.row, s.field) for s in counter.skipped_rows] == [(1, "messages"), (3, "messages")]
    assert counter.rows["data/mixed.arrow"] == 4


def test_unreadable_arrow_files_are_one_line_errors(data_dir):
    (data_dir / "junk.arrow").write_bytes(b"this is not arrow at all" * 10)
    with pytest.raises(DataError) as caught:
        load_sft("data/junk.arrow")
    message = str(caught.value)
    assert message.startswith("data/junk.arrow: not a readable Arrow file (IPC stream or file format): ") and "\n" not in message

    table = pa.Table.from_pylist([sft_row(i) for i in range(3000)])
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table, max_chunksize=1000)
    data = sink.getvalue().to_pybytes()
    (data_dir / "cut.arrow").write_bytes(data[: len(data) * 2 // 3])  # the third batch is cut off
    with pytest.raises(DataError) as caught:
        load_sft("data/cut.arrow")
    message = str(caught.value)
    assert message.startswith("data/cut.arrow: corrupted data in the record batch starting at row 2000: ") and "\n" not in message


# --------------------------------------------------------------------------------------------
# folders of shards and globs


def test_folder_of_parquet_shards_in_sorted_order_skipping_non_shards(data_dir):
    for name, first in [("part-00002.parquet", 20), ("part-00000.parquet", 0), ("part-00001.parquet", 10)]:
        write_parquet(data_dir / "shards" / name, [sft_row(first + i) for i in range(3)])
    (data_dir / "shards" / "_SUCCESS").write_text("")
    (data_dir / "shards" / ".part-00003.parquet.crc").write_text("x")
    (data_dir / "shards" / "README.md").write_text("# notes")
    (data_dir / "shards" / "sub").mkdir()
    write_parquet(data_dir / "shards" / "sub" / "deeper.parquet", [sft_row(99)])
    examples = load_sft("data/shards")
    assert contents(examples) == [f"answer {i}" for i in (0, 1, 2, 10, 11, 12, 20, 21, 22)]
    assert [e.source for e in examples[2:4]] == ["data/shards/part-00000.parquet:2", "data/shards/part-00001.parquet:0"]


def test_folder_of_jsonl_shards_keeps_row_numbers_per_shard(data_dir):
    good = json.dumps(sft_row(1))
    write_jsonl(data_dir / "j" / "a.jsonl", [good, good])
    write_jsonl(data_dir / "j" / "b.jsonl", [good, '{"messages": [', good])
    with pytest.raises(DataError) as caught:
        load_sft("data/j")
    assert str(caught.value) == "data/j/b.jsonl: row 2: malformed JSON: Expecting value (column 15)"
    counter = BadRowCounter()
    assert len(load_sft("data/j", skip_bad_rows=True, counter=counter)) == 4
    assert counter.summary() == "skipped 1 bad row of 3 in data/j/b.jsonl: 1 malformed JSON (row 2)"


def test_glob_reads_matches_sorted_and_a_miss_names_the_pattern(data_dir):
    for i in (3, 1, 2):
        write_parquet(data_dir / f"train-{i}.parquet", [sft_row(i)])
    write_parquet(data_dir / "val-1.parquet", [sft_row(100)])
    assert contents(load_sft("data/train-*.parquet")) == ["answer 1", "answer 2", "answer 3"]
    assert data_files("data/train-*.parquet") == ["data/train-1.parquet", "data/train-2.parquet", "data/train-3.parquet"]
    # recursive globs, and a glob among other entries
    write_jsonl(data_dir / "deep" / "x" / "t.jsonl", [json.dumps(sft_row(7))])
    assert contents(load_sft(["data/val-*.parquet", "data/**/t.jsonl"])) == ["answer 100", "answer 7"]
    with pytest.raises(DataError) as caught:
        load_sft(["data/train-1.parquet", "data/test-*.parquet"])
    assert str(caught.value) == "data/test-*.parquet: no files match this pattern"


def test_mixed_and_empty_shard_folders_are_errors(data_dir):
    write_parquet(data_dir / "mixed" / "a.parquet", [sft_row(0)])
    write_jsonl(data_dir / "mixed" / "b.jsonl", [json.dumps(sft_row(1))])
    write_jsonl(data_dir / "mixed" / "c.jsonl", [json.dumps(sft_row(2))])
    with pytest.raises(DataError) as caught:
        load_sft("data/mixed")
    assert str(caught.value) == (
        "data/mixed: the shards in this folder are of mixed types: 1 .parquet (a.parquet); 2 .jsonl (b.jsonl, ...); "
        "put one type of shard together, or name the files"
    )
    with pytest.raises(DataError) as caught:
        load_sft("data/mixed/*")
    assert str(caught.value).startswith("data/mixed/*: the files this pattern matches are of mixed types: ")
    (data_dir / "empty").mkdir()
    (data_dir / "empty" / "notes.txt").write_text("no data here")
    with pytest.raises(DataError) as caught:
        load_sft("data/empty")
    assert str(caught.value) == (
        "data/empty: no data files in this folder: expected shards ending in .jsonl, .json, .parquet, .arrow directly in it "
        "(subfolders are not read: name one, or use a glob such as folder/**/*.parquet)"
    )
    with pytest.raises(DataError) as caught:
        load_sft("data/empty/*.txt")
    assert str(caught.value) == "data/empty/*.txt: the files this pattern matches are .txt files: expected one of .jsonl, .json, .parquet, .arrow"


def test_missing_paths_keep_their_messages(data_dir):
    with pytest.raises(DataError) as caught:
        load_sft("data/nope")  # no extension, not there: "not found", not "unknown file type"
    assert str(caught.value) == "data/nope: file not found"
    with pytest.raises(DataError) as caught:
        load_sft("data/nope:train")
    assert str(caught.value) == "data/nope:train: file not found"

