"""HorovodCollectives on two real Horovod ranks (horovodrun, Gloo)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

JOB = Path(__file__).resolve().parent / "horovod_collectives_job.py"


def test_collectives_average_clip_and_broadcast_across_two_ranks(tmp_path) -> None:
    bin_dir = Path(sys.executable).parent
    command = [str(bin_dir / "horovodrun"), "-np", "2", "-H", "localhost:2", "--gloo",
               sys.executable, str(JOB), str(tmp_path)]  # fmt: skip
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank-{r}.json").read_text()) for r in range(2)]

    for rank, seen in enumerate(ranks):
        assert seen["rank"] == rank and seen["world_size"] == 2
        assert seen["broadcast"] == [10.0, 0.0]  # rank 0's values
        assert seen["sum"] == [1.0 + 2.0, 1.0]
        assert seen["max"] == 7
        assert seen["gathered"] == ["rank0", "rank1"]
        # Both ranks start from rank 0's weights and move by the averaged gradient 1.5 * ones
        # (lr 1), or by that gradient clipped to norm 1 (|1.5 * ones(4)| = 3): 0.5 each.
        for clip, step in ((None, 1.5), (1.0, 0.5)):
            assert seen[f"start_{clip}"] == ranks[0][f"start_{clip}"]
            assert seen[f"moved_{clip}"] == [[pytest.approx(-step, rel=1e-6)] * 4]
        # Adam's first moment after one step is 0.1 * grad; rank 0's grad was 1.
        assert seen["exp_avg"] == [[pytest.approx(0.1)] * 2]
        assert seen["weight_after_resume"] == ranks[0]["weight_after_resume"]
    assert ranks[0]["own_None"] != ranks[1]["own_None"]  # the broadcast had work to do
