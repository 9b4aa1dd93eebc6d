"""Whether the tests run under CI (plain Python: imported by both test environments)."""

from __future__ import annotations

import os


def in_ci() -> bool:
    """True under CI: the ``CI`` environment variable is set to anything but "", 0, false, no."""
    return os.environ.get("CI", "").strip().lower() not in {"", "0", "false", "no"}
