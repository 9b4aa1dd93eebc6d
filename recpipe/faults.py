"""Injected crash points for the kill tests: ``RECPIPE_KILL_AT=<point>`` SIGKILLs this process.

Points are named ``<stage>:<step>`` (e.g. ``clean:before_commit``); they cost one environment
lookup when unset. Only tests set the variable.
"""

from __future__ import annotations

import os
import signal

KILL_AT = "RECPIPE_KILL_AT"


def kill_point(name: str) -> None:
    """Die here, without cleanup, when ``RECPIPE_KILL_AT`` names this point."""
    if os.environ.get(KILL_AT) == name:
        os.kill(os.getpid(), signal.SIGKILL)
