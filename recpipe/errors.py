"""Errors the CLI reports as a one-line message instead of a traceback."""

from __future__ import annotations

import re

_JAVA_ERROR = re.compile(r"([\w$.]+(?:Exception|Error)): (.+)")


class RecpipeError(Exception):
    """A failure explained by its message: bad input, a missing prerequisite, a bad config."""


class MissingInputError(RecpipeError, FileNotFoundError):
    """A stage's input (a partition, a file, an earlier stage's output) does not exist."""


class BlockTooLargeError(RecpipeError):
    """Not even one user's dense score row fits in the configured block memory."""


class DriverLimitError(RecpipeError):
    """Data one process would read whole is larger than the configured limit allows."""


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


_FAILED_READ = re.compile(r"Encountered error while reading file (\S+?)\.?(?:\s|$)")
_LAKE_PARTITION = re.compile(r"/lake/([\w-]+)/ds=(\d{4}-\d{2}-\d{2})/")
_CAUSE = re.compile(r"Caused by: ([\w$.]+): ([^\n]+)")


def is_spark_failure(exc: BaseException) -> bool:
    """Whether ``exc`` is an error raised through pyspark or py4j (a failed Spark job)."""
    return type(exc).__module__.startswith(("pyspark", "py4j"))


def spark_failure_line(exc: BaseException, limit: int = 300) -> str:
    """One line for a failed Spark job: a damaged lake file names its partition and the fix."""
    text = str(exc)
    read = _FAILED_READ.search(text)
    if read:
        path = read.group(1)
        cause = _CAUSE.search(text)
        why = "unreadable"
        if cause:
            # The cause usually repeats the path; the line names it once already.
            mention = r"\S*" + re.escape(path.split("://", 1)[-1]) + r"\S*"
            detail = re.sub(mention, "", cause.group(2))
            why = f"{cause.group(1).rsplit('.', 1)[-1]}: {' '.join(detail.split())}"[:160]
        lake = _LAKE_PARTITION.search(path)
        if lake:
            from recpipe.commit import producer_of

            table, ds = lake.groups()
            try:
                fix = f"re-run `recpipe {producer_of(table)} --ds {ds}`"
            except ValueError:
                fix = "re-run the stage that wrote it"
            return f"{table} ds={ds}: {path} is damaged ({why}); {fix}"
        return f"cannot read {path} ({why})"
    return f"Spark failed: {java_error_line(exc, limit)}"
