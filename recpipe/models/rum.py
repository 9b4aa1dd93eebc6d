"""RUM: a user memory of recent items, read by attention against the candidate item.

Chen, Xu, Zhang, Tang, Cao, Qin, Zha, "Sequential Recommendation with User Memory Networks",
WSDM 2018 (the item-level RUM).
"""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from recpipe.data.batch import Batch, SampleKind
from recpipe.model_settings import RumConfig
from recpipe.models.base import ModelConfig, ModelContext, RecModel, register
from recpipe.models.losses import causal_targets


def memory_slots(history: torch.Tensor, size: int) -> torch.Tensor:
    """[B, L, size] the items in memory at each position: that position's item and the
    ``size - 1`` before it (0 = empty slot), oldest first."""
    padded = F.pad(history, (size - 1, 0))
    return padded.unfold(1, size, 1)


@register("rum")
class Rum(RecModel):
    """``score(u, i) = q_i . (p_u + w * m_u(i))`` with the memory read
    ``m_u(i) = sum_k softmax_k(q_i . x_k) x_k`` over the embeddings ``x_k`` of the user's last
    ``memory_size`` items (the memory is written first-in first-out as the history grows).

    Paper: Chen et al., "Sequential Recommendation with User Memory Networks", WSDM 2018
    (item-level RUM; ``w`` is the paper's fusion weight ``alpha``). Every real position trains:
    its memory holds the items up to it and the next item is ranked above ``negatives``
    uniformly drawn items by the BPR loss, with L2 ``reg`` on the rows used. Scores depend on
    the candidate through the read, so the model is not a dot product: :meth:`score_all`
    computes ``q_i . p_u + w * sum_k softmax_k(s_ik) s_ik`` with ``s_ik = q_i . x_k``, never a
    [users, items, dim] tensor, in chunks of ``score_item_chunk`` items.
    """

    config_class: ClassVar[type[ModelConfig]] = RumConfig
    sample_kind: ClassVar[SampleKind] = "sequence"
    paper: ClassVar[str] = (
        "Chen, Xu, Zhang, Tang, Cao, Qin, Zha. Sequential Recommendation with User Memory "
        "Networks. WSDM 2018."
    )

    def __init__(self, config: RumConfig, context: ModelContext) -> None:
        super().__init__(config, context)
        self.config: RumConfig = config
        self.user_emb = nn.Embedding(context.n_users, config.dim)
        self.item_emb = nn.Embedding(context.n_items + 1, config.dim, padding_idx=0)
        nn.init.normal_(self.user_emb.weight, std=config.init_std)
        nn.init.normal_(self.item_emb.weight, std=config.init_std)
        with torch.no_grad():
            self.item_emb.weight[0].zero_()

    @property
    def uses_user_ids(self) -> bool:
        """Scores read the user's own vector ``p_u`` besides the memory."""
        return True

    @classmethod
    def user_table_names(cls, config: ModelConfig) -> tuple[str, ...]:
        """The user vectors ``p_u``."""
        return ("user_emb",)

    def candidate_scores(
        self, users: torch.Tensor, slots: torch.Tensor, candidates: torch.Tensor
    ) -> torch.Tensor:
        """[N, C] scores of ``candidates`` [N, C] (or [C], shared) for rows with ``users``
        [N] and memories ``slots`` [N, size]."""
        memory = self.item_emb(slots)  # [N, size, d]
        q = self.item_emb(candidates)
        if q.dim() == 2:
            q = q.expand(len(users), -1, -1)
        direct = (q * self.user_emb(users)[:, None, :]).sum(-1)
        s = torch.bmm(q, memory.transpose(1, 2)).float()  # [N, C, size]
        empty = (slots == 0)[:, None, :]
        weights = torch.softmax(s.masked_fill(empty, float("-inf")), dim=-1)
        # A row with an empty memory reads nothing (softmax of all -inf is NaN).
        read = torch.nan_to_num(weights * s, nan=0.0).sum(-1)
        return direct.float() + self.config.memory_weight * read

    def loss(self, batch: Batch) -> torch.Tensor:
        """BPR of the next item against uniform negatives at every real position, plus L2."""
        history = batch.require("history")
        targets, train = causal_targets(history, batch.require("items"))
        slots = memory_slots(history, self.config.memory_size)[train]  # [P, size]
        users = batch.users[:, None].expand_as(history)[train]
        positives = targets[train]
        negatives = torch.randint(
            1, self.n_items + 1, (len(positives), self.config.negatives), device=history.device
        )
        candidates = torch.cat([positives[:, None], negatives], dim=1)
        scores = self.candidate_scores(users, slots, candidates)
        valid = (negatives != positives[:, None]).float()
        margins = scores[:, :1] - scores[:, 1:]
        rank = -(F.logsigmoid(margins) * valid).sum() / valid.sum().clamp(min=1.0)
        l2 = self.user_emb(users).float().pow(2).sum(-1).mean()
        l2 = l2 + self.item_emb(candidates).float().pow(2).sum(-1).mean()
        return rank + self.config.reg * l2

    def score_all(self, batch: Batch) -> torch.Tensor:
        """Scores of every item with the memory of the whole history, [B, n_items + 1]."""
        history = batch.require("history")
        slots = memory_slots(history, self.config.memory_size)[:, -1]
        chunk = self.config.score_item_chunk
        items = torch.arange(self.n_items + 1, device=history.device)
        parts = [
            self.candidate_scores(batch.users, slots, items[start : start + chunk])
            for start in range(0, len(items), chunk)
        ]
        return torch.cat(parts, dim=1)
