"""Run by test_horovod_collectives under ``horovodrun -np 2``: each rank exercises
HorovodCollectives and writes what it saw to ``<out>/rank-<r>.json``."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from recpipe.train.horovod_collectives import HorovodCollectives


def main(out: Path) -> None:
    comm = HorovodCollectives()
    ctx = comm.setup("cpu")
    rank = ctx.rank
    seen: dict[str, object] = {"rank": rank, "world_size": ctx.world_size}
    seen["broadcast"] = comm.broadcast_floats([10.0 + rank, -rank])
    seen["sum"] = comm.sum_floats([1.0 + rank, 0.5])
    seen["max"] = comm.max_int(3 + 4 * rank)
    seen["gathered"] = comm.gather_strings(f"rank{rank}")

    # Different starting weights per rank: prepare() must leave rank 0's everywhere.
    for clip in (None, 1.0):
        torch.manual_seed(rank)
        model = torch.nn.Linear(4, 1, bias=False)
        seen[f"own_{clip}"] = model.weight.detach().tolist()
        model, optimizer = comm.prepare(model, torch.optim.SGD(model.parameters(), lr=1.0))
        start = model.weight.detach().clone()
        optimizer.zero_grad()
        # d(loss)/dw = (rank + 1) * ones: the average over two ranks is 1.5 * ones.
        (model(torch.full((1, 4), float(rank + 1))).sum()).backward()
        comm.step(model, optimizer, clip)
        seen[f"start_{clip}"] = start.tolist()
        seen[f"moved_{clip}"] = (model.weight.detach() - start).tolist()

    # after_resume: rank 0's optimizer state (Adam moments) replaces each rank's own.
    model = torch.nn.Linear(2, 1, bias=False)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.1)
    model.weight.grad = torch.full_like(model.weight, float(rank + 1))
    optimizer.step()
    comm.after_resume(model, optimizer)
    state = next(iter(optimizer.state_dict()["state"].values()))
    seen["exp_avg"] = state["exp_avg"].tolist()
    seen["weight_after_resume"] = model.weight.detach().tolist()
    (out / f"rank-{rank}.json").write_text(json.dumps(seen))
    comm.teardown()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
