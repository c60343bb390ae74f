"""Read rows (one dict each) from JSONL, JSON-array, Parquet and Arrow files, with errors that say where.

    for file in data_files("data/train-*.parquet"):      # a file, a folder of shards, a glob, a datasets folder
        for row, record in read_rows(file):
            ...

Row numbers: the 1-based line number in a JSONL file, the 0-based index in a JSON array, a Parquet
or an Arrow file. JSONL is read as strict UTF-8, line by line, and Parquet / Arrow a record batch at
a time, so a multi-GB file streams; one bad line either stops the read with a :class:`DataError` or,
with ``skip_bad_rows``, is counted in a :class:`BadRowCounter` and skipped.

What one ``data.train_files`` entry may name (:func:`data_files` turns it into the files, in the
order they are read; each file is then a source of its own, so errors name the shard and the row
within it):

* a ``.jsonl`` / ``.json`` / ``.parquet`` / ``.arrow`` file (Arrow: the IPC stream format that
  Hugging Face ``datasets`` writes, or the IPC file format);
* a folder written by ``datasets``' ``save_to_disk``: a ``Dataset`` folder (``state.json`` lists its
  ``data-*.arrow`` shards) or a ``DatasetDict`` folder (``dataset_dict.json`` lists its splits) with
  the split named after a colon, ``data/gsm8k:train``; a DatasetDict with a single split needs none;
* any other folder: its shards, every ``*.parquet`` / ``*.jsonl`` / ``*.json`` / ``*.arrow`` file
  directly in it, in sorted order, all of one type (names starting with ``.`` or ``_`` are not
  shards: Spark's ``_SUCCESS``, temp files);
* a glob (``data/train-*.parquet``, ``data/**/*.jsonl``): the files it matches, sorted, all of one type.
"""

from __future__ import annotations

import glob
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from npu_retu.data.errors import BadRowCounter, DataError

SUPPORTED_SUFFIXES = (".jsonl", ".json", ".parquet", ".arrow")
GLOB_CHARACTERS = "*?["
BATCH_ROWS = 1024  # rows per record batch read from Parquet and Arrow files


def read_rows(
    path: str | Path,
    *,
    skip_bad_rows: bool = False,
    counter: BadRowCounter | None = None,
) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield ``(row, record)`` for every row of a ``.jsonl``, ``.json``, ``.parquet`` or ``.arrow`` file
    (one file: :func:`data_files` expands folders and globs).

    A missing file, an unknown extension, a file without rows or a Parquet / Arrow file that cannot
    be read raises :class:`DataError` naming the file. A bad row (not UTF-8, malformed JSON, not an object)
    raises too, unless ``skip_bad_rows``: then it is counted in ``counter`` (when given) and skipped.
    """
    file = str(path)
    path = Path(path)
    suffix = path.suffix.lower()
    if not path.exists():
        raise DataError(file, "file not found")
    if suffix not in SUPPORTED_SUFFIXES:
        raise DataError(file, f"unknown file type {suffix or '(no extension)'!r}: expected one of {', '.join(SUPPORTED_SUFFIXES)}")
    if not path.is_file():
        raise DataError(file, "not a file (a directory?)")

    read = {".jsonl": _read_jsonl, ".json": _read_json_array, ".parquet": _read_parquet, ".arrow": _read_arrow}[suffix]
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


def data_files(source: str | Path) -> list[str]:
    """The files that one data entry names, in the order they are read (see the module docstring).

    A file, or a path that does not exist and is no glob, comes back as it is (:func:`read_rows`
    says what is wrong with it). A ``datasets`` folder gives its Arrow shards, a DatasetDict folder
    the shards of the split named after a colon (``folder:train``), another folder its shards in
    sorted order, a glob the files it matches, sorted. A glob that matches nothing, a folder without
    shards, shards of mixed types, or a DatasetDict whose split is missing or not named is a
    :class:`DataError` naming the entry and what it may be.
    """
    text = str(source)
    path = Path(text)
    if path.is_dir():
        return _folder_files(path, text)
    if path.exists():
        return [text]
    folder, colon, split = text.rpartition(":")
    if colon and split and Path(folder).is_dir():
        return _split_files(Path(folder), folder, split)
    if any(c in text for c in GLOB_CHARACTERS):
        matches = sorted(glob.glob(text, recursive=True))
        if not matches:
            raise DataError(text, "no files match this pattern")
        files = [file for match in matches for file in (_folder_files(Path(match), match) if Path(match).is_dir() else [match])]
        _require_one_type(files, text, "the files this pattern matches")
        return files
    return [text]


def _folder_files(folder: Path, name: str) -> list[str]:
    if (folder / "dataset_dict.json").is_file():
        splits = _dataset_dict_splits(folder, name)
        if len(splits) == 1:
            return _split_files(folder, name, splits[0])
        raise DataError(
            name, f"a datasets DatasetDict folder with splits {', '.join(splits)}: name one after a colon, e.g. {name}:{splits[0]}"
        )
    if (folder / "state.json").is_file():
        return _dataset_files(folder, name)
    files = sorted(
        str(child) for child in folder.iterdir()
        if child.is_file() and child.suffix.lower() in SUPPORTED_SUFFIXES and not child.name.startswith((".", "_"))
    )
    if not files:
        raise DataError(
            name, f"no data files in this folder: expected shards ending in {', '.join(SUPPORTED_SUFFIXES)} directly in it "
            "(subfolders are not read: name one, or use a glob such as folder/**/*.parquet)"
        )
    _require_one_type(files, name, "the shards in this folder")
    return files


def _dataset_dict_splits(folder: Path, name: str) -> list[str]:
    """The splits a ``save_to_disk`` DatasetDict folder lists in ``dataset_dict.json``."""
    info = _json_file(folder / "dataset_dict.json", f"{name}/dataset_dict.json")
    splits = info.get("splits") if isinstance(info, dict) else None
    if not isinstance(splits, list) or not splits or not all(isinstance(s, str) for s in splits):
        raise DataError(f"{name}/dataset_dict.json", "expected {\"splits\": [split names]}, as datasets' save_to_disk writes it")
    return splits


def _split_files(folder: Path, name: str, split: str) -> list[str]:
    """The shards of one split of a DatasetDict folder (``name:split``)."""
    if not (folder / "dataset_dict.json").is_file():
        raise DataError(
            f"{name}:{split}", f"':{split}' names a split, but {name} is not a datasets DatasetDict folder (no dataset_dict.json)"
        )
    splits = _dataset_dict_splits(folder, name)
    if split not in splits:
        raise DataError(f"{name}:{split}", f"no split {split!r} in this DatasetDict: its splits are {', '.join(splits)}")
    return _dataset_files(folder / split, str(Path(name) / split))


def _dataset_files(folder: Path, name: str) -> list[str]:
    """The Arrow shards of a ``save_to_disk`` Dataset folder, in the order ``state.json`` lists them."""
    state_name = f"{name}/state.json"
    state = _json_file(folder / "state.json", state_name)
    listed = state.get("_data_files") if isinstance(state, dict) else None
    if not isinstance(listed, list) or not all(isinstance(f, dict) and isinstance(f.get("filename"), str) for f in listed):
        raise DataError(state_name, 'expected "_data_files": [{"filename": ...}], as datasets\' save_to_disk writes it')
    if not listed:
        raise DataError(state_name, "lists no data files: the dataset has no rows")
    files = []
    for entry in listed:
        shard = folder / entry["filename"]
        if not shard.is_file():
            raise DataError(state_name, f"lists {entry['filename']}, which is not in the folder (an incomplete copy?)")
        files.append(str(Path(name) / entry["filename"]))
    return files


def _json_file(path: Path, name: str) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(name, f"not readable JSON: {_one_line(e)}") from None


def _require_one_type(files: list[str], name: str, what: str) -> None:
    kinds: dict[str, list[str]] = {}
    for file in files:
        kinds.setdefault(Path(file).suffix.lower() or "(no extension)", []).append(Path(file).name)
    if len(kinds) > 1:
        listed = "; ".join(f"{len(names)} {kind} ({names[0]}{', ...' if len(names) > 1 else ''})" for kind, names in kinds.items())
        raise DataError(name, f"{what} are of mixed types: {listed}; put one type of shard together, or name the files")
    unknown = [kind for kind in kinds if kind not in SUPPORTED_SUFFIXES]
    if unknown:
        raise DataError(name, f"{what} are {unknown[0]} files: expected one of {', '.join(SUPPORTED_SUFFIXES)}")


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
            for batch in parquet.iter_batches(batch_size=BATCH_ROWS, row_groups=[group]):
                for record in _batch_records(batch, file, index):
                    yield index, record
                    index += 1
        except (pa.ArrowException, OSError) as e:
            kind = "unsupported" if isinstance(e, pa.ArrowNotImplementedError) else "corrupted"
            raise DataError(
                file, f"{kind} data in row group {group} of {groups} (rows {first}-{first + rows - 1}): {_one_line(e)}"
            ) from None
        first += rows


def _read_arrow(path: Path, file: str) -> Iterator[tuple[int, dict[str, Any] | DataError]]:
    """An Arrow IPC file, memory-mapped and read a record batch at a time: the stream format (what
    ``datasets`` writes: ``data-00000-of-00001.arrow``, ``cache-*.arrow``) or the file format (starts
    with the ``ARROW1`` magic). A file that is neither, or a batch that cannot be read (truncated,
    garbled), raises a DataError naming the rows read so far.
    """
    import pyarrow as pa

    try:
        with path.open("rb") as handle:
            is_file_format = handle.read(6) == b"ARROW1"
        source = pa.memory_map(str(path))
        if is_file_format:
            reader = pa.ipc.open_file(source)
            batches = (reader.get_batch(i) for i in range(reader.num_record_batches))
        else:
            batches = iter(pa.ipc.open_stream(source))
    except (pa.ArrowException, OSError) as e:
        raise DataError(file, f"not a readable Arrow file (IPC stream or file format): {_one_line(e)}") from None
    index = 0
    while True:
        try:
            batch = next(batches, None)
        except (pa.ArrowException, OSError) as e:
            raise DataError(file, f"corrupted data in the record batch starting at row {index}: {_one_line(e)}") from None
        if batch is None:
            return
        for start in range(0, batch.num_rows, BATCH_ROWS):
            for record in _batch_records(batch.slice(start, BATCH_ROWS), file, index):
                yield index, record
                index += 1


def _batch_records(batch: Any, file: str, first_row: int) -> list[dict[str, Any] | DataError]:
    """A record batch as row dicts; a row with a string that is not UTF-8 becomes a DataError."""
    try:
        return batch.to_pylist()
    except UnicodeDecodeError:  # pyarrow does not check UTF-8 when it reads; find the row
        return [_parquet_row(batch, i, file, first_row + i) for i in range(batch.num_rows)]


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
