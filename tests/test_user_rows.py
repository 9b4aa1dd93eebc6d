"""A deep model's user tables apart from its item side: same scores as the whole model."""

from __future__ import annotations

import io

import numpy as np
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest
import torch

from recpipe.data.batch import Batch
from recpipe.models import model_class
from recpipe.models.base import ModelContext
from recpipe.models.user_rows import (
    attach_user_rows,
    item_side_state,
    rows_per_group,
    user_row_keys,
    user_row_tables,
    write_user_rows,
)
from recpipe.train.checkpoint import build_model, model_state

N_USERS, N_ITEMS = 37, 23

# (model, settings): every model with user-indexed tables, in each variant that has them.
MODELS = [
    ("bpr_mf", {"dim": 8}),
    ("neumf", {"mf_dim": 4, "dim": 6, "mlp_layers": [8, 4]}),
    ("neumf", {"mode": "gmf", "mf_dim": 4}),
    ("two_tower", {"dim": 8, "use_user_id": True, "tower_layers": [8]}),
    ("svdpp", {"dim": 8}),
    ("cdae", {"dim": 8, "negatives": 4}),
    ("irgan", {"dim": 8, "samples": 2}),
    ("rum", {"dim": 8, "memory_size": 2, "score_item_chunk": 5}),
    # With user features (an index and a float per user): they travel in the rows too.
    ("deepfm", {"dim": 4, "mlp_layers": [8], "score_chunk_pairs": 16}),
    ("nfm", {"dim": 4, "mlp_layers": [8], "score_chunk_pairs": 16}),
    ("wide_deep", {"dim": 4, "mlp_layers": [8], "cross_buckets": 31, "score_chunk_pairs": 16}),
    (
        "mmoe",
        {
            "dim": 4,
            "experts": 2,
            "expert_layers": [6],
            "tower_layers": [4],
            "score_chunk_pairs": 16,
        },
    ),
    # With a knowledge graph: the item side keeps the entity tables, the triples stay behind.
    ("cke", {"dim": 8, "relation_dim": 4}),
]
_g = torch.Generator().manual_seed(11)
FEATURES = {
    "feature_layout": {
        "users": [
            {"name": "region", "kind": "categorical", "width": 1, "size": 5},
            {"name": "age", "kind": "numeric", "width": 1, "size": None},
        ],
        "items": [{"name": "genre", "kind": "multi", "width": 2, "size": 4}],
        "kg": [
            {"name": "item_entity", "kind": "entity", "width": 1, "size": 6},
            {"name": "triples", "kind": "triples", "width": 3, "size": 3},
        ],
    },
    "feature_values": {
        "users.region": torch.randint(0, 5, (N_USERS, 1), generator=_g),
        "users.age": torch.randn(N_USERS, generator=_g),
        "items.genre": torch.randint(0, 4, (N_ITEMS + 1, 2), generator=_g),
        "kg.item_entity": torch.randint(0, 6, (N_ITEMS + 1,), generator=_g),
        "kg.triples": torch.tensor([[1, 1, 2], [3, 2, 4], [5, 1, 2]]),
    },
}


def _model(name: str, settings: dict):
    torch.manual_seed(3)
    cls = model_class(name)
    features = FEATURES if name in ("deepfm", "nfm", "wide_deep", "mmoe", "cke") else {}
    context = ModelContext(N_USERS, N_ITEMS, 5, **features)  # type: ignore[arg-type]
    model = cls(cls.config_class.model_validate(settings), context)
    with torch.no_grad():  # trained-looking weights: no zero bias hides a mistake
        for parameter in model.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.1)
    return model.eval()


def _batch(users: torch.Tensor, history: torch.Tensor) -> Batch:
    return Batch(users=users, history=history)


@pytest.mark.parametrize(("name", "settings"), MODELS)
def test_item_side_model_with_attached_rows_scores_as_the_whole_model(name, settings) -> None:
    model = _model(name, settings)
    state = model_state(model)
    keys = user_row_keys(state)
    assert keys and all(state["state_dict"][k].shape[0] == N_USERS for k in keys)
    if name in ("deepfm", "nfm", "wide_deep", "mmoe"):  # user feature tables are user rows too
        assert sum("feature_users_" in k for k in keys) == 2

    # The item side travels without a single user row, and is rebuilt from bytes alone.
    buffer = io.BytesIO()
    torch.save(item_side_state(state), buffer)
    item_side = build_model(torch.load(io.BytesIO(buffer.getvalue()), weights_only=True))
    assert all(item_side.state_dict()[k].shape[0] == 0 for k in keys)
    assert item_side.user_rows is not None and model.user_rows is None

    # Each user's vector: its rows of every user table side by side (read from the tables).
    tables = list(user_row_tables(state, rows_per_table=10))
    assert [t.num_rows for t in tables] == [10, 10, 10, 7]
    users = np.concatenate([t.column("user_idx").to_numpy() for t in tables])
    np.testing.assert_array_equal(users, np.arange(N_USERS))
    vectors = np.concatenate(
        [np.stack(t.column("user_vector").to_numpy(zero_copy_only=False)) for t in tables]
    )
    expected = torch.cat(
        [state["state_dict"][k].float().reshape(N_USERS, -1) for k in keys], dim=1
    ).numpy()
    np.testing.assert_array_equal(vectors, expected)

    block = np.array([5, 2, 36, 2, 0])
    history = torch.randint(0, N_ITEMS + 1, (len(block), 5))
    with torch.no_grad():
        whole = model.score_all(_batch(torch.as_tensor(block), history))
        attach_user_rows(item_side, vectors[block])
        parted = item_side.score_all(_batch(torch.arange(len(block)), history))
    torch.testing.assert_close(parted, whole, rtol=0, atol=0)

    with pytest.raises(ValueError, match="width"):
        attach_user_rows(item_side, vectors[block][:, :-1])


def test_models_without_user_tables_write_nothing(tmp_path) -> None:
    model = _model("sasrec", {"dim": 8, "num_heads": 2, "num_blocks": 1})
    state = model_state(model)
    assert user_row_keys(state) == []
    assert list(user_row_tables(state, 10)) == []


def test_written_user_rows_are_one_row_per_user(tmp_path) -> None:
    state = model_state(_model("bpr_mf", {"dim": 8}))
    assert write_user_rows(state, tmp_path / "rows", rows_per_file=16) == N_USERS
    assert len(list((tmp_path / "rows").glob("*.parquet"))) == 3
    table = pads.dataset(tmp_path / "rows").to_table().sort_by("user_idx")
    np.testing.assert_array_equal(table.column("user_idx").to_numpy(), np.arange(N_USERS))
    vectors = np.stack(table.column("user_vector").to_numpy(zero_copy_only=False))
    np.testing.assert_array_equal(vectors, state["state_dict"]["user_emb.weight"].numpy())


def test_user_rows_are_written_in_row_groups_of_bounded_bytes(tmp_path) -> None:
    """Row groups of about the byte budget (Spark's reader holds a whole group), the same
    rows read back, whatever the group boundaries."""
    state = model_state(_model("bpr_mf", {"dim": 8}))
    budget = 4 * 8 * 5  # five users' 8-float vectors per group
    written = write_user_rows(state, tmp_path / "rows", rows_per_file=16, group_bytes=budget)
    assert written == N_USERS
    for path in sorted((tmp_path / "rows").glob("*.parquet")):
        meta = pq.ParquetFile(path).metadata
        sizes = [meta.row_group(i).num_rows for i in range(meta.num_row_groups)]
        assert max(sizes) == 5 and sum(sizes) == meta.num_rows, sizes
    table = pads.dataset(tmp_path / "rows").to_table().sort_by("user_idx")
    vectors = np.stack(table.column("user_vector").to_numpy(zero_copy_only=False))
    np.testing.assert_array_equal(vectors, state["state_dict"]["user_emb.weight"].numpy())
    assert rows_per_group(256) == (32 << 20) // 1024
