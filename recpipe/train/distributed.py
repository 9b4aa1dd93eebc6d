"""Process-group set-up from the environment torchrun / TorchDistributor provide."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistContext:
    """This process's place in the job."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        """Rank 0 writes checkpoints, logs and results."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        """Whether a process group is in use."""
        return self.world_size > 1


def _pick_device(requested: str, local_rank: int) -> torch.device:
    if requested == "cuda" or (requested == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise RuntimeError("train.device=cuda but no CUDA device is visible")
        torch.cuda.set_device(local_rank % torch.cuda.device_count())
        return torch.device("cuda", local_rank % torch.cuda.device_count())
    return torch.device("cpu")


def setup(requested_device: str, environ: dict[str, str] | None = None) -> DistContext:
    """Join the process group when launched with WORLD_SIZE > 1 (NCCL on GPU, gloo on CPU)."""
    env = dict(os.environ if environ is None else environ)
    world = int(env.get("WORLD_SIZE", "1"))
    rank = int(env.get("RANK", "0"))
    local_rank = int(env.get("LOCAL_RANK", "0"))
    device = _pick_device(requested_device, local_rank)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return DistContext(rank, world, local_rank, device)


def teardown(context: DistContext, synchronise: bool = True) -> None:
    """Leave the process group if this process joined one.

    With ``synchronise`` every rank first waits at a barrier, so no rank closes its
    connections while another still has collectives in flight (gloo aborts the peer then).
    A failing rank skips it: its peers are stopped by the launcher instead.
    """
    if context.distributed and dist.is_initialized():
        if synchronise:
            dist.barrier()
        dist.destroy_process_group()


def broadcast_floats(values: list[float], context: DistContext) -> list[float]:
    """Rank 0's ``values`` on every rank."""
    if not context.distributed:
        return values
    tensor = torch.tensor(values, dtype=torch.float64, device=context.device)
    dist.broadcast(tensor, src=0)
    return tensor.tolist()


def mean_across_ranks(total: float, count: float, context: DistContext) -> float:
    """Global mean of a per-rank sum and count."""
    if not context.distributed:
        return total / max(count, 1.0)
    tensor = torch.tensor([total, count], dtype=torch.float64, device=context.device)
    dist.all_reduce(tensor)
    return float(tensor[0] / max(float(tensor[1]), 1.0))
