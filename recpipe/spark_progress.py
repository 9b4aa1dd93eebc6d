"""Progress of long Spark work in the log: the running stages' tasks, every N seconds.

recpipe turns Spark's console progress bar and UI off (they garble logs and hold ports), so a
stage that ranks a million users ran for most of an hour without a line. A daemon thread polls
the session's status tracker and logs, for each stage still running, its tasks done out of its
total, those running, the time since it was first seen and the time left at the rate so far.
Nothing is logged while no stage runs, and nothing for stages shorter than one interval.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

log = logging.getLogger("recpipe.progress")


@dataclass(frozen=True)
class StageProgress:
    """One running stage's task counts as the status tracker reports them."""

    stage_id: int
    name: str
    total: int
    done: int
    running: int
    failed: int


def running_stages(tracker: Any) -> list[StageProgress]:
    """The stages ``tracker`` (a ``pyspark.StatusTracker``) reports running, by id."""
    found = []
    for stage_id in sorted(tracker.getActiveStageIds()):
        info = tracker.getStageInfo(stage_id)
        if info is None:  # finished between the two calls
            continue
        found.append(
            StageProgress(
                stage_id, _short_name(info.name), info.numTasks, info.numCompletedTasks,
                info.numActiveTasks, info.numFailedTasks,
            )
        )  # fmt: skip
    return found


def _short_name(name: str) -> str:
    # Spark names a stage by its call site: "mapInArrow at /long/path/module.py:140".
    what, _, where = name.partition(" at ")
    return f"{what} at {where.rsplit('/', 1)[-1]}" if where else what


def duration(seconds: float) -> str:
    """``seconds`` as ``1h02m``, ``14m10s`` or ``45s``."""
    whole = round(seconds)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


def progress_line(stage: StageProgress, elapsed: float) -> str:
    """The log line of ``stage``, first seen ``elapsed`` seconds ago."""
    line = (
        f"spark stage {stage.stage_id} ({stage.name}): {stage.done:,}/{stage.total:,} tasks "
        f"done, {stage.running} running, {duration(elapsed)} so far"
    )
    if stage.failed:
        line += f", {stage.failed} failed attempt(s)"
    if 0 < stage.done < stage.total:
        left = elapsed * (stage.total - stage.done) / stage.done
        line += f", ~{duration(left)} left at this rate"
    return line


class ProgressLogger:
    """Polls a status tracker every ``every`` seconds and logs the stages running longer."""

    def __init__(
        self,
        tracker: Any,
        every: float,
        alive: Callable[[], bool] = lambda: True,
    ) -> None:
        self.tracker = tracker
        self.every = every
        self.alive = alive
        self.first_seen: dict[int, float] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def poll(self) -> list[str]:
        """One round: the lines of stages first seen at least one interval ago."""
        now = time.monotonic()
        stages = running_stages(self.tracker)
        running = {s.stage_id for s in stages}
        for stage_id in list(self.first_seen):
            if stage_id not in running:
                del self.first_seen[stage_id]
        lines = []
        for stage in stages:
            seen = self.first_seen.setdefault(stage.stage_id, now)
            if now - seen >= self.every:
                lines.append(progress_line(stage, now - seen))
        return lines

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            if not self.alive():
                return
            try:
                lines = self.poll()
            except Exception as exc:  # a session stopping under the poll: progress ends
                log.debug("spark progress stopped: %s", exc)
                return
            for line in lines:
                log.info(line)

    def start(self) -> ProgressLogger:
        """Start polling in a daemon thread (it never keeps the process alive)."""
        self._thread = threading.Thread(target=self._run, name="spark-progress", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop polling (waits for the thread's current round)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()


def log_progress(session: Any, every: float) -> ProgressLogger | None:
    """Log ``session``'s running stages every ``every`` seconds (``0``: never) while the
    session's context is the active one."""
    if every <= 0:
        return None
    from pyspark import SparkContext

    context = session.sparkContext
    tracker = context.statusTracker()
    return ProgressLogger(
        tracker, every, alive=lambda: SparkContext._active_spark_context is context
    ).start()
