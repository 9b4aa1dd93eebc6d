"""Mult-VAE: a variational autoencoder of the user's item bag with a multinomial likelihood.

Liang, Krishnan, Hoffman, Jebara, "Variational Autoencoders for Collaborative Filtering",
WWW 2018.
"""

from __future__ import annotations

import itertools
from typing import ClassVar

import torch
from torch import nn

from recpipe.data.batch import Batch, SampleKind
from recpipe.model_settings import MultVaeConfig
from recpipe.models.bag import bag_input, bag_targets, multinomial_nll
from recpipe.models.base import ModelConfig, ModelContext, RecModel, register
from recpipe.models.layers import with_bias, with_ones


@register("mult_vae")
class MultVae(RecModel):
    """Encoder ``normalise(x) -> dropout -> hidden_layers (tanh) -> (mu, log var)``, decoder
    ``z -> reversed hidden_layers (tanh) -> softmax over items``; loss the multinomial negative
    log-likelihood plus ``beta * KL``, ``beta`` annealed linearly from 0 to ``beta_max`` over
    ``anneal_steps`` training steps. Scores use ``z = mu``.

    Paper: Liang et al., "Variational Autoencoders for Collaborative Filtering", WWW 2018. The
    bag ``x`` is a bag sample: the user's last ``export.bag_max_len`` train items in, and those
    plus the next item out (a history longer than that trains as several bags), and scoring reads
    the last ``bag_max_len`` known items. As in the paper the likelihood is summed over the bag's
    items, so ``beta`` weighs the KL term against a whole user, not one item. The first layer is
    a table of item rows summed over the bag and the output layer a table of item vectors plus a
    bias, so the model is a dot product with its item vectors and scales with the bag, not the
    catalogue.
    """

    config_class: ClassVar[type[ModelConfig]] = MultVaeConfig
    sample_kind: ClassVar[SampleKind] = "bag"
    paper: ClassVar[str] = (
        "Liang, Krishnan, Hoffman, Jebara. Variational Autoencoders for Collaborative "
        "Filtering. WWW 2018."
    )

    steps: torch.Tensor  # training steps taken (for the KL annealing), saved with the model

    def __init__(self, config: MultVaeConfig, context: ModelContext) -> None:
        super().__init__(config, context)
        self.config: MultVaeConfig = config
        layers = config.hidden_layers
        self.item_in = nn.Embedding(context.n_items + 1, layers[0], padding_idx=0)
        self.in_bias = nn.Parameter(torch.zeros(layers[0]))
        self.encoder = nn.ModuleList(nn.Linear(a, b) for a, b in itertools.pairwise(layers))
        self.to_latent = nn.Linear(layers[-1], 2 * config.dim)
        sizes = [config.dim, *reversed(layers)]
        self.decoder = nn.ModuleList(nn.Linear(a, b) for a, b in itertools.pairwise(sizes))
        self.item_out = nn.Embedding(context.n_items + 1, layers[0], padding_idx=0)
        self.out_bias = nn.Embedding(context.n_items + 1, 1, padding_idx=0)
        for table in (self.item_in, self.item_out):
            nn.init.xavier_normal_(table.weight)
        nn.init.zeros_(self.out_bias.weight)
        with torch.no_grad():
            self.item_in.weight[0].zero_()
            self.item_out.weight[0].zero_()
        self.register_buffer("steps", torch.zeros((), dtype=torch.int64))

    def encode(self, history: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(mu, log variance) of q(z | bag), each [B, dim]."""
        keep = 1.0 - self.config.input_dropout
        h = torch.tanh(bag_input(self.item_in, history, keep, self.training) + self.in_bias)
        for layer in self.encoder:
            h = torch.tanh(layer(h))
        mu, log_var = self.to_latent(h).float().chunk(2, dim=-1)
        return mu, log_var

    def decode_hidden(self, z: torch.Tensor) -> torch.Tensor:
        """[B, hidden_layers[0]] the last decoder layer, scored against ``item_out``."""
        h = z
        for layer in self.decoder:
            h = torch.tanh(layer(h))
        return h

    def beta(self) -> float:
        """The KL weight at the current training step."""
        if self.config.anneal_steps == 0:
            return self.config.beta_max
        return self.config.beta_max * min(1.0, int(self.steps) / self.config.anneal_steps)

    def loss(self, batch: Batch) -> torch.Tensor:
        """Multinomial NLL of the bag (history and target) plus the annealed KL term."""
        history = batch.require("history")
        mu, log_var = self.encode(history)
        z = mu + torch.randn_like(mu) * torch.exp(0.5 * log_var) if self.training else mu
        logits = self.decode_hidden(z) @ self.item_out.weight.T + self.out_bias.weight[:, 0]
        nll = multinomial_nll(logits, bag_targets(history, batch.require("items")))
        kl = (-0.5 * (1 + log_var - mu.pow(2) - log_var.exp()).sum(-1)).mean()
        beta = self.beta()
        if self.training:
            self.steps += 1
        return nll + beta * kl

    def user_embeddings(self, batch: Batch) -> torch.Tensor:
        """``[decoder(mu), 1]`` per row, [B, hidden_layers[0] + 1]."""
        h = self.decode_hidden(self.encode(batch.require("history"))[0])
        return with_ones(h)

    def item_embeddings(self) -> torch.Tensor:
        """``[output vector, bias]`` per item, [n_items + 1, hidden_layers[0] + 1]."""
        return with_bias(self.item_out.weight, self.out_bias.weight)

    def score_all(self, batch: Batch) -> torch.Tensor:
        """The decoder's logits for every item, [B, n_items + 1]."""
        return self.user_embeddings(batch) @ self.item_embeddings().T
