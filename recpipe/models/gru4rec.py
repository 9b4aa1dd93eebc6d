"""GRU4Rec: a GRU over the item sequence predicting the next item.

Hidasi, Karatzoglou, Baltrunas, Tikk, "Session-based Recommendations with Recurrent Neural
Networks", ICLR 2016; Hidasi, Karatzoglou, "Recurrent Neural Networks with Top-k Gains for
Session-based Recommendations", CIKM 2018.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar

import torch
from torch import nn

from recpipe.model_settings import Gru4RecConfig
from recpipe.models.base import ModelConfig, ModelContext, register
from recpipe.models.next_item import NextItemModel


def roll_rows(x: torch.Tensor, shifts: torch.Tensor) -> torch.Tensor:
    """Rotate each row of ``x`` [B, L, ...] left by ``shifts[b]`` positions (along dim 1)."""
    length = x.shape[1]
    index = (torch.arange(length, device=x.device)[None, :] + shifts[:, None]) % length
    index = index.view(*index.shape, *([1] * (x.dim() - 2))).expand_as(x)
    return torch.gather(x, 1, index)


def left_padded_gru(
    gru: nn.GRU, embed: Callable[[torch.Tensor], torch.Tensor], history: torch.Tensor
) -> torch.Tensor:
    """GRU outputs [B, L, hidden] aligned with the left-padded ``history``.

    Each row is rotated so its items start at position 0 (right padding) before the GRU, which
    is causal: outputs at real positions never see the trailing padding and do not depend on
    how much of it there is (no packing needed); they are rotated back to line up with
    ``history``. ``embed`` maps item ids to the GRU's inputs.
    """
    pad = history.shape[1] - (history != 0).sum(1)
    x = embed(roll_rows(history, pad))
    # The recurrence runs in float32: cuDNN's reduced-precision RNN paths vary by version,
    # and the GRU is a small share of the cost next to the output projection.
    with torch.autocast(device_type=history.device.type, enabled=False):
        out, _ = gru(x.float())
    return roll_rows(out, -pad)


@register("gru4rec")
class Gru4Rec(NextItemModel):
    """Item embedding -> GRU -> linear to ``dim`` -> dot product with the (tied) item table.

    Papers: Hidasi et al., ICLR 2016 and Hidasi & Karatzoglou, CIKM 2018. Histories arrive
    left-padded and run through the GRU right-padded (:func:`left_padded_gru`).
    """

    config_class: ClassVar[type[ModelConfig]] = Gru4RecConfig
    paper: ClassVar[str] = (
        "Hidasi, Karatzoglou, Baltrunas, Tikk. Session-based Recommendations with Recurrent "
        "Neural Networks. ICLR 2016; Hidasi, Karatzoglou. Recurrent Neural Networks with Top-k "
        "Gains for Session-based Recommendations. CIKM 2018."
    )

    def __init__(self, config: Gru4RecConfig, context: ModelContext) -> None:
        super().__init__(config, context)
        self.config: Gru4RecConfig = config
        self.item_emb = nn.Embedding(context.n_items + 1, config.dim, padding_idx=0)
        nn.init.normal_(self.item_emb.weight, std=config.dim**-0.5)
        with torch.no_grad():  # padding row stays zero (it gets no gradient)
            self.item_emb.weight[0].zero_()
        self.dropout = nn.Dropout(config.dropout)
        self.gru = nn.GRU(
            config.dim,
            config.hidden_size,
            num_layers=config.num_layers,
            batch_first=True,
            dropout=config.dropout if config.num_layers > 1 else 0.0,
        )
        self.proj = nn.Linear(config.hidden_size, config.dim)
        self.register_buffer("item_counts", context.counts_tensor())

    def sequence_output(self, history: torch.Tensor) -> torch.Tensor:
        """Per-position output vectors [B, L, dim] aligned with ``history`` (0 at padding)."""
        out = left_padded_gru(self.gru, lambda h: self.dropout(self.item_emb(h)), history)
        return self.proj(self.dropout(out)) * (history != 0)[..., None]
