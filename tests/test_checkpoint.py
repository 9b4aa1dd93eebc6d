"""Checkpoint files: read back as data only, streamed from their location."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from recpipe.storage import Location
from recpipe.train.checkpoint import CheckpointError, load_state, save_atomic


class _Planted:
    """A pickled object that would create a file if it were ever unpickled."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (os.mkdir, (str(self.marker),))


def test_a_checkpoint_round_trips_from_its_location(tmp_path: Path) -> None:
    state = {"format": 1, "state_dict": {"w": torch.arange(12.0).reshape(3, 4)}, "step": 7}
    save_atomic(state, Location(tmp_path / "model.pt"))

    loaded = load_state(Location(tmp_path / "model.pt"))

    assert loaded["step"] == 7 and torch.equal(loaded["state_dict"]["w"], state["state_dict"]["w"])
    assert torch.equal(
        load_state(tmp_path / "model.pt")["state_dict"]["w"], loaded["state_dict"]["w"]
    )
    with pytest.raises(FileNotFoundError):
        load_state(Location(tmp_path / "missing.pt"))


def test_a_planted_object_is_refused_and_never_runs(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    torch.save({"format": 1, "payload": _Planted(marker)}, tmp_path / "model.pt")

    with pytest.raises(CheckpointError, match=r"model\.pt is not a plain checkpoint"):
        load_state(Location(tmp_path / "model.pt"))

    assert not marker.exists()


# The process's own peak (VmHWM): ru_maxrss would also count the parent's pages that a child
# inherits until its exec.
_LOAD_AND_MEASURE = """
import sys
from recpipe.train.checkpoint import load_state
def peak_kib():
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmHWM:"))
before = peak_kib()
state = load_state(sys.argv[1])
print((peak_kib() - before) * 1024, state["state_dict"]["w"].numel())
"""


def test_loading_holds_the_tensors_not_also_the_files_bytes(tmp_path: Path) -> None:
    """A fresh process's peak memory grows by about the checkpoint's size while it loads one
    (reading the whole file first grew it by twice that)."""
    floats = 32 * 2**20  # 128 MiB of float32
    path = tmp_path / "big.pt"
    save_atomic({"format": 1, "state_dict": {"w": torch.ones(floats)}}, Location(path))
    size = path.stat().st_size

    out = subprocess.run(
        [sys.executable, "-c", _LOAD_AND_MEASURE, str(path)],
        capture_output=True, text=True, check=True,
    )  # fmt: skip

    grown, numel = (int(v) for v in out.stdout.split())
    assert numel == floats
    assert size <= grown < 1.5 * size, (grown, size)
