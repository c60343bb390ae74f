"""Errors for bad data rows, and a counter for the rows a long run skips instead of stopping.

Every data problem names the file, the row and the field, so that the user can open the file and fix
it: ``data/train.jsonl: row 12, field 'messages[1].content': expected a string, got null``.
Rows are 1-based line numbers in JSONL files and 0-based indices in JSON arrays and Parquet files.
"""

from __future__ import annotations

import logging
from collections import Counter

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


class BadRowCounter:
    """Counts rows read and rows skipped (by reason) per file, for a one-line summary at the end.

    Readers call :meth:`add_row` for every non-blank row they read; whoever decides to skip a row
    calls :meth:`skip` with the :class:`DataError` that made it unusable, or with the example's
    ``source`` (``"<file>:<row>"``, or just a file) and a reason.
    """

    def __init__(self) -> None:
        self.rows: Counter[str] = Counter()
        self.skipped_by_file: dict[str, Counter[str]] = {}

    def add_row(self, file: str) -> None:
        self.rows[str(file)] += 1

    def skip(self, error_or_source: DataError | str, reason: str | None = None) -> None:
        if isinstance(error_or_source, DataError):
            file, reason = error_or_source.file, error_or_source.reason
        else:
            file = parse_source(str(error_or_source))[0]
            if reason is None:
                raise TypeError("BadRowCounter.skip(source, reason): a reason is required with a source")
        self.skipped_by_file.setdefault(file, Counter())[reason] += 1

    @property
    def skipped(self) -> int:
        return sum(sum(reasons.values()) for reasons in self.skipped_by_file.values())

    def summary(self) -> str:
        """One line per file with skipped rows, e.g.
        ``skipped 3 bad rows of 1000 in data/train.jsonl: 2 malformed JSON, 1 missing field 'messages'``;
        empty when nothing was skipped."""
        lines = []
        for file, reasons in self.skipped_by_file.items():
            total = sum(reasons.values())
            # most frequent reason first; ties keep the order they were first seen in
            parts = ", ".join(f"{count} {reason}" for reason, count in reasons.most_common())
            noun = "row" if total == 1 else "rows"
            lines.append(f"skipped {total} bad {noun} of {self.rows[file]} in {file}: {parts}")
        return "\n".join(lines)

    def report(self) -> None:
        """Log the summary as a warning (nothing when no row was skipped)."""
        text = self.summary()
        if text:
            for line in text.splitlines():
                logger.warning(line)
