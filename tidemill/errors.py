"""The one base of every failure tidemill expects and a person can act on.

A `TidemillError`'s message is the whole story: the CLI prints it as one line and exits
with code 2. Anything else that escapes is a bug and keeps its traceback. Subclasses keep
the builtin base they had (ValueError, RuntimeError, ...) beside this one, so code that
catches those still does.
"""

from __future__ import annotations


class TidemillError(Exception):
    """An expected failure: bad config or input, a refused request, a batch that could not
    commit. The message says what was wrong and, where it can, what would be right."""


def first_line(error: BaseException) -> str:
    """The first non-empty line of `error`'s message (drivers and DuckDB add context lines
    and hints below it), or its type name when it has none."""
    for line in str(error).splitlines():
        if line.strip():
            return line.strip()
    return type(error).__name__
