"""Progress lines for running Spark stages, read from a real session's status tracker."""

from __future__ import annotations

import logging
import re
import time

import pytest
from pyspark.sql import SparkSession

from recpipe.spark_progress import StageProgress, duration, log_progress, progress_line

TASKS = 4
TASK_SECONDS = 1.5


def _slow_count(spark: SparkSession) -> int:
    def slow(value: int) -> int:
        time.sleep(TASK_SECONDS)
        return value

    return spark.sparkContext.parallelize(range(TASKS), TASKS).map(slow).count()


def test_durations_read_as_hours_minutes_and_seconds() -> None:
    assert duration(45) == "45s"
    assert duration(14 * 60 + 10) == "14m10s"
    assert duration(3600 + 2 * 60 + 40) == "1h02m"


def test_time_left_follows_the_rate_so_far() -> None:
    stage = StageProgress(7, "mapInArrow at ranking.py:140", 400, 100, 2, 0)
    line = progress_line(stage, elapsed=600)
    # 100 tasks took 600 s: the other 300 take 1,800 s at that rate.
    assert line == (
        "spark stage 7 (mapInArrow at ranking.py:140): 100/400 tasks done, 2 running, "
        "10m00s so far, ~30m00s left at this rate"
    )
    finished = progress_line(StageProgress(7, "x", 4, 0, 2, 1), elapsed=5)
    assert "left" not in finished and "1 failed attempt(s)" in finished


def test_a_running_stage_is_logged_with_its_tasks(
    spark: SparkSession, caplog: pytest.LogCaptureFixture
) -> None:
    progress = log_progress(spark, 0.4)
    assert progress is not None
    with caplog.at_level(logging.INFO, logger="recpipe.progress"):
        try:
            assert _slow_count(spark) == TASKS
        finally:
            progress.stop()
    lines = [r.getMessage() for r in caplog.records if r.name == "recpipe.progress"]
    assert lines, "no progress line while a stage ran for several intervals"
    pattern = re.compile(r"spark stage \d+ \(count at test_spark_progress\.py:\d+\): (\d+)/(\d+) ")
    counts = [tuple(map(int, m.groups())) for m in map(pattern.match, lines) if m]
    assert counts and len(counts) == len(lines)
    assert all(total == TASKS and 0 <= done <= TASKS for done, total in counts)
    # The count grows, never shrinks, while the stage runs.
    assert [done for done, _ in counts] == sorted(done for done, _ in counts)
    assert progress.poll() == []  # nothing runs now


def test_progress_can_be_turned_off(spark: SparkSession) -> None:
    assert log_progress(spark, 0) is None
