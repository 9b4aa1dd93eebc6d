"""Baselines on tiny hand-made data: expected values worked out independently."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from pyspark.sql import SparkSession
from pyspark.sql import functions as F
from scipy import sparse

from recpipe.baselines.als import Als, Nmf, als_ratings
from recpipe.baselines.ease import CatalogueTooLargeError, Ease
from recpipe.baselines.item2vec import Item2Vec
from recpipe.baselines.itemknn import SIM_STEP, ItemKnn, item_similarities, top_candidates
from recpipe.baselines.popularity import Popularity
from recpipe.config import AlsConfig, EaseConfig, Item2VecConfig, ItemKnnConfig, PopularityConfig
from recpipe.tables import TrainData

DAY = 86_400


def make_data(pairs: list[tuple[int, int]], n_users: int, n_items: int, ts=None) -> TrainData:
    users = np.array([u for u, _ in pairs], dtype=np.int64)
    items = np.array([i for _, i in pairs], dtype=np.int64)
    n = len(pairs)
    return TrainData(
        users=users,
        items=items,
        event_types=np.array(["view"] * n, dtype=object),
        values=np.full(n, np.nan),
        ts=np.zeros(n, dtype=np.int64) if ts is None else np.asarray(ts, dtype=np.int64),
        n_users=n_users,
        n_items=n_items,
    )


def frame_of(spark: SparkSession, pairs: list[tuple[int, int]], ts=None):
    """The split as Spark reads it: user_idx, item_idx, ts (timestamp from epoch seconds)."""
    seconds = [0] * len(pairs) if ts is None else ts
    rows = [(u, i, int(t)) for (u, i), t in zip(pairs, seconds, strict=True)]
    frame = spark.createDataFrame(rows, "user_idx int, item_idx int, seconds long")
    return frame.select("user_idx", "item_idx", F.timestamp_seconds("seconds").alias("ts"))


def test_popularity_counts_distinct_users_and_recent_window(spark: SparkSession) -> None:
    # item 1: users 1, 2 (user 1 twice); item 2: user 3; item 3: never seen.
    pairs = [(1, 1), (1, 1), (2, 1), (3, 2)]
    ts = [0, 1, 2, 10 * DAY]
    data = make_data(pairs, n_users=4, n_items=3, ts=ts)
    train = frame_of(spark, pairs, ts)
    scores = Popularity.fit(data, PopularityConfig(), train_df=train).score(np.array([1, 2]))
    assert scores.shape == (2, 4)
    assert list(scores[0, 1:3]) == [2.0, 1.0]
    assert scores[0, 0] == -np.inf and scores[0, 3] == -np.inf  # padding, never-seen item
    # Only the last 5 days before the newest interaction: item 1's events are 10 days old.
    recent = Popularity.fit(data, PopularityConfig(recent_days=5), train_df=train)
    recent = recent.score(np.array([1]))
    assert list(recent[0, 1:3]) == [0.0, 1.0]


def ridge_column(history: np.ndarray, column: int, l2: float) -> np.ndarray:
    """Least squares of item ``column`` on all other items with an L2 penalty, solved directly."""
    others = [j for j in range(history.shape[1]) if j != column]
    x = history[:, others]
    coef = np.linalg.solve(x.T @ x + l2 * np.eye(len(others)), x.T @ history[:, column])
    full = np.zeros(history.shape[1])
    full[others] = coef
    return full


def test_ease_matches_per_column_ridge_regression() -> None:
    rng = np.random.default_rng(0)
    n_users, n_items = 30, 6
    pairs = sorted({(int(u), int(i)) for u, i in zip(
        rng.integers(0, n_users, 80), rng.integers(1, n_items + 1, 80), strict=True)})  # fmt: skip
    data = make_data(pairs, n_users, n_items)
    model = Ease.fit(data, EaseConfig(l2=3.0))
    weights = model.arrays["weights"][1:, 1:]
    dense = np.zeros((n_users, n_items))
    for u, i in pairs:
        dense[u, i - 1] = 1.0
    # EASE's closed form equals, column by column, ridge regression with a zero diagonal.
    for j in range(n_items):
        np.testing.assert_allclose(weights[:, j], ridge_column(dense, j, 3.0), atol=1e-9)
    model.attach_history(data)
    np.testing.assert_allclose(model.score(np.array([0]))[0, 1:], dense[0] @ weights)


def test_save_and_load_at_a_uri_replace_the_folder_contents(tmp_path: Path) -> None:
    """A baseline's folder at a viewfs location (mounted onto a local folder): save writes
    through recpipe.storage, leaves exactly the baseline's files, and load reads them back."""
    from recpipe import storage
    from recpipe.baselines.base import BASELINE_FILES
    from recpipe.storage import Location

    storage.configure({"fs.viewfs.mounttable.baselines-test.link./models": tmp_path.as_uri()})
    folder = Location("viewfs://baselines-test/models/ease/2026-11-20/leave_last_out")
    local = tmp_path / "ease" / "2026-11-20" / "leave_last_out"
    local.mkdir(parents=True)
    (local / "model.pt").write_bytes(b"left over")  # what the folder held before
    data = make_data([(0, 1), (0, 2), (1, 2), (1, 3), (2, 1)], n_users=3, n_items=3)
    model = Ease.fit(data, EaseConfig(l2=1.0))
    model.save(folder)
    assert sorted(p.name for p in local.iterdir()) == sorted(BASELINE_FILES)
    loaded = Ease.load(folder)
    for each in (model, loaded):
        each.attach_history(data)
    np.testing.assert_array_equal(loaded.score(np.arange(3)), model.score(np.arange(3)))


def test_ease_refuses_large_catalogue_with_the_key() -> None:
    data = make_data([(0, 1)], n_users=1, n_items=5)
    with pytest.raises(CatalogueTooLargeError, match=r"baselines\.ease\.max_items is 4"):
        Ease.fit(data, EaseConfig(max_items=4))


def test_itemknn_cosine_and_top_n(spark: SparkSession) -> None:
    # users: 1 -> {1, 2}, 2 -> {1, 2, 3}, 3 -> {3}
    pairs = [(1, 1), (1, 2), (2, 1), (2, 2), (2, 3), (3, 3)]
    train = frame_of(spark, pairs)
    sims = {
        (r["item_i"], r["item_j"]): r["sim"]
        for r in item_similarities(train, neighbours=10, shrink=0.0).collect()
    }
    # |U1|=2, |U2|=2, |U3|=2; co(1,2)=2, co(1,3)=1, co(2,3)=1
    assert sims[(1, 2)] == pytest.approx(1.0)
    assert sims[(1, 3)] == pytest.approx(0.5)
    assert sims[(3, 2)] == pytest.approx(0.5)
    assert len(sims) == 6  # ordered pairs of distinct co-occurring items
    shrunk = item_similarities(train, neighbours=1, shrink=1.0).collect()
    # shrink 1: sim * co / (co + 1): (1,2) -> 2/3, (1,3) -> 0.25; top-1 keeps one per item
    by_item = {r["item_i"]: (r["item_j"], r["sim"]) for r in shrunk}
    assert len(shrunk) == 3
    assert by_item[1] == (2, pytest.approx(2 / 3))
    assert by_item[3] == (1, pytest.approx(0.25))  # tie with item 2 broken by smaller index
    model = ItemKnn.fit(make_data(pairs, 4, 3), ItemKnnConfig(neighbours=10), train_df=train)
    # The neighbour lists stay in Spark (a lake table once trained), not in the model's arrays.
    assert set(model.arrays) == {"known_items"} and model.neighbours_table == "itemknn_neighbours"
    kept = model.spark_tables["itemknn_neighbours"]
    rows = kept.frame.collect()
    assert kept.key == ("item_i", "item_j") and len(rows) == 6
    model.attach_neighbours(*(np.array([r[c] for r in rows]) for c in ("item_i", "item_j", "sim")))
    model.attach_history(make_data(pairs, 4, 3))
    # user 3 has {3}: score(j) = sim(3, j): item 1 -> 0.5, item 2 -> 0.5, item 3 -> 0
    np.testing.assert_allclose(model.score(np.array([3]))[0, 1:], [0.5, 0.5, 0.0])


def test_itemknn_candidates_in_spark_equal_the_sparse_product(spark: SparkSession) -> None:
    """Spark's join-and-sum candidates are bit-identical to numpy's sparse product (similarities
    are multiples of SIM_STEP, so sums do not depend on their order), ties by item index."""
    rng = np.random.default_rng(3)
    pairs = sorted(
        {
            (int(u), int(i))
            for u, i in zip(rng.integers(0, 40, 400), rng.integers(1, 31, 400), strict=True)
        }
    )
    train = frame_of(spark, pairs)
    model = ItemKnn.fit(make_data(pairs, 40, 30), ItemKnnConfig(neighbours=8, shrink=2.0),
                        train_df=train)  # fmt: skip
    neighbours = model.spark_tables["itemknn_neighbours"].frame
    rows = neighbours.collect()
    sims = np.array([r["sim"] for r in rows])
    np.testing.assert_array_equal(np.round(sims / SIM_STEP) * SIM_STEP, sims)
    model.attach_neighbours(*(np.array([r[c] for r in rows]) for c in ("item_i", "item_j", "sim")))
    histories: dict[int, list[int]] = {}
    for user, item in pairs:
        histories.setdefault(user, []).append(item)
    users = spark.createDataFrame(sorted(histories.items()), "user_idx int, items array<int>")
    for exclude_seen in (True, False):
        got = {r["user_idx"]: r for r in
               top_candidates(users, neighbours, 5, exclude_seen).collect()}  # fmt: skip
        order = sorted(histories)
        matrix = np.zeros((len(order), 31))
        for row, user in enumerate(order):
            matrix[row, histories[user]] = 1.0
        items, scores = model.top_candidates(sparse.csr_matrix(matrix), 5, exclude_seen)
        for row, user in enumerate(order):
            width = int((items[row] > 0).sum())
            assert (got[user]["candidate_items"] or []) == items[row, :width].tolist(), user
            assert (got[user]["candidate_scores"] or []) == scores[row, :width].tolist(), user
            # By hand: the sum of sim(i, j) over the user's items, best first, ties by index.
            by_hand: dict[int, float] = {}
            for r in rows:
                if r["item_i"] in histories[user]:
                    by_hand[r["item_j"]] = by_hand.get(r["item_j"], 0.0) + r["sim"]
            if exclude_seen:
                by_hand = {j: v for j, v in by_hand.items() if j not in histories[user]}
            best = sorted(by_hand, key=lambda j: (-by_hand[j], j))[:5]
            assert items[row, :width].tolist() == best, user


def test_itemknn_counts_each_users_most_recent_items_only(spark: SparkSession) -> None:
    # user 1 touched items 1, 2, 3 at seconds 0, 1, 2 (item 1 again at 3); user 2 items 2, 3.
    pairs = [(1, 1), (1, 2), (1, 3), (1, 1), (2, 2), (2, 3)]
    train = frame_of(spark, pairs, ts=[0, 1, 2, 3, 0, 0])

    def similarities(cap: int | None) -> dict[tuple[int, int], float]:
        rows = item_similarities(train, neighbours=10, shrink=0.0, max_user_items=cap)
        return {(r["item_i"], r["item_j"]): r["sim"] for r in rows.collect()}

    # No cap: degrees 1, 2, 2; co(1,2) = co(1,3) = 1, co(2,3) = 2.
    assert similarities(None) == pytest.approx(
        {(1, 2): 1 / math.sqrt(2), (2, 1): 1 / math.sqrt(2), (1, 3): 1 / math.sqrt(2),
         (3, 1): 1 / math.sqrt(2), (2, 3): 1.0, (3, 2): 1.0}
    )  # fmt: skip
    # Cap 2: user 1 keeps items 1 (second 3) and 3 (second 2); user 2 keeps both of its items.
    # Degrees 1, 1, 2; co(1,3) = 1, co(2,3) = 1.
    assert similarities(2) == pytest.approx(
        {(1, 3): 1 / math.sqrt(2), (3, 1): 1 / math.sqrt(2), (2, 3): 1 / math.sqrt(2),
         (3, 2): 1 / math.sqrt(2)}
    )  # fmt: skip


def test_als_weights_and_block_structure(spark: SparkSession, tmp_path: Path) -> None:
    events = spark.createDataFrame(
        [(1, 1, "view", None), (1, 1, "purchase", None), (2, 1, "rating", 4.0)],
        "user_idx int, item_idx int, event_type string, value double",
    )
    settings = AlsConfig(event_weights={"view": 1.0, "purchase": 8.0, "rating": 1.0})
    weights = {(r[0], r[1]): r[2] for r in als_ratings(events, settings).collect()}
    assert weights == {(1, 1): 9.0, (2, 1): 1.0}
    as_value = AlsConfig(event_weights={"rating": 1.0}, rating_as_weight=True)
    assert {(r[0], r[1]): r[2] for r in als_ratings(events, as_value).collect()} == {(2, 1): 4.0}
    # Two disjoint communities: users 0-9 like items 1-5, users 10-19 like items 6-10. Each
    # user misses one item of their block; ALS must rank it above every other block's item.
    pairs = [(u, i) for u in range(10) for i in range(1, 6) if i != 1 + u % 5]
    pairs += [(u, i) for u in range(10, 20) for i in range(6, 11) if i != 6 + u % 5]
    data = make_data(pairs, n_users=20, n_items=10)
    frame = spark.createDataFrame(
        [(u, i, "view", None) for u, i in pairs],
        "user_idx int, item_idx int, event_type string, value double",
    )
    model = Als.fit(data, AlsConfig(rank=4, max_iter=10, reg_param=0.1, alpha=3.0), train_df=frame)
    assert model.arrays["item_factors"].shape == (11, 4)
    # `auto` keeps 30 x 4 factors' iterations in memory, as MLlib does by default.
    assert model.meta["intermediate_storage"] == "MEMORY_AND_DISK"
    # The user factors stay in Spark: one row per user, none in the arrays that get saved.
    assert "user_factors" not in model.arrays
    assert model.user_vectors_table == "als_user_factors"
    rows = model.spark_tables["als_user_factors"].frame.collect()
    assert sorted(r["user_idx"] for r in rows) == list(range(20))
    with pytest.raises(RuntimeError, match="als_user_factors"):
        model.score(np.arange(20))
    vectors = np.zeros((20, 4), dtype=np.float32)
    for r in rows:
        vectors[r["user_idx"]] = r["user_vector"]
    # Scores from vectors given per user equal the scores of vectors held in memory.
    from_column = model.scores_of_vectors(vectors[[3, 12]])
    model.attach_user_vectors(vectors)
    assert model.user_vectors_table is None
    scores = model.score(np.arange(20))
    np.testing.assert_array_equal(from_column[:, 1:], scores[[3, 12], 1:])
    for user in range(20):
        missing = 1 + user % 5 if user < 10 else 6 + user % 5
        other_block = range(6, 11) if user < 10 else range(1, 6)
        assert scores[user, missing] > max(scores[user, j] for j in other_block)
    model.save(tmp_path / "als")
    np.testing.assert_array_equal(Als.load(tmp_path / "als").score(np.arange(20)), scores)
    assert np.allclose(scores[0, 1:], vectors[0] @ model.arrays["item_factors"][1:].T)
    assert not math.isnan(scores[0, 1])


def _two_communities(spark: SparkSession):
    """Users 0-9 use items 1-5, users 10-19 items 6-10 (each misses one item of their block),
    as TrainData and as the Spark frame a baseline fitted in Spark reads (ts ascending)."""
    pairs = [(u, i) for u in range(10) for i in range(1, 6) if i != 1 + u % 5]
    pairs += [(u, i) for u in range(10, 20) for i in range(6, 11) if i != 6 + u % 5]
    ts = [DAY + 60 * k for k in range(len(pairs))]
    frame = frame_of(spark, pairs, ts).select(
        "*", F.lit("view").alias("event_type"), F.lit(None).cast("double").alias("value")
    )
    return pairs, make_data(pairs, n_users=20, n_items=10, ts=ts), frame


def test_nmf_factors_are_non_negative_and_rank_each_block(spark: SparkSession) -> None:
    _, data, frame = _two_communities(spark)
    model = Nmf.fit(data, AlsConfig(rank=4, max_iter=10, reg_param=0.1), train_df=frame)
    assert model.user_vectors_table == "nmf_user_factors"
    rows = model.spark_tables["nmf_user_factors"].frame.collect()
    vectors = np.zeros((20, 4), dtype=np.float32)
    for r in rows:
        vectors[r["user_idx"]] = r["user_vector"]
    assert sorted(r["user_idx"] for r in rows) == list(range(20))
    assert (vectors >= 0).all() and (model.arrays["item_factors"] >= 0).all()
    # Not ALS by another name: unconstrained ALS on the same data has negative factors.
    als = Als.fit(data, AlsConfig(rank=4, max_iter=10, reg_param=0.1), train_df=frame)
    assert (als.arrays["item_factors"] < 0).any()
    model.attach_user_vectors(vectors)
    scores = model.score(np.arange(20))
    for user in range(20):
        missing = 1 + user % 5 if user < 10 else 6 + user % 5
        other_block = range(6, 11) if user < 10 else range(1, 6)
        assert scores[user, missing] > max(scores[user, j] for j in other_block)


def test_item2vec_vectors_and_user_centroids(spark: SparkSession) -> None:
    pairs, data, frame = _two_communities(spark)
    settings = Item2VecConfig(vector_size=8, window_size=3, max_iter=10, history_window=2)
    model = Item2Vec.fit(data, settings, train_df=frame)
    # A window longer than every history takes the whole history.
    longer = Item2Vec.fit(data, settings.model_copy(update={"history_window": 9}), train_df=frame)
    whole = {r["user_idx"]: r["user_vector"] for r in
             longer.spark_tables["item2vec_user_factors"].frame.collect()}  # fmt: skip
    assert sorted(whole) == list(range(20))
    for user, vector in whole.items():
        mine = [i for u, i in pairs if u == user]
        expected = longer.arrays["item_factors"][mine].mean(0)
        np.testing.assert_allclose(vector, expected, rtol=1e-5, atol=1e-6)
    items = model.arrays["item_factors"]
    np.testing.assert_allclose(np.linalg.norm(items[1:], axis=1), 1.0, rtol=1e-5)
    assert not items[0].any() and not model.known_items[0]
    # Items of one community are nearer each other than the other community's items.
    sims = items @ items.T
    assert sims[1:6, 1:6].mean() > sims[1:6, 6:11].mean() + 0.5
    # Each user: the mean unit vector of their last two items by time (computed here by hand).
    rows = model.spark_tables["item2vec_user_factors"].frame.collect()
    assert sorted(r["user_idx"] for r in rows) == list(range(20))
    for r in rows:
        last_two = [i for u, i in pairs if u == r["user_idx"]][-2:]
        expected = items[last_two].mean(0)
        np.testing.assert_allclose(r["user_vector"], expected, rtol=1e-5, atol=1e-6)


def test_item2vec_leaves_rare_items_unrecommended(spark: SparkSession) -> None:
    pairs, data, frame = _two_communities(spark)
    once = frame_of(spark, [(0, 11)], [DAY]).select(
        "*", F.lit("view").alias("event_type"), F.lit(None).cast("double").alias("value")
    )
    rare = frame.unionByName(once)
    data = make_data([*pairs, (0, 11)], n_users=20, n_items=11)
    model = Item2Vec.fit(data, Item2VecConfig(vector_size=4, min_count=2), train_df=rare)
    assert data.n_items == 11 and not model.known_items[11] and model.known_items[1:11].all()
    assert not model.arrays["item_factors"][11].any()


def test_als_refuses_blocks_too_small_for_its_rows_before_fitting(
    spark: SparkSession, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With a row price that leaves room for 10 train rows a task, 40 rows in 4 user blocks fit
    and 3 item blocks do not: the fit stops naming the key and the count that fits."""
    from recpipe import task_memory

    pairs = [(u, i) for u in range(8) for i in range(1, 6)]
    frame = spark.createDataFrame(
        [(u, i, "view", None) for u, i in pairs],
        "user_idx int, item_idx int, event_type string, value double",
    )
    data = make_data(pairs, n_users=8, n_items=5)
    conf = dict(spark.sparkContext.getConf().getAll())
    memory = task_memory.task_memory(conf, spark.sparkContext.defaultParallelism)
    monkeypatch.setattr(task_memory, "ALS_ROW_BYTES", memory.mib * 2**20 // 10)
    jobs_before = len(spark.sparkContext.statusTracker().getJobIdsForGroup())
    settings = AlsConfig(rank=2, max_iter=1, num_user_blocks=4, num_item_blocks=3)
    with pytest.raises(task_memory.ShufflePartitionsTooFewError) as refused:
        Als.fit(data, settings, train_df=frame)
    assert "baselines.als.num_item_blocks to at least 4" in str(refused.value)
    assert len(spark.sparkContext.statusTracker().getJobIdsForGroup()) == jobs_before
    fitted = Als.fit(data, settings.model_copy(update={"num_item_blocks": 4}), train_df=frame)
    assert fitted.arrays["item_factors"].shape == (6, 2)
