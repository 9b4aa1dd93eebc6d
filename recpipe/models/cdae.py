"""CDAE: a denoising autoencoder of the user's item bag with a per-user input node.

Wu, DuBois, Zheng, Ester, "Collaborative Denoising Auto-Encoders for Top-N Recommender
Systems", WSDM 2016.
"""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from recpipe.data.batch import Batch, SampleKind
from recpipe.model_settings import CdaeConfig
from recpipe.models.bag import bag_input, bag_targets
from recpipe.models.base import ModelConfig, ModelContext, RecModel, register
from recpipe.models.layers import with_bias, with_ones

ACTIVATIONS = {"sigmoid": torch.sigmoid, "tanh": torch.tanh, "identity": lambda x: x}


@register("cdae")
class Cdae(RecModel):
    """``h = act(sum_{j in bag~} W_j + V_u + b)``, ``score(u, i) = W'_i . h + b'_i``; the bag
    ``~`` is corrupted by dropout (rate ``corruption``, kept items scaled by
    ``1 / (1 - corruption)``) while training; loss the logistic loss of the bag's items as
    positives and ``negatives`` uniformly drawn items per row as negatives.

    Paper: Wu et al., "Collaborative Denoising Auto-Encoders for Top-N Recommender Systems",
    WSDM 2016 (the user node ``V_u`` is what makes it collaborative). The bag is a bag sample:
    the user's last ``export.bag_max_len`` train items in, those plus the next item as positives.
    Scores are the pre-sigmoid output (the same ranking), a dot product ``[h, 1] . [W'_i, b'_i]``.
    """

    config_class: ClassVar[type[ModelConfig]] = CdaeConfig
    sample_kind: ClassVar[SampleKind] = "bag"
    paper: ClassVar[str] = (
        "Wu, DuBois, Zheng, Ester. Collaborative Denoising Auto-Encoders for Top-N Recommender "
        "Systems. WSDM 2016."
    )

    def __init__(self, config: CdaeConfig, context: ModelContext) -> None:
        super().__init__(config, context)
        self.config: CdaeConfig = config
        d = config.dim
        self.item_in = nn.Embedding(context.n_items + 1, d, padding_idx=0)
        self.user_node = nn.Embedding(context.n_users, d)
        self.hidden_bias = nn.Parameter(torch.zeros(d))
        self.item_out = nn.Embedding(context.n_items + 1, d, padding_idx=0)
        self.out_bias = nn.Embedding(context.n_items + 1, 1, padding_idx=0)
        for table in (self.item_in, self.user_node, self.item_out):
            nn.init.normal_(table.weight, std=config.init_std)
        nn.init.zeros_(self.out_bias.weight)
        with torch.no_grad():
            self.item_in.weight[0].zero_()
            self.item_out.weight[0].zero_()

    @property
    def uses_user_ids(self) -> bool:
        """Scores read the user's node ``V_u`` besides the bag."""
        return True

    @classmethod
    def user_table_names(cls, config: ModelConfig) -> tuple[str, ...]:
        """The user input nodes ``V_u``."""
        return ("user_node",)

    def hidden(self, users: torch.Tensor, history: torch.Tensor) -> torch.Tensor:
        """[B, dim] the hidden layer of the (corrupted, while training) bag and user node."""
        keep = 1.0 - self.config.corruption
        bag = bag_input(self.item_in, history, keep, self.training, normalize=False)
        act = ACTIVATIONS[self.config.hidden_activation]
        return act(bag + self.user_node(users) + self.hidden_bias)

    def loss(self, batch: Batch) -> torch.Tensor:
        """Mean logistic loss of the bag's items (history and target) and sampled negatives.

        Negatives are drawn uniformly from 1..n_items; one that is among the row's positives
        is left out, so a positive is never pushed down.
        """
        history = batch.require("history")
        positives = bag_targets(history, batch.require("items"))  # [B, T], 0 = none
        negatives = torch.randint(
            1, self.n_items + 1, (len(batch), self.config.negatives), device=history.device
        )
        clash = (negatives[:, :, None] == positives[:, None, :]).any(-1)
        h = self.hidden(batch.users, history)
        candidates = torch.cat([positives, negatives], dim=1)
        logits = (
            (h[:, None, :] * self.item_out(candidates)).sum(-1) + self.out_bias(candidates)[..., 0]
        ).float()
        labels = torch.cat([torch.ones_like(positives), torch.zeros_like(negatives)], 1).float()
        valid = torch.cat([positives != 0, ~clash], dim=1).float()
        losses = F.binary_cross_entropy_with_logits(logits, labels, reduction="none")
        return (losses * valid).sum() / valid.sum().clamp(min=1.0)

    def user_embeddings(self, batch: Batch) -> torch.Tensor:
        """``[h, 1]`` per row, [B, dim + 1]."""
        h = self.hidden(batch.users, batch.require("history"))
        return with_ones(h)

    def item_embeddings(self) -> torch.Tensor:
        """``[W'_i, b'_i]`` per item, [n_items + 1, dim + 1]."""
        return with_bias(self.item_out.weight, self.out_bias.weight)

    def score_all(self, batch: Batch) -> torch.Tensor:
        """The output layer's pre-sigmoid scores for every item, [B, n_items + 1]."""
        return self.user_embeddings(batch) @ self.item_embeddings().T
