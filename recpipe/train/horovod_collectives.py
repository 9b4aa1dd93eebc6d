"""Horovod's collectives for the training loop (``train.launcher=horovod``, under horovodrun).

Gradients are averaged by ``hvd.DistributedOptimizer``; rank 0's parameters are broadcast
before the first step, and after a resume its optimizer state too. Horovod is imported here
only, so the main environment never needs it.
"""

from __future__ import annotations

from typing import Any

import torch

from recpipe.devices import pick_device
from recpipe.train.distributed import Collectives, DistContext
from recpipe.train.optim import clip_gradients


def _horovod() -> Any:
    try:
        import horovod.torch as hvd
    except ImportError as error:
        raise RuntimeError(
            "train.launcher=horovod: horovod.torch is not importable in this Python "
            f"({error}); run the ranks from the Horovod environment (make legacy-venv, "
            "train.horovod_env)"
        ) from error
    return hvd


class HorovodCollectives(Collectives):
    """Horovod over Gloo (CPU) or NCCL (GPU, when Horovod was built with it)."""

    name = "horovod"

    def setup(self, requested_device: str) -> DistContext:
        """``hvd.init()`` and this rank's device (GPU ``local_rank`` when CUDA is used)."""
        self.hvd = _horovod()
        self.hvd.init()
        device = pick_device(requested_device, "train.device", self.hvd.local_rank())
        self.context = DistContext(self.hvd.rank(), self.hvd.size(), self.hvd.local_rank(), device)
        return self.context

    def teardown(self, synchronise: bool = True) -> None:
        """Meet at a barrier (unless failing), then shut Horovod down."""
        if synchronise and self.context.distributed:
            self.hvd.barrier()
        self.hvd.shutdown()

    def prepare(
        self, model: torch.nn.Module, optimizer: torch.optim.Optimizer
    ) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
        """Rank 0's weights everywhere, and an optimizer that averages gradients."""
        hvd = self.hvd
        hvd.broadcast_parameters(model.state_dict(), root_rank=0)
        # A fresh optimizer has no state to broadcast (and Horovod would create it with a zero
        # gradient step, which AdamW's weight decay turns into a real update): every rank built
        # the same one. After a resume, after_resume broadcasts the loaded state.
        wrapped = hvd.DistributedOptimizer(
            optimizer, named_parameters=model.named_parameters(), op=hvd.Average
        )
        return model, wrapped

    def after_resume(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> None:
        """Rank 0's loaded weights and optimizer state on every rank."""
        self.hvd.broadcast_parameters(model.state_dict(), root_rank=0)
        self.hvd.broadcast_optimizer_state(optimizer, root_rank=0)

    def step(
        self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, grad_clip: float | None
    ) -> None:
        """Wait for the gradient allreduce, clip the averaged gradients, step."""
        if grad_clip:
            # Clipping must see averaged gradients: finish the allreduce first, then step
            # without a second synchronisation.
            optimizer.synchronize()  # type: ignore[attr-defined]
            clip_gradients(model.parameters(), grad_clip)
            with optimizer.skip_synchronize():  # type: ignore[attr-defined]
                optimizer.step()
        else:
            optimizer.step()

    def broadcast_floats(self, values: list[float]) -> list[float]:
        """Rank 0's ``values`` on every rank."""
        if not self.context.distributed:
            return values
        tensor = torch.tensor(values, dtype=torch.float64)
        return self.hvd.broadcast(tensor, root_rank=0, name="recpipe.broadcast").tolist()

    def sum_floats(self, values: list[float]) -> list[float]:
        """Element-wise sum of ``values`` over ranks."""
        if not self.context.distributed:
            return values
        tensor = torch.tensor(values, dtype=torch.float64)
        return self.hvd.allreduce(tensor, op=self.hvd.Sum, name="recpipe.sum").tolist()

    def max_int(self, value: int) -> int:
        """The largest ``value`` over ranks."""
        if not self.context.distributed:
            return value
        return max(self.hvd.allgather_object(value))

    def gather_strings(self, value: str) -> list[str]:
        """Every rank's ``value``, in rank order, on every rank."""
        if not self.context.distributed:
            return [value]
        return [str(v) for v in self.hvd.allgather_object(value)]
