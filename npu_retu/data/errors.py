"""Errors for bad data rows, and a counter for the rows a long run skips instead of stopping.

Every data problem names the file, the row and the field, so that the user can open the file and fix
it: ``data/train.jsonl: row 12, field 'messages[1].content': expected a string, got null``.
Rows are 1-based line numbers in JSONL files and 0-based indices in JSON arrays and Parquet files.
"""

from __future__ import annotations

import json
import logging
import os
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

from npu_retu.errors import UserError

logger = logging.getLogger(__name__)


class DataError(UserError, ValueError):
    """One problem in one data file; ``row`` and ``field`` are None when they do not apply.

    ``reason`` is a short category (``malformed JSON``, ``missing field 'messages'``) that
    :class:`BadRowCounter` groups skipped rows by; it defaults to the message.
    """

    def __init__(
        self,
        file: str,
        message: str,
        *,
        row: int | None = None,
        field: str | None = None,
        reason: str | None = None,
    ) -> None:
        self.file = str(file)
        self.row = row
        self.field = field
        self.message = message
        self.reason = reason or message
        super().__init__(self.__str__())

    def __str__(self) -> str:
        where = self.file
        if self.row is not None:
            where += f": row {self.row}"
            if self.field is not None:
                where += f", field '{self.field}'"
        elif self.field is not None:
            where += f": field '{self.field}'"
        return f"{where}: {self.message}"


class ChatTemplateError(UserError, ValueError):
    """The tokenizer's chat template cannot give an exact assistant-only loss mask."""


def format_source(file: str, row: int) -> str:
    """Where an example came from, as ``"<file>:<row>"`` (the ``source`` of every example)."""
    return f"{file}:{row}"


def parse_source(source: str) -> tuple[str, int | None]:
    """Split ``"<file>:<row>"`` back into file and row; a source without a row gives ``(source, None)``."""
    file, sep, row = source.rpartition(":")
    if sep and row.isdigit():
        return file, int(row)
    return source, None


@dataclass(frozen=True)
class SkippedRow:
    """One row a run skipped: where it is and why; ``row`` and ``field`` are None when unknown."""

    file: str
    row: int | None
    field: str | None
    reason: str
    message: str


class BadRowCounter:
    """Counts rows read and rows skipped (by reason) per file, and remembers where each skipped row is.

    Readers call :meth:`add_row` for every non-blank row they read; whoever decides to skip a row
    calls :meth:`skip` with the :class:`DataError` that made it unusable, or with the example's
    ``source`` (``"<file>:<row>"``, or just a file) and a reason. At the end, :meth:`summary` gives
    one line per file with the first row numbers of each reason, and :meth:`write` saves every
    skipped row to a JSONL file, so the user can open the data and fix it.
    """

    def __init__(self) -> None:
        self.rows: Counter[str] = Counter()
        self.skipped_by_file: dict[str, Counter[str]] = {}
        self.skipped_rows: list[SkippedRow] = []  # in the order they were skipped

    def add_row(self, file: str) -> None:
        self.rows[str(file)] += 1

    def skip(
        self,
        error_or_source: DataError | str,
        reason: str | None = None,
        *,
        field: str | None = None,
        message: str | None = None,
    ) -> None:
        """Count one skipped row: ``skip(data_error)``, or ``skip("data/a.jsonl:12", "too long")``
        (``field`` and ``message``, the full text, are optional with a source; ``message`` defaults
        to the reason)."""
        if isinstance(error_or_source, DataError):
            error = error_or_source
            skipped = SkippedRow(error.file, error.row, error.field, error.reason, error.message)
        else:
            if reason is None:
                raise TypeError("BadRowCounter.skip(source, reason): a reason is required with a source")
            file, row = parse_source(str(error_or_source))
            skipped = SkippedRow(file, row, field, reason, message or reason)
        self.skipped_by_file.setdefault(skipped.file, Counter())[skipped.reason] += 1
        self.skipped_rows.append(skipped)

    @property
    def skipped(self) -> int:
        return len(self.skipped_rows)

    def summary(self, rows_shown: int = 5) -> str:
        """One line per file with skipped rows, naming the first ``rows_shown`` rows of each reason, e.g.
        ``skipped 3 bad rows of 1000 in data/train.jsonl: 2 malformed JSON (rows 4, 17), 1 missing field
        'messages' (row 9)``; empty when nothing was skipped. :meth:`write` lists them all."""
        rows_by_reason: dict[tuple[str, str], list[int]] = {}
        for skipped in self.skipped_rows:
            if skipped.row is not None:
                rows_by_reason.setdefault((skipped.file, skipped.reason), []).append(skipped.row)
        lines = []
        for file, reasons in self.skipped_by_file.items():
            total = sum(reasons.values())
            # most frequent reason first; ties keep the order they were first seen in
            parts = ", ".join(
                f"{count} {reason}{_where(rows_by_reason.get((file, reason), []), count, rows_shown)}"
                for reason, count in reasons.most_common()
            )
            noun = "row" if total == 1 else "rows"
            lines.append(f"skipped {total} bad {noun} of {self.rows[file]} in {file}: {parts}")
        return "\n".join(lines)

    def write(self, path: str | Path) -> Path:
        """Write every skipped row to ``path`` as JSONL, one ``{"file", "row", "field", "reason",
        "message"}`` object per line in the order they were skipped, and return the path.

        Atomic: the lines go to ``.tmp-<name>`` in the same folder, which then replaces ``path``, so
        a crash never leaves a half-written file behind (the run folder's other files do the same).
        """
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".tmp-{path.name}")
        try:
            with tmp.open("w", encoding="utf-8") as handle:
                for skipped in self.skipped_rows:
                    handle.write(json.dumps(asdict(skipped)) + "\n")
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return path

    def report(self) -> None:
        """Log the summary as a warning (nothing when no row was skipped)."""
        text = self.summary()
        if text:
            for line in text.splitlines():
                logger.warning(line)


def _where(rows: list[int], count: int, shown: int) -> str:
    """`` (rows 4, 17, and 3 more)``: the first ``shown`` known rows of ``count`` skips; empty when none is known."""
    if not rows:
        return ""
    listed = ", ".join(str(row) for row in rows[:shown])
    more = count - min(len(rows), shown)
    noun = "row" if count == 1 else "rows"
    return f" ({noun} {listed}, and {more} more)" if more else f" ({noun} {listed})"
