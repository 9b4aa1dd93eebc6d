"""The ``sessionize`` stage on two days of hand-written events, one scenario per user."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from helpers import build_config, epoch_ms, read_rows, run_chain, utc, write_jsonl
from pyspark.sql import SparkSession

from recpipe import task_memory as task_memory_module
from recpipe.lake import Lake
from recpipe.stages.sessionize import indexed_events, run_sessionize
from recpipe.task_memory import ShufflePartitionsTooFewError, task_memory

DS1, DS2 = "2026-11-10", "2026-11-11"
D1, D2 = "2026-11-10T", "2026-11-11T"

# (user_id, item_id, event_type, ts, session_id or None). File order is not time order.
DAY1 = [
    # gap: b is exactly 30 min after a; c is 30 min + 1 ms after b; d exactly 20 min after c.
    ("gap", "c", "view", D1 + "11:00:00.001Z", None),
    ("gap", "a", "view", D1 + "10:00:00Z", None),
    ("gap", "d", "view", D1 + "11:20:00.001Z", None),
    ("gap", "b", "view", D1 + "10:30:00Z", None),
    # sid: explicit session S1 spans a 5 h gap (and a day, see DAY2); S2 is only 10 min later.
    ("sid", "x", "view", D1 + "08:00:00Z", "S1"),
    ("sid", "y", "view", D1 + "13:00:00Z", "S1"),
    ("sid", "z", "view", D1 + "13:10:00Z", "S2"),
    ("sid_b", "x", "view", D1 + "08:00:00Z", "S1"),  # same session_id, other user
    # mix: M1 given; q, s, t have none (q -> s is 45 min, s -> t 10 min).
    ("mix", "p", "view", D1 + "09:00:00Z", "M1"),
    ("mix", "q", "view", D1 + "09:05:00Z", None),
    ("mix", "r", "view", D1 + "09:10:00Z", "M1"),
    ("mix", "t", "view", D1 + "10:00:00Z", None),
    ("mix", "s", "view", D1 + "09:50:00Z", None),
    # long: 6 events within 3 min, three in the same second (funnel rank, then item id).
    ("long", "L4", "click", D1 + "14:03:00Z", None),
    ("long", "L3", "purchase", D1 + "14:02:00Z", None),
    ("long", "L1", "view", D1 + "14:00:00Z", None),
    ("long", "L3", "view", D1 + "14:02:00Z", None),
    ("long", "L2", "view", D1 + "14:01:00Z", None),
    ("long", "L0", "view", D1 + "14:02:00Z", None),
    # dup: this exact event arrives again in DAY2.
    ("dup", "z", "view", D1 + "20:00:00Z", None),
]
DAY2 = [
    ("sid", "y2", "view", D2 + "09:00:00Z", "S1"),
    ("dup", "z", "view", D1 + "20:00:00Z", None),  # duplicate of the DAY1 event
    ("dup", "w", "view", D2 + "09:00:00Z", None),
]
# 20 + 3 lines, one of them a cross-day duplicate: 22 distinct events.
DISTINCT_EVENTS = 22

Sessions = dict[tuple[str, str], list[tuple[str, str, str]]]


def auto(ts: str) -> str:
    """Key of an automatic session: ``auto-<epoch ms of its first event>``."""
    return f"auto-{epoch_ms(ts)}"


# Expected sessions with default settings, events in time order (ts, funnel rank, item id).
GAP_30: Sessions = {
    # a -> b is exactly 30 min: not a new session (the rule is gap > 30 min).
    ("gap", auto(D1 + "10:00:00Z")): [
        ("a", "view", D1 + "10:00:00Z"),
        ("b", "view", D1 + "10:30:00Z"),
    ],
    # b -> c is 30 min + 1 ms: new session.
    ("gap", auto(D1 + "11:00:00.001Z")): [
        ("c", "view", D1 + "11:00:00.001Z"),
        ("d", "view", D1 + "11:20:00.001Z"),
    ],
}
OTHERS: Sessions = {
    ("sid", "S1"): [
        ("x", "view", D1 + "08:00:00Z"),
        ("y", "view", D1 + "13:00:00Z"),
        ("y2", "view", D2 + "09:00:00Z"),
    ],
    ("sid", "S2"): [("z", "view", D1 + "13:10:00Z")],
    ("sid_b", "S1"): [("x", "view", D1 + "08:00:00Z")],
    ("mix", "M1"): [("p", "view", D1 + "09:00:00Z"), ("r", "view", D1 + "09:10:00Z")],
    ("mix", auto(D1 + "09:05:00Z")): [("q", "view", D1 + "09:05:00Z")],
    ("mix", auto(D1 + "09:50:00Z")): [
        ("s", "view", D1 + "09:50:00Z"),
        ("t", "view", D1 + "10:00:00Z"),
    ],
    ("long", auto(D1 + "14:00:00Z")): [
        ("L1", "view", D1 + "14:00:00Z"),
        ("L2", "view", D1 + "14:01:00Z"),
        ("L0", "view", D1 + "14:02:00Z"),  # same second: view before purchase, L0 before L3
        ("L3", "view", D1 + "14:02:00Z"),
        ("L3", "purchase", D1 + "14:02:00Z"),
        ("L4", "click", D1 + "14:03:00Z"),
    ],
    # The DAY1 copy and the DAY2 copy of z are one event.
    ("dup", auto(D1 + "20:00:00Z")): [("z", "view", D1 + "20:00:00Z")],
    ("dup", auto(D2 + "09:00:00Z")): [("w", "view", D2 + "09:00:00Z")],
}
DEFAULT: Sessions = {**GAP_30, **OTHERS}

# gap_minutes=20: a -> b (30 min) now splits; c -> d is exactly 20 min and does not.
# Every other user's gaps are <= 10 min or > 30 min, so their sessions are unchanged.
GAP_20: Sessions = {
    ("gap", auto(D1 + "10:00:00Z")): [("a", "view", D1 + "10:00:00Z")],
    ("gap", auto(D1 + "10:30:00Z")): [("b", "view", D1 + "10:30:00Z")],
    ("gap", auto(D1 + "11:00:00.001Z")): GAP_30[("gap", auto(D1 + "11:00:00.001Z"))],
    **OTHERS,
}

# max_session_length=2: S1 (3 events) and long (6 events) are chunked, chunk k > 0 is <sid>~k.
LONG = OTHERS[("long", auto(D1 + "14:00:00Z"))]
S1 = OTHERS[("sid", "S1")]
CHUNKED: Sessions = {
    **{key: events for key, events in DEFAULT.items() if key not in {("sid", "S1")}},
    ("sid", "S1"): S1[:2],
    ("sid", "S1~1"): S1[2:],
    ("long", auto(D1 + "14:00:00Z")): LONG[0:2],
    ("long", auto(D1 + "14:00:00Z") + "~1"): LONG[2:4],
    ("long", auto(D1 + "14:00:00Z") + "~2"): LONG[4:6],
}

# history_days=1 on DS2 reads only the DS2 partition: three events, no duplicate.
HISTORY_1: Sessions = {
    ("sid", "S1"): [("y2", "view", D2 + "09:00:00Z")],
    ("dup", auto(D1 + "20:00:00Z")): [("z", "view", D1 + "20:00:00Z")],
    ("dup", auto(D2 + "09:00:00Z")): [("w", "view", D2 + "09:00:00Z")],
}


def _events(rows: list[tuple[str, str, str, str, str | None]]) -> list[dict[str, str]]:
    out = []
    for user, item, event_type, ts, session in rows:
        event = {"user_id": user, "item_id": item, "event_type": event_type, "ts": ts}
        if session is not None:
            event["session_id"] = session
        out.append(event)
    return out


Run = tuple[list[dict[str, Any]], dict[str, Any]]


@pytest.fixture(scope="module")
def sessionized(
    spark: SparkSession, tmp_path_factory: pytest.TempPathFactory
) -> Callable[..., Run]:
    """Clean both days and build the DS2 vocab once; sessionize DS2 per override set (cached).

    Every call re-publishes the same ``sessions`` partition, so its rows are read at once.
    """
    base = tmp_path_factory.mktemp("sessionize")
    root = base / "root"
    for ds, rows in ((DS1, DAY1), (DS2, DAY2)):
        raw = write_jsonl(base / "raw" / f"{ds}.jsonl", _events(rows))
        run_chain(spark, build_config(root, f"paths.raw_events={raw}"), ds, ("clean",))
    run_chain(spark, build_config(root), DS2, ("vocab",))
    cache: dict[tuple[str, ...], Run] = {}

    def run(*overrides: str) -> Run:
        if overrides not in cache:
            manifest = run_chain(spark, build_config(root, *overrides), DS2, ("sessionize",))
            cache[overrides] = (read_rows(root, "sessions", DS2), manifest["sessionize"])
        return cache[overrides]

    run.root = root  # type: ignore[attr-defined]
    return run


def _as_sessions(rows: list[dict[str, Any]]) -> Sessions:
    """Rows -> {(user, session_id): [(item, type, ts)]}, ts rebuilt from the ``ts_ms`` array."""
    result: Sessions = {}
    for row in rows:
        key = (row["user_id"], row["session_id"])
        assert key not in result, f"session {key} written twice"
        result[key] = list(zip(row["item_id"], row["event_type"], row["ts_ms"], strict=True))
    return result


def _expected(sessions: Sessions) -> Sessions:
    return {
        key: [(item, kind, epoch_ms(ts)) for item, kind, ts in events]
        for key, events in sessions.items()
    }


RUNS = pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ((), DEFAULT),
        (("sessionize.gap_minutes=20",), GAP_20),
        (("sessionize.max_session_length=2",), CHUNKED),
        (("sessionize.history_days=1",), HISTORY_1),
    ],
    ids=["default", "gap_20", "max_length_2", "history_1"],
)


@RUNS
def test_sessions_match_hand_computed(
    sessionized: Callable[..., Run], overrides: tuple[str, ...], expected: Sessions
) -> None:
    """Every session (user, id, time-ordered events) equals the hand-computed one."""
    rows, _ = sessionized(*overrides)
    assert _as_sessions(rows) == _expected(expected)


@RUNS
def test_start_end_length(
    sessionized: Callable[..., Run], overrides: tuple[str, ...], expected: Sessions
) -> None:
    """start_ts/end_ts are the first/last event time of the (chunked) session, length its size."""
    rows, _ = sessionized(*overrides)
    got = {(r["user_id"], r["session_id"]): (r["start_ts"], r["end_ts"], r["length"]) for r in rows}
    assert got == {
        key: (utc(events[0][2]), utc(events[-1][2]), len(events))
        for key, events in expected.items()
    }


def test_gap_boundary_exactly_30_minutes(sessionized: Callable[..., Run]) -> None:
    """Exactly 30 min apart stays in one session; 30 min + 1 ms starts a new one."""
    rows, _ = sessionized()
    gap = sorted(r["item_id"] for r in rows if r["user_id"] == "gap")
    assert gap == [["a", "b"], ["c", "d"]]


def test_explicit_session_id_survives_long_gap(sessionized: Callable[..., Run]) -> None:
    """S1 keeps x, y (5 h apart) and y2 (next day) together; S2 stays apart though 10 min later."""
    rows, _ = sessionized()
    sid = {r["session_id"]: r["item_id"] for r in rows if r["user_id"] == "sid"}
    assert sid == {"S1": ["x", "y", "y2"], "S2": ["z"]}
    # The same session_id of another user is another session.
    assert [(r["session_id"], r["length"]) for r in rows if r["user_id"] == "sid_b"] == [("S1", 1)]


def test_chunking_keeps_every_event(sessionized: Callable[..., Run]) -> None:
    """max_session_length=2 caps lengths at 2 and keeps all 22 events, in time order."""
    rows, manifest = sessionized("sessionize.max_session_length=2")
    assert max(r["length"] for r in rows) == 2
    chunks = sorted(
        (r["session_id"], r["item_id"], r["event_type"]) for r in rows if r["user_id"] == "long"
    )
    first = auto(D1 + "14:00:00Z")
    assert chunks == [
        (first, ["L1", "L2"], ["view", "view"]),
        (first + "~1", ["L0", "L3"], ["view", "view"]),
        (first + "~2", ["L3", "L4"], ["purchase", "click"]),
    ]
    assert sum(r["length"] for r in rows) == DISTINCT_EVENTS
    assert manifest["events_in_sessions"] == DISTINCT_EVENTS
    assert manifest["max_session_length"] == 2


def test_indexes_match_vocab(sessionized: Callable[..., Run]) -> None:
    """user_idx and item_idx arrays agree with the DS2 vocabulary tables."""
    rows, _ = sessionized()
    root = sessionized.root  # type: ignore[attr-defined]
    users = {r["user_id"]: r["user_idx"] for r in read_rows(root, "vocab_users", DS2)}
    items = {r["item_id"]: r["item_idx"] for r in read_rows(root, "vocab_items", DS2)}
    assert len(users) == 6 and len(items) == 19  # hand count of distinct ids in the input
    for row in rows:
        assert row["user_idx"] == users[row["user_id"]]
        assert row["item_idx"] == [items[item] for item in row["item_id"]]


def test_default_manifest_counts_duplicate_once(sessionized: Callable[..., Run]) -> None:
    """23 events read over two days, one cross-day duplicate: 22 events in 11 sessions."""
    rows, manifest = sessionized()
    expected = {
        "events_ds": [DS1, DS2],
        "rows_in": 23,
        "rows_duplicate": 1,
        "events_in_sessions": DISTINCT_EVENTS,
        "sessions": 11,
        "rows_out": 11,
        "users": 6,
        "max_session_length": 6,
    }
    assert {key: manifest[key] for key in expected} == expected
    # Reconciliation: session lengths add up to the distinct events.
    assert sum(r["length"] for r in rows) == DISTINCT_EVENTS
    assert [r["item_id"] for r in rows if r["user_id"] == "dup"].count(["z"]) == 1


def test_history_days_reads_only_the_window(sessionized: Callable[..., Run]) -> None:
    """history_days=1 on DS2 reads DS2 only: 3 events, nothing counted as duplicate."""
    rows, manifest = sessionized("sessionize.history_days=1")
    expected = {"events_ds": [DS2], "rows_in": 3, "rows_duplicate": 0, "sessions": 3, "users": 2}
    assert {key: manifest[key] for key in expected} == expected
    assert sum(r["length"] for r in rows) == 3


def test_the_user_vocab_is_joined_by_shuffle_and_the_item_vocab_broadcast(
    spark: SparkSession, sessionized: Callable[..., Run]
) -> None:
    """A table that grows with users is never broadcast (broadcasts are collected on the
    driver), however small Spark estimates it: here 6 users, far under Spark's default size
    threshold. The item vocabulary is broadcast by hint. The joined indexes are the vocab's."""
    sessionized()
    root = sessionized.root  # type: ignore[attr-defined]
    config = build_config(root)
    lake = Lake(config.root)
    indexed, deduped = indexed_events(spark, config, lake, DS2, [DS1, DS2])
    try:
        rows = indexed.select("user_id", "user_idx", "item_id", "item_idx").collect()
        plan = indexed._jdf.queryExecution().executedPlan().toString()
    finally:
        indexed.unpersist()
        deduped.release()
    users = {r["user_id"]: r["user_idx"] for r in read_rows(root, "vocab_users", DS2)}
    items = {r["item_id"]: r["item_idx"] for r in read_rows(root, "vocab_items", DS2)}
    assert rows and all(users[r["user_id"]] == r["user_idx"] for r in rows)
    assert all(items[r["item_id"]] == r["item_idx"] for r in rows)
    joins = [line.strip() for line in plan.splitlines() if "Join [" in line]
    by_key = {line.split("[", 1)[1].split("#", 1)[0]: line for line in joins}
    assert by_key["user_id"].lstrip(":-+ *()0123456789").startswith("SortMergeJoin"), joins
    assert by_key["item_id"].lstrip(":-+ *()0123456789").startswith("BroadcastHashJoin"), joins


def test_too_few_shuffle_partitions_stop_the_stage_before_it_publishes(
    spark: SparkSession, sessionized: Callable[..., Run], monkeypatch: pytest.MonkeyPatch
) -> None:
    """With rows priced so that a task holds 5 of them, the 23 events read (before the
    cross-day duplicate is dropped) in 2 shuffle partitions are refused naming
    spark.shuffle_partitions, and the published sessions stay as they were; with the
    partitions the error asks for, the same run passes. (The real row cost is calibrated at
    20M events in bench/scale.py; this only scales it.)"""
    rows, _ = sessionized()
    root = sessionized.root  # type: ignore[attr-defined]
    published = read_rows(root, "sessions", DS2)  # whichever run of the module came last
    memory = task_memory(
        dict(spark.sparkContext.getConf().getAll()), spark.sparkContext.defaultParallelism
    )
    monkeypatch.setattr(task_memory_module, "ROW_BYTES", memory.mib * 2**20 // 5)
    with pytest.raises(ShufflePartitionsTooFewError) as refused:
        run_sessionize(spark, build_config(root), DS2)
    read = len(DAY1) + len(DAY2)
    assert f"sessionize: {read} events in 2 shuffle partitions is 12 a task" in str(refused.value)
    assert "set spark.shuffle_partitions to at least 5" in str(refused.value)
    assert read_rows(root, "sessions", DS2) == published
    before = spark.conf.get("spark.sql.shuffle.partitions")
    try:
        spark.conf.set("spark.sql.shuffle.partitions", "5")
        assert run_sessionize(spark, build_config(root), DS2)["status"] == "ok"
    finally:
        spark.conf.set("spark.sql.shuffle.partitions", before or "2")
    assert sorted(map(str, read_rows(root, "sessions", DS2))) == sorted(map(str, rows))
