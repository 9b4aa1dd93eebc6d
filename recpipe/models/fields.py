"""Item and user features inside a model: per-key feature tables as buffers, one embedding each.

The ``features`` stage writes one row per item / user index (see :mod:`recpipe.feature_specs`).
A model reads them by index, never through the batch: the tables are buffers of the model, so
they reach every training rank and every scoring executor once, with the weights, and a
checkpoint holds the features the model was trained with (the catalogue as of its day).

A *layout* describes the tables without their values (it rides in the checkpoint's context):
``{"items": [{"name", "kind", "width", "size"}, ...], "users": [...]}``; ``size`` is how many
distinct indexes the column may hold (embedding rows), None for a float column.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from recpipe.feature_specs import CONTEXT, OOV_INDEX

Layout = dict[str, list[dict[str, Any]]]


def buffer_name(entity: str, name: str) -> str:
    """The buffer holding feature ``name`` of ``entity`` (``items`` or ``users``)."""
    return f"feature_{entity}_{name}"


def column_shape(rows: int, field: dict[str, Any]) -> tuple[int, ...]:
    """Shape of one feature's table: [rows, width] of indexes, or [rows] of floats."""
    return (rows,) if field["size"] is None else (rows, field["width"])


class FieldEncoder(nn.Module):
    """Every feature of one entity as one embedding field: indexes through an embedding (the
    mean over a list's non-zero entries), a float as ``value * vector``.

    ``fields(keys)`` gives [B, F, dim] for keys [B] (any leading shape); rows past the table
    (keys new since training) and indexes past an embedding (values new since training) read
    as missing and out-of-vocabulary.
    """

    def __init__(
        self,
        entity: str,
        layout: list[dict[str, Any]],
        rows: int,
        dim: int,
        values: dict[str, torch.Tensor] | None = None,
        first_order: bool = False,
    ) -> None:
        super().__init__()
        self.entity = entity
        self.layout = list(layout)
        self.rows = rows
        self.dim = dim
        self.embeddings, self.vectors = _field_weights(self.layout, dim)
        # Factorisation machines' first-order terms: one weight per value (and per float).
        self.first_embeddings: nn.ModuleDict | None = None
        self.first_vectors: nn.ParameterDict | None = None
        if first_order:
            self.first_embeddings, self.first_vectors = _field_weights(self.layout, 1)
        for field in self.layout:
            name = field["name"]
            shape = column_shape(rows, field)
            given = (values or {}).get(f"{entity}.{name}")
            if field["size"] is None:
                table = torch.zeros(shape) if given is None else given.float()
            else:
                table = torch.zeros(shape, dtype=torch.int64) if given is None else given.long()
            if tuple(table.shape) != shape:
                raise ValueError(
                    f"feature {entity}.{name}: table {tuple(table.shape)}, layout {shape}"
                )
            self.register_buffer(buffer_name(entity, name), table)

    @property
    def count(self) -> int:
        """How many fields :meth:`fields` returns."""
        return len(self.layout)

    def table(self, name: str) -> torch.Tensor:
        """The feature table of ``name``."""
        return getattr(self, buffer_name(self.entity, name))

    def fields(self, keys: torch.Tensor, given: torch.Tensor | None = None) -> torch.Tensor:
        """[*keys.shape, F, dim] field embeddings of ``keys`` (F = 0 without features).

        ``given`` ([*keys.shape, F] indexes of single-index fields) replaces the tables' values:
        a sample's own event context instead of the key's stored one.
        """
        return self._encode(keys, self.embeddings, self.vectors, given)

    def first_order(self, keys: torch.Tensor, given: torch.Tensor | None = None) -> torch.Tensor:
        """[*keys.shape, F] first-order weights of ``keys`` (needs ``first_order=True``)."""
        if self.first_embeddings is None or self.first_vectors is None:
            raise ValueError("this encoder was built without first-order weights")
        return self._encode(keys, self.first_embeddings, self.first_vectors, given)[..., 0]

    def _encode(
        self,
        keys: torch.Tensor,
        embeddings: nn.ModuleDict,
        vectors: nn.ParameterDict,
        given: torch.Tensor | None = None,
    ) -> torch.Tensor:
        out = []
        for position, field in enumerate(self.layout):
            name = field["name"]
            # The table's own length: an item-side model's user tables hold one block's rows.
            table = self.table(name)
            known = keys < table.shape[0]
            if given is not None:
                known = torch.ones_like(keys, dtype=torch.bool)
                column = given[..., position : position + 1].long()
            elif table.shape[0] == 0:  # no rows attached yet: every key is unknown
                column = table.new_zeros((*keys.shape, *table.shape[1:]))
            else:
                column = table[torch.where(known, keys, torch.zeros_like(keys))]
            if field["size"] is None:
                value = torch.where(known, column, torch.zeros_like(column))
                out.append(value[..., None] * vectors[name])
                continue
            oov = torch.full_like(column, OOV_INDEX)
            indexes = torch.where(column < field["size"], column, oov)
            indexes = torch.where(known[..., None], indexes, torch.zeros_like(indexes))
            rows = embeddings[name](indexes)  # [..., width, dim]; padding rows are 0
            present = (indexes != 0).sum(-1, keepdim=True).clamp(min=1)
            out.append(rows.sum(-2) / present)
        if not out:
            width = 1 if embeddings is not self.embeddings else self.dim
            return keys.new_zeros((*keys.shape, 0, width), dtype=torch.float32)
        return torch.stack(out, dim=-2)


class FactorisationFields(nn.Module):
    """A factorisation machine's fields, split by side: the user id and every user feature,
    the item id and every item feature, each with an embedding and a first-order weight.

    Its user-indexed tables (``user_emb``, ``user_weight``) are what the scoring job ships as
    a per-user column (:data:`USER_TABLES`, relative to the model attribute holding this). An
    item without training interactions has an untrained id row, which is noise: its id field
    reads as missing (zero), so such an item is scored from its features alone. A user without
    training interactions has zero id rows (``RecModel.forget_untrained_users``), so such a
    user is scored from their features alone; ``user_id_dropout`` trains for that.
    """

    USER_TABLES = ("user_emb", "user_weight")
    item_counts: torch.Tensor  # buffer: train interactions per item (0: the id is untrained)

    def __init__(self, context: Any, dim: int, user_id_dropout: float = 0.0) -> None:
        super().__init__()
        # In training, this share of rows reads the user id as missing (as an untrained user's
        # does), so the user features learn to stand in for it (DropoutNet, Volkovs et al.).
        self.user_id_dropout = user_id_dropout
        layout, values = context.feature_layout, context.feature_values
        self.item_fields = FieldEncoder(
            "items", layout_of(layout, "items"), context.n_items + 1, dim, values, True
        )
        self.user_fields = FieldEncoder(
            "users", layout_of(layout, "users"), context.n_users, dim, values, True
        )
        # Event context on the user side: a sample's own in training, the user's last train
        # event's (a per-user table, like a user feature) when scoring.
        self.context_fields = FieldEncoder(
            CONTEXT, layout_of(layout, CONTEXT), context.n_users, dim, values, True
        )
        self.user_emb = nn.Embedding(context.n_users, dim)
        self.item_emb = nn.Embedding(context.n_items + 1, dim, padding_idx=0)
        self.user_weight = nn.Embedding(context.n_users, 1)
        self.item_weight = nn.Embedding(context.n_items + 1, 1, padding_idx=0)
        for table in (self.user_emb, self.item_emb):
            nn.init.normal_(table.weight, std=dim**-0.5)
        for table in (self.user_weight, self.item_weight):
            nn.init.zeros_(table.weight)
        self.register_buffer("item_counts", context.counts_tensor())

    @property
    def scores_untrained_items(self) -> bool:
        """With item features an untrained item still has fields to be scored by."""
        return self.item_fields.count > 0

    @property
    def scores_untrained_users(self) -> bool:
        """With user features an untrained user (whose id rows are zero: missing) still has
        fields to be scored by."""
        return self.user_fields.count > 0

    @property
    def reads_context(self) -> bool:
        """Whether event context features are declared (samples carry them)."""
        return self.context_fields.count > 0

    def count(self, side: str) -> int:
        """Fields of ``side`` (``users`` or ``items``): the id and every feature (the user
        side's event context included)."""
        if side == "users":
            return 1 + self.user_fields.count + self.context_fields.count
        return 1 + self.item_fields.count

    def users(
        self, keys: torch.Tensor, context: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """User-side fields [*keys.shape, F_u, dim] and first-order sums [*keys.shape];
        ``context`` ([*keys.shape, C]) is the samples' own, else each user's last."""
        kept = None
        if self.training and self.user_id_dropout > 0:
            kept = torch.rand(keys.shape, device=keys.device) >= self.user_id_dropout
        vectors, first = _side_fields(keys, self.user_emb, self.user_weight, self.user_fields, kept)
        if not self.context_fields.count:
            return vectors, first
        moment = self.context_fields.fields(keys, context).to(vectors.dtype)
        first = first + self.context_fields.first_order(keys, context).sum(-1).to(first.dtype)
        return torch.cat([vectors, moment], -2), first

    def items(self, keys: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Item-side fields [*keys.shape, F_i, dim] and first-order sums [*keys.shape]."""
        trained = self.item_counts[keys] > 0
        return _side_fields(keys, self.item_emb, self.item_weight, self.item_fields, trained)


def _side_fields(
    keys: torch.Tensor,
    emb: nn.Embedding,
    weight: nn.Embedding,
    encoder: FieldEncoder,
    trained: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    ids, first = emb(keys), weight(keys)[..., 0]
    if trained is not None:  # an untrained id row reads as a missing field
        ids, first = ids * trained[..., None], first * trained
    vectors = torch.cat([ids[..., None, :], encoder.fields(keys).to(emb.weight.dtype)], -2)
    if encoder.count:
        first = first + encoder.first_order(keys).sum(-1).to(first.dtype)
    return vectors, first


def _field_weights(
    layout: list[dict[str, Any]], dim: int
) -> tuple[nn.ModuleDict, nn.ParameterDict]:
    """An embedding per index feature (row 0, padding, zero) and a vector per float feature."""
    embeddings, vectors = nn.ModuleDict(), nn.ParameterDict()
    for field in layout:
        if field["size"] is None:
            vectors[field["name"]] = nn.Parameter(torch.randn(dim) * dim**-0.5)
            continue
        embedding = nn.Embedding(field["size"], dim, padding_idx=0)
        nn.init.normal_(embedding.weight, std=dim**-0.5)
        with torch.no_grad():
            embedding.weight[0].zero_()
        embeddings[field["name"]] = embedding
    return embeddings, vectors


def layout_of(layout: Layout | None, entity: str) -> list[dict[str, Any]]:
    """The fields of ``entity`` in ``layout`` ([] without features)."""
    return list((layout or {}).get(entity, []))
