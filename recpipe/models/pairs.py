"""Scoring every item with a model whose score needs a network per (user, item) pair."""

from __future__ import annotations

import dataclasses
from abc import abstractmethod
from collections.abc import Callable
from typing import Any, ClassVar, TypeVar

import torch
import torch.nn.functional as F

from recpipe.data.batch import Batch, SampleKind
from recpipe.models.base import ModelConfig, RecModel
from recpipe.models.fields import FactorisationFields

SideT = TypeVar("SideT")


def score_pairs_in_chunks(
    users: torch.Tensor,
    n_cols: int,
    chunk_pairs: int,
    user_side: Callable[[torch.Tensor], SideT],
    item_side: SideT,
    index: Callable[[SideT, Any], SideT],
    combine: Callable[[SideT, SideT], torch.Tensor],
) -> torch.Tensor:
    """[len(users), n_cols] scores, ``combine(user block, item block)`` over about
    ``chunk_pairs`` pairs at a time, so memory stays bounded whatever the catalogue size.

    ``user_side(users)`` and ``item_side`` (of items 0..n_cols-1) are each side's precomputed
    share; ``index(side, key)`` slices one; user blocks get a broadcast dimension for items.
    """
    cols = min(n_cols, chunk_pairs)
    rows = max(1, chunk_pairs // cols)
    out_rows = []
    for r0 in range(0, len(users), rows):
        user = index(user_side(users[r0 : r0 + rows]), (slice(None), None))
        chunks = [
            combine(user, index(item_side, slice(c0, c0 + cols))) for c0 in range(0, n_cols, cols)
        ]
        out_rows.append(torch.cat(chunks, dim=1))
    return torch.cat(out_rows, dim=0)


class PointwisePairModel(RecModel):
    """A model whose logit of a (user, item) pair combines a user side and an item side,
    computed once each: trained pointwise (log loss), scored over every item in chunks.

    Subclasses give :meth:`user_side`, :meth:`item_side`, :meth:`combine`,
    :meth:`index_side` and :meth:`chunk_pairs`.
    """

    sample_kind: ClassVar[SampleKind] = "pointwise"

    @abstractmethod
    def user_side(self, users: torch.Tensor, context: torch.Tensor | None = None) -> Any:
        """The users' share of every pair's logit (``context``: the samples' own event
        context, for models that read it; None: each user's last)."""

    @abstractmethod
    def item_side(self, items: torch.Tensor) -> Any:
        """The items' share of every pair's logit."""

    @abstractmethod
    def combine(self, user: Any, item: Any) -> torch.Tensor:
        """Logits of every (user, item) pair the two sides broadcast to."""

    @staticmethod
    @abstractmethod
    def index_side(side: Any, key: Any) -> Any:
        """``side`` with every tensor indexed by ``key``."""

    @abstractmethod
    def chunk_pairs(self) -> int:
        """(user, item) pairs per :meth:`combine` call when scoring every item."""

    def loss(self, batch: Batch) -> torch.Tensor:
        """Binary cross entropy with logits against ``labels`` (computed in float32)."""
        users, items = batch.require("users"), batch.require("items")
        logits = self.combine(self.user_side(users, batch.context), self.item_side(items))
        return F.binary_cross_entropy_with_logits(logits.float(), batch.require("labels").float())

    def score_all(self, batch: Batch) -> torch.Tensor:
        """Logits for every (user, item), [B, n_items + 1], :meth:`chunk_pairs` at a time."""
        users = batch.require("users")
        items = self.item_side(torch.arange(self.n_items + 1, device=users.device))
        return score_pairs_in_chunks(
            users, self.n_items + 1, self.chunk_pairs(), self.user_side, items, self.index_side,
            self.combine,
        )  # fmt: skip


class FactorisationModel(PointwisePairModel):
    """A pair model over :class:`~recpipe.models.fields.FactorisationFields` (``self.fields``)
    whose sides are dataclasses of tensors, chunked by ``config.score_chunk_pairs``."""

    fields: FactorisationFields

    @property
    def scores_untrained_items(self) -> bool:
        """With item features: an untrained item is scored from its features (its id field
        reads as missing)."""
        return self.fields.scores_untrained_items

    @property
    def reads_context(self) -> bool:
        """With features.context declared: the samples carry it."""
        return self.fields.reads_context

    @property
    def scores_untrained_users(self) -> bool:
        """With user features: an untrained user is scored from them (its id rows are zero,
        see RecModel.forget_untrained_users)."""
        return self.fields.scores_untrained_users

    @classmethod
    def user_table_names(cls, config: ModelConfig) -> tuple[str, ...]:
        """The user id's embedding and first-order weight."""
        return tuple(f"fields.{name}" for name in FactorisationFields.USER_TABLES)

    @staticmethod
    def index_side(side: Any, key: Any) -> Any:
        """The side dataclass with every tensor indexed by ``key``."""
        return dataclasses.replace(
            side, **{f.name: getattr(side, f.name)[key] for f in dataclasses.fields(side)}
        )

    def chunk_pairs(self) -> int:
        """``config.score_chunk_pairs``."""
        return int(self.config.score_chunk_pairs)  # type: ignore[attr-defined]
