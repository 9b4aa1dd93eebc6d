"""RecVAE: Mult-VAE with a densely connected encoder, a composite prior and a KL weight that
grows with the user's bag.

Shenbin, Alekseev, Tutubalina, Malykh, Nikolenko, "RecVAE: a New Variational Autoencoder for
Top-N Recommendations with Implicit Feedback", WSDM 2020.
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from recpipe.data.batch import Batch, SampleKind
from recpipe.model_settings import RecVaeConfig
from recpipe.models.bag import bag_input, bag_targets, multinomial_nll
from recpipe.models.base import ModelConfig, ModelContext, RecModel, register
from recpipe.models.layers import with_bias, with_ones

LOG_2PI = math.log(2 * math.pi)
# The paper's layer-norm epsilon: large, so a nearly constant layer is not blown up.
LAYER_NORM_EPS = 0.1


def log_normal(x: torch.Tensor, mu: torch.Tensor, log_var: torch.Tensor) -> torch.Tensor:
    """Elementwise log density of ``x`` under ``N(mu, exp(log_var))``."""
    return -0.5 * (log_var + LOG_2PI + (x - mu).pow(2) / log_var.exp())


class RecVaeEncoder(nn.Module):
    """``h_1 = LN(swish(x W_1))``, ``h_k = LN(swish(h_{k-1} W_k + h_1 + ... + h_{k-1}))``, then
    ``(mu, log var)`` from the last layer; ``x`` the L2-normalised bag (dropout while training)."""

    def __init__(self, n_items: int, hidden: int, layers: int, latent: int) -> None:
        super().__init__()
        self.item_in = nn.Embedding(n_items + 1, hidden, padding_idx=0)
        self.in_bias = nn.Parameter(torch.zeros(hidden))
        self.dense = nn.ModuleList(nn.Linear(hidden, hidden) for _ in range(layers - 1))
        self.norms = nn.ModuleList(nn.LayerNorm(hidden, eps=LAYER_NORM_EPS) for _ in range(layers))
        self.to_mu = nn.Linear(hidden, latent)
        self.to_log_var = nn.Linear(hidden, latent)
        nn.init.xavier_normal_(self.item_in.weight)
        with torch.no_grad():
            self.item_in.weight[0].zero_()

    def forward(self, history: torch.Tensor, keep: float) -> tuple[torch.Tensor, torch.Tensor]:
        """(mu, log variance) of q(z | bag), each [B, latent]; ``keep`` = 1 - input dropout."""
        x = bag_input(self.item_in, history, keep, self.training)
        h = self.norms[0](F.silu(x + self.in_bias))
        total = h
        for layer, norm in zip(self.dense, self.norms[1:], strict=True):
            h = norm(F.silu(layer(h) + total))
            total = total + h
        return self.to_mu(h).float(), self.to_log_var(h).float()


@register("recvae")
class RecVae(RecModel):
    """Mult-VAE's multinomial likelihood over the bag with three changes from the paper:

    - the encoder is ``encoder_layers`` densely connected swish + layer-norm layers;
    - the prior is a mixture of ``N(0, I)``, the posterior of the same bag under the encoder
      as it was ``prior_refresh_steps`` steps ago, and a wide ``N(0, e^wide_prior_log_var I)``,
      weighted by ``prior_weights`` (paper: 3/20, 15/20, 2/20);
    - the KL term of a row (one-sample estimate ``log q(z|x) - log p(z)``) is weighed by
      ``gamma`` times the number of items in its bag, not by one annealed ``beta``.

    The decoder is one linear layer, so scores are ``[mu, 1] . [item vector, bias]`` and the
    model exports item vectors like Mult-VAE. The paper trains encoder and decoder in
    alternating epochs; here both train every step (recpipe's loop takes one loss per step on
    every rank) and the composite prior's encoder copy is refreshed every
    ``prior_refresh_steps`` steps in place of once per epoch.

    Paper: Shenbin et al., "RecVAE: a New Variational Autoencoder for Top-N Recommendations
    with Implicit Feedback", WSDM 2020. The bag is a bag sample, as for Mult-VAE.
    """

    config_class: ClassVar[type[ModelConfig]] = RecVaeConfig
    sample_kind: ClassVar[SampleKind] = "bag"
    paper: ClassVar[str] = (
        "Shenbin, Alekseev, Tutubalina, Malykh, Nikolenko. RecVAE: a New Variational "
        "Autoencoder for Top-N Recommendations with Implicit Feedback. WSDM 2020."
    )

    steps: torch.Tensor  # training steps taken (for the prior's refresh), saved with the model

    def __init__(self, config: RecVaeConfig, context: ModelContext) -> None:
        super().__init__(config, context)
        self.config: RecVaeConfig = config
        args = (context.n_items, config.hidden, config.encoder_layers, config.dim)
        self.encoder = RecVaeEncoder(*args)
        # The composite prior's copy: a registered module (saved, moved with .to()), never
        # trained; the optimizer skips it because it never has a gradient.
        self.prior_encoder = RecVaeEncoder(*args)
        self.prior_encoder.requires_grad_(False)
        self.item_out = nn.Embedding(context.n_items + 1, config.dim, padding_idx=0)
        self.out_bias = nn.Embedding(context.n_items + 1, 1, padding_idx=0)
        nn.init.xavier_normal_(self.item_out.weight)
        nn.init.zeros_(self.out_bias.weight)
        with torch.no_grad():
            self.item_out.weight[0].zero_()
        self.register_buffer("steps", torch.zeros((), dtype=torch.int64))
        self.refresh_prior()

    @torch.no_grad()
    def refresh_prior(self) -> None:
        """Copy the encoder's current weights into the composite prior's encoder."""
        for old, new in zip(
            self.prior_encoder.parameters(), self.encoder.parameters(), strict=True
        ):
            old.copy_(new)

    def log_prior(self, z: torch.Tensor, history: torch.Tensor) -> torch.Tensor:
        """[B, latent] log density of ``z`` under the composite prior of each row's bag."""
        with torch.no_grad():
            post_mu, post_log_var = self.prior_encoder(history, 1.0)
        zeros = torch.zeros_like(z)
        wide = torch.full_like(z, self.config.wide_prior_log_var)
        parts = (
            log_normal(z, zeros, zeros),
            log_normal(z, post_mu, post_log_var),
            log_normal(z, zeros, wide),
        )
        weighted = [p + math.log(w) for p, w in zip(parts, self.config.prior_weights, strict=True)]
        return torch.logsumexp(torch.stack(weighted), dim=0)

    def loss(self, batch: Batch) -> torch.Tensor:
        """Multinomial NLL of the bag plus each row's KL estimate weighed by gamma x bag size."""
        history = batch.require("history")
        if self.training and int(self.steps) % self.config.prior_refresh_steps == 0:
            self.refresh_prior()
        keep = 1.0 - self.config.input_dropout
        mu, log_var = self.encoder(history, keep)
        z = mu + torch.randn_like(mu) * torch.exp(0.5 * log_var) if self.training else mu
        targets = bag_targets(history, batch.require("items"))
        logits = z @ self.item_out.weight.T + self.out_bias.weight[:, 0]
        nll = multinomial_nll(logits, targets)
        kl = (log_normal(z, mu, log_var) - self.log_prior(z, history)).sum(-1)
        bag_size = (targets != 0).sum(1).float()
        if self.training:
            self.steps += 1
        return nll + (self.config.gamma * bag_size * kl).mean()

    def user_embeddings(self, batch: Batch) -> torch.Tensor:
        """``[mu, 1]`` per row, [B, dim + 1]."""
        mu = self.encoder(batch.require("history"), 1.0)[0]
        return with_ones(mu)

    def item_embeddings(self) -> torch.Tensor:
        """``[output vector, bias]`` per item, [n_items + 1, dim + 1]."""
        return with_bias(self.item_out.weight, self.out_bias.weight)

    def score_all(self, batch: Batch) -> torch.Tensor:
        """The decoder's logits for every item, [B, n_items + 1]."""
        return self.user_embeddings(batch) @ self.item_embeddings().T
