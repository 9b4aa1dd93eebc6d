"""JVM-free reads of the feature tables for training: layout and dense per-index tables.

A model trained for ``ds`` gets the newest ``item_features`` / ``user_features`` committed at
or before ``ds`` (the catalogue as of that day: nothing from a later day), as dense arrays
indexed by item / user index (row 0 and keys without a catalogue row hold 0: missing).
"""

from __future__ import annotations

import io
from typing import Any

import numpy as np
import torch

from recpipe import storage
from recpipe.catalogue import snapshot_ds
from recpipe.commit import current_version
from recpipe.errors import MissingInputError
from recpipe.feature_specs import CONTEXT
from recpipe.layout import ITEM_FEATURES, LAST_CONTEXT, USER_FEATURES
from recpipe.manifest import ExportManifest, FeaturesManifest
from recpipe.models.fields import Layout
from recpipe.parquet_files import verified_dataset
from recpipe.schema import CONTEXT_IDX, DS, ITEM_IDX, USER_IDX
from recpipe.storage import LocationLike

ENTITY_TABLES = {"items": (ITEM_FEATURES, ITEM_IDX), "users": (USER_FEATURES, USER_IDX)}


def feature_tables(
    root: LocationLike, ds: str, n_users: int, n_items: int
) -> tuple[Layout, dict[str, torch.Tensor], dict[str, str]]:
    """(layout, tables by "<entity>.<name>", feature ds by entity) as of ``ds``; all empty
    when no features were built."""
    layout: Layout = {}
    tables: dict[str, torch.Tensor] = {}
    days: dict[str, str] = {}
    rows = {"items": n_items + 1, "users": n_users}
    for entity, (table, key) in ENTITY_TABLES.items():
        day = snapshot_ds(root, table, ds)
        if day is None:
            continue
        manifest = FeaturesManifest.read(root, day)
        stats = {
            name.split(".", 1)[1]: info
            for name, info in (manifest.features or {}).items()
            if name.startswith(f"{entity}.")
        }
        fields = [
            {"name": name, "kind": info.kind, "width": info.width, "size": info.size}
            for name, info in stats.items()
        ]
        data = verified_dataset(current_version(root, table, {DS: day})).to_table(
            columns=[key, *stats]
        )
        keys = data.column(key).to_numpy()
        inside = keys < rows[entity]  # keys indexed after the model's vocabulary: not its own
        for field in fields:
            tables[f"{entity}.{field['name']}"] = _dense(
                data.column(field["name"]), keys[inside], inside, rows[entity], field
            )
        layout[entity], days[entity] = fields, day
    return layout, tables, days


def _dense(
    column: Any, keys: np.ndarray, inside: np.ndarray, rows: int, field: dict[str, Any]
) -> torch.Tensor:
    """One column as a dense table indexed by key (0 where a key has no row)."""
    if field["size"] is None:
        out = np.zeros(rows, dtype=np.float32)
        out[keys] = column.to_numpy(zero_copy_only=False)[inside]
        return torch.from_numpy(out)
    out_idx = np.zeros((rows, field["width"]), dtype=np.int64)
    if field["kind"] in ("multi", "text"):
        flat = column.combine_chunks().flatten().to_numpy(zero_copy_only=False)
        values = flat.reshape(-1, field["width"])
    else:
        values = column.to_numpy(zero_copy_only=False).reshape(-1, 1)
    out_idx[keys] = values[inside]
    return torch.from_numpy(out_idx)


def save_tables(location: LocationLike, tables: dict[str, torch.Tensor]) -> None:
    """Write the tables for training ranks (tensors only: read back with weights_only)."""
    buffer = io.BytesIO()
    torch.save(tables, buffer)
    storage.write_bytes(location, buffer.getvalue())


def load_tables(location: LocationLike) -> dict[str, torch.Tensor]:
    """Read tables written by :func:`save_tables` (never unpickles anything but tensors)."""
    return torch.load(io.BytesIO(storage.read_bytes(location)), weights_only=True)


def context_tables(
    root: LocationLike, ds: str, protocol: str, n_users: int
) -> tuple[list[dict[str, Any]], dict[str, torch.Tensor]]:
    """(layout, tables by "context.<name>") of the event context features export wrote for
    ``protocol``: each user's last train event's indexes ([n_users, 1]; 0 for users without
    one). Both empty when no context is declared."""
    names = ExportManifest.read(root, ds).context or []
    if not names:
        return [], {}
    stats = FeaturesManifest.read(root, ds).features or {}
    missing = [name for name in names if f"{CONTEXT}.{name}" not in stats]
    if missing:
        raise MissingInputError(
            f"export ds={ds} carries context {', '.join(missing)} that the features manifest "
            f"lacks: run `recpipe features --ds {ds}` and `recpipe export --ds {ds}` again"
        )
    layout = [
        {"name": name, "kind": stats[f"{CONTEXT}.{name}"].kind, "width": 1,
         "size": stats[f"{CONTEXT}.{name}"].size}
        for name in names
    ]  # fmt: skip
    data = verified_dataset(current_version(root, LAST_CONTEXT, {DS: ds, "protocol": protocol}))
    rows = data.to_table(columns=[USER_IDX, CONTEXT_IDX])
    users = rows.column(USER_IDX).to_numpy()
    values = rows.column(CONTEXT_IDX).combine_chunks().flatten().to_numpy(zero_copy_only=False)
    values = values.reshape(len(users), len(names))
    inside = users < n_users
    tables = {}
    for position, name in enumerate(names):
        table = np.zeros((n_users, 1), dtype=np.int64)
        table[users[inside], 0] = values[inside, position]
        tables[f"{CONTEXT}.{name}"] = torch.from_numpy(table)
    return layout, tables
