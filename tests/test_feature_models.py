"""Features inside models: the field encoder against hand computation, the hybrid two-tower's
cold items scored from their features alone, and feature tables read back from the lake."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.dataset as pads
import pytest
import torch
from helpers import build_config, run_chain, write_jsonl
from pyspark.sql import SparkSession

from recpipe.commit import current_version
from recpipe.data.batch import Batch
from recpipe.features_data import feature_tables, load_tables, save_tables
from recpipe.knowledge import graph_sizes, knowledge_tables
from recpipe.model_settings import HybridTwoTowerConfig
from recpipe.models import ModelContext, model_class
from recpipe.models.base import RecModel
from recpipe.models.fields import FieldEncoder
from recpipe.models.hybrid_two_tower import HybridTwoTower
from recpipe.scoring.histories import UserHistories
from recpipe.scoring.scorers import deep_scorer
from recpipe.stages.catalog import run_catalog
from recpipe.stages.features import run_features

LAYOUT = [
    {"name": "tags", "kind": "multi", "width": 3, "size": 5},
    {"name": "price", "kind": "numeric", "width": 1, "size": None},
]


def test_field_encoder_matches_hand_computation() -> None:
    tags = torch.tensor([[0, 0, 0], [2, 3, 0], [4, 9, 0]])  # 9: a value new since training
    price = torch.tensor([0.0, 1.5, -2.0])
    encoder = FieldEncoder("items", LAYOUT, 3, 4, {"items.tags": tags, "items.price": price})
    table = encoder.embeddings["tags"].weight
    vector = encoder.vectors["price"]
    keys = torch.tensor([1, 2, 0, 7])  # 7: a key past the table (new since training)
    with torch.no_grad():
        got = encoder.fields(keys)
        assert got.shape == (4, 2, 4)
        torch.testing.assert_close(got[0, 0], (table[2] + table[3]) / 2)
        torch.testing.assert_close(got[1, 0], (table[4] + table[1]) / 2)  # 9 -> out of vocab
        torch.testing.assert_close(got[0, 1], 1.5 * vector)
        torch.testing.assert_close(got[1, 1], -2.0 * vector)
        assert torch.equal(got[2], torch.zeros(2, 4))  # padding row: nothing
        assert torch.equal(got[3], torch.zeros(2, 4))  # unknown key: every feature missing
    with pytest.raises(ValueError, match=r"feature items.tags: table \(2, 3\), layout \(3, 3\)"):
        FieldEncoder("items", LAYOUT, 3, 4, {"items.tags": tags[:2]})


def _hybrid(counts: np.ndarray, genres: torch.Tensor) -> HybridTwoTower:
    layout = {"items": [{"name": "genre", "kind": "categorical", "width": 1, "size": 4}]}
    context = ModelContext(
        n_users=3, n_items=5, max_len=4, item_counts=counts, feature_layout=layout,
        feature_values={"items.genre": genres},
    )  # fmt: skip
    config = HybridTwoTowerConfig(
        dim=8, epochs=1, batch_size=4, lr=1e-3, weight_decay=0.0, warmup_steps=0,
        temperature=0.1, normalize=True, item_layers=[16], user_layers=[16],
        use_item_ids=True, id_dropout=0.0, history_dropout=0.0, dropout=0.0,
    )  # fmt: skip
    torch.manual_seed(0)
    return HybridTwoTower(config, context).eval()


def test_hybrid_scores_untrained_items_from_their_features_alone() -> None:
    """Items 4 and 5 never occur in training: their id rows are ignored, so with equal genres
    they score equally, and a trained item with the same genre differs only by its id."""
    genres = torch.tensor([[0], [2], [3], [2], [3], [3]])
    counts = np.array([0, 4, 2, 1, 0, 0])
    model = _hybrid(counts, genres)
    with torch.no_grad():
        items = model.item_embeddings()
        assert torch.equal(items[4], items[5])
        assert not torch.equal(items[2], items[4])  # item 2 is trained: its id counts
        model.item_emb.weight[4] += 1.0  # an untrained id row does not move the item
        assert torch.equal(model.item_embeddings()[4], items[4])
        model.item_fields.table("genre")[5] = 2  # its features do
        assert not torch.equal(model.item_embeddings()[5], items[5])
        assert torch.equal(items[0], torch.zeros(8))


def _views(ds: str, items: int, users: int) -> list[dict[str, str]]:
    """One view of each item i0.. on ``ds``, by users u0.. in turn, a minute apart."""
    return [
        {"user_id": f"u{k % users}", "item_id": f"i{k}", "event_type": "view",
         "ts": f"{ds}T00:0{k}:00Z"}
        for k in range(items)
    ]  # fmt: skip


def test_feature_tables_read_back_the_lake_as_of_the_day(
    spark: SparkSession, tmp_path: Path
) -> None:
    """Dense tables indexed like vocab: each item's row holds its feature, unknown rows 0."""
    ds = "2026-11-22"
    events = _views(ds, items=6, users=3)
    items = [{"item_id": f"i{k}", "shade": "dark" if k % 2 else "light"} for k in range(5)]
    config = build_config(
        tmp_path,
        f"paths.raw_events={write_jsonl(tmp_path / 'raw' / 'e.jsonl', events)}",
        f"paths.raw_items={write_jsonl(tmp_path / 'raw' / 'items.jsonl', items)}",
        "features.items.shade={kind: categorical}",
    )
    run_chain(spark, config, ds, ("clean", "vocab"))
    run_catalog(spark, config, ds)
    run_features(spark, config, ds)
    assert feature_tables(config.root, "2026-11-21", 3, 6) == ({}, {}, {})  # nothing before
    layout, tables, days = feature_tables(config.root, ds, 3, 6)
    assert days == {"items": ds} and layout == {
        "items": [{"name": "shade", "kind": "categorical", "width": 1, "size": 4}]
    }
    vocab = pads.dataset(current_version(config.root, "vocab_items", {"ds": ds}).local_path())
    index = {r["item_id"]: r["item_idx"] for r in vocab.to_table().to_pylist()}
    shade = tables["items.shade"]
    assert shade.shape == (7, 1) and int(shade[0, 0]) == 0
    assert int(shade[index["i5"], 0]) == 0  # i5 has events but no catalogue row
    darks = {int(shade[index[f"i{k}"], 0]) for k in (1, 3)}
    lights = {int(shade[index[f"i{k}"], 0]) for k in (0, 2, 4)}
    assert len(darks) == len(lights) == 1 and darks != lights and darks | lights == {2, 3}
    assert lights == {2}  # three light items come first (rows desc, then value)
    save_tables(tmp_path / "f.pt", tables)
    assert torch.equal(load_tables(tmp_path / "f.pt")["items.shade"], shade)


def test_knowledge_tables_index_the_graph_as_of_the_day(
    spark: SparkSession, tmp_path: Path
) -> None:
    """Links join the item vocabulary (an unindexed item's link is dropped); entities and
    relations are numbered 1.. in sorted name order, so the triples decode back to the input."""
    ds = "2026-11-22"
    events = _views(ds, items=4, users=2)
    links = [{"item_id": "i0", "entity": "m.a"}, {"item_id": "i1", "entity": "m.b"},
             {"item_id": "i2", "entity": "m.c"}, {"item_id": "i9", "entity": "m.z"}]  # fmt: skip
    triples = [("m.a", "starring", "m.x"), ("m.b", "starring", "m.x"),
               ("m.c", "directed_by", "m.y"), ("m.x", "award", "m.w")]  # fmt: skip
    raw = tmp_path / "raw"
    config = build_config(
        tmp_path,
        f"paths.raw_events={write_jsonl(raw / 'e.jsonl', events)}",
        f"paths.raw_links={write_jsonl(raw / 'links.jsonl', links)}",
        "paths.raw_kg=" + str(write_jsonl(
            raw / "kg.jsonl", [{"head": h, "relation": r, "tail": t} for h, r, t in triples]
        )),
    )  # fmt: skip
    run_chain(spark, config, ds, ("clean", "vocab"))
    run_catalog(spark, config, ds)
    assert knowledge_tables(config.root, "2026-11-21", 4) == ([], {})  # nothing before
    fields, tables = knowledge_tables(config.root, ds, 4)
    entities = sorted({"m.a", "m.b", "m.c", "m.w", "m.x", "m.y"})  # m.z: i9 has no index
    relations = sorted({r for _, r, _ in triples})
    entity, relation = (
        {e: n + 1 for n, e in enumerate(entities)},
        {r: n + 1 for n, r in enumerate(relations)},
    )
    assert [(f["name"], f["size"]) for f in fields] == [("item_entity", 7), ("triples", 4)]
    assert fields[0]["linked_items"] == 3 and fields[1]["triples"] == 4
    vocab = pads.dataset(current_version(config.root, "vocab_items", {"ds": ds}).local_path())
    index = {r["item_id"]: r["item_idx"] for r in vocab.to_table().to_pylist()}
    expected = torch.zeros(5, dtype=torch.int64)
    for link in links[:3]:
        expected[index[link["item_id"]]] = entity[link["entity"]]
    assert torch.equal(tables["kg.item_entity"], expected)
    got = {tuple(row) for row in tables["kg.triples"].tolist()}
    assert got == {(entity[h], relation[r], entity[t]) for h, r, t in triples}
    assert graph_sizes({"kg": fields}) == (7, 4)
    # A model whose vocabulary ends before an item does not own that item's link.
    narrow, _ = knowledge_tables(config.root, ds, max(index[i] for i in ("i0", "i1", "i2")) - 1)
    assert narrow[0]["linked_items"] == 2


def test_untrained_items_are_candidates_only_for_a_model_that_scores_them() -> None:
    """Cold items (no train interaction): the hybrid with item features ranks them, and may
    read them in a history; an id-only model (and the hybrid without features) never lists
    them, as its scores for them are untrained noise."""
    genres = torch.tensor([[0], [2], [3], [2], [3], [3]])
    counts = np.array([0, 4, 2, 1, 0, 0])
    known = counts > 0  # what the train split says: items 4 and 5 are cold
    histories = UserHistories.from_events(
        np.array([1, 1, 2]), np.array([1, 4, 2]), np.array([10, 20, 10]), distinct=True,
        n_users=3,
    )  # fmt: skip
    hybrid = _hybrid(counts, genres)
    items, _ = deep_scorer(hybrid, known, np.ones(3, dtype=bool)).top_k(histories, 5, 16)
    listed = {int(i) for i in items.ravel() if i}
    assert {4, 5} & listed  # cold items compete
    assert not {1, 4} & set(items[1].tolist())  # user 1 saw them: excluded like any seen item
    bare = HybridTwoTower(hybrid.config, ModelContext(n_users=3, n_items=5, item_counts=counts))
    ids_only, _ = deep_scorer(bare.eval(), known, np.ones(3, dtype=bool)).top_k(histories, 5, 16)
    assert not {4, 5} & {int(i) for i in ids_only.ravel()}


@pytest.mark.parametrize("name", ["deepfm", "nfm", "wide_deep"])
def test_factorisation_models_read_an_untrained_item_id_as_missing(name: str) -> None:
    """An item without training interactions is scored from its features: moving its id rows
    changes nothing, moving a trained item's does; the model says it scores such items."""
    layout = {"items": [{"name": "genre", "kind": "categorical", "width": 1, "size": 4}]}
    counts = np.array([0, 4, 2, 1, 0, 0])
    context = ModelContext(
        n_users=3, n_items=5, item_counts=counts, feature_layout=layout,
        feature_values={"items.genre": torch.tensor([[0], [2], [3], [2], [3], [3]])},
    )  # fmt: skip
    cls = model_class(name)
    settings = {
        "dim": 4, "mlp_layers": [8], "dropout": 0.0, "user_id_dropout": 0.0,
        "score_chunk_pairs": 7,
    }  # fmt: skip
    if name == "wide_deep":
        settings["cross_buckets"] = 13
    torch.manual_seed(0)
    model = cls(cls.config_class(**settings), context).eval()
    assert model.scores_untrained_items
    batch = Batch(users=torch.tensor([1, 2]))
    with torch.no_grad():
        before = model.score_all(batch)
        torch.testing.assert_close(before[:, 4], before[:, 5])  # same genre, both untrained
        model.fields.item_emb.weight[4:] += 1.0
        model.fields.item_weight.weight[4:] += 1.0
        model.fields.item_emb.weight[1] += 1.0
        after = model.score_all(batch)
    torch.testing.assert_close(after[:, 4:], before[:, 4:])
    assert not torch.allclose(after[:, 1], before[:, 1])
    bare = cls(cls.config_class(**settings), ModelContext(n_users=3, n_items=5))
    assert not bare.scores_untrained_items  # ids only: nothing to score a new item by


@pytest.mark.parametrize("name", ["deepfm", "nfm", "wide_deep", "mmoe", "bpr_mf"])
def test_a_fresh_model_starts_untrained_users_at_zero(name: str) -> None:
    """``forget_untrained_users`` zeroes exactly the user-table rows of users without train
    interactions; trained users keep the rows a build without the mask gives (same seed)."""
    trained = np.array([False, True, False, True])
    cls = model_class(name)
    settings = model_settings_of(name)
    torch.manual_seed(0)
    plain = cls(cls.config_class(**settings), ModelContext(n_users=4, n_items=5))
    torch.manual_seed(0)
    model = cls(
        cls.config_class(**settings), ModelContext(n_users=4, n_items=5, trained_users=trained)
    )
    names = cls.user_table_names(model.config)
    assert names and model.forget_untrained_users() == 2
    for table in names:
        rows, reference = model.get_submodule(table).weight, plain.get_submodule(table).weight
        assert torch.equal(rows[~torch.as_tensor(trained)], torch.zeros_like(rows[[0, 2]]))
        torch.testing.assert_close(rows[[1, 3]], reference[[1, 3]], rtol=0, atol=0)


def model_settings_of(name: str) -> dict[str, object]:
    """Tiny settings for the models the cold-user tests build."""
    if name == "bpr_mf":
        return {"dim": 4, "reg": 0.0}
    settings: dict[str, object] = {
        "dim": 4, "mlp_layers": [8], "dropout": 0.0, "user_id_dropout": 0.0,
        "score_chunk_pairs": 7,
    }  # fmt: skip
    if name == "wide_deep":
        settings["cross_buckets"] = 13
    if name == "mmoe":
        settings = {
            "dim": 4, "experts": 2, "expert_layers": [8], "tower_layers": [4], "dropout": 0.0,
            "rating_weight": 1.0, "rating_scale": 5.0, "rank_by": "interaction",
            "user_id_dropout": 0.0, "score_chunk_pairs": 7,
        }  # fmt: skip
    return settings


@pytest.mark.parametrize("name", ["deepfm", "nfm", "wide_deep", "mmoe"])
def test_factorisation_models_score_an_untrained_user_from_their_profile(name: str) -> None:
    """Users 2 and 3 have no train interaction: with a user feature their rows are a function
    of it alone (equal profiles, equal rows; another profile, other rows) and the scorer lists
    them; without user features the model says it cannot, and the scorer skips them."""
    layout = {"users": [{"name": "age", "kind": "categorical", "width": 1, "size": 4}]}
    trained = np.array([False, True, False, False])
    context = ModelContext(
        n_users=4, n_items=5, trained_users=trained, feature_layout=layout,
        feature_values={"users.age": torch.tensor([[0], [2], [3], [3]])},
    )  # fmt: skip
    cls = model_class(name)
    torch.manual_seed(0)
    model = cls(cls.config_class(**model_settings_of(name)), context)
    model.forget_untrained_users()
    model.eval()
    assert model.scores_untrained_users
    with torch.no_grad():
        rows = model.score_all(Batch(users=torch.tensor([1, 2, 3])))
        torch.testing.assert_close(rows[1], rows[2])  # same profile, both untrained
        model.fields.user_emb.weight[1] += 1.0  # a trained user's id matters
        assert not torch.allclose(model.score_all(Batch(users=torch.tensor([1])))[0], rows[0])
    histories = UserHistories.from_events(
        np.array([1]), np.array([1]), np.array([10]), distinct=True, n_users=4
    ).take(np.array([1, 2, 3]))
    items, _ = deep_scorer(model, np.ones(6, dtype=bool), trained).top_k(histories, 2, 16)
    assert (items > 0).all()  # every user listed, the cold ones included
    bare = cls(cls.config_class(**model_settings_of(name)), ModelContext(n_users=4, n_items=5))
    assert not bare.scores_untrained_users
    scorer = deep_scorer(bare.eval(), np.ones(6, dtype=bool), trained)
    assert scorer.can_score(histories).tolist() == [True, False, False]


def _history_model(name: str, history_dropout: float) -> RecModel:
    """A tiny hybrid or DIN over item genres and user ages (users 1 and 3 share an age)."""
    counts = np.array([0, 4, 2, 1, 3, 2])
    genres = torch.tensor([[0], [2], [3], [2], [3], [3]])
    layout = {
        "items": [{"name": "genre", "kind": "categorical", "width": 1, "size": 4}],
        "users": [{"name": "age", "kind": "categorical", "width": 1, "size": 4}],
    }
    context = ModelContext(
        n_users=4, n_items=5, max_len=4, item_counts=counts, feature_layout=layout,
        feature_values={"items.genre": genres, "users.age": torch.tensor([[0], [2], [3], [2]])},
    )  # fmt: skip
    if name == "hybrid_two_tower":
        config = _hybrid(counts, genres).config
        config = config.model_copy(update={"history_dropout": history_dropout})
    else:
        config = model_class(name).config_class(
            dim=8, attention_layers=[12], mlp_layers=[16], dropout=0.0,
            history_dropout=history_dropout, negatives=3, score_chunk_pairs=60,
        )  # fmt: skip
    torch.manual_seed(0)
    return model_class(name)(config, context)


@pytest.mark.parametrize("name", ["hybrid_two_tower", "din"])
def test_history_models_place_a_user_without_history_by_their_profile(name: str) -> None:
    """history_dropout > 0: the hybrid and DIN rank for an empty history from the profile
    alone (equal profiles, equal rows; another profile, other rows; the id is never read),
    training with it runs, and the scorer lists such users; with history_dropout = 0 it
    skips them, as for every history model."""
    model = _history_model(name, 0.5)
    assert model.scores_untrained_users
    batch = Batch(users=torch.tensor([1, 2]), items=torch.tensor([2, 3]),
                  history=torch.tensor([[0, 1, 2, 3], [0, 0, 1, 2]]))  # fmt: skip
    loss = model.train()(batch)
    loss.backward()
    assert torch.isfinite(loss)
    model.eval()
    empty = Batch(users=torch.tensor([1, 3, 2]), history=torch.zeros((3, 4), dtype=torch.int64))
    with torch.no_grad():
        rows = model.score_all(empty)
    torch.testing.assert_close(rows[0], rows[1])  # users 1 and 3: the same age
    assert not torch.allclose(rows[0], rows[2])
    histories = UserHistories.from_events(
        np.array([1]), np.array([1]), np.array([10]), distinct=True, n_users=4
    ).take(np.array([1, 3]))
    trained = np.array([False, True, False, False])
    known = model.item_counts.numpy() > 0
    scorer = deep_scorer(model, known, trained)
    assert scorer.can_score(histories).all()
    assert (scorer.top_k(histories, 2, 16)[0] > 0).all()
    still = _history_model(name, 0.0).eval()
    assert deep_scorer(still, known, trained).can_score(histories).tolist() == [True, False]


@pytest.mark.parametrize("name", ["deepfm", "mmoe"])
def test_user_id_dropout_reads_a_share_of_training_ids_as_missing(name: str) -> None:
    """With user_id_dropout 0.4 about 40 % of training rows get a zero id field and first-order
    weight (binomial bounds over 4,000 rows), the feature fields never; in eval mode none."""
    layout = {"users": [{"name": "age", "kind": "categorical", "width": 1, "size": 4}]}
    context = ModelContext(
        n_users=4, n_items=5, feature_layout=layout,
        feature_values={"users.age": torch.tensor([[0], [2], [3], [1]])},
    )  # fmt: skip
    cls = model_class(name)
    settings = {**model_settings_of(name), "user_id_dropout": 0.4}
    torch.manual_seed(0)
    model = cls(cls.config_class(**settings), context)
    with torch.no_grad():
        model.fields.user_weight.weight += 1.0  # non-zero first-order weights
        keys = torch.tensor([1, 2, 3]).repeat(4000 // 3 + 1)[:4000]
        vectors, first = model.train().fields.users(keys)
        dropped = (vectors[:, 0] == 0).all(-1)
        assert 1450 < int(dropped.sum()) < 1750  # mean 1,600, sd 31
        assert torch.equal(dropped, first == model.fields.user_fields.first_order(keys).sum(-1))
        assert (vectors[:, 1] != 0).any(-1).all()  # the age field is always there
        vectors, _ = model.eval().fields.users(keys)
        assert not (vectors[:, 0] == 0).all(-1).any()
