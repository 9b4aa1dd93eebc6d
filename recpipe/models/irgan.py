"""IRGAN: a generator of items for a user and a discriminator of true from generated items.

Wang, Yu, Zhang, Gong, Xu, Wang, Zhang, Zhang, "IRGAN: A Minimax Game for Unifying Generative
and Discriminative Information Retrieval Models", SIGIR 2017.
"""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from recpipe.data.batch import Batch, SampleKind
from recpipe.model_settings import IrganConfig
from recpipe.models.base import ModelConfig, ModelContext, RecModel, register
from recpipe.models.layers import with_bias, with_ones


class FactorPlayer(nn.Module):
    """``s(u, i) = p_u . q_i + b_i`` over every item (both players have this form)."""

    def __init__(self, n_users: int, n_items: int, dim: int, init_std: float) -> None:
        super().__init__()
        self.user = nn.Embedding(n_users, dim)
        self.item = nn.Embedding(n_items + 1, dim, padding_idx=0)
        self.bias = nn.Embedding(n_items + 1, 1, padding_idx=0)
        nn.init.normal_(self.user.weight, std=init_std)
        nn.init.normal_(self.item.weight, std=init_std)
        nn.init.zeros_(self.bias.weight)
        with torch.no_grad():
            self.item.weight[0].zero_()

    def scores(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """[B, N] scores of ``items`` [B, N] for ``users`` [B]."""
        u = self.user(users)[:, None, :]
        return ((u * self.item(items)).sum(-1) + self.bias(items)[..., 0]).float()

    def all_scores(self, users: torch.Tensor) -> torch.Tensor:
        """[B, n_items + 1] scores of every item (column 0 is padding)."""
        return self.user(users) @ self.item.weight.T + self.bias.weight[:, 0]

    def l2(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """Per-row squared norm of the rows' own parameters."""
        items_l2 = self.item(items).float().pow(2).sum(-1) + self.bias(items)[..., 0].float() ** 2
        return self.user(users).float().pow(2).sum(-1) + items_l2.sum(-1)


@register("irgan")
class Irgan(RecModel):
    """Generator ``p_G(i | u) = softmax_i(g(u, i) / temperature)`` and discriminator
    ``D(u, i) = sigmoid(d(u, i))``, each a biased matrix factorisation; the generator is the
    recommender (scores are ``g``).

    Paper: Wang et al., "IRGAN: A Minimax Game for Unifying Generative and Discriminative
    Information Retrieval Models", SIGIR 2017. Each step plays both sides at once on the rows'
    (user, true item): the discriminator's logistic loss separates the true item from
    ``samples`` items drawn from the generator (no gradient to the generator), and the
    generator's policy gradient (REINFORCE) raises the log-probability of its drawn items in
    proportion to the reward ``2 D(u, j) - 1`` less the row's mean reward (a baseline: the same
    expected gradient, less variance; no gradient to the discriminator). The loss is
    the sum; since the players share no parameter, one optimiser step is a simultaneous update
    of both. Drawing needs the generator's softmax over the whole catalogue per row, as in the
    paper. The pairwise samples' negatives are not used: the generator supplies the negatives.

    With ``pretrain_epochs`` > 0 a first run trains the generator alone as BPR-MF (``mode:
    mf``, the samples' negatives), and both players start from its factors, as the paper's
    code starts both from one pre-trained MF model.
    """

    config_class: ClassVar[type[ModelConfig]] = IrganConfig
    sample_kind: ClassVar[SampleKind] = "pairwise"
    paper: ClassVar[str] = (
        "Wang, Yu, Zhang, Gong, Xu, Wang, Zhang, Zhang. IRGAN: A Minimax Game for Unifying "
        "Generative and Discriminative Information Retrieval Models. SIGIR 2017."
    )

    def __init__(self, config: IrganConfig, context: ModelContext) -> None:
        super().__init__(config, context)
        self.config: IrganConfig = config
        self.generator = FactorPlayer(context.n_users, context.n_items, config.dim, config.init_std)
        # The mf mode (pre-training) trains the generator alone: no idle player, whose
        # parameters would never get a gradient (DDP expects every parameter to).
        self.discriminator = (
            FactorPlayer(context.n_users, context.n_items, config.dim, config.init_std)
            if config.mode == "gan"
            else None
        )
        self._parts: dict[str, torch.Tensor] = {}

    @classmethod
    def user_table_names(cls, config: ModelConfig) -> tuple[str, ...]:
        """Both players' user factors (scoring reads the generator's)."""
        assert isinstance(config, IrganConfig)
        if config.mode == "mf":
            return ("generator.user",)
        return ("generator.user", "discriminator.user")

    @classmethod
    def pretraining(cls, config: ModelConfig) -> dict[str, ModelConfig]:
        """The generator alone as BPR-MF (``mode: mf``), when ``pretrain_epochs`` > 0 and this
        is the game."""
        assert isinstance(config, IrganConfig)
        if config.mode != "gan" or config.pretrain_epochs == 0:
            return {}
        update = {"mode": "mf", "epochs": config.pretrain_epochs, "pretrain_epochs": 0}
        return {"mf": config.model_copy(update=update)}

    @classmethod
    def from_pretrained(
        cls, config: ModelConfig, context: ModelContext, pretrained: dict[str, RecModel]
    ) -> RecModel:
        """The game with both players starting from the pre-trained generator's factors: the
        paper's code initialises generator and discriminator from one trained MF model."""
        assert isinstance(config, IrganConfig)
        model = cls(config, context)
        start = pretrained["mf"]
        assert isinstance(start, Irgan) and model.discriminator is not None
        state = start.generator.state_dict()
        model.generator.load_state_dict(state)
        model.discriminator.load_state_dict(state)
        return model

    def generator_log_probs(self, users: torch.Tensor) -> torch.Tensor:
        """[B, n_items] log p_G(i | u) over items 1..n (padding takes no probability)."""
        logits = self.generator.all_scores(users)[:, 1:].float() / self.config.temperature
        return F.log_softmax(logits, dim=-1)

    def player_losses(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """(discriminator loss, generator loss) of one batch, each with its L2 term."""
        if self.discriminator is None:
            raise ValueError("irgan in mode mf has no discriminator: it trains as BPR-MF")
        users, positives = batch.require("users"), batch.require("items")
        log_p = self.generator_log_probs(users)
        with torch.no_grad():
            drawn = torch.multinomial(log_p.exp(), self.config.samples, replacement=True) + 1
        real = self.discriminator.scores(users, positives[:, None])
        fake = self.discriminator.scores(users, drawn)
        d_loss = F.binary_cross_entropy_with_logits(
            real, torch.ones_like(real)
        ) + F.binary_cross_entropy_with_logits(fake, torch.zeros_like(fake))
        d_items = torch.cat([positives[:, None], drawn], dim=1)
        d_loss = d_loss + self.config.reg * self.discriminator.l2(users, d_items).mean()
        reward = (2 * torch.sigmoid(fake) - 1).detach()
        # The row's mean reward as the baseline: the same expected gradient, less variance.
        reward = reward - reward.mean(dim=1, keepdim=True)
        picked = torch.gather(log_p, 1, drawn - 1)
        g_loss = -(picked * reward).mean()
        g_loss = g_loss + self.config.reg * self.generator.l2(users, drawn).mean()
        return d_loss, g_loss

    def mf_loss(self, batch: Batch) -> torch.Tensor:
        """The generator alone as BPR-MF: ``-log sigmoid(g(u, i) - g(u, j))`` over the
        samples' negatives, plus the L2 term on the rows' own factors."""
        users, positives = batch.require("users"), batch.require("items")
        negatives = batch.require("negatives")
        items = torch.cat([positives[:, None], negatives], dim=1)
        scores = self.generator.scores(users, items)
        bpr = -F.logsigmoid(scores[:, :1] - scores[:, 1:]).mean()
        return bpr + self.config.reg * self.generator.l2(users, items).mean()

    def loss(self, batch: Batch) -> torch.Tensor:
        """The discriminator's and the generator's losses, summed (disjoint parameters); in
        mode mf, the generator's BPR loss."""
        if self.config.mode == "mf":
            return self.mf_loss(batch)
        d_loss, g_loss = self.player_losses(batch)
        self._parts = {"discriminator": d_loss.detach(), "generator": g_loss.detach()}
        return d_loss + g_loss

    def loss_parts(self) -> dict[str, torch.Tensor]:
        """Each player's loss in the last batch: the report plots both per epoch."""
        return dict(self._parts)

    def score_all(self, batch: Batch) -> torch.Tensor:
        """The generator's ``g(u, i)`` for every item, [B, n_items + 1]."""
        return self.generator.all_scores(batch.require("users"))

    def item_embeddings(self) -> torch.Tensor:
        """The generator's ``[q_i, b_i]``, [n_items + 1, dim + 1]."""
        return with_bias(self.generator.item.weight, self.generator.bias.weight)

    def user_embeddings(self, batch: Batch) -> torch.Tensor:
        """The generator's ``[p_u, 1]``, [B, dim + 1]."""
        u = self.generator.user(batch.require("users"))
        return with_ones(u)
