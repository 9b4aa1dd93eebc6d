"""NeuMF: generalised matrix factorisation fused with an MLP over user and item embeddings.

He, Liao, Zhang, Nie, Hu, Chua, "Neural Collaborative Filtering", WWW 2017.
"""

from __future__ import annotations

import itertools
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from recpipe.model_settings import NeuMfConfig
from recpipe.models.base import ModelConfig, ModelContext, RecModel, register
from recpipe.models.pairs import PointwisePairModel

# (GMF vectors, first-MLP-layer pre-activation half) of users or items; None for an absent branch.
Side = tuple[torch.Tensor | None, torch.Tensor | None]


def _index(side: Side, key: Any) -> Side:
    """``side`` with every present tensor indexed by ``key``."""
    return (None if side[0] is None else side[0][key], None if side[1] is None else side[1][key])


@register("neumf")
class NeuMf(PointwisePairModel):
    """Neural matrix factorisation: ``logit = h . [p_u * q_i ; MLP([p'_u ; q'_i])] + b``.

    Paper: He et al., "Neural Collaborative Filtering", WWW 2017. GMF and MLP have their own
    embeddings; in ``mode="gmf"``/``"mlp"`` only that branch exists (for pre-training), and
    :meth:`load_pretrained` builds the fused model from the two as in the paper. Scores are not
    a dot product, so there are no item embeddings for retrieval.
    """

    config_class: ClassVar[type[ModelConfig]] = NeuMfConfig
    paper: ClassVar[str] = (
        "He, Liao, Zhang, Nie, Hu, Chua. Neural Collaborative Filtering. WWW 2017."
    )
    # (user, item) pairs evaluated at once by score_all, bounding its activation memory.
    score_chunk_pairs: ClassVar[int] = 2**20

    def __init__(self, config: NeuMfConfig, context: ModelContext) -> None:
        super().__init__(config, context)
        self.config: NeuMfConfig = config
        self.use_gmf = config.mode in ("neumf", "gmf")
        self.use_mlp = config.mode in ("neumf", "mlp")
        out_in = 0
        if self.use_gmf:
            self.gmf_user = nn.Embedding(context.n_users, config.mf_dim)
            self.gmf_item = nn.Embedding(context.n_items + 1, config.mf_dim)
            nn.init.normal_(self.gmf_user.weight, std=config.init_std)
            nn.init.normal_(self.gmf_item.weight, std=config.init_std)
            out_in += config.mf_dim
        if self.use_mlp:
            self.mlp_user = nn.Embedding(context.n_users, config.dim)
            self.mlp_item = nn.Embedding(context.n_items + 1, config.dim)
            nn.init.normal_(self.mlp_user.weight, std=config.init_std)
            nn.init.normal_(self.mlp_item.weight, std=config.init_std)
            widths = [2 * config.dim, *config.mlp_layers]
            self.mlp = nn.ModuleList(nn.Linear(a, b) for a, b in itertools.pairwise(widths))
            self.dropout = nn.Dropout(config.dropout)
            out_in += config.mlp_layers[-1]
        self.out = nn.Linear(out_in, 1)

    @classmethod
    def user_table_names(cls, config: ModelConfig) -> tuple[str, ...]:
        """The GMF and MLP user embeddings of the branches ``mode`` builds."""
        assert isinstance(config, NeuMfConfig)
        names = ("gmf_user",) if config.mode in ("neumf", "gmf") else ()
        return names + (("mlp_user",) if config.mode in ("neumf", "mlp") else ())

    # The first MLP layer on concat(u, i) is W_u u + W_i i + b; splitting it lets score_all
    # project users and items once instead of materialising every concatenated pair.
    def user_side(self, users: torch.Tensor, context: torch.Tensor | None = None) -> Side:
        """GMF user vectors and the user half of the first MLP pre-activation."""
        gmf = self.gmf_user(users) if self.use_gmf else None
        mlp = None
        if self.use_mlp:
            first = self.mlp[0]
            assert isinstance(first, nn.Linear)
            mlp = F.linear(self.mlp_user(users), first.weight[:, : self.config.dim], first.bias)
        return gmf, mlp

    def item_side(self, items: torch.Tensor) -> Side:
        """GMF item vectors and the item half of the first MLP pre-activation."""
        gmf = self.gmf_item(items) if self.use_gmf else None
        mlp = None
        if self.use_mlp:
            first = self.mlp[0]
            assert isinstance(first, nn.Linear)
            mlp = F.linear(self.mlp_item(items), first.weight[:, self.config.dim :])
        return gmf, mlp

    def combine(self, user: Side, item: Side) -> torch.Tensor:
        """Logits from broadcastable user and item sides (the last dim is features)."""
        parts = []
        if user[0] is not None and item[0] is not None:
            parts.append(user[0] * item[0])
        if user[1] is not None and item[1] is not None:
            h = self.dropout(F.relu(user[1] + item[1]))
            for layer in self.mlp[1:]:
                h = self.dropout(F.relu(layer(h)))
            parts.append(h)
        lead = torch.broadcast_shapes(*(p.shape[:-1] for p in parts))
        parts = [p.expand(*lead, p.shape[-1]) for p in parts]
        return self.out(torch.cat(parts, dim=-1)).squeeze(-1)

    @staticmethod
    def index_side(side: Side, key: Any) -> Side:
        """``side`` with every tensor indexed by ``key``."""
        return _index(side, key)

    def chunk_pairs(self) -> int:
        """See :meth:`PointwisePairModel.chunk_pairs`."""
        return self.score_chunk_pairs

    @classmethod
    def pretraining(cls, config: ModelConfig) -> dict[str, ModelConfig]:
        """GMF and MLP alone, when ``pretrain_epochs`` > 0 and this is the fused model."""
        assert isinstance(config, NeuMfConfig)
        if config.mode != "neumf" or config.pretrain_epochs == 0:
            return {}
        return {
            mode: config.model_copy(
                update={"mode": mode, "epochs": config.pretrain_epochs, "pretrain_epochs": 0}
            )
            for mode in ("gmf", "mlp")
        }

    @classmethod
    def from_pretrained(
        cls, config: ModelConfig, context: ModelContext, pretrained: dict[str, RecModel]
    ) -> RecModel:
        """A fused NeuMF whose branches and output layer come from the pre-trained ones."""
        assert isinstance(config, NeuMfConfig)
        model = cls(config, context)
        gmf, mlp = pretrained["gmf"], pretrained["mlp"]
        assert isinstance(gmf, NeuMf) and isinstance(mlp, NeuMf)
        model.load_pretrained(gmf, mlp, config.pretrain_alpha)
        return model

    @torch.no_grad()
    def load_pretrained(self, gmf: NeuMf, mlp: NeuMf, alpha: float = 0.5) -> None:
        """Initialise a ``mode="neumf"`` model from pre-trained GMF and MLP models (paper 3.4.1).

        Embeddings and MLP layers are copied; the output layer becomes
        ``[alpha * h_gmf ; (1 - alpha) * h_mlp]`` with bias ``alpha * b_gmf + (1 - alpha) *
        b_mlp``, so the fused logit equals ``alpha * gmf_logit + (1 - alpha) * mlp_logit``
        (with dropout off) until training moves it.
        """
        if self.config.mode != "neumf" or gmf.config.mode != "gmf" or mlp.config.mode != "mlp":
            raise ValueError("load_pretrained needs a neumf model, a gmf model and an mlp model")
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha must be in [0, 1], got {alpha}")
        self.gmf_user.weight.copy_(gmf.gmf_user.weight)
        self.gmf_item.weight.copy_(gmf.gmf_item.weight)
        self.mlp_user.weight.copy_(mlp.mlp_user.weight)
        self.mlp_item.weight.copy_(mlp.mlp_item.weight)
        self.mlp.load_state_dict(mlp.mlp.state_dict())
        self.out.weight.copy_(torch.cat([alpha * gmf.out.weight, (1 - alpha) * mlp.out.weight], 1))
        self.out.bias.copy_(alpha * gmf.out.bias + (1 - alpha) * mlp.out.bias)
