"""A corrupted Parquet file is a one-line DataError naming the file and, where known, the row group or row."""

from __future__ import annotations

from pathlib import Path

import pytest

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")

from npu_retu.cli import main  # noqa: E402
from npu_retu.data.errors import BadRowCounter, DataError  # noqa: E402
from npu_retu.data.readers import read_rows  # noqa: E402
from npu_retu.data.schemas import load_rl  # noqa: E402

ROWS = [{"prompt": f"What is {i} plus {i}?", "answer": str(2 * i)} for i in range(3000)]


def _write(path: Path, rows=ROWS, **options) -> Path:
    pq.write_table(pa.Table.from_pylist(rows) if isinstance(rows, list) else rows, path, row_group_size=1000, **options)
    return path


def _with_broken_page_header(path: Path) -> Path:
    """The first data page of row group 1's first column gets a garbled header."""
    _write(path)
    offset = pq.ParquetFile(path).metadata.row_group(1).column(0).data_page_offset
    data = bytearray(path.read_bytes())
    data[offset : offset + 16] = b"\xff" * 16
    path.write_bytes(bytes(data))
    return path


def test_a_corrupted_page_names_the_row_group_after_the_good_rows_before_it(tmp_path):
    path = _with_broken_page_header(tmp_path / "train.parquet")
    rows_read = []
    with pytest.raises(DataError) as caught:
        for row, record in read_rows(path):
            rows_read.append(row)
    assert rows_read == list(range(1000))  # row group 0 streams out whole before the bad one
    message = str(caught.value)
    assert message.startswith(
        f"{path}: corrupted data in row group 1 of 3 (rows 1000-1999): Couldn't deserialize thrift: "
    )
    assert message.endswith("Deserializing page header failed.")
    assert message.isprintable()  # one line, and the garbled byte pyarrow quotes is escaped


def test_a_corrupted_page_through_the_cli_is_one_line(tmp_path, capsys):
    path = _with_broken_page_header(tmp_path / "test.parquet")
    # eval reads its problems before it looks at --model
    assert main(["eval", "--model", str(tmp_path / "unused"), "--data", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"npu-retu eval: error: {path}: corrupted data in row group 1 of 3 (rows 1000-1999): ")
    assert err.count("\n") == 1 and "Traceback" not in err


def test_a_page_checksum_catches_a_flipped_bit_that_would_read_as_a_wrong_number(tmp_path):
    path = tmp_path / "train.parquet"
    table = pa.table({"prompt": [f"q{i}" for i in range(100)], "answer": list(range(100))})
    _write(path, table, write_page_checksum=True, use_dictionary=False, compression="none")
    column = pq.ParquetFile(path).metadata.row_group(0).column(1)
    data = bytearray(path.read_bytes())
    data[column.data_page_offset + column.total_compressed_size - 1] ^= 0x01  # high byte of the last answer
    path.write_bytes(bytes(data))
    assert pq.read_table(path).column("answer").to_pylist()[-1] == 99 + 2**56  # unchecked, it reads fine
    with pytest.raises(DataError) as caught:
        list(read_rows(path))
    assert str(caught.value) == (
        f"{path}: corrupted data in row group 0 of 1 (rows 0-99): could not verify page integrity, "
        "CRC checksum verification failed for page_ordinal 0"
    )


def test_files_that_are_not_whole_parquet_files(tmp_path):
    good = _write(tmp_path / "good.parquet").read_bytes()
    broken = {
        "garbled-footer.parquet": good[:-20] + b"\x00" * 16 + good[-4:],  # metadata zeroed, magic kept
        "truncated.parquet": good[: len(good) // 2],
        "empty.parquet": b"",
        "jsonl.parquet": b'{"prompt": "1 + 1?", "answer": "2"}\n',
    }
    messages = {}
    for name, data in broken.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(DataError) as caught:
            load_rl(tmp_path / name)
        messages[name] = str(caught.value)
    no_magic = "Parquet magic bytes not found in footer. Either the file is corrupted or this is not a parquet file."
    assert messages == {
        "garbled-footer.parquet": f"{tmp_path / 'garbled-footer.parquet'}: not a readable Parquet file: "
        "Couldn't deserialize thrift: No more data to read.",
        "truncated.parquet": f"{tmp_path / 'truncated.parquet'}: not a readable Parquet file: {no_magic}",
        "empty.parquet": f"{tmp_path / 'empty.parquet'}: not a readable Parquet file: Parquet file size is 0 bytes",
        "jsonl.parquet": f"{tmp_path / 'jsonl.parquet'}: not a readable Parquet file: {no_magic}",
    }


def _with_bad_utf8(path: Path) -> Path:
    # pyarrow writes string bytes as they are and checks them only when converting to Python
    prompts = pa.array([b"1 + 1?", b"\xff\xfe + 2?", b"3 + 3?"], type=pa.binary()).view(pa.string())
    return _write(path, pa.table({"prompt": prompts, "answer": ["2", "4", "6"]}))


def test_a_string_that_is_not_utf8_is_a_bad_row_naming_row_and_column(tmp_path):
    path = _with_bad_utf8(tmp_path / "train.parquet")
    with pytest.raises(DataError) as caught:
        list(read_rows(path))
    assert str(caught.value) == f"{path}: row 1, field 'prompt': not valid UTF-8: byte 0xff at byte 0 of the value"


def test_a_string_that_is_not_utf8_can_be_skipped(tmp_path):
    path = _with_bad_utf8(tmp_path / "train.parquet")
    counter = BadRowCounter()
    rows = list(read_rows(path, skip_bad_rows=True, counter=counter))
    assert rows == [(0, {"prompt": "1 + 1?", "answer": "2"}), (2, {"prompt": "3 + 3?", "answer": "6"})]
    assert counter.skipped == 1
    assert counter.skipped_by_file == {str(path): {"not valid UTF-8": 1}}
