"""Errors the CLI reports as a one-line message instead of a traceback."""

from __future__ import annotations


class RecpipeError(Exception):
    """A failure explained by its message: bad input, a missing prerequisite, a bad config."""


class MissingInputError(RecpipeError, FileNotFoundError):
    """A stage's input (a partition, a file, an earlier stage's output) does not exist."""
