"""Wall-clock helper shared by the bench scripts (run as ``python bench/<script>.py``, so
this folder is on ``sys.path``)."""

from __future__ import annotations

import time
from collections.abc import Callable


def best_seconds(run: Callable[[], object], repeats: int, warm_up: bool = True) -> float:
    """The fastest of ``repeats`` timed calls of ``run`` (after one untimed call when
    ``warm_up``): the least disturbed run on a shared machine."""
    if warm_up:
        run()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return min(times)
