"""Distributed scoring: Spark equals one process, cold start, seen and unknown items excluded."""

from __future__ import annotations

import json
import math
import random
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pytest
import torch
from helpers import (
    brute_force_top_k,
    build_config,
    partition_dir,
    read_manifest,
    run_chain,
    write_jsonl,
)
from pyspark.sql import SparkSession

from recpipe.cli import main
from recpipe.data.batch import Batch
from recpipe.errors import MissingInputError
from recpipe.evaluation.ranking import csr_from_pairs
from recpipe.lake import Lake
from recpipe.layout import model_dir
from recpipe.model_store import load_payload
from recpipe.query import run_sql
from recpipe.scoring.distributed import ScoreSettings, score_frame, score_locally
from recpipe.scoring.inputs import (
    history_frame,
    popular_list,
    read_histories,
    with_trained_flag,
)
from recpipe.scoring.model_columns import with_columns_locally, with_model_columns
from recpipe.scoring.scorers import build_scorer
from recpipe.stages.catalog import run_catalog
from recpipe.stages.evaluate import choose_engine, evaluate_model, run_evaluate
from recpipe.stages.export import run_export
from recpipe.stages.features import run_features
from recpipe.stages.gate import run_gate
from recpipe.stages.publish import run_publish
from recpipe.stages.score import run_score
from recpipe.stages.train import run_train
from recpipe.stages.train_baseline import run_train_baseline
from recpipe.train.checkpoint import MODEL_FILE, load_model, load_state
from recpipe.warehouse import RECOMMENDATIONS, partition_location, read_pointer

DS1, DS2 = "2026-11-20", "2026-11-21"
N_OLD_USERS, N_ITEMS, K = 30, 50, 5
PROTOCOL = "random_by_user"
KNOWN_ITEM_NEWCOMERS = ("n0", "n1", "n2")  # new on DS2, only items known to the DS1 models
NEW_ITEM_NEWCOMERS = ("n3", "n4")  # new on DS2, only items new on DS2
BASE = (
    f"split.protocols=[{PROTOCOL}]",
    "split.random_by_user.train=0.7",
    "split.random_by_user.valid=0.1",
    "split.random_by_user.test=0.2",
    "export.negatives=2",
    "export.max_len=6",
    "export.files_per_process=2",
    "train.processes=1",
    "train.launcher=local",
    "train.max_epochs=2",
    "train.torch_threads=1",
    f"score.k={K}",
    "score.popular_window_days=1",
    "warehouse.database=scoring_tests",
    # Scoring mechanics against the measured protocol's models (tests/test_refit.py: refit).
    "score.train_on=protocol",
    # Event context: the factorisation models read it, and score with each user's last.
    "features.context.device={kind: categorical}",
    "features.context.hour={kind: time, part: hour}",
)
DEEP = ["bpr_mf", "neumf", "sasrec"]
# The rest of the deep zoo: trained too, and scored by Spark as by one process.
ZOO = [
    "narm",
    "stamp",
    "svdpp",
    "mult_vae",
    "cdae",
    "recvae",
    "irgan",
    "rum",
    "hybrid_two_tower",
    "deepfm",
    "nfm",
    "wide_deep",
    "din",
    "cke",
    "mmoe",
]
# DS1's catalogue and its features: every deep model trains with the feature tables in its
# context (the feature-aware ones read them, and carry them into scoring as buffers).
FEATURE_SPECS = (
    "features.items.genre={kind: categorical}",
    "features.items.price={kind: numeric}",
    "features.items.words={kind: text, field: title, hash_buckets: 32, max_tokens: 3}",
    "features.users.region={kind: categorical}",
)
BASELINES = ["als", "ease", "itemknn", "nmf", "item2vec", "popularity"]


def event(user: str, item: str, day: str, second: int) -> dict:
    clock = f"{second // 3600:02d}:{second // 60 % 60:02d}:{second % 60:02d}"
    device = ("web", "ios", "android")[(len(user) + second) % 3]
    return {"user_id": user, "item_id": item, "event_type": "view", "ts": f"{day}T{clock}Z",
            "device": device}  # fmt: skip


def events_day1() -> list[dict]:
    rng = random.Random(5)
    rows = []
    for user in range(N_OLD_USERS):
        start = rng.randrange(N_ITEMS // 2)
        for k in range(rng.randint(6, 14)):
            item = (user % 2) * (N_ITEMS // 2) + (start + k) % (N_ITEMS // 2)
            rows.append(event(f"u{user}", f"i{item}", DS1, 60 * k + user))
    return rows


def events_day2() -> list[dict]:
    rng = random.Random(6)
    rows = []
    for user in range(0, N_OLD_USERS, 3):  # some old users come back
        rows.append(event(f"u{user}", f"i{rng.randrange(N_ITEMS)}", DS2, 100 + user))
    for n, user in enumerate(KNOWN_ITEM_NEWCOMERS):
        rows += [event(user, f"i{(7 * n + j) % N_ITEMS}", DS2, 200 + j) for j in range(3)]
    for n, user in enumerate(NEW_ITEM_NEWCOMERS):
        rows += [event(user, f"new{n + j}", DS2, 300 + j) for j in range(2)]
    # New items popular today: they lead the recent window's list.
    rows += [event(f"u{u}", "new9", DS2, 400 + u) for u in range(6)]
    return rows


@pytest.fixture(scope="module")
def root(spark: SparkSession, tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("scoring")
    raw1 = write_jsonl(folder / "raw" / DS1 / "events.jsonl", events_day1())
    raw2 = write_jsonl(folder / "raw" / DS2 / "events.jsonl", events_day2())
    run_chain(spark, build_config(folder, f"paths.raw_events={raw1}", *BASE), DS1)
    run_chain(spark, build_config(folder, f"paths.raw_events={raw2}", *BASE), DS2)
    items = [
        {"item_id": f"i{i}", "title": f"Item {i} part {i % 3}", "genre": f"g{i % 5}",
         "price": str(1 + i % 7)}
        for i in range(N_ITEMS)
    ]  # fmt: skip
    users = [{"user_id": f"u{u}", "region": f"r{u % 3}"} for u in range(N_OLD_USERS)]
    # A knowledge graph (models.cke): each item's entity, linked to its genre and its part.
    links = [{"item_id": f"i{i}", "entity": f"m.i{i}"} for i in range(N_ITEMS)]
    triples = [
        {"head": f"m.i{i}", "relation": relation, "tail": f"m.{relation}{i % size}"}
        for i in range(N_ITEMS)
        for relation, size in (("genre", 5), ("part", 3))
    ]
    catalogue = build_config(
        folder,
        f"paths.raw_items={write_jsonl(folder / 'raw' / 'items.jsonl', items)}",
        f"paths.raw_users={write_jsonl(folder / 'raw' / 'users.jsonl', users)}",
        f"paths.raw_links={write_jsonl(folder / 'raw' / 'links.jsonl', links)}",
        f"paths.raw_kg={write_jsonl(folder / 'raw' / 'kg.jsonl', triples)}",
        *FEATURE_SPECS,
        *BASE,
    )
    assert run_catalog(spark, catalogue, DS1)["status"] == "ok"
    assert run_features(spark, catalogue, DS1)["status"] == "ok"
    config = build_config(folder, *BASE)
    assert run_export(spark, config, DS1)["status"] == "ok"
    run_train(spark, config, DS1, DEEP + ZOO, evaluate=False)
    for name in BASELINES:
        assert run_train_baseline(spark, config, DS1, name)["status"] == "ok"
    return folder


def _sorted(table):
    return table.sort_by([("user_idx", "ascending"), ("rank", "ascending")])


@pytest.mark.parametrize("name", DEEP + ZOO + BASELINES)
def test_spark_scoring_equals_single_process_scoring(spark, root, name) -> None:
    payload = load_payload(root, DS1, PROTOCOL, name)
    popular = popular_list(spark, root, DS2, 1)
    settings = ScoreSettings(k=K, user_block=4, item_block=16, device="cpu")
    # Executors learn who was trained from a joined column; the local run from the mask.
    train = Lake(root).read(spark, "train", [{"ds": DS1, "protocol": PROTOCOL}])
    users = with_trained_flag(history_frame(spark, root, DS2), train)
    histories = with_model_columns(spark, root, users, payload, DS1, PROTOCOL, K,
                                   exclude_seen=True)  # fmt: skip
    frame = score_frame(spark, histories, payload, popular, settings, partitions=3)
    assert frame.rdd.getNumPartitions() == 3
    distributed = _sorted(frame.toArrow())
    users = with_columns_locally(root, payload, DS1, PROTOCOL, read_histories(root, DS2), K,
                                 exclude_seen=True)  # fmt: skip
    local = _sorted(score_locally(payload, users, popular, settings))
    assert distributed.num_rows == local.num_rows > 0
    for column in ("user_idx", "item_idx", "rank", "source"):
        assert distributed.column(column).to_pylist() == local.column(column).to_pylist(), column
    # Same lists; scores agree to float32 rounding (BLAS may sum a row differently depending
    # on the block it sits in and the thread count). A score near 0 can be the sum of much
    # larger terms (Mult-VAE's 600-wide dot products), so the rounding is relative to the
    # largest score, not to each.
    scale = float(np.abs(local.column("score").to_numpy()).max())
    np.testing.assert_allclose(
        distributed.column("score"), local.column("score"), rtol=1e-6, atol=1e-6 * scale
    )


def test_cke_trains_on_the_catalogues_graph_and_keeps_its_triples_out_of_the_model(root) -> None:
    state = load_state(model_dir(root, "cke", DS1, PROTOCOL) / MODEL_FILE)
    graph = {field["name"]: field for field in state["context"]["feature_layout"]["kg"]}
    # Every item is linked; entities: one per item, 5 genres, 3 parts (+ the padding row).
    assert graph["item_entity"]["size"] == N_ITEMS + 5 + 3 + 1
    assert graph["item_entity"]["linked_items"] == state["context"]["n_items"]
    assert graph["triples"]["triples"] == 2 * N_ITEMS and graph["triples"]["size"] == 3
    weights = state["state_dict"]
    assert "triples" not in weights and weights["entity_emb.weight"].shape[0] == N_ITEMS + 9
    assert weights["projection.weight"].shape == (3, 64 * 64)
    model = load_model(model_dir(root, "cke", DS1, PROTOCOL) / MODEL_FILE)
    assert model.scores_untrained_items


def _histories_by_user(root: Path) -> dict[int, list[int]]:
    history = read_histories(root, DS2)
    return {
        int(u): history.items[o : o + n].tolist()
        for u, o, n in zip(history.users, history.offsets, history.lengths, strict=True)
    }


def _train_items(root: Path) -> np.ndarray:
    folder = partition_dir(root, "train", DS1, PROTOCOL)
    return pads.dataset(folder).to_table(columns=["item_idx"]).column(0).to_numpy()


@pytest.mark.parametrize("name", ["bpr_mf", "sasrec"])
def test_deep_lists_match_the_evaluation_ranking_of_score_all(spark, root, name) -> None:
    """Independent path: the model's full score rows ranked by hand (the evaluation library
    ranks with the scoring job's top-K, so it is no independent reference)."""
    payload = load_payload(root, DS1, PROTOCOL, name)
    histories = with_columns_locally(root, payload, DS1, PROTOCOL, read_histories(root, DS2), K,
                                     exclude_seen=True)  # fmt: skip
    model = load_model(root / "models" / name / DS1 / PROTOCOL / "model.pt")
    known = np.zeros(model.n_items + 1, dtype=bool)
    known[_train_items(root)] = True
    popular = popular_list(spark, root, DS2, 1)
    table = score_locally(payload, histories, popular, ScoreSettings(k=K))
    table = table.filter(pc.equal(table.column("source"), name))
    users = np.unique(table.column("user_idx").to_numpy())
    padded = np.zeros((int(histories.users.max()) + 1, model.context.max_len), dtype=np.int64)
    padded[histories.users] = histories.recent(model.context.max_len, known)
    rows, items = histories.pairs()
    inside = items <= model.n_items
    seen = csr_from_pairs(histories.users[rows][inside], items[inside], len(padded))
    sequence = model.sample_kind == "sequence"

    def score_all(block: np.ndarray) -> np.ndarray:
        history = torch.as_tensor(padded[block]) if sequence else None
        batch = Batch(users=torch.as_tensor(block, dtype=torch.int64), history=history)
        with torch.no_grad():
            scores = model.eval().score_all(batch).float().numpy().astype(np.float64)
        scores[:, ~known] = -np.inf
        return scores

    indptr, seen_items = seen
    seen_sets = {int(u): set(seen_items[indptr[u] : indptr[u + 1]].tolist()) for u in users}
    by_hand = brute_force_top_k(score_all(users), users, seen_sets, K)
    ref_items, ref_scores = np.array(by_hand[0]), np.array(by_hand[1])
    got = _sorted(table)
    got_scores = got.column("score").to_numpy().reshape(len(users), K)
    got_items = got.column("item_idx").to_numpy().reshape(len(users), K)
    np.testing.assert_allclose(got_scores, ref_scores, rtol=1e-5, atol=1e-5)
    # Items agree wherever the reference scores are not near-ties.
    gaps = np.diff(ref_scores, axis=1, prepend=np.inf, append=-np.inf)
    clear = (np.abs(gaps[:, :-1]) > 1e-4) & (np.abs(gaps[:, 1:]) > 1e-4)
    assert (got_items[clear] == ref_items[clear]).all()


def _published(config, model: str) -> list[dict]:
    location = partition_location(config, RECOMMENDATIONS, DS2, model)
    assert location is not None
    return pads.dataset(location.local_path()).to_table().to_pylist()


def _vocab(root: Path, table: str, id_col: str, idx_col: str) -> dict[str, int]:
    rows = pads.dataset(partition_dir(root, table, DS2)).to_table().to_pylist()
    return {row[id_col]: row[idx_col] for row in rows}


def _popular_by_hand(root: Path) -> list[str]:
    """Items by distinct users over DS2's last day of events (independent of recpipe code)."""
    raw = events_day1() + events_day2()
    newest = max(e["ts"] for e in raw)
    users_by_item: dict[str, set] = defaultdict(set)
    for e in raw:
        # window of one day ending at the newest event: all DS2 events here
        if e["ts"] > f"{DS1}T{newest[11:]}":
            users_by_item[e["item_id"]].add(e["user_id"])
    item_idx = _vocab(root, "vocab_items", "item_id", "item_idx")
    return sorted(users_by_item, key=lambda i: (-len(users_by_item[i]), item_idx[i]))


@pytest.mark.parametrize("name", ["bpr_mf", "sasrec"])
def test_cold_start_users_get_the_recent_popular_list(spark, root, name) -> None:
    config = build_config(root, *BASE, f"score.model_ds={DS1}")
    manifest = run_score(spark, config, DS2, name)
    rows = _published(config, name)
    by_user: dict[str, list[dict]] = defaultdict(list)
    for row in rows:
        by_user[row["user_id"]].append(row)
    user_idx = _vocab(root, "vocab_users", "user_id", "user_idx")
    item_idx = _vocab(root, "vocab_items", "item_id", "item_idx")
    history = _histories_by_user(root)
    assert set(by_user) == set(user_idx)  # every user of DS2 has a list

    # bpr_mf has no row for any newcomer; sasrec reads histories, so newcomers with known
    # items are scored by the model and only those with nothing but new items are cold.
    cold = set(NEW_ITEM_NEWCOMERS) | (set(KNOWN_ITEM_NEWCOMERS) if name == "bpr_mf" else set())
    popular = _popular_by_hand(root)
    known = set(_train_items(root).tolist())
    for user, recs in by_user.items():
        recs.sort(key=lambda r: r["rank"])
        assert [r["rank"] for r in recs] == list(range(1, K + 1))
        seen = set(history[user_idx[user]])
        assert not {item_idx[r["item_id"]] for r in recs} & seen, user
        if user in cold:
            assert {r["source"] for r in recs} == {"popular"}
            expected = [i for i in popular if item_idx[i] not in seen][:K]
            assert [r["item_id"] for r in recs] == expected
        else:
            assert {r["source"] for r in recs} == {name}
            # A model never recommends an item it was not trained on.
            assert {item_idx[r["item_id"]] for r in recs} <= known
    sources = defaultdict(int)
    for row in rows:
        sources[row["source"]] += 1
    assert manifest["source_counts"] == dict(sorted(sources.items()))
    assert manifest["users_by_source"]["popular"] == len(cold)
    assert manifest["rows_in"] == len(user_idx) and manifest["users_without_recs"] == 0
    assert manifest["model_ds"] == DS1
    assert sources["popular"] == len(cold) * K


def test_als_user_vectors_travel_as_a_column_never_in_the_payload(spark, root) -> None:
    """ALS's user factors stay in the lake table: not in the model file, not broadcast;
    scoring joins them per user and the lists equal a by-hand ranking of those vectors."""
    import io

    payload = load_payload(root, DS1, PROTOCOL, "als")
    with np.load(io.BytesIO(payload.files["arrays.npz"]), allow_pickle=False) as arrays:
        assert set(arrays.files) == {"item_factors", "known_items"}
        item_factors = arrays["item_factors"]
    assert payload.user_vectors_table == "als_user_factors"
    table = pads.dataset(partition_dir(root, "als_user_factors", DS1, PROTOCOL)).to_table()
    vectors = dict(zip(table.column("user_idx").to_pylist(),
                       table.column("user_vector").to_pylist(), strict=True))  # fmt: skip
    train_users = set(pads.dataset(partition_dir(root, "train", DS1, PROTOCOL))
                      .to_table(columns=["user_idx"]).column(0).to_pylist())  # fmt: skip
    assert set(vectors) == train_users and table.num_rows == len(train_users)
    trained = read_manifest(root, "train-als", DS1)["protocols"][PROTOCOL]
    assert trained["lake_tables"]["als_user_factors"]["rows"] == len(train_users)

    config = build_config(root, *BASE, f"score.model_ds={DS1}")
    manifest = run_score(spark, config, DS2, "als")
    assert manifest["model_columns"] == ["als_user_factors"]
    user_idx = _vocab(root, "vocab_users", "user_id", "user_idx")
    item_idx = _vocab(root, "vocab_items", "item_id", "item_idx")
    history = _histories_by_user(root)
    known = np.zeros(len(item_factors), dtype=bool)
    known[_train_items(root)] = True
    lists: dict[str, list[tuple[int, int, str]]] = defaultdict(list)
    for row in _published(config, "als"):
        lists[row["user_id"]].append((row["rank"], item_idx[row["item_id"]], row["source"]))
    checked = 0
    for user, recs in lists.items():
        index = user_idx[user]
        sources = {source for _, _, source in recs}
        if index not in vectors:
            assert sources == {"popular"}, user
            continue
        assert sources == {"als"}, user
        scores = item_factors.astype(np.float64) @ np.asarray(vectors[index], np.float64)
        candidates = [i for i in np.flatnonzero(known) if i not in set(history[index])]
        best = sorted(candidates, key=lambda i: (-scores[i], i))[:K]
        assert [item for _, item, _ in sorted(recs)] == best, user
        checked += 1
    assert checked >= N_OLD_USERS // 3

    # Users sent without the vector column are an error, never silently "cannot score".
    bare = score_frame(spark, history_frame(spark, root, DS2), payload,
                       popular_list(spark, root, DS2, 1), ScoreSettings(k=K))  # fmt: skip
    with pytest.raises(Exception, match="join the vector column"):
        bare.collect()


def test_deep_user_tables_travel_as_a_column_never_in_the_payload(spark, root) -> None:
    """BPR-MF's user factors: written by training to their lake table (one row per user index,
    equal to the model file's table), absent from what executors receive, joined per user by
    scoring; the payload is the item side only."""
    payload = load_payload(root, DS1, PROTOCOL, "bpr_mf")
    assert set(payload.files) == {"model_items.pt"}
    assert payload.user_vectors_table == "user_rows_bpr_mf"
    shipped = build_scorer(payload)
    assert shipped.vectors_in_column
    full = load_model(root / "models" / "bpr_mf" / DS1 / PROTOCOL / "model.pt")
    users_table = full.state_dict()["user_emb.weight"]
    table = pads.dataset(partition_dir(root, "user_rows_bpr_mf", DS1, PROTOCOL)).to_table()
    table = table.sort_by("user_idx")
    assert table.column("user_idx").to_pylist() == list(range(full.n_users))
    rows = np.stack(table.column("user_vector").to_numpy(zero_copy_only=False))
    np.testing.assert_array_equal(rows, users_table.numpy())
    trained = read_manifest(root, "train-bpr_mf", DS1)["protocols"][PROTOCOL]
    assert trained["lake_tables"]["user_rows_bpr_mf"]["rows"] == full.n_users
    # What is broadcast holds no user row: smaller than the model file by the user table.
    model_file = root / "models" / "bpr_mf" / DS1 / PROTOCOL / "model.pt"
    user_bytes = users_table.numel() * 4
    assert payload.size_bytes < model_file.stat().st_size - user_bytes + 4096

    config = build_config(root, *BASE, f"score.model_ds={DS1}")
    assert run_score(spark, config, DS2, "bpr_mf")["model_columns"] == ["user_rows_bpr_mf"]
    bare = score_frame(spark, history_frame(spark, root, DS2), payload,
                       popular_list(spark, root, DS2, 1), ScoreSettings(k=K))  # fmt: skip
    with pytest.raises(Exception, match="join the vector column"):
        bare.collect()


def test_blocks_that_cannot_fit_the_python_workers_fail_before_scoring(spark, root) -> None:
    """200 MiB per Python worker leaves nothing after the worker itself: one line naming the
    keys, from the score stage and Spark evaluation, before anything is written."""
    from recpipe.errors import BlockTooLargeError

    tight = 'spark.conf={"spark.executor.pyspark.memory": "200m"}'
    config = build_config(root, *BASE, f"score.model_ds={DS1}", tight)
    manifest = root / "manifests" / "score-bpr_mf" / f"ds={DS2}.json"
    before = manifest.read_bytes() if manifest.exists() else None
    with pytest.raises(BlockTooLargeError, match=r"has 200 MiB \(spark\.executor\.pyspark"):
        run_score(spark, config, DS2, "bpr_mf")
    assert (manifest.read_bytes() if manifest.exists() else None) == before
    on_spark = build_config(root, *BASE, "evaluation.engine=spark", tight)
    with pytest.raises(BlockTooLargeError, match=r"raise spark\.executor\.pyspark\.memory"):
        evaluate_model(spark, on_spark, DS1, PROTOCOL, "bpr_mf")


# --- selection gate and publish ---------------------------------------------------------------


def _ndcg(root: Path, model: str) -> float:
    """NDCG@10 under the gate's protocol, read from the evaluate manifest (not model_metrics)."""
    manifest = read_manifest(root, f"evaluate-{model}", DS1)
    (result,) = [r for r in manifest["results"] if r["protocol"]["split_protocol"] == PROTOCOL]
    return result["metrics"]["ndcg@10"]


@pytest.fixture(scope="module")
def evaluated(spark, root) -> tuple[str, str]:
    """bpr_mf and als evaluated for DS1; returns (worse, better) by NDCG@10."""
    config = build_config(root, *BASE)
    run_evaluate(spark, config, DS1, ["bpr_mf", "als"])
    worse, better = sorted(["bpr_mf", "als"], key=lambda m: (_ndcg(root, m), m))
    assert _ndcg(root, worse) < _ndcg(root, better)
    return worse, better


def _rows_of(config, model: str) -> list[tuple]:
    location = partition_location(config, RECOMMENDATIONS, DS1, model)
    assert location is not None
    table = pads.dataset(location.local_path()).to_table(
        columns=["user_id", "item_id", "rank", "source"]
    )
    return sorted(tuple(row.values()) for row in table.to_pylist())


def test_failing_gate_publishes_the_baseline_and_records_why(
    spark, root, evaluated, capsys
) -> None:
    worse, better = evaluated
    overrides = (*BASE, f"gate.candidate={worse}", f"gate.baseline={better}", "gate.tolerance=0")
    where = [arg for o in overrides for arg in ("--set", o)] + ["--set", f"paths.root={root}"]
    # `score` without --model scores the gate's choice.
    assert main(["score", "--ds", DS1, *where]) == 0
    assert "gate failed" in capsys.readouterr().out
    assert read_manifest(root, f"score-{better}", DS1)["status"] == "ok"
    assert main(["publish", "--ds", DS1, *where]) == 0  # a failing gate is not an error
    out = capsys.readouterr().out
    assert "gate failed" in out and f"published {better}" in out
    config = build_config(root, *overrides)
    manifest = read_manifest(root, "publish", DS1)
    gate = manifest["gate"]
    assert manifest["status"] == "ok" and manifest["published_model"] == better
    assert gate["passed"] is False and gate["candidate"] == worse
    assert gate["candidate_value"] == pytest.approx(_ndcg(root, worse))
    assert gate["baseline_value"] == pytest.approx(_ndcg(root, better))
    assert _rows_of(config, "published") == _rows_of(config, better)
    # The decision and its reason, read back through the metastore.
    (row,) = run_sql(
        spark,
        "SELECT value, detail FROM scoring_tests.model_metrics "
        f"WHERE ds = '{DS1}' AND model = 'published' AND metric = 'gate_passed'",
    )
    assert row["value"] == 0.0
    assert worse in row["detail"] and better in row["detail"] and "baseline" in row["detail"]
    # recs defaults to the published partition and says which model made the list.
    assert main(["recs", "--user", "u1", "--ds", DS1, "--format", "json", *where]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert {(r["model"], r["published_model"]) for r in printed} == {("published", better)}
    assert {r["source"] for r in printed} == {better}


def test_passing_gate_publishes_the_candidate(spark, root, evaluated) -> None:
    worse, better = evaluated
    gap = _ndcg(root, better) - _ndcg(root, worse)
    config = build_config(
        root, *BASE, f"gate.candidate={worse}", f"gate.baseline={better}",
        f"gate.tolerance={gap + 0.01}",
    )  # fmt: skip
    manifest = run_publish(spark, config, DS1)
    assert manifest["gate"]["passed"] is True and manifest["published_model"] == worse
    assert _rows_of(config, "published") == _rows_of(config, worse)
    pointer = read_pointer(config, RECOMMENDATIONS, DS1, "published")
    assert pointer["source_model"] == worse and pointer["gate"]["passed"] is True
    assert manifest["source_counts"] == read_manifest(root, f"score-{worse}", DS1)["source_counts"]


def test_gate_without_baseline_metrics_names_the_command(root, evaluated) -> None:
    config = build_config(root, *BASE, "gate.candidate=bpr_mf", "gate.baseline=ease")
    with pytest.raises(MissingInputError, match="recpipe evaluate --model ease"):
        run_gate(config, DS1)
    # Default candidate: the best evaluated deep model (only bpr_mf is evaluated here).
    decision = run_gate(build_config(root, *BASE, "gate.baseline=als"), DS1)
    assert decision["candidate"] == "bpr_mf"
    assert decision["passed"] == (_ndcg(root, "bpr_mf") >= _ndcg(root, "als"))


def test_gate_records_the_paired_bootstrap_interval_of_model_metrics(root, evaluated) -> None:
    """The gate's interval is the percentiles of (better - worse) over the resample means
    both evaluations published in model_metrics, and the evaluate manifests and the rows'
    ci_low/ci_high are those of each model's own resamples."""
    from recpipe.query import metric_rows

    worse, better = evaluated
    config = build_config(root, *BASE)
    rows = [
        r
        for r in metric_rows(config, DS1, None, resamples=True)
        if (r["metric"], r["k"], r["protocol"], r["detail"]) == ("ndcg", 10, PROTOCOL, None)
    ]
    draws = {r["model"]: np.asarray(r["resamples"]) for r in rows}  # fmt: skip
    assert len(draws[worse]) == len(draws[better]) == 1000
    for row in rows:
        low, high = np.quantile(draws[row["model"]], [0.025, 0.975])
        assert (row["ci_low"], row["ci_high"]) == pytest.approx((low, high))
        assert row["ci_low"] <= row["value"] <= row["ci_high"]
        manifest = read_manifest(root, f"evaluate-{row['model']}", DS1)
        (result,) = [r for r in manifest["results"] if r["protocol"]["split_protocol"] == PROTOCOL]
        assert result["intervals"]["ndcg@10"] == pytest.approx([low, high])
    low, high = np.quantile(draws[better] - draws[worse], [0.025, 0.975])
    strict = build_config(root, *BASE, f"gate.candidate={better}", f"gate.baseline={worse}",
                          "gate.require_significant=true")  # fmt: skip
    decision = run_gate(strict, DS1)
    assert (decision["difference_low"], decision["difference_high"]) == pytest.approx((low, high))
    assert decision["significant"] == bool(low > 0 or high < 0)
    assert decision["passed"] == bool(low > 0)


class _RunsCode:
    """Pickles to a call of ``os.system``: what a planted ``model.pt`` would carry."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        import os

        return (os.system, (f"touch {self.marker}",))


def test_model_files_are_data_never_code(root, tmp_path) -> None:
    """Two layers: a model file must match the SHA-256 its training manifest recorded, and even
    a file that does (an attacker who also edits the manifest) loads with weights_only, so its
    pickle payload is refused and never runs. A folder holding two kinds of artifact is refused
    (the registry says what a model is)."""
    import hashlib
    import shutil

    import torch

    from recpipe.artifacts import ArtifactError
    from recpipe.config import load_config
    from recpipe.model_store import load_for_evaluation
    from recpipe.scoring.scorers import build_scorer
    from recpipe.train.checkpoint import CheckpointError

    copy = tmp_path / "root"
    shutil.copytree(root, copy, ignore=shutil.ignore_patterns("metastore", "warehouse", "tmp"))
    marker = tmp_path / "code-ran"
    evil = {"format": 1, "model": "bpr_mf", "payload": _RunsCode(marker)}
    models = copy / "models"
    torch.save(evil, models / "als" / DS1 / PROTOCOL / "model.pt")
    planted = models / "bpr_mf" / DS1 / PROTOCOL / "model.pt"
    torch.save(evil, planted)
    # What executors rebuild BPR-MF from (its user rows travel as a column).
    torch.save(evil, planted.with_name("model_items.pt"))
    config = load_config(None, [f"paths.root={copy}", *BASE])
    train = load_split_for(copy)

    # A model.pt beside a baseline's arrays: the folder is refused, the file never read.
    with pytest.raises(ArtifactError, match=r"models/als/.* holds model\.pt.*two kinds"):
        load_payload(copy, DS1, PROTOCOL, "als")
    with pytest.raises(ArtifactError, match="two kinds of artifact"):
        load_for_evaluation(config.root, "als", DS1, PROTOCOL, train)
    baseline = load_payload(copy, DS1, PROTOCOL, "ease")  # an untouched baseline still loads
    assert baseline.kind == "baseline" and set(baseline.files) == {"meta.json", "arrays.npz"}
    ease = load_for_evaluation(config.root, "ease", DS1, PROTOCOL, train)
    assert type(ease.model).__name__ == "Ease"

    # Layer 1: the file is not the one training wrote.
    with pytest.raises(ArtifactError, match=r"bpr_mf/.*/model_items\.pt does not match the"):
        load_payload(copy, DS1, PROTOCOL, "bpr_mf")
    with pytest.raises(ArtifactError, match=r"bpr_mf/.*/model\.pt does not match"):
        load_for_evaluation(config.root, "bpr_mf", DS1, PROTOCOL, train)
    arrays = models / "ease" / DS1 / PROTOCOL / "arrays.npz"
    data = bytearray(arrays.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one byte changed
    arrays.write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match=r"ease/.*/arrays\.npz does not match"):
        load_payload(copy, DS1, PROTOCOL, "ease")

    # Layer 2: the manifest is forged to vouch for the planted file; it still never runs.
    manifest_file = copy / "manifests" / "train-bpr_mf" / f"ds={DS1}.json"
    manifest = json.loads(manifest_file.read_text())
    for name in ("model.pt", "model_items.pt"):
        digest = hashlib.sha256(planted.with_name(name).read_bytes()).hexdigest()
        manifest["protocols"][PROTOCOL]["sha256"][name] = digest
    manifest_file.write_text(json.dumps(manifest))
    deep = load_payload(copy, DS1, PROTOCOL, "bpr_mf")
    with pytest.raises(CheckpointError, match="not a plain checkpoint"):
        build_scorer(deep)
    with pytest.raises(CheckpointError, match="not a plain checkpoint"):
        load_model(planted)
    with pytest.raises(CheckpointError):
        load_for_evaluation(config.root, "bpr_mf", DS1, PROTOCOL, train)
    assert not marker.exists()
    # The real checkpoints still load as data and rebuild their models.
    real = Path(root) / "models" / "sasrec" / DS1 / PROTOCOL / "model.pt"
    assert load_model(real).name == "sasrec"


def load_split_for(root: Path):
    from recpipe.tables import load_split

    return load_split(root, DS1, PROTOCOL, "train")


# --- evaluation on the executors --------------------------------------------------------------


def _values(evaluation) -> dict:
    return {key: value for key, value in evaluation.result.values.items()}


@pytest.mark.parametrize("name", DEEP + BASELINES)
def test_spark_evaluation_equals_the_local_engine(spark, root, name) -> None:
    """Same truth users, same metrics (numpy vs Spark SQL definitions), same beyond-accuracy
    counts, with executor blocks and partitions unlike the local engine's.

    Cut-offs stop at 10: a user has about 15 unseen items of their taste group, and past
    those the factor models score the other group's items as float32 noise around 0, whose
    order depends on the BLAS block a row sits in, not on the engine's logic."""
    ks = "evaluation.ks=[1,5,10]"
    local = evaluate_model(spark, build_config(root, *BASE, "evaluation.engine=local", ks), DS1,
                           PROTOCOL, name)  # fmt: skip
    on_spark = build_config(
        root, *BASE, "evaluation.engine=spark", "evaluation.partitions=3",
        "evaluation.user_batch=4", ks,
    )  # fmt: skip
    distributed = evaluate_model(spark, on_spark, DS1, PROTOCOL, name)
    truth_users = set(pads.dataset(partition_dir(root, "test", DS1, PROTOCOL))
                      .to_table(columns=["user_idx"]).column(0).to_pylist())  # fmt: skip
    assert local.result.n_users == distributed.result.n_users == len(truth_users) > 0
    got, expected = _values(distributed), _values(local)
    assert got.keys() == expected.keys()
    assert {metric for metric, _ in got} >= {"ndcg", "recall", "coverage", "novelty"}
    for key, value in expected.items():
        assert got[key] == pytest.approx(value, rel=1e-9, abs=1e-12, nan_ok=True), key
    # Not a vacuous match: the lists hit something and recommend several items.
    assert expected[("recall", 10)] > 0
    for k in (1, 5, 10):
        np.testing.assert_array_equal(distributed.top_counts[k], local.top_counts[k])
        assert distributed.top_counts[k].sum() > 0
    # The same users in the same activity quartiles, with the same means.
    mine, theirs = distributed.result.groups, local.result.groups
    assert mine is not None and theirs is not None
    assert mine.cuts == pytest.approx(theirs.cuts, rel=1e-12)
    assert sum(group.users for group in theirs.groups) == len(truth_users)
    for got_group, expected_group in zip(mine.groups, theirs.groups, strict=True):
        assert got_group.users == expected_group.users
        assert (got_group.activity_low, got_group.activity_high) == (
            expected_group.activity_low, expected_group.activity_high,
        )  # fmt: skip
        for key, value in expected_group.values.items():
            assert got_group.values[key] == pytest.approx(value, rel=1e-9, nan_ok=True), key


def test_catalogue_aware_evaluation_is_the_same_on_both_engines(spark, root, tmp_path) -> None:
    """With an item catalogue, ild@k (genres) from the local engine's bit masks equals the
    Spark engine's set functions over its recommendation rows; with user profiles, the
    metrics per gender and age band agree too, and each attribute's groups add up to the
    overall mean (users weighted)."""
    import shutil

    from recpipe.evaluation.diversity import ILD
    from recpipe.stages.catalog import run_catalog

    copy = tmp_path / "root"
    shutil.copytree(root, copy,
                    ignore=shutil.ignore_patterns("metastore", "warehouse", "tmp"))  # fmt: skip
    vocab = pads.dataset(partition_dir(copy, "vocab_items", DS1)).to_table().to_pylist()
    catalogue = copy / "raw" / "items"
    catalogue.mkdir(parents=True)
    lines = []
    for row in vocab:
        index = row["item_idx"]
        if index % 7 == 0:
            continue  # not in the catalogue
        genres = [["A"], ["A", "B"], [], ["C"]][index % 4]
        record = {"item_id": row["item_id"], "title": f"t{index}"}
        if genres:
            record["genres"] = genres
        lines.append(json.dumps(record))
    (catalogue / "items.jsonl").write_text("\n".join(lines) + "\n")
    users = pads.dataset(partition_dir(copy, "vocab_users", DS1)).to_table().to_pylist()
    profiles = copy / "raw" / "users"
    profiles.mkdir()
    written = [
        # every third user without an age, every fifth not profiled at all
        {"user_id": row["user_id"], "gender": "FM"[index % 2],
         **({} if index % 3 == 0 else {"age": str(12 + 7 * (index % 8))})}
        for index, row in enumerate(users)
        if index % 5
    ]  # fmt: skip
    (profiles / "users.jsonl").write_text("".join(json.dumps(r) + "\n" for r in written))
    references = [f"paths.raw_items={catalogue}", f"paths.raw_users={profiles}"]
    run_catalog(spark, build_config(copy, *BASE, *references), DS1)
    ks = "evaluation.ks=[1,5,10]"
    for name in ("als", "popularity"):
        mine = evaluate_model(spark, build_config(copy, *BASE, "evaluation.engine=local", ks),
                              DS1, PROTOCOL, name).result  # fmt: skip
        on_spark = build_config(copy, *BASE, "evaluation.engine=spark", "evaluation.partitions=3",
                                ks)  # fmt: skip
        theirs = evaluate_model(spark, on_spark, DS1, PROTOCOL, name).result
        local, distributed = mine.values, theirs.values
        assert np.isnan(local[(ILD, 1)]) and np.isnan(distributed[(ILD, 1)])  # no pair at k=1
        for k in (5, 10):
            assert 0 < local[(ILD, k)] < 1, (name, k)
            assert distributed[(ILD, k)] == pytest.approx(local[(ILD, k)], rel=1e-9), (name, k)
        assert mine.segments is not None and theirs.segments is not None
        assert [s.attribute for s in mine.segments] == ["gender", "age"]
        for got, expected in zip(theirs.segments, mine.segments, strict=True):
            assert got.groups.keys() == expected.groups.keys()
            for label, group in expected.groups.items():
                assert got.groups[label].users == group.users, label
                for key, value in group.values.items():
                    assert got.groups[label].values[key] == pytest.approx(value, rel=1e-9)
            assert sum(g.users for g in expected.groups.values()) == mine.n_users
            weighted = sum(g.users * g.values[("ndcg", 10)] for g in expected.groups.values())
            assert weighted / mine.n_users == pytest.approx(local[("ndcg", 10)], rel=1e-9)
        assert {"F", "M", "(no profile)"} <= set(mine.segments[0].groups)
        assert {"(unknown)", "(no profile)", "<18"} <= set(mine.segments[1].groups)


def _pairs_by_user(root: Path, part: str) -> dict[int, set[int]]:
    table = pads.dataset(partition_dir(root, part, DS1, PROTOCOL)).to_table(
        columns=["user_idx", "item_idx"]
    )
    by_user: dict[int, set[int]] = defaultdict(set)
    for row in table.to_pylist():
        by_user[row["user_idx"]].add(row["item_idx"])
    return by_user


@pytest.mark.parametrize("engine", ["local", "spark"])
def test_test_evaluation_knows_train_and_valid_history(spark, root, engine) -> None:
    """Independent path: popularity ranks items by distinct train users (ties: smaller index);
    each test user's list is that order minus their train and valid items, and NDCG@10 is
    computed here from the split files."""
    train, valid, test = (_pairs_by_user(root, part) for part in ("train", "valid", "test"))
    counts = Counter(item for items in train.values() for item in items)
    order = sorted(counts, key=lambda item: (-counts[item], item))

    def top10(excluded: set[int]) -> list[int]:
        return [item for item in order if item not in excluded][:10]

    ndcg = []
    for user, truth in test.items():
        ranked = top10(train[user] | valid[user])
        dcg = sum(1 / math.log2(r + 2) for r, item in enumerate(ranked) if item in truth)
        ideal = sum(1 / math.log2(r + 2) for r in range(min(len(truth), 10)))
        ndcg.append(dcg / ideal)
    config = build_config(root, *BASE, f"evaluation.engine={engine}")
    result = evaluate_model(spark, config, DS1, PROTOCOL, "popularity").result
    assert result.protocol.history == "train+valid"
    assert "train+valid items excluded" in result.protocol.describe()
    assert result.n_users == len(test)
    assert result.values[("ndcg", 10)] == pytest.approx(sum(ndcg) / len(ndcg), rel=1e-12)
    # Not vacuous: masking train items only would leave valid items in some lists.
    assert any(set(top10(train[user])) & valid[user] for user in test)


def test_auto_engine_switches_to_spark_above_local_max_rows(spark, root) -> None:
    """The local engine reads train, valid (the test users' known history) and test."""
    rows = sum(pads.dataset(partition_dir(root, part, DS1, PROTOCOL)).count_rows()
               for part in ("train", "valid", "test"))  # fmt: skip
    at_limit = build_config(root, *BASE, f"evaluation.local_max_rows={rows}")
    below = build_config(root, *BASE, f"evaluation.local_max_rows={rows - 1}")
    assert choose_engine(at_limit, DS1, PROTOCOL, spark) == "local"
    assert choose_engine(below, DS1, PROTOCOL, spark) == "spark"
    assert choose_engine(below, DS1, PROTOCOL, None) == "local"


@pytest.fixture
def no_whole_split_on_the_driver(monkeypatch):
    """Driver read budget: any read of a split partition into one table (more than one row at
    once) fails the test; streaming batches and footer counts stay allowed."""
    import recpipe.tables as tables

    class Budgeted:
        def __init__(self, dataset) -> None:
            self.dataset = dataset

        def __getattr__(self, name: str):
            return getattr(self.dataset, name)

        def to_table(self, *args, **kwargs):
            table = self.dataset.to_table(*args, **kwargs)
            if table.num_rows > 1:
                raise AssertionError(f"a split read whole on the driver: {table.num_rows} rows")
            return table

    real = tables._split_dataset
    monkeypatch.setattr(tables, "_split_dataset", lambda *a, **kw: Budgeted(real(*a, **kw)))


def test_spark_evaluation_and_scoring_never_load_a_split_whole(
    spark, root, no_whole_split_on_the_driver
) -> None:
    config = build_config(root, *BASE, "evaluation.engine=spark", "driver.max_split_rows=1")
    assert evaluate_model(spark, config, DS1, PROTOCOL, "als").result.n_users > 0
    trained = run_train_baseline(spark, config, DS1, "itemknn")
    assert trained["protocols"][PROTOCOL]["fitted"] == "spark"
    assert evaluate_model(spark, config, DS1, PROTOCOL, "itemknn").result.n_users > 0
    assert run_score(spark, build_config(root, *BASE, "score.model_ds=" + DS1), DS2,
                     "bpr_mf")["status"] == "ok"  # fmt: skip
    # The budget bites: the local engine reads the train split whole.
    with pytest.raises(AssertionError, match="read whole on the driver"):
        evaluate_model(spark, build_config(root, *BASE, "evaluation.engine=local"), DS1,
                       PROTOCOL, "als")  # fmt: skip


@pytest.mark.parametrize("name", ["bpr_mf", "als", "sasrec"])
def test_scoring_opens_no_split_on_the_driver(spark, root, monkeypatch, name) -> None:
    """Known items and trained users come from Spark (a column per user): the score stage
    never opens a split file in the driver process, not even to stream it."""
    import recpipe.tables as tables

    def refuse(*args, **kwargs):
        raise AssertionError("the driver opened a split")

    monkeypatch.setattr(tables, "_split_dataset", refuse)
    config = build_config(root, *BASE, f"score.model_ds={DS1}")
    manifest = run_score(spark, config, DS2, name)
    assert manifest["status"] == "ok" and manifest["users_by_source"].get(name, 0) > 0


def test_local_engine_over_max_split_rows_is_one_line_naming_the_key(
    root, tmp_path, capsys
) -> None:
    import shutil

    copy = tmp_path / "root"  # the failed evaluate manifest stays out of the shared root
    shutil.copytree(root, copy, ignore=shutil.ignore_patterns("metastore", "warehouse", "tmp"))
    overrides = [f"paths.root={copy}", *BASE, "evaluation.engine=local",
                 "driver.max_split_rows=3"]  # fmt: skip
    code = main(["evaluate", "--ds", DS1, "--model", "ease", "--no-gate",
                 *[arg for item in overrides for arg in ("--set", item)]])  # fmt: skip
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1
    assert len(err) == 1 and "driver.max_split_rows=3" in err[0], err
    assert "evaluation.engine=spark" in err[0]
    # EASE is fitted in one process from the split's rows: the same limit, before any fit.
    code = main(["train-baseline", "--ds", DS1, "--model", "ease",
                 *[arg for item in overrides for arg in ("--set", item)]])  # fmt: skip
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(err) == 1 and "driver.max_split_rows=3" in err[0], err
    assert "baseline fitted in Spark" in err[0]


def test_irgan_records_each_players_loss_every_epoch(root) -> None:
    """The training loop's per-epoch history carries the model's loss parts (what the report
    plots for IRGAN); the two players' losses add up to the recorded loss."""
    manifest = read_manifest(root, "train-irgan", DS1)
    history = manifest["protocols"][PROTOCOL]["history"]
    assert len(history) == 2  # train.max_epochs=2
    for entry in history:
        parts = entry["parts"]
        assert set(parts) == {"discriminator", "generator"}
        assert parts["discriminator"] > 0
        assert parts["discriminator"] + parts["generator"] == pytest.approx(entry["loss"], abs=2e-6)
    sasrec = read_manifest(root, "train-sasrec", DS1)["protocols"][PROTOCOL]["history"]
    assert all("parts" not in entry for entry in sasrec)


def test_item2vec_vectors_start_a_deep_models_item_table(spark, root) -> None:
    """train.item_init=item2vec: the model starts from item2vec's directions (its initial
    scale kept), the manifest says so; a width mismatch is a config error naming both keys.
    Runs last in this module: it retrains STAMP for DS1."""
    from recpipe.baselines import baseline_class
    from recpipe.config import ConfigError
    from recpipe.model_store import read_model_files
    from recpipe.stages.train import apply_item_init, build_spec
    from recpipe.train.checkpoint import load_state

    files = read_model_files(root, "item2vec", DS1, PROTOCOL)
    item2vec = baseline_class("item2vec").from_files(files).item_factors()
    config = build_config(root, *BASE, "train.item_init=item2vec", "models.stamp.dim=64")
    spec = build_spec(config, DS1, PROTOCOL, "stamp")
    spec.run_dir = str(root / "item-init-test")
    record = apply_item_init(config, spec, DS1, PROTOCOL)
    with_vector = np.flatnonzero(np.abs(item2vec).sum(1) > 0)
    with_vector = with_vector[with_vector > 0]
    assert record == {"from": "item2vec", "items": len(with_vector)}
    table = load_state(spec.init_file)["state_dict"]["item_emb.weight"].numpy()
    cosine = (table[with_vector] * item2vec[with_vector]).sum(1) / np.linalg.norm(
        table[with_vector], axis=1
    )
    np.testing.assert_allclose(cosine, 1.0, rtol=1e-5)
    wide = build_config(root, *BASE, "train.item_init=item2vec", "models.stamp.dim=32")
    with pytest.raises(ConfigError, match=r"baselines\.item2vec\.vector_size.*models\.stamp\.dim"):
        apply_item_init(wide, build_spec(wide, DS1, PROTOCOL, "stamp"), DS1, PROTOCOL)
    run_train(spark, config, DS1, ["stamp"], evaluate=False)
    trained = read_manifest(root, "train-stamp", DS1)["protocols"][PROTOCOL]
    assert trained["item_init"] == record
