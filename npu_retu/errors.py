"""Errors that are the user's to fix: the CLI prints them as one clear line, without a traceback."""


class UserError(Exception):
    """Bad input, a bad config, a missing file: the message says what and where."""
