"""Errors that are the user's to fix: the CLI prints them as one clear line, without a traceback."""


class UserError(Exception):
    """Bad input, a bad config, a missing file: the message says what and where (exit status 2)."""


class EnvironmentFault(Exception):
    """Not the user's input but the machine: a full disk, a read-only folder. The CLI prints the
    message as one line and exits with status 1; whatever was being written has been removed."""


def integer_field(row: dict, key: str, where: str) -> int:
    """``row[key]`` as an integer, or a :class:`UserError` naming ``where`` and the field."""
    value = row.get(key)
    if isinstance(value, bool) or not isinstance(value, int):
        raise UserError(f"{where}: field '{key}' must be an integer, got {value!r}")
    return value


def number_field(row: dict, key: str, where: str) -> float:
    """``row[key]`` as a finite float, or a :class:`UserError` naming ``where`` and the field."""
    import math

    value = row.get(key)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise UserError(f"{where}: field '{key}' must be a finite number, got {value!r}")
    return float(value)
