"""How often mid-epoch checkpoints are written, so that writing them stays a bounded share
of training time.

A checkpoint holds the whole model and its optimizer moments, so its cost grows with the
tables while a step's does not: at 20M events (BPR-MF, 457k users + 99k items x 256, 1.7
GB with the moments) one took 15-17 s in the pipeline (most of it the disk flushing the
file) against ~40 ms a step, and a checkpoint every 500 steps was about half the training
time. A due checkpoint (every ``train.checkpoint_every`` steps) is therefore
skipped while less than ``1 / train.checkpoint_max_overhead`` times the last write's time
has passed since it ended; the end of an epoch always writes one.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass
class CheckpointPacer:
    """Whether a due checkpoint is written; ``max_overhead`` None writes every due one."""

    max_overhead: float | None
    clock: Callable[[], float] = time.monotonic
    written: int = 0
    skipped: int = 0
    seconds: float = 0.0  # spent writing
    _last_seconds: float = field(default=0.0, repr=False)
    _last_end: float | None = field(default=None, repr=False)

    def due(self) -> bool:
        """True when a checkpoint due now should be written (counts the skipped ones)."""
        if self.max_overhead is None or self._last_end is None:
            return True
        if (self.clock() - self._last_end) * self.max_overhead >= self._last_seconds:
            return True
        self.skipped += 1
        return False

    def write(self, checkpoint: Callable[[], object]) -> None:
        """Run ``checkpoint`` and remember how long it took."""
        started = self.clock()
        checkpoint()
        self._last_end = self.clock()
        self._last_seconds = self._last_end - started
        self.seconds += self._last_seconds
        self.written += 1

    def summary(self) -> dict[str, float | int]:
        """Counts and seconds for the run's manifest."""
        return {"written": self.written, "skipped": self.skipped, "seconds": round(self.seconds, 3)}
