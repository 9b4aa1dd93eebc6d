"""Whether a training process's model state fits the memory it has, checked before launch.

A rank holds its model's weights, their gradients and AdamW's two moments: four copies of
every parameter (with lazy sparse embedding gradients the tables' gradients are batch-sized,
but the moments are table-sized all the same). Measured with ``bench/scale.py`` at 50M events:
BPR-MF's 1,310 MiB of weights (1.34M rows x 256 floats) peaked the trainer at 4,734 MiB
(3.6x); at 5M events its 136 MiB of weights peaked it at 1,094 MiB, most of it the process
itself (torch, pyarrow, the loader's batches). :data:`STATE_COPIES` x the weights plus
:data:`RUNTIME_MIB` bounds both from above (6,010 and 1,312 MiB). Without a check a model
too large for the machine is killed by the operating system part-way through an epoch; with it
the run stops before launch with an error naming the keys that change it.

The parameters are counted by building the model on torch's ``meta`` device (shapes only, no
memory), so every model family is sized by its own constructor.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from recpipe.config import ConfigError, TrainConfig
from recpipe.devices import pick_device
from recpipe.models.base import ModelContext
from recpipe.train.spec import TrainSpec

log = logging.getLogger(__name__)

STATE_COPIES = 4  # weights, gradients, AdamW's first and second moments
RUNTIME_MIB = 768  # the interpreter, torch, pyarrow, the loader's prefetched batches
MEMORY_KEY = "train.memory_mib"
MEMINFO = Path("/proc/meminfo")


class TrainerMemoryError(ConfigError):
    """A training process's model state cannot fit the memory it has."""


@dataclass(frozen=True)
class ProcessMemory:
    """MiB one training process may use, and where the figure comes from."""

    mib: int
    source: str


def state_bytes(name: str, model_config: Mapping[str, Any], context: ModelContext) -> int:
    """Bytes of model ``name``'s parameters and buffers, counted without allocating them."""
    from recpipe.models import model_class

    cls = model_class(name)
    with torch.device("meta"):
        model = cls(cls.config_class.model_validate(dict(model_config)), context)
    tensors = [*model.parameters(), *model.buffers()]
    return sum(tensor.numel() * tensor.element_size() for tensor in tensors)


def needed_mib(weights_bytes: int) -> int:
    """MiB a rank needs for a model of ``weights_bytes``: its state copies and the runtime."""
    return -(-STATE_COPIES * weights_bytes // 2**20) + RUNTIME_MIB


def available_mib(meminfo: Path = MEMINFO) -> int | None:
    """This machine's ``MemAvailable`` in MiB (None where the kernel does not say)."""
    try:
        text = meminfo.read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) // 1024
    return None


def ranks_run_here(settings: TrainConfig) -> bool:
    """Whether the launcher starts its ranks on this machine (so its memory is theirs)."""
    if settings.launcher == "local":
        return True
    if settings.launcher == "torchrun":
        return True  # --nproc-per-node=processes on this node, whatever the other nodes run
    if settings.launcher == "spark":
        return settings.spark_local_mode
    return settings.horovod_hosts is None  # horovodrun on localhost


def process_memory(settings: TrainConfig, meminfo: Path = MEMINFO) -> ProcessMemory | None:
    """The memory one rank has: ``train.memory_mib`` when set, else this machine's available
    memory shared by the ranks it runs; None when the ranks run elsewhere and nothing is set."""
    if settings.memory_mib is not None:
        return ProcessMemory(settings.memory_mib, f"{MEMORY_KEY}={settings.memory_mib}")
    if not ranks_run_here(settings):
        return None
    available = available_mib(meminfo)
    if available is None:
        return None
    processes = settings.processes
    return ProcessMemory(
        available // processes,
        f"{available:,} MiB available on this machine (MemAvailable) over {processes} "
        f"process(es); set {MEMORY_KEY} where ranks run elsewhere",
    )


def on_gpu(settings: TrainConfig) -> bool:
    """Whether the ranks keep the model on a GPU (whose memory this check does not size)."""
    # ``cuda`` without a GPU is the ranks' error to give, not this check's.
    return settings.device == "cuda" or pick_device(settings.device, "train.device").type == "cuda"


def check_trainer_memory(spec: TrainSpec, settings: TrainConfig) -> dict[str, object] | None:
    """Refuse, naming the keys, a run whose ranks cannot hold the model's state; returns the
    estimate recorded with the run (None where nothing could be checked)."""
    if on_gpu(settings):
        return None
    memory = process_memory(settings)
    try:
        weights = state_bytes(spec.model, spec.model_config, spec.model_context())
    except Exception as exc:  # a constructor that needs real data cannot be sized: train anyway
        log.warning("train %s: model state not sized before launch (%s)", spec.model, exc)
        return None
    needed = needed_mib(weights)
    estimate: dict[str, object] = {"weights_bytes": weights, "needed_mib": needed}
    if memory is None:
        return estimate
    estimate["available_mib"] = memory.mib
    if needed > memory.mib:
        raise TrainerMemoryError(
            f"train {spec.model}: a process needs ~{needed:,} MiB ({weights / 2**20:,.1f} MiB "
            f"of weights x {STATE_COPIES}: weights, gradients and AdamW's two moments, plus "
            f"{RUNTIME_MIB} MiB) but has ~{memory.mib:,} MiB ({memory.source}): lower "
            f"models.{spec.model}.dim or train.processes, or train on a larger machine"
        )
    log.info(
        "train %s: ~%s MiB a process for %.0f MiB of weights (has ~%s MiB)",
        spec.model, f"{needed:,}", weights / 2**20, f"{memory.mib:,}",
    )  # fmt: skip
    return estimate
