"""The one batch type every loader yields and every model consumes."""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Literal

import torch

# What the export stage writes and a model trains on (see recpipe.schema for the columns).
# "bag" rows are "sequence" rows (history + target) over export.bag_max_len items, not max_len.
SampleKind = Literal["pairwise", "pointwise", "sequence", "bag"]
SAMPLE_KINDS: tuple[SampleKind, ...] = ("pairwise", "pointwise", "sequence", "bag")
HISTORY_KINDS: tuple[SampleKind, ...] = ("sequence", "bag")  # kinds whose rows carry a history


@dataclass
class Batch:
    """A batch of training or scoring rows as tensors; optional fields depend on the kind.

    ``history`` is left-padded with item 0 (most recent item last), so ``history[:, -1]`` is
    the latest item and positions holding 0 are padding.
    """

    users: torch.Tensor  # [B] int64 user_idx
    items: torch.Tensor | None = None  # [B] int64: positive (pairwise), labelled or target item
    labels: torch.Tensor | None = None  # [B] float32, pointwise only
    # [B] float32, pointwise, read for models that ask (RecModel.reads_values): the positive's
    # event value (a rating), NaN on sampled rows and where the event had none.
    values: torch.Tensor | None = None
    negatives: torch.Tensor | None = None  # [B, N] int64, pairwise only
    history: torch.Tensor | None = None  # [B, L] int64, sequence only
    history_ts: torch.Tensor | None = None  # [B, L] int64 epoch seconds, 0 at padding
    # [B, C] int64, read for models that ask (RecModel.reads_context): each sample's own event
    # context indexes, features.context order (0 missing). None when scoring: the model then
    # reads each user's last train event's context.
    context: torch.Tensor | None = None

    def __len__(self) -> int:
        return int(self.users.shape[0])

    def to(self, device: torch.device | str, non_blocking: bool = False) -> Batch:
        """The same batch with every tensor on ``device``."""
        moved = {
            f.name: value.to(device, non_blocking=non_blocking)
            for f in fields(self)
            if (value := getattr(self, f.name)) is not None
        }
        return replace(self, **moved)

    def pin_memory(self) -> Batch:
        """Pinned copy, used by DataLoader(pin_memory=True) for faster host-to-GPU copies."""
        pinned = {
            f.name: value.pin_memory()
            for f in fields(self)
            if (value := getattr(self, f.name)) is not None
        }
        return replace(self, **pinned)

    def require(self, name: str) -> torch.Tensor:
        """Field ``name``, or a clear error naming the sample kind that carries it."""
        value = getattr(self, name)
        if value is None:
            raise ValueError(f"batch has no '{name}': the model needs a different sample kind")
        return value
