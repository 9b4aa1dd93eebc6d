"""Collectives the training loop needs, behind one interface for each distributed runtime.

:class:`TorchCollectives` joins the process group torchrun / TorchDistributor describe in the
environment and wraps the model in DDP. :class:`recpipe.train.horovod_collectives.
HorovodCollectives` does the same with Horovod (``horovodrun``). The loop only calls these
methods, so every launcher runs the same training code.
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from recpipe.devices import pick_device
from recpipe.train.optim import clip_gradients


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
        """Whether more than one process trains."""
        return self.world_size > 1


class Collectives(ABC):
    """What the loop asks of a distributed runtime; ``setup`` sets ``context`` first."""

    name: str
    context: DistContext

    @abstractmethod
    def setup(self, requested_device: str) -> DistContext:
        """Join the job (or run alone) and pick this rank's device."""

    @abstractmethod
    def teardown(self, synchronise: bool = True) -> None:
        """Leave the job; ``synchronise`` waits for every rank first (skipped on failure)."""

    @abstractmethod
    def prepare(
        self, model: torch.nn.Module, optimizer: torch.optim.Optimizer
    ) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
        """The module to call forward on and the optimizer to step, both averaging gradients."""

    @abstractmethod
    def after_resume(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> None:
        """Make every rank hold rank 0's weights and optimizer state after a checkpoint load."""

    @abstractmethod
    def step(
        self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, grad_clip: float | None
    ) -> None:
        """Clip the averaged gradients to ``grad_clip`` (None: no clipping) and step."""

    @abstractmethod
    def broadcast_floats(self, values: list[float]) -> list[float]:
        """Rank 0's ``values`` on every rank."""

    @abstractmethod
    def sum_floats(self, values: list[float]) -> list[float]:
        """Element-wise sum of ``values`` over ranks."""

    @abstractmethod
    def max_int(self, value: int) -> int:
        """The largest ``value`` over ranks."""

    @abstractmethod
    def gather_strings(self, value: str) -> list[str]:
        """Every rank's ``value``, in rank order, on every rank."""

    def mean(self, total: float, count: float) -> float:
        """Global mean of a per-rank sum and count."""
        total, count = self.sum_floats([total, count])
        return total / max(count, 1.0)


class TorchCollectives(Collectives):
    """torch.distributed: NCCL on GPU, gloo on CPU; gradients averaged by DDP."""

    name = "torch.distributed"

    def setup(self, requested_device: str) -> DistContext:
        """Join the process group when launched with WORLD_SIZE > 1."""
        world = int(os.environ.get("WORLD_SIZE", "1"))
        rank = int(os.environ.get("RANK", "0"))
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        device = pick_device(requested_device, "train.device", local_rank)
        if world > 1 and not dist.is_initialized():
            dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
        self.context = DistContext(rank, world, local_rank, device)
        return self.context

    def teardown(self, synchronise: bool = True) -> None:
        """Leave the process group if this process joined one.

        With ``synchronise`` every rank first waits at a barrier, so no rank closes its
        connections while another still has collectives in flight (gloo aborts the peer then).
        A failing rank skips it: its peers are stopped by the launcher instead.
        """
        if self.context.distributed and dist.is_initialized():
            if synchronise:
                dist.barrier()
            dist.destroy_process_group()

    def prepare(
        self, model: torch.nn.Module, optimizer: torch.optim.Optimizer
    ) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
        """The module to call forward on (DDP when distributed) and the optimizer to step."""
        if not self.context.distributed:
            return model, optimizer
        device = self.context.device
        device_ids = [device.index] if device.type == "cuda" else None
        # Every buffer is a constant table (features, graph, item counts) or a step counter each
        # rank advances alike: re-broadcasting them from rank 0 before each step would only
        # cost their size per step.
        ddp = DistributedDataParallel(model, device_ids=device_ids, broadcast_buffers=False)
        return ddp, optimizer

    def after_resume(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> None:
        """Nothing to do: every rank loaded the same checkpoint file."""

    def step(
        self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, grad_clip: float | None
    ) -> None:
        """Clip the (already averaged) gradients and step."""
        if grad_clip:
            clip_gradients(model.parameters(), grad_clip)
        optimizer.step()

    def _tensor(self, values: list[float]) -> torch.Tensor:
        return torch.tensor(values, dtype=torch.float64, device=self.context.device)

    def broadcast_floats(self, values: list[float]) -> list[float]:
        """Rank 0's ``values`` on every rank."""
        if not self.context.distributed:
            return values
        tensor = self._tensor(values)
        dist.broadcast(tensor, src=0)
        return tensor.tolist()

    def sum_floats(self, values: list[float]) -> list[float]:
        """Element-wise sum of ``values`` over ranks."""
        if not self.context.distributed:
            return values
        tensor = self._tensor(values)
        dist.all_reduce(tensor)
        return tensor.tolist()

    def max_int(self, value: int) -> int:
        """The largest ``value`` over ranks."""
        if not self.context.distributed:
            return value
        tensor = self._tensor([float(value)])
        dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
        return int(tensor.item())

    def gather_strings(self, value: str) -> list[str]:
        """Every rank's ``value``, in rank order, on every rank."""
        if not self.context.distributed:
            return [value]
        gathered: list[object] = [None] * self.context.world_size
        dist.all_gather_object(gathered, value)
        return [str(v) for v in gathered]


def collectives_for(launcher: str) -> Collectives:
    """The collectives ``train.launcher`` starts its ranks with."""
    if launcher == "horovod":
        from recpipe.train.horovod_collectives import HorovodCollectives

        return HorovodCollectives()
    return TorchCollectives()
