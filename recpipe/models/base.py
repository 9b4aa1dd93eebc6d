"""The deep-model contract: ``loss(batch)``, ``score_all(batch)``, typed config, registry.

Every model is a ``torch.nn.Module`` whose ``forward`` is its training loss (so DDP wraps the
loss computation), built from ``(config, ModelContext)`` alone, which the checkpoint stores.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from recpipe.data.batch import HISTORY_KINDS, Batch, SampleKind
from recpipe.model_settings import MODEL_SETTINGS, ModelConfig


@dataclass(frozen=True)
class ModelContext:
    """Sizes and statistics of the training data a model is built for."""

    n_users: int  # user_idx < n_users (0 unused)
    n_items: int  # item_idx in 1..n_items (0 is padding)
    max_len: int = 50  # history length of sequence samples
    item_counts: np.ndarray | None = None  # [n_items + 1] train interactions per item
    trained_users: np.ndarray | None = None  # [n_users] bool: users with train interactions
    # Item and user features (recpipe.models.fields): the layout rides in the checkpoint, the
    # tables ("items.<name>" -> tensor) reach the model here and travel on as its buffers.
    feature_layout: dict[str, list[dict[str, Any]]] | None = None
    feature_values: dict[str, torch.Tensor] | None = None

    def counts_tensor(self) -> torch.Tensor:
        """Item counts as float32 (zeros when unknown), for buffers such as log-Q correction."""
        if self.item_counts is None:
            return torch.zeros(self.n_items + 1)
        return torch.as_tensor(np.asarray(self.item_counts, dtype=np.float32))

    def to_dict(self) -> dict[str, Any]:
        """Plain fields for the checkpoint (counts travel in the state dict as buffers)."""
        fields: dict[str, Any] = {
            "n_users": self.n_users, "n_items": self.n_items, "max_len": self.max_len
        }  # fmt: skip
        if self.feature_layout:
            fields["feature_layout"] = self.feature_layout
        return fields


class RecModel(nn.Module, ABC):
    """Base class of every deep recommender (column 0 of any score matrix is padding)."""

    name: ClassVar[str]
    config_class: ClassVar[type[ModelConfig]] = ModelConfig
    sample_kind: ClassVar[SampleKind]
    paper: ClassVar[str]

    def __init__(self, config: ModelConfig, context: ModelContext) -> None:
        super().__init__()
        self.config = config
        self.context = context
        self.n_users = context.n_users
        self.n_items = context.n_items
        # Set on an item-side model (recpipe.models.user_rows): its user tables are empty and
        # take each scored block's rows from the user vector column.
        self.user_rows: dict[str, Any] | None = None

    def forward(self, batch: Batch) -> torch.Tensor:
        """The training loss, so that DistributedDataParallel wraps ``loss``."""
        return self.loss(batch)

    @abstractmethod
    def loss(self, batch: Batch) -> torch.Tensor:
        """Scalar training loss of one batch of the model's ``sample_kind``."""

    @abstractmethod
    def score_all(self, batch: Batch) -> torch.Tensor:
        """Scores [B, n_items + 1] for the batch's users (and histories, for sequence models)."""

    def loss_parts(self) -> dict[str, torch.Tensor]:
        """Named parts of the last :meth:`loss` (detached), recorded per epoch beside the loss
        where one number hides what matters (e.g. each player of a GAN); empty by default."""
        return {}

    @classmethod
    def pretraining(cls, config: ModelConfig) -> dict[str, ModelConfig]:
        """Configs of models to train first (by label), whose weights initialise this one."""
        return {}

    @classmethod
    def from_pretrained(
        cls, config: ModelConfig, context: ModelContext, pretrained: dict[str, RecModel]
    ) -> RecModel:
        """This model initialised from the trained :meth:`pretraining` models."""
        raise NotImplementedError(f"{cls.name} has no pre-training")

    # Whether training reads the pointwise samples' ``value`` column (Batch.values).
    reads_values: ClassVar[bool] = False

    @property
    def reads_context(self) -> bool:
        """Whether training reads the samples' event context (``Batch.context``)."""
        return False

    @property
    def uses_user_ids(self) -> bool:
        """Whether scores depend on a learned per-user row (then users without training
        interactions cannot be scored); sequence models read only the history."""
        return self.sample_kind not in HISTORY_KINDS

    @property
    def scores_untrained_items(self) -> bool:
        """Whether an item without training interactions still gets a meaningful score (from
        its features): then every item the model knows is a candidate and may enter a
        history, not only the items it trained on (as for id-only models)."""
        return False

    @property
    def scores_untrained_users(self) -> bool:
        """Whether a user without training interactions (and possibly without history) still
        gets a meaningful score (from their profile features, or a model trained on empty
        histories): then such users are scored, not skipped (the ``cold_users`` protocol)."""
        return False

    def forget_untrained_users(self) -> int:
        """Zero the rows of :meth:`user_table_names` of users without train interactions
        (``context.trained_users``), so an untrained user's id reads as missing (a zero
        vector that never gets a gradient) instead of random initialisation. A fresh model
        does this once, before any earlier weights are loaded. Returns the rows zeroed."""
        trained = self.context.trained_users
        names = self.user_table_names(self.config)
        if trained is None or not names:
            return 0
        forget = torch.as_tensor(~np.asarray(trained, dtype=bool))
        with torch.no_grad():
            for name in names:
                module = self.get_submodule(name)
                assert isinstance(module, nn.Embedding), name
                table = module.weight
                rows = forget[: table.shape[0]].to(table.device)
                table[: len(rows)][rows] = 0.0
        return int(forget.sum())

    @classmethod
    def user_table_names(cls, config: ModelConfig) -> tuple[str, ...]:
        """Attributes holding ``nn.Embedding`` tables indexed by user id (rows grow with users):
        the scoring job ships them as a per-user column, never inside the broadcast model."""
        return ()

    def init_item_vectors(self, vectors: torch.Tensor) -> int:
        """Start the item table ``item_emb`` from pre-trained item vectors [rows, d] (e.g.
        item2vec's): each non-zero row ``i >= 1`` takes that vector's direction at the table's
        mean initial row norm, so the initial scale the model was tuned for is kept; all-zero
        rows (items without a vector) keep their initialisation. Returns the rows set;
        ValueError when the model has no such table or the sizes differ."""
        table = getattr(self, "item_emb", None)
        if not isinstance(table, nn.Embedding):
            raise ValueError(f"{self.name} has no item table (item_emb) to initialise")
        if vectors.dim() != 2 or vectors.shape[1] != table.embedding_dim:
            raise ValueError(
                f"the item vectors have {tuple(vectors.shape)[1:]} dimensions, "
                f"{self.name}'s item table {table.embedding_dim}"
            )
        if vectors.shape[0] > table.num_embeddings:
            raise ValueError(
                f"{vectors.shape[0] - 1} item vectors for {table.num_embeddings - 1} items"
            )
        norms = vectors.float().norm(dim=1)
        rows = torch.nonzero(norms > 0).flatten()
        rows = rows[rows > 0]
        with torch.no_grad():
            scale = table.weight[1:].float().norm(dim=1).mean()
            unit = vectors[rows].float() / norms[rows, None]
            table.weight[rows] = (unit * scale).to(table.weight.dtype)
        return len(rows)

    def item_embeddings(self) -> torch.Tensor | None:
        """[n_items + 1, d] item vectors when scores are a dot product with them, else None."""
        return None

    def user_embeddings(self, batch: Batch) -> torch.Tensor | None:
        """[B, d] user vectors matching :meth:`item_embeddings`, else None."""
        return None


_REGISTRY: dict[str, type[RecModel]] = {}


def register(name: str) -> Any:
    """Class decorator adding a model to the registry under ``name``."""

    def decorate(cls: type[RecModel]) -> type[RecModel]:
        if name in _REGISTRY and _REGISTRY[name] is not cls:
            raise ValueError(f"model name '{name}' registered twice")
        if MODEL_SETTINGS.get(name) is not cls.config_class:
            raise ValueError(
                f"model '{name}': config_class must be its settings in recpipe.model_settings "
                "(@settings_of, defaults in conf/models/<name>.yaml)"
            )
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return decorate


def registry() -> dict[str, type[RecModel]]:
    """Registered models by name (importing ``recpipe.models`` registers the built-in ones)."""
    return dict(_REGISTRY)
