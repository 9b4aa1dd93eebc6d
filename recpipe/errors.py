"""Errors the CLI reports as a one-line message instead of a traceback."""

from __future__ import annotations

import re

_JAVA_ERROR = re.compile(r"([\w$.]+(?:Exception|Error)): (.+)")


class RecpipeError(Exception):
    """A failure explained by its message: bad input, a missing prerequisite, a bad config."""


class MissingInputError(RecpipeError, FileNotFoundError):
    """A stage's input (a partition, a file, an earlier stage's output) does not exist."""


def java_error_line(exc: BaseException, limit: int = 300) -> str:
    """``ShortClass: message`` of the Java error inside a py4j/pyspark exception, one line.

    py4j's own first line ("An error occurred while calling ...") says nothing; the first line
    naming an exception does. Other exceptions give their first non-empty line.
    """
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    for line in lines:
        match = _JAVA_ERROR.search(line)
        if match:
            return f"{match.group(1).rsplit('.', 1)[-1]}: {match.group(2)}"[:limit]
    return (lines or [type(exc).__name__])[0][:limit]
