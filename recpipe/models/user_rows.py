"""A deep model's user-indexed tables, kept apart from the model that scoring broadcasts.

Tables indexed by user id (BPR-MF's user factors, NeuMF's user embeddings, a two-tower's user
id embedding) grow with users: 10M users x 256 dims is 10 GB, too much to broadcast to every
executor Python worker. Training (rank 0, which holds the model anyway) writes them as rows
``(user_idx, user_vector)`` of the lake table ``user_rows_<model>``, the vector being the user's
row of every such table concatenated in :meth:`RecModel.user_table_names` order, and beside
the full ``model.pt`` an item-side checkpoint (``model_items.pt``) whose user tables have no
rows. Scoring rebuilds the item-side model and, for each block of users, puts the block's rows
from the joined column in place (:func:`attach_user_rows`): the same numbers as the full model.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from torch import nn

from recpipe import storage
from recpipe.feature_specs import CONTEXT
from recpipe.models import model_class
from recpipe.models.base import RecModel
from recpipe.models.fields import buffer_name
from recpipe.schema import USER_IDX, USER_VECTOR
from recpipe.storage import LocationLike, as_location

ITEM_SIDE_FILE = "model_items.pt"
# Prefixes of a model's per-user feature tables: user features, and each user's last event
# context (recpipe.models.fields.FactorisationFields).
USER_FEATURES = (buffer_name("users", ""), buffer_name(CONTEXT, ""))
# Checkpoint field of an item-side model: which tables were taken out, their widths, and how
# many users they had.
USER_ROWS_KEY = "user_rows"
# Bytes of user vectors per Parquet row group: what one Spark reader task holds at once.
ROW_GROUP_BYTES = 32 << 20


def user_row_keys(state: dict[str, Any]) -> list[str]:
    """State-dict keys of the checkpoint's user-indexed tables (empty for history models):
    its user embeddings, then its user feature tables (recpipe.models.fields), which travel
    with them since an item-side model numbers a block's users 0..n-1."""
    cls = model_class(state["model"])
    config = cls.config_class.model_validate(state["model_config"])
    names = cls.user_table_names(config)
    if not names:
        return []
    features = [
        key for key in state["state_dict"] if key.rsplit(".", 1)[-1].startswith(USER_FEATURES)
    ]
    return [f"{name}.weight" for name in names] + features


def _width(table: torch.Tensor) -> int:
    """Numbers per user of a user-indexed table ([users] or [users, width])."""
    return int(table[0].numel()) if table.dim() > 1 else 1


def item_side_state(state: dict[str, Any]) -> dict[str, Any]:
    """``state`` with every user-indexed table emptied (0 rows): what executors receive."""
    keys = user_row_keys(state)
    weights = dict(state["state_dict"])
    widths = [_width(weights[key]) for key in keys]
    for key in keys:
        weights[key] = weights[key].new_empty((0, *weights[key].shape[1:]))
    return {
        **state,
        "state_dict": weights,
        "context": {**state["context"], "n_users": 0},
        USER_ROWS_KEY: {
            "keys": keys,
            "widths": widths,
            "n_users": int(state["context"]["n_users"]),
        },
    }


def user_row_tables(state: dict[str, Any], rows_per_table: int) -> Iterator[pa.Table]:
    """``(user_idx int32, user_vector list<float>)`` tables of at most ``rows_per_table``
    users, covering every user index of the checkpoint's tables in order."""
    tables = [state["state_dict"][key] for key in user_row_keys(state)]
    if not tables:
        return
    n_users = int(tables[0].shape[0])
    for start in range(0, n_users, rows_per_table):
        stop = min(n_users, start + rows_per_table)
        rows = [t[start:stop].detach().float().reshape(stop - start, -1) for t in tables]
        block = torch.cat(rows, dim=1).numpy()
        width = block.shape[1]
        offsets = pa.array(np.arange(0, (stop - start + 1) * width, width, dtype=np.int32))
        vectors = pa.ListArray.from_arrays(offsets, pa.array(block.ravel(), pa.float32()))
        users = pa.array(np.arange(start, stop, dtype=np.int32))
        yield pa.table({USER_IDX: users, USER_VECTOR: vectors})


def rows_per_group(width: int, group_bytes: int = ROW_GROUP_BYTES) -> int:
    """Users per Parquet row group for vectors of ``width`` floats: about ``group_bytes``."""
    return max(1, group_bytes // (4 * max(width, 1)))


def write_user_rows(
    state: dict[str, Any],
    folder: LocationLike,
    rows_per_file: int,
    group_bytes: int = ROW_GROUP_BYTES,
) -> int:
    """Write the checkpoint's user rows as Parquet files into ``folder`` (any location), in
    row groups of about ``group_bytes``; returns the rows written.

    A Spark reader holds a whole row group's column chunk: one group per file (262k users x
    256 floats, 272 MB) ran a 1 GB JVM out of heap at 20M events.
    """
    folder = as_location(folder)
    storage.makedirs(folder)
    # Floats per user: every user table's row, as user_row_tables concatenates them.
    width = sum(math.prod(state["state_dict"][key].shape[1:]) for key in user_row_keys(state))
    group_rows = rows_per_group(width, group_bytes)
    rows = 0
    for number, table in enumerate(user_row_tables(state, rows_per_file)):
        filesystem, path = storage.arrow_path(folder / f"part-{number:05d}.parquet")
        pq.write_table(table, path, filesystem=filesystem, row_group_size=group_rows)
        rows += table.num_rows
    return rows


def attach_user_rows(model: RecModel, vectors: np.ndarray) -> None:
    """Make row ``i`` of each user table of item-side ``model`` the matching slice of
    ``vectors[i]``: the model then scores the block's users as user ids ``0..len - 1``."""
    layout = model.user_rows
    if layout is None:
        raise ValueError(f"{model.name}: not an item-side model")
    if sum(layout["widths"]) != vectors.shape[1]:
        raise ValueError(
            f"{model.name}: user vectors of width {vectors.shape[1]}, the model's user tables "
            f"are {sum(layout['widths'])} wide"
        )
    device = next(model.parameters()).device
    start = 0
    for key, width in zip(layout["keys"], layout["widths"], strict=True):
        owner, _, attribute = key.rpartition(".")
        module = model.get_submodule(owner)
        rows = torch.as_tensor(np.ascontiguousarray(vectors[:, start : start + width]))
        start += width
        if attribute.startswith(USER_FEATURES):  # a feature table: indexes come back exact
            table = getattr(module, attribute)
            value = rows.reshape(len(vectors), *table.shape[1:])
            if not table.is_floating_point():
                value = value.round()
            setattr(module, attribute, value.to(device, table.dtype))
            continue
        assert isinstance(module, nn.Embedding)
        module.weight = nn.Parameter(rows.to(device, module.weight.dtype), requires_grad=False)
        module.num_embeddings = len(vectors)
