"""One run at a time per (stage, ds): an exclusive lock file beside the stage's manifest.

The lock is a file created exclusively (``O_EXCL`` on local and mounted file systems; see
:func:`recpipe.storage.create_exclusive` for object stores) that names its holder (host, pid,
process start time, run id). A lock whose holder is a dead process on this host is stale and
taken over, so a SIGKILLed run never blocks the next one; a lock held on another host is never
broken automatically (that host may still be writing), the error says which file to remove.

Scope: processes that share ``paths.root``. Two schedulers racing on an object store without
conditional writes may both pass; run one scheduler per root there.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import socket
from pathlib import Path
from typing import Any

from recpipe import storage
from recpipe.errors import RecpipeError
from recpipe.storage import LocationLike, as_location

log = logging.getLogger(__name__)


class StageLockedError(RecpipeError):
    """Another live run of the same stage and ``ds`` holds the lock."""


def _start_ticks(pid: int) -> str | None:
    """Start time of ``pid`` in clock ticks since boot (Linux), to tell a reused pid apart."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # Field 22; the command name (field 2) may hold spaces, so split after its ')'.
    return stat.rsplit(")", 1)[1].split()[19]


def _alive(holder: dict[str, Any]) -> bool:
    pid = int(holder.get("pid", 0))
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    started = holder.get("start_ticks")
    return started is None or _start_ticks(pid) in (None, started)


class StageLock:
    """Exclusive lock of one (stage, ds); use as a context manager or acquire/release."""

    def __init__(self, path: LocationLike, stage: str, ds: str, run_id: str) -> None:
        self.path = as_location(path)
        self.stage = stage
        self.ds = ds
        self.run_id = run_id
        self.took_over: dict[str, Any] | None = None
        self._held = False

    def _holder_record(self) -> dict[str, Any]:
        return {
            "stage": self.stage,
            "ds": self.ds,
            "run_id": self.run_id,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "start_ticks": _start_ticks(os.getpid()),
            "since": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        }

    def _try_create(self) -> bool:
        return storage.create_exclusive(self.path, json.dumps(self._holder_record()).encode())

    def _read_holder(self) -> dict[str, Any]:
        try:
            return dict(storage.read_json(self.path))
        except FileNotFoundError:
            return {}
        except (OSError, ValueError):
            return {"unreadable": True}

    def acquire(self) -> StageLock:
        """Take the lock, taking over a stale one; :class:`StageLockedError` if it is held."""
        for _ in range(3):
            if self._try_create():
                self._held = True
                return self
            holder = self._read_holder()
            if not holder:
                continue  # released between our attempt and the read: try again
            local = holder.get("host") == socket.gethostname()
            if local and not _alive(holder):
                log.warning(
                    "%s ds=%s: taking over the lock of dead run %s (pid %s)",
                    self.stage, self.ds, holder.get("run_id"), holder.get("pid"),
                )  # fmt: skip
                self.took_over = holder
                storage.delete(self.path)
                continue
            where = f"pid {holder.get('pid')} on {holder.get('host')}"
            raise StageLockedError(
                f"{self.stage} ds={self.ds} is already running (run {holder.get('run_id')}, "
                f"{where}, since {holder.get('since')}); if that run is gone, remove {self.path}"
            )
        raise StageLockedError(f"{self.stage} ds={self.ds}: could not take the lock {self.path}")

    def release(self) -> None:
        """Drop the lock if this object holds it."""
        if self._held:
            holder = self._read_holder()
            if holder.get("run_id") == self.run_id:
                storage.delete(self.path)
            self._held = False

    def __enter__(self) -> StageLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()
