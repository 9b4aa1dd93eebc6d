"""JVM-free reads of the knowledge graph for training: item -> entity links and indexed triples.

The catalog stage keeps ``kg_triples`` (head, relation, tail) and ``item_entities`` (item_id,
entity) per ``ds``. A model trained for ``ds`` reads the newest snapshot of each at or before
``ds`` (nothing from a later day) and gets them as index tensors:

- ``kg.item_entity`` [n_items + 1] int64: the entity index of each item index (0: not linked);
- ``kg.triples`` [T, 3] int64: (head, relation, tail) as entity / relation indexes.

Entities and relations are numbered from 1 in sorted order of their names (0 is padding), so
the same graph always gives the same indexes. The numbering is the model's own, not a stable
lake id: its layout entry records the graph's sizes and a digest of the entity names, and a
warm start refuses an earlier model whose graph differs (see :mod:`recpipe.train.warm_start`).
"""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np
import pyarrow as pa
import torch

from recpipe.catalogue import snapshot_ds
from recpipe.commit import current_version
from recpipe.layout import ITEM_ENTITIES, KG_TRIPLES, VOCAB_ITEMS
from recpipe.parquet_files import verified_dataset
from recpipe.schema import DS, ENTITY, HEAD, ITEM_ID, ITEM_IDX, RELATION, TAIL
from recpipe.storage import LocationLike

KG = "kg"  # the layout's entity for the graph (beside "items" and "users")
ITEM_ENTITY = "item_entity"
TRIPLES = "triples"


def knowledge_tables(
    root: LocationLike, ds: str, n_items: int
) -> tuple[list[dict[str, Any]], dict[str, torch.Tensor]]:
    """(layout fields of ``kg``, tables by "kg.<name>") as of ``ds``; ([], {}) when no item
    is linked to an entity (without links the graph cannot reach an item)."""
    links_day = snapshot_ds(root, ITEM_ENTITIES, ds)
    if links_day is None:
        return [], {}
    links = _read(root, ITEM_ENTITIES, links_day, [ITEM_ID, ENTITY])
    vocab = _read(root, VOCAB_ITEMS, ds, [ITEM_ID, ITEM_IDX])
    linked = links.join(vocab, ITEM_ID, join_type="inner")
    item_idx = linked.column(ITEM_IDX).to_numpy().astype(np.int64)
    inside = item_idx <= n_items  # items indexed after the model's vocabulary: not its own
    item_idx = item_idx[inside]
    item_names = np.asarray(linked.column(ENTITY).to_pylist(), dtype=object)[inside]
    if not len(item_idx):
        return [], {}
    kg_day = snapshot_ds(root, KG_TRIPLES, ds)
    triples = (
        _read(root, KG_TRIPLES, kg_day, [HEAD, RELATION, TAIL])
        if kg_day is not None
        else pa.table({HEAD: [], RELATION: [], TAIL: []}, schema=_TRIPLE_SCHEMA)
    )
    heads = np.asarray(triples.column(HEAD).to_pylist(), dtype=object)
    tails = np.asarray(triples.column(TAIL).to_pylist(), dtype=object)
    names, codes = np.unique(np.concatenate([item_names, heads, tails]), return_inverse=True)
    codes = codes.astype(np.int64) + 1
    relation_names, relation_codes = np.unique(
        np.asarray(triples.column(RELATION).to_pylist(), dtype=object), return_inverse=True
    )
    item_entity = np.zeros(n_items + 1, dtype=np.int64)
    item_entity[item_idx] = codes[: len(item_idx)]
    n_triples = len(heads)
    indexed = np.stack(
        [
            codes[len(item_idx) : len(item_idx) + n_triples],
            relation_codes.astype(np.int64) + 1,
            codes[len(item_idx) + n_triples :],
        ],
        axis=1,
    ).reshape(n_triples, 3)
    digest = hashlib.sha256("\n".join(names.tolist()).encode()).hexdigest()[:16]
    fields = [
        {"name": ITEM_ENTITY, "kind": "entity", "width": 1, "size": len(names) + 1,
         "linked_items": int((item_entity > 0).sum()), "entities_digest": digest},
        {"name": TRIPLES, "kind": "triples", "width": 3, "size": len(relation_names) + 1,
         "triples": n_triples, "ds": kg_day, "links_ds": links_day},
    ]  # fmt: skip
    tables = {
        f"{KG}.{ITEM_ENTITY}": torch.from_numpy(item_entity),
        f"{KG}.{TRIPLES}": torch.from_numpy(np.ascontiguousarray(indexed)),
    }
    return fields, tables


_TRIPLE_SCHEMA = pa.schema([(HEAD, pa.string()), (RELATION, pa.string()), (TAIL, pa.string())])


def _read(root: LocationLike, table: str, ds: str, columns: list[str]) -> pa.Table:
    return verified_dataset(current_version(root, table, {DS: ds})).to_table(columns=columns)


def graph_sizes(layout: dict[str, list[dict[str, Any]]] | None) -> tuple[int, int] | None:
    """(entity rows, relation rows) of a layout's graph (each counting row 0), or None."""
    fields = {field["name"]: field for field in (layout or {}).get(KG, [])}
    if ITEM_ENTITY not in fields or TRIPLES not in fields:
        return None
    return int(fields[ITEM_ENTITY]["size"]), int(fields[TRIPLES]["size"])
