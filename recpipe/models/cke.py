"""CKE: collaborative filtering whose item vectors add a knowledge-graph entity embedding.

Zhang, Yuan, Lian, Xie, Ma, "Collaborative Knowledge Base Embedding for Recommender
Systems", KDD 2016. The paper's structural component is built (TransR entity embeddings learned
from the graph's triples jointly with the ranking loss); its textual and visual components
(stacked denoising / convolutional auto-encoders over item descriptions and posters) are not:
recpipe's text features reach the feature models instead.
"""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from recpipe.data.batch import Batch, SampleKind
from recpipe.knowledge import ITEM_ENTITY, KG, TRIPLES, graph_sizes
from recpipe.model_settings import CkeConfig
from recpipe.models.base import ModelConfig, ModelContext, register
from recpipe.models.bpr_mf import BprMf


@register("cke")
class Cke(BprMf):
    """BPR-MF with ``q_i = eta_i + v_e(i)``: the item's offset plus the TransR embedding of the
    entity it links to; the score is ``p_u . q_i + b_i``.

    Paper: Zhang et al., "Collaborative Knowledge Base Embedding for Recommender Systems", KDD
    2016. Each training step adds ``kg_weight`` times a TransR loss over ``kg_batch_size``
    triples drawn at random: ``f(h, r, t) = |h M_r + r - t M_r|^2``, ranked against the same
    triple with a random tail by ``-log sigma(f(h, r, t') - f(h, r, t))`` (the pairwise form
    Wang et al. use for CKE in KGAT, KDD 2019), plus ``kg_reg`` times the squared norms. An
    item without training interactions has an untrained offset, read as zero: it is scored by
    its entity alone, which the graph placed beside the entities of items that have data. So
    that entity vectors carry the ranking signal too (the paper's model puts it all in the
    offsets when it can), ``offset_dropout`` of the linked training items lose their offset
    at each step, as DropoutNet drops preference inputs (Volkovs et al., NeurIPS 2017): 0 is
    the paper's model. Without links or triples the model is BPR-MF.
    """

    config_class: ClassVar[type[ModelConfig]] = CkeConfig
    sample_kind: ClassVar[SampleKind] = "pairwise"
    paper: ClassVar[str] = (
        "Zhang, Yuan, Lian, Xie, Ma. Collaborative Knowledge Base Embedding for Recommender "
        "Systems. KDD 2016."
    )

    item_counts: torch.Tensor  # buffer: train interactions per item (0: the offset is untrained)
    item_entity: torch.Tensor  # buffer: entity index of each item (0: not linked)
    triples: torch.Tensor  # non-persistent buffer: (head, relation, tail) indexes, training only

    def __init__(self, config: CkeConfig, context: ModelContext) -> None:
        super().__init__(config, context)
        self.config: CkeConfig = config
        self.register_buffer("item_counts", context.counts_tensor())
        sizes = graph_sizes(context.feature_layout)
        self.entities, self.relations = sizes or (0, 0)
        values = context.feature_values or {}
        self.entity_emb: nn.Embedding | None = None
        self.relation_emb: nn.Embedding | None = None
        self.projection: nn.Embedding | None = None
        if self.entities > 1:
            self.entity_emb = nn.Embedding(self.entities, config.dim, padding_idx=0)
            nn.init.normal_(self.entity_emb.weight, std=config.init_std)
            with torch.no_grad():
                self.entity_emb.weight[0].zero_()
        links = values.get(f"{KG}.{ITEM_ENTITY}")
        self.register_buffer(
            "item_entity",
            torch.zeros(context.n_items + 1, dtype=torch.int64) if links is None else links.long(),
        )
        # The triples train the entity embeddings; scoring needs only the embeddings, so the
        # triples stay out of the state dict (and of every scoring executor's copy).
        triples = values.get(f"{KG}.{TRIPLES}")
        self.register_buffer(
            "triples",
            torch.zeros((0, 3), dtype=torch.int64) if triples is None else triples.long(),
            persistent=False,
        )
        if self.entity_emb is not None and self.relations > 1:
            d, k = config.dim, config.relation_dim
            self.relation_emb = nn.Embedding(self.relations, k)
            nn.init.normal_(self.relation_emb.weight, std=config.init_std)
            # M_r as one row per relation, [d * k]; starting at the identity (where d == k)
            # makes the first steps TransE, as the TransR paper initialises from TransE.
            self.projection = nn.Embedding(self.relations, d * k)
            with torch.no_grad():
                start = torch.eye(d, k) if d == k else torch.randn(d, k) * d**-0.5
                self.projection.weight.copy_(start.flatten().expand(self.relations, -1))
        self._parts: dict[str, torch.Tensor] = {}

    @property
    def scores_untrained_items(self) -> bool:
        """With a graph (triples train the entity vectors), an untrained linked item has one."""
        return self.projection is not None

    def item_factors(self, items: torch.Tensor) -> torch.Tensor:
        """``eta_i`` (zero for an untrained item, and in training for ``offset_dropout`` of the
        linked items) ``+ v_e(i)``."""
        keep = self.item_counts[items] > 0
        if self.training and self.entity_emb is not None and self.config.offset_dropout > 0:
            linked = self.item_entity[items] > 0
            drop = torch.rand(items.shape, device=items.device) < self.config.offset_dropout
            keep = keep & ~(drop & linked)
        factors = self.item_emb(items) * keep.to(self.item_emb.weight.dtype)[..., None]
        if self.entity_emb is not None:
            factors = factors + self.entity_emb(self.item_entity[items])
        return factors

    def all_item_factors(self) -> torch.Tensor:
        """``q_i`` of every item, [n_items + 1, dim]."""
        return self.item_factors(torch.arange(self.n_items + 1, device=self.item_counts.device))

    def loss(self, batch: Batch) -> torch.Tensor:
        """BPR-MF's loss plus ``kg_weight`` times the TransR loss of a random batch of triples."""
        ranking = super().loss(batch)
        self._parts = {"bpr": ranking.detach()}
        if self.projection is None or not len(self.triples):
            return ranking
        knowledge = self.transr_loss(self.sample_triples())
        self._parts["kg"] = knowledge.detach()
        return ranking + self.config.kg_weight * knowledge

    def sample_triples(self) -> torch.Tensor:
        """[kg_batch_size, 4]: random triples (with replacement) and a random corrupt tail."""
        device = self.triples.device
        picked = self.triples[torch.randint(len(self.triples), (self.config.kg_batch_size,),
                                            device=device)]  # fmt: skip
        corrupt = torch.randint(1, self.entities, (len(picked), 1), device=device)
        return torch.cat([picked, corrupt], dim=1)

    def transr_loss(self, rows: torch.Tensor) -> torch.Tensor:
        """Mean ``-log sigma(f(h, r, t') - f(h, r, t))`` plus ``kg_reg`` times the mean squared
        norms of the projected entities and the relation, for rows (head, relation, tail, t')."""
        assert self.entity_emb is not None
        assert self.relation_emb is not None and self.projection is not None
        head, relation, tail, corrupt = rows.unbind(1)
        d, k = self.config.dim, self.config.relation_dim
        matrices = self.projection(relation).view(-1, d, k)

        def projected(entities: torch.Tensor) -> torch.Tensor:
            return torch.bmm(self.entity_emb(entities)[:, None, :], matrices)[:, 0]  # type: ignore[misc]

        h, t, t_neg = projected(head), projected(tail), projected(corrupt)
        r = self.relation_emb(relation)
        true_distance = (h + r - t).float().pow(2).sum(-1)
        false_distance = (h + r - t_neg).float().pow(2).sum(-1)
        ranking = -F.logsigmoid(false_distance - true_distance).mean()
        norms = sum(x.float().pow(2).sum(-1) for x in (h, r, t, t_neg))
        return ranking + self.config.kg_reg * norms.mean()  # type: ignore[union-attr]

    def loss_parts(self) -> dict[str, torch.Tensor]:
        """The last loss's BPR and TransR parts (the TransR part only with a graph)."""
        return dict(self._parts)
