"""The ``vocab`` stage: dense, stable user/item indexes over two days of hand-written events."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from helpers import build_config, read_manifest, read_rows, run_chain, write_jsonl
from pyspark.sql import SparkSession

DS1, DS2 = "2026-11-01", "2026-11-02"

# (user_id, item_id, ts). File order deliberately differs from both time order and id order.
DAY1 = [
    ("bob", "i5", "2026-11-01T08:00:00Z"),
    ("amy", "i3", "2026-11-01T08:00:00Z"),  # same second as bob/i5: ties break by id
    ("zed", "i9", "2026-11-01T06:00:00Z"),
    ("cat", "i1", "2026-11-01T07:30:00Z"),
    ("amy", "i1", "2026-11-01T09:00:00Z"),  # amy's later event: her first seen stays 08:00
    ("yan", "i6", "2026-11-02T23:59:59Z"),  # last second before end of ds + 1 day: kept
    ("ancient", "i4", "1995-01-01T00:00:00Z"),  # exactly clean.ts_min: kept
    ("old", "i_old", "1994-12-31T23:59:59Z"),  # before ts_min: quarantined
    ("future", "i_future", "2026-11-03T00:00:00Z"),  # end of ds + 1 day: quarantined
]
DAY2 = [
    ("dan", "i2", "2026-11-02T05:00:00Z"),
    ("eve", "i7", "2026-11-02T03:00:00Z"),
    ("abe", "i0", "2026-11-02T03:00:00Z"),  # same second as eve/i7: abe < eve, i0 < i7
    ("amy", "i1", "2026-11-02T01:00:00Z"),  # old user, old item
    # Late event of old ids, earlier than their day-1 first sighting: indexes must not move.
    ("bob", "i9", "2026-11-01T00:30:00Z"),
    ("fay", "i8", "2026-11-01T23:00:00Z"),  # late-arriving new ids: earliest of the new ones
    ("zed", "i0", "2026-11-02T04:00:00Z"),
]

# Day 1, ordered by (first event time, id): ancient (1995), zed 06:00, cat 07:30,
# amy 08:00, bob 08:00 (amy < bob), yan 11-02 23:59:59.
USERS_DS1 = {"ancient": 1, "zed": 2, "cat": 3, "amy": 4, "bob": 5, "yan": 6}
# i4 (1995), i9 06:00, i1 07:30 (cat, before amy's 09:00), i3 08:00, i5 08:00 (i3 < i5), i6.
ITEMS_DS1 = {"i4": 1, "i9": 2, "i1": 3, "i3": 4, "i5": 5, "i6": 6}
# Day 2 new users after 6: fay 11-01 23:00, abe 03:00, eve 03:00 (abe < eve), dan 05:00.
USERS_DS2 = {**USERS_DS1, "fay": 7, "abe": 8, "eve": 9, "dan": 10}
# Day 2 new items after 6: i8 11-01 23:00, i0 03:00, i7 03:00 (i0 < i7), i2 05:00.
ITEMS_DS2 = {**ITEMS_DS1, "i8": 7, "i0": 8, "i7": 9, "i2": 10}


def _events(rows: list[tuple[str, str, str]]) -> list[dict[str, str]]:
    return [{"user_id": u, "item_id": i, "event_type": "view", "ts": ts} for u, i, ts in rows]


@pytest.fixture(scope="module")
def root(spark: SparkSession, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Clean + vocab for DS1, then for DS2, each day from its own raw file."""
    base = tmp_path_factory.mktemp("vocab")
    lake_root = base / "root"
    for ds, rows in ((DS1, DAY1), (DS2, DAY2)):
        raw = write_jsonl(base / "raw" / f"{ds}.jsonl", _events(rows))
        run_chain(spark, build_config(lake_root, f"paths.raw_events={raw}"), ds, ("clean", "vocab"))
    return lake_root


def _mapping(root: Path, table: str, ds: str, id_col: str, idx_col: str) -> dict[str, int]:
    rows = read_rows(root, table, ds)
    mapping = {row[id_col]: row[idx_col] for row in rows}
    assert len(mapping) == len(rows), "an id appears twice in the vocabulary"
    return mapping


def _first_seen_ds(root: Path, table: str, ds: str, id_col: str) -> dict[str, str]:
    return {row[id_col]: row["first_seen_ds"] for row in read_rows(root, table, ds)}


def test_clean_window_quarantines_out_of_range_ts(root: Path) -> None:
    """Precondition: exactly the two out-of-window day-1 events were quarantined."""
    manifest = read_manifest(root, "clean", DS1)
    assert manifest["rows_out"] == 7
    assert manifest["quarantine_by_reason"] == {"ts_out_of_window": 2}


def test_first_day_dense_indexes_by_first_seen_then_id(root: Path) -> None:
    """Day 1 numbers ids 1..n in (first event time, id) order."""
    assert _mapping(root, "vocab_users", DS1, "user_id", "user_idx") == USERS_DS1
    assert _mapping(root, "vocab_items", DS1, "item_id", "item_idx") == ITEMS_DS1


def test_second_day_keeps_old_and_appends_new(root: Path) -> None:
    """Old ids keep their index exactly; new ids get 7.. in (first seen, id) order."""
    assert _mapping(root, "vocab_users", DS2, "user_id", "user_idx") == USERS_DS2
    assert _mapping(root, "vocab_items", DS2, "item_id", "item_idx") == ITEMS_DS2


def test_first_seen_ds_records_the_day_an_id_was_added(root: Path) -> None:
    """``first_seen_ds`` is DS1 for day-1 ids and DS2 for ids new on day 2."""
    new_users = {"fay", "abe", "eve", "dan"}
    new_items = {"i8", "i0", "i7", "i2"}
    assert _first_seen_ds(root, "vocab_users", DS2, "user_id") == {
        u: DS2 if u in new_users else DS1 for u in USERS_DS2
    }
    assert _first_seen_ds(root, "vocab_items", DS2, "item_id") == {
        i: DS2 if i in new_items else DS1 for i in ITEMS_DS2
    }


def test_day_one_snapshot_untouched_by_day_two(root: Path) -> None:
    """Each ds is its own snapshot: running DS2 does not rewrite DS1."""
    assert _mapping(root, "vocab_users", DS1, "user_id", "user_idx") == USERS_DS1
    assert set(_first_seen_ds(root, "vocab_items", DS1, "item_id").values()) == {DS1}


@pytest.mark.parametrize(
    ("ds", "expected"),
    [
        (
            DS1,
            {
                "users": {"base_ds": None, "before": 0, "new": 6, "ids_in_events": 6},
                "items": {"base_ds": None, "before": 0, "new": 6, "ids_in_events": 6},
                "n_users": 6,
                "n_items": 6,
                "events_ds": [DS1],
                "rows_in": 12,
                "rows_out": 12,
            },
        ),
        (
            DS2,
            {
                "users": {"base_ds": DS1, "before": 6, "new": 4, "ids_in_events": 10},
                "items": {"base_ds": DS1, "before": 6, "new": 4, "ids_in_events": 10},
                "n_users": 10,
                "n_items": 10,
                "events_ds": [DS1, DS2],
                "rows_in": 20,
                "rows_out": 20,
            },
        ),
    ],
)
def test_manifest_counts(root: Path, ds: str, expected: dict[str, Any]) -> None:
    """Manifest counts: 6 + 6 ids on day 1; 4 new users and 4 new items on day 2."""
    manifest = read_manifest(root, "vocab", ds)
    assert manifest["status"] == "ok"
    assert {key: manifest[key] for key in expected} == expected


def test_rerun_same_ds_gives_identical_mapping(spark: SparkSession, root: Path) -> None:
    """Re-running vocab for DS2 reproduces the exact mapping and counts (kept last in file)."""
    before = read_rows(root, "vocab_users", DS2), read_rows(root, "vocab_items", DS2)
    run_chain(spark, build_config(root), DS2, ("vocab",))
    after = read_rows(root, "vocab_users", DS2), read_rows(root, "vocab_items", DS2)
    for old, new in zip(before, after, strict=True):
        key = sorted(old[0])
        assert sorted(tuple(r[k] for k in key) for r in new) == sorted(
            tuple(r[k] for k in key) for r in old
        )
    assert _mapping(root, "vocab_users", DS2, "user_id", "user_idx") == USERS_DS2
    assert _mapping(root, "vocab_items", DS2, "item_id", "item_idx") == ITEMS_DS2
    manifest = read_manifest(root, "vocab", DS2)
    assert (manifest["users"]["new"], manifest["items"]["new"]) == (4, 4)
    assert (manifest["n_users"], manifest["n_items"]) == (10, 10)


def test_new_ids_are_numbered_across_many_partitions_in_first_seen_order(
    spark: SparkSession,
) -> None:
    """Hundreds of new ids over several sorted partitions: dense, in (first_seen, id) order,
    after the largest existing index; computed independently by sorting in Python."""
    import datetime as dt
    import random

    from pyspark.sql import functions as F

    from recpipe.etl.vocab import extend_vocab

    rng = random.Random(3)
    base = dt.datetime(2026, 11, 1)
    seen_rows = [
        (f"u{n:04d}", base + dt.timedelta(minutes=rng.randrange(50))) for n in range(600)
    ]  # few distinct times: many ties broken by id
    rng.shuffle(seen_rows)
    existing_ids = {f"u{n:04d}": n + 1 for n in range(0, 600, 7)}  # indexes 1, 8, 15, ...
    existing = spark.createDataFrame(
        [(i, idx, "2026-10-31") for i, idx in existing_ids.items()],
        "user_id string, user_idx int, first_seen_ds string",
    )
    seen = spark.createDataFrame(seen_rows, "user_id string, first_seen timestamp").repartition(5)
    # Seven sorted partitions, not coalesced by adaptive execution into one for so few rows.
    settings = {"spark.sql.shuffle.partitions": "7",
                "spark.sql.adaptive.coalescePartitions.enabled": "false"}  # fmt: skip
    before = {key: spark.conf.get(key) for key in settings}
    for key, value in settings.items():
        spark.conf.set(key, value)
    try:
        mapping = extend_vocab(seen, existing, id_col="user_id", idx_col="user_idx", ds="D")
        got = {r["user_id"]: (r["user_idx"], r["first_seen_ds"]) for r in mapping.collect()}
        sorted_parts = (
            seen.orderBy("first_seen", "user_id").select(F.spark_partition_id()).distinct().count()
        )
    finally:
        for key, value in before.items():
            spark.conf.set(key, value)
    assert sorted_parts > 1  # the numbering really crossed partitions
    start = max(existing_ids.values()) + 1
    new = sorted((t, i) for i, t in seen_rows if i not in existing_ids)
    expected = {i: (start + n, "D") for n, (_, i) in enumerate(new)}
    expected.update({i: (idx, "2026-10-31") for i, idx in existing_ids.items()})
    assert got == expected
