"""Mid-epoch checkpoint pacing: writing checkpoints stays a bounded share of training time."""

from __future__ import annotations

from recpipe.train.pacing import CheckpointPacer


class Clock:
    """A clock the test advances by hand (the pacer's only input besides its setting)."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _write(pacer: CheckpointPacer, clock: Clock, seconds: float) -> None:
    def checkpoint() -> None:
        clock.now += seconds

    pacer.write(checkpoint)


def test_a_due_checkpoint_waits_until_training_has_run_long_enough() -> None:
    clock = Clock()
    pacer = CheckpointPacer(0.05, clock=clock)
    assert pacer.due()  # the first is always written
    _write(pacer, clock, 2.0)  # a 2 s write at 5 %: the next one after 40 s of training
    clock.now += 39.9
    assert not pacer.due()
    clock.now += 0.1
    assert pacer.due()
    _write(pacer, clock, 1.0)  # a faster write shortens the wait to 20 s
    clock.now += 20.0
    assert pacer.due()
    assert pacer.summary() == {"written": 2, "skipped": 1, "seconds": 3.0}


def test_time_spent_writing_stays_within_the_share_whatever_the_interval() -> None:
    """Checkpoints due every 10 ms of training, each taking 150 ms: about 1 in 300 is
    written, and writing takes ~5 % of the time."""
    clock = Clock()
    pacer = CheckpointPacer(0.05, clock=clock)
    start = clock.now
    for _ in range(30_000):
        clock.now += 0.01  # the steps between two due checkpoints
        if pacer.due():
            _write(pacer, clock, 0.15)
    total = clock.now - start
    assert pacer.written + pacer.skipped == 30_000
    assert 0.04 <= pacer.seconds / total <= 0.05
    assert pacer.written == round(pacer.seconds / 0.15)


def test_without_a_limit_every_due_checkpoint_is_written() -> None:
    clock = Clock()
    pacer = CheckpointPacer(None, clock=clock)
    for _ in range(5):
        assert pacer.due()
        _write(pacer, clock, 10.0)
    assert pacer.summary() == {"written": 5, "skipped": 0, "seconds": 50.0}
