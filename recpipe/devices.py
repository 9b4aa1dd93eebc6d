"""The one device choice for training ranks and scoring tasks: ``auto`` | ``cpu`` | ``cuda``."""

from __future__ import annotations

import torch


def pick_device(requested: str, key: str, local_rank: int | None = None) -> torch.device:
    """``auto`` -> CUDA when visible, else CPU; ``cuda`` without a GPU is an error naming
    ``key`` (the config key that asked for it).

    With ``local_rank`` (a training rank), the process takes GPU ``local_rank`` modulo the
    visible GPUs and makes it current, so one machine's ranks spread over its GPUs.
    """
    if requested == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"{key}=cuda but no CUDA device is visible")
    if requested not in ("cuda", "auto") or not torch.cuda.is_available():
        return torch.device("cpu")
    if local_rank is None:
        return torch.device("cuda")
    index = local_rank % torch.cuda.device_count()
    torch.cuda.set_device(index)
    return torch.device("cuda", index)
