"""Read rows (one dict each) from JSONL, JSON-array and Parquet files, with errors that say where.

    for row, record in read_rows("data/train.jsonl"):
        ...

Row numbers: the 1-based line number in a JSONL file, the 0-based index in a JSON array or a
Parquet file. JSONL is read as strict UTF-8, line by line, so a multi-GB file streams; one bad line
either stops the read with a :class:`DataError` or, with ``skip_bad_rows``, is counted in a
:class:`BadRowCounter` and skipped.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from npu_retu.data.errors import BadRowCounter, DataError

SUPPORTED_SUFFIXES = (".jsonl", ".json", ".parquet")


def read_rows(
    path: str | Path,
    *,
    skip_bad_rows: bool = False,
    counter: BadRowCounter | None = None,
) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield ``(row, record)`` for every row of a ``.jsonl``, ``.json`` or ``.parquet`` file.

    A missing file, an unknown extension, a file without rows or a Parquet file that cannot be read
    raises :class:`DataError` naming the file. A bad row (not UTF-8, malformed JSON, not an object)
    raises too, unless ``skip_bad_rows``: then it is counted in ``counter`` (when given) and skipped.
    """
    file = str(path)
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in SUPPORTED_SUFFIXES:
        raise DataError(file, f"unknown file type {suffix or '(no extension)'!r}: expected one of {', '.join(SUPPORTED_SUFFIXES)}")
    if not path.exists():
        raise DataError(file, "file not found")
    if not path.is_file():
        raise DataError(file, "not a file (a directory?)")

    read = {".jsonl": _read_jsonl, ".json": _read_json_array, ".parquet": _read_parquet}[suffix]
    any_rows = False
    for row, record in read(path, file):
        any_rows = True
        if counter is not None:
            counter.add_row(file)
        if isinstance(record, DataError):
            if not skip_bad_rows:
                raise record
            if counter is not None:
                counter.skip(record)
            continue
        yield row, record
    if not any_rows:
        raise DataError(file, "empty file: no rows")


def _read_jsonl(path: Path, file: str) -> Iterator[tuple[int, dict[str, Any] | DataError]]:
    """One JSON object per line. Bad lines come back as DataError values so the caller can skip them."""
    offset = 0  # byte offset of the current line in the file, for the non-UTF-8 message
    with path.open("rb") as handle:
        for line_number, raw in enumerate(handle, start=1):
            line_start, offset = offset, offset + len(raw)
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                bad = raw[e.start : e.start + 1].hex()
                yield line_number, DataError(
                    file,
                    f"not valid UTF-8: byte 0x{bad} at byte offset {line_start + e.start} of the file "
                    f"(byte {e.start} of the line)",
                    row=line_number,
                    reason="not valid UTF-8",
                )
                continue
            if line_number == 1:
                text = text.removeprefix("\ufeff")  # a UTF-8 byte-order mark is not part of the JSON
            if not text.strip():
                continue  # blank lines are not rows
            try:
                record = json.loads(text.rstrip("\r\n"))  # so error columns count within this line
            except json.JSONDecodeError as e:
                yield line_number, DataError(
                    file, f"malformed JSON: {e.msg} (column {e.colno})", row=line_number, reason="malformed JSON"
                )
                continue
            if not isinstance(record, dict):
                yield line_number, _not_an_object(file, line_number, record)
                continue
            yield line_number, record


def _read_json_array(path: Path, file: str) -> Iterator[tuple[int, dict[str, Any] | DataError]]:
    """A whole-file JSON list of objects; the file itself must parse, single items may be bad."""
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8").removeprefix("\ufeff")
    except UnicodeDecodeError as e:
        raise DataError(file, f"not valid UTF-8: byte 0x{raw[e.start:e.start + 1].hex()} at byte offset {e.start}") from None
    if not text.strip():
        return
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError(file, f"malformed JSON: {e.msg} (line {e.lineno}, column {e.colno})") from None
    if not isinstance(data, list):
        raise DataError(file, f"expected a JSON list of objects at the top level, got {json_type_name(data)}")
    for index, record in enumerate(data):
        yield index, record if isinstance(record, dict) else _not_an_object(file, index, record)


def _read_parquet(path: Path, file: str) -> Iterator[tuple[int, dict[str, Any] | DataError]]:
    """Parquet via pyarrow, a row group at a time in record batches; nested columns come back as lists of dicts.

    A file that is not Parquet (no footer, a garbled footer) or a row group that cannot be read (a
    corrupted page; checksums are verified where the writer stored them) raises a DataError naming
    the row group and its rows. A string that is not UTF-8 is a bad row, as in JSONL.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(path, page_checksum_verification=True)
    except (pa.ArrowException, OSError) as e:  # a garbled footer is a bare OSError, not an ArrowException
        raise DataError(file, f"not a readable Parquet file: {_one_line(e)}") from None
    groups = parquet.metadata.num_row_groups
    first = 0  # the row index of the group's first row
    for group in range(groups):
        rows = parquet.metadata.row_group(group).num_rows
        index = first
        try:
            for batch in parquet.iter_batches(batch_size=1024, row_groups=[group]):
                try:
                    records = batch.to_pylist()
                except UnicodeDecodeError:  # pyarrow does not check UTF-8 when it reads; find the row
                    records = [_parquet_row(batch, i, file, index + i) for i in range(batch.num_rows)]
                for record in records:
                    yield index, record
                    index += 1
        except (pa.ArrowException, OSError) as e:
            kind = "unsupported" if isinstance(e, pa.ArrowNotImplementedError) else "corrupted"
            raise DataError(
                file, f"{kind} data in row group {group} of {groups} (rows {first}-{first + rows - 1}): {_one_line(e)}"
            ) from None
        first += rows


def _parquet_row(batch: Any, i: int, file: str, row: int) -> dict[str, Any] | DataError:
    """Row ``i`` of a record batch, or a DataError naming the column whose string is not UTF-8."""
    try:
        return batch.slice(i, 1).to_pylist()[0]
    except UnicodeDecodeError:
        for name in batch.schema.names:
            try:
                batch.column(name)[i].as_py()
            except UnicodeDecodeError as e:
                bad = e.object[e.start : e.start + 1].hex()
                return DataError(
                    file, f"not valid UTF-8: byte 0x{bad} at byte {e.start} of the value", row=row, field=name,
                    reason="not valid UTF-8",
                )
        return DataError(file, "not valid UTF-8", row=row, reason="not valid UTF-8")


def _one_line(error: Exception) -> str:
    """pyarrow's messages end in newlines, may span several and may quote a corrupted byte raw."""
    text = " ".join(str(error).split()) or type(error).__name__
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def _not_an_object(file: str, row: int, value: Any) -> DataError:
    return DataError(file, f"expected a JSON object, got {json_type_name(value)}", row=row, reason="not a JSON object")


def json_type_name(value: Any) -> str:
    """The JSON name of a Python value's type, for messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__
