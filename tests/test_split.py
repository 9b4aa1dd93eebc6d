"""The ``split`` stage: hand-computed parts for every protocol, and leakage checks."""

from __future__ import annotations

import datetime as dt
import math
import random
from collections import Counter, defaultdict
from collections.abc import Callable
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from typing import Any

import pytest
from helpers import build_config, read_manifest, read_rows, run_chain, utc, write_jsonl
from pyspark.sql import SparkSession

DS = "2026-11-20"
D = DS + "T"
PARTS = ("train", "valid", "test")
ALL_PROTOCOLS = "split.protocols=[leave_last_out,temporal,random_by_user]"

# (user_id, item_id, event_type, ts). Every kept interaction has its own timestamp.
SMALL = [
    ("u1", "A", "view", D + "01:00:00Z"),
    ("u1", "B", "view", D + "02:00:00Z"),
    ("u1", "C", "view", D + "03:00:00Z"),
    ("u1", "D", "view", D + "04:00:00Z"),
    ("u1", "E", "view", D + "05:00:00Z"),
    ("u1", "A", "view", D + "06:00:00Z"),  # repeat of A: dropped by dedupe_user_item
    ("u2", "F", "view", D + "01:30:00Z"),
    ("u2", "G", "view", D + "02:30:00Z"),
    ("u2", "H", "view", D + "03:30:00Z"),
    ("u3", "A", "view", D + "01:10:00Z"),  # same item as u1: dedupe is per user
    ("u3", "J", "view", D + "02:10:00Z"),
    ("u4", "K", "view", D + "01:20:00Z"),
    ("u4", "L", "view", D + "02:20:00Z"),
    ("u4", "K", "click", D + "03:20:00Z"),  # repeat of K: u4 falls to 2 interactions
    ("u5", "M", "purchase", D + "02:40:00Z"),  # same second as the M view, later in the funnel
    ("u5", "M", "view", D + "02:40:00Z"),
    ("u5", "N", "view", D + "03:40:00Z"),
    ("u5", "O", "view", D + "04:40:00Z"),
    ("u6", "P", "view", D + "00:05:00Z"),
    ("u6", "Q", "view", D + "00:15:00Z"),
    ("u6", "R", "view", D + "00:25:00Z"),
    ("u6", "S", "view", D + "00:35:00Z"),
    ("u6", "T", "view", D + "00:45:00Z"),
    ("u6", "U", "view", D + "00:55:00Z"),
    *(("u7", f"v{k:02d}", "view", f"{D}07:{k:02d}:00Z") for k in range(1, 13)),
    ("u8", "Z", "view", D + "08:00:00Z"),
]
# dedupe_user_item keeps each user's first interaction with an item, so these three go.
REPEATS = {
    ("u1", "A", "view", D + "06:00:00Z"),
    ("u4", "K", "click", D + "03:20:00Z"),
    ("u5", "M", "purchase", D + "02:40:00Z"),  # same ts as the view: funnel rank decides
}

Key = tuple[str, str, str, dt.datetime]
Parts = dict[str, set[Key]]


def k(user: str, item: str, kind: str, ts: str) -> Key:
    """Comparable key of one interaction."""
    return (user, item, kind, utc(ts))


def v(user: str, item: str, hhmm: str) -> Key:
    """Key of a ``view`` at ``hh:mm`` on DS."""
    return k(user, item, "view", f"{D}{hhmm}:00Z")


ALL_EVENTS = {k(*e) for e in SMALL}
DEDUPED = ALL_EVENTS - {k(*e) for e in REPEATS}
U7 = {v("u7", f"v{n:02d}", f"07:{n:02d}") for n in range(1, 13)}

# leave_last_out on the deduped interactions: last -> test, one before -> valid; u3, u4
# (2 left after dedupe) and u8 (1) have fewer than min_interactions=3 and stay in train.
LLO_TEST = {
    v("u1", "E", "05:00"),
    v("u2", "H", "03:30"),
    v("u5", "O", "04:40"),
    v("u6", "U", "00:55"),
    v("u7", "v12", "07:12"),
}
LLO_VALID = {
    v("u1", "D", "04:00"),
    v("u2", "G", "02:30"),
    v("u5", "N", "03:40"),
    v("u6", "T", "00:45"),
    v("u7", "v11", "07:11"),
}
LLO: Parts = {"test": LLO_TEST, "valid": LLO_VALID, "train": DEDUPED - LLO_TEST - LLO_VALID}

# Without dedupe: u1's last is the A repeat, u4 has 3 interactions, u5 keeps both M rows
# (the view sorts before the purchase in the same second).
LLO_NO_DEDUPE_TEST = {
    v("u1", "A", "06:00"),
    k("u4", "K", "click", D + "03:20:00Z"),
    *(LLO_TEST - {v("u1", "E", "05:00")}),
}
LLO_NO_DEDUPE_VALID = {v("u1", "E", "05:00"), v("u4", "L", "02:20"), *LLO_VALID} - {
    v("u1", "D", "04:00")
}
LLO_NO_DEDUPE: Parts = {
    "test": LLO_NO_DEDUPE_TEST,
    "valid": LLO_NO_DEDUPE_VALID,
    "train": ALL_EVENTS - LLO_NO_DEDUPE_TEST - LLO_NO_DEDUPE_VALID,
}

# temporal with cut=03:30 and valid_cut=02:30: ts >= 03:30 -> test, [02:30, 03:30) -> valid.
CUT_TEST = {
    v("u1", "D", "04:00"),
    v("u1", "E", "05:00"),
    v("u2", "H", "03:30"),  # exactly at the cut
    v("u5", "N", "03:40"),
    v("u5", "O", "04:40"),
    *U7,
    v("u8", "Z", "08:00"),
}
CUT_VALID = {v("u1", "C", "03:00"), v("u2", "G", "02:30"), v("u5", "M", "02:40")}
TEMPORAL_CUT: Parts = {
    "test": CUT_TEST,
    "valid": CUT_VALID,
    "train": DEDUPED - CUT_TEST - CUT_VALID,
}

# temporal with test_ratio=0.5: 34 deduped interactions, all at distinct times, so the last
# 17 are test: Z 08:00, the 12 of u7, E 05:00, O 04:40, D 04:00, N 03:40. H 03:30 is 18th.
RATIO_TEST = {
    v("u8", "Z", "08:00"),
    *U7,
    v("u1", "E", "05:00"),
    v("u5", "O", "04:40"),
    v("u1", "D", "04:00"),
    v("u5", "N", "03:40"),
}
TEMPORAL_RATIO: Parts = {"test": RATIO_TEST, "valid": set(), "train": DEDUPED - RATIO_TEST}

# random_by_user 0.75/0/0.25: train = max(1, round_half_up(n * 0.75)), the rest test.
# u1 n=5: 3.75 -> 4; u2, u5 n=3: 2.25 -> 2; u3, u4 n=2: 1.5 -> 2 (no test);
# u6 n=6: 4.5 -> 5 (half-up; half-even would give 4); u7 n=12: 9; u8 n=1: 1.
RANDOM_COUNTS = {  # defaults 0.675 / 0.075 / 0.25
    "u1": (3, 1, 1),
    "u2": (2, 0, 1),
    "u3": (1, 1, 0),
    "u4": (1, 1, 0),
    "u5": (2, 0, 1),
    "u6": (4, 1, 1),
    "u7": (8, 1, 3),
    "u8": (1, 0, 0),
}

Split = dict[str, dict[str, list[dict[str, Any]]]]
Run = tuple[Split, dict[str, Any]]


def _events(rows: list[tuple[str, str, str, str]]) -> list[dict[str, str]]:
    return [{"user_id": u, "item_id": i, "event_type": e, "ts": ts} for u, i, e, ts in rows]


def _run_and_read(spark: SparkSession, root: Path, stages: tuple[str, ...], *overrides: str) -> Run:
    config = build_config(root, *overrides)
    run_chain(spark, config, DS, stages)
    split = {
        protocol: {part: read_rows(root, part, DS, protocol) for part in PARTS}
        for protocol in config.split.protocols
    }
    return split, read_manifest(root, "split", DS)


@pytest.fixture(scope="module")
def small(spark: SparkSession, tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Run]:
    """Full chain over SMALL once; later calls re-run only ``split`` with other settings.

    Runs are cached by their overrides; each is read back before the next overwrites it.
    """
    base = tmp_path_factory.mktemp("split-small")
    root = base / "root"
    raw = write_jsonl(base / "raw.jsonl", _events(SMALL))
    chain = ("clean", "vocab", "sessionize")
    run_chain(spark, build_config(root, f"paths.raw_events={raw}"), DS, chain)
    cache: dict[tuple[str, ...], Run] = {}

    def run(*overrides: str) -> Run:
        if overrides not in cache:
            cache[overrides] = _run_and_read(spark, root, ("split",), *overrides)
        return cache[overrides]

    return run


# Run A: every protocol, explicit temporal cuts, seed 42 (the default).
RUN_A = (
    ALL_PROTOCOLS,
    f"split.temporal.cut={D}03:30:00Z",
    f"split.temporal.valid_cut={D}02:30:00Z",
)
# Run B: temporal by ratio; random_by_user again with seed 42.
RUN_B = (
    "split.protocols=[temporal,random_by_user]",
    "split.temporal.test_ratio=0.5",
    "split.temporal.valid_ratio=0.0",
)
# Run C: no dedupe; random_by_user with seed 7 (u7 has no repeats, so its rows are the same).
RUN_C = (
    "split.protocols=[leave_last_out,random_by_user]",
    "split.dedupe_user_item=false",
    "split.random_by_user.seed=7",
)


def _key(row: dict[str, Any]) -> Key:
    return (row["user_id"], row["item_id"], row["event_type"], row["ts"])


def _parts(split: Split, protocol: str) -> Parts:
    parts = {part: {_key(r) for r in split[protocol][part]} for part in PARTS}
    for part in PARTS:
        assert len(parts[part]) == len(split[protocol][part]), f"{protocol}/{part}: repeated rows"
    return parts


def _assert_no_leakage(parts: Parts, interactions: set[Key]) -> None:
    """The three parts are disjoint and together are exactly ``interactions``."""
    assert not parts["train"] & parts["valid"]
    assert not parts["train"] & parts["test"]
    assert not parts["valid"] & parts["test"]
    assert parts["train"] | parts["valid"] | parts["test"] == interactions


def _by_user(keys: set[Key]) -> dict[str, list[dt.datetime]]:
    out: dict[str, list[dt.datetime]] = defaultdict(list)
    for user, _, _, ts in keys:
        out[user].append(ts)
    return out


def _assert_chronological_per_user(parts: Parts) -> None:
    """No valid/test interaction of a user is earlier than any of that user's train ones."""
    train = _by_user(parts["train"])
    valid = _by_user(parts["valid"])
    for later in ("valid", "test"):
        for user, times in _by_user(parts[later]).items():
            assert min(times) >= max(train.get(user, [min(times)])), (later, user)
    for user, times in _by_user(parts["test"]).items():
        assert min(times) >= max(valid.get(user, [min(times)])), ("test after valid", user)


def _assert_chronological_global(parts: Parts) -> None:
    """Temporal: every test ts >= every valid ts >= every train ts."""
    times = {part: [key[3] for key in parts[part]] for part in PARTS}
    assert times["test"] and times["train"]
    assert min(times["test"]) >= max(times["train"])
    if times["valid"]:
        assert max(times["train"]) <= min(times["valid"])
        assert max(times["valid"]) <= min(times["test"])


def _counts(parts: Parts) -> dict[str, tuple[int, int, int]]:
    per = {part: Counter(key[0] for key in parts[part]) for part in PARTS}
    users = set().union(*per.values())
    return {u: tuple(per[part][u] for part in PARTS) for u in users}  # type: ignore[misc]


# ---------------------------------------------------------------- hand-computed expectations


def test_leave_last_out(small: Callable[..., Run]) -> None:
    """Last -> test, previous -> valid; users below 3 interactions wholly in train."""
    split, _ = small(*RUN_A)
    assert _parts(split, "leave_last_out") == LLO


def test_leave_last_out_manifest(small: Callable[..., Run]) -> None:
    """Rows and users per part: 5 users with >= 3 interactions give 5 test and 5 valid rows."""
    _, manifest = small(*RUN_A)
    counts = manifest["protocols"]["leave_last_out"]
    assert {p: counts[p] for p in PARTS} == {
        "train": {"rows": 24, "users": 8},
        "valid": {"rows": 5, "users": 5},
        "test": {"rows": 5, "users": 5},
    }
    assert counts["settings"]["min_interactions"] == 3


def test_dedupe_keeps_first_interaction(small: Callable[..., Run]) -> None:
    """37 rows in, 3 repeats dropped; the kept copy is the earliest (funnel-first on a tie)."""
    split, manifest = small(*RUN_A)
    assert (manifest["rows_in"], manifest["rows_repeat_dropped"]) == (37, 3)
    rows = [r for part in PARTS for r in split["leave_last_out"][part]]
    kept = {(r["user_id"], r["item_id"]): (r["event_type"], r["ts"]) for r in rows}
    assert kept[("u1", "A")] == ("view", utc(D + "01:00:00Z"))
    assert kept[("u3", "A")] == ("view", utc(D + "01:10:00Z"))
    assert kept[("u4", "K")] == ("view", utc(D + "01:20:00Z"))
    assert kept[("u5", "M")] == ("view", utc(D + "02:40:00Z"))
    assert len(rows) == 34


def test_no_dedupe_keeps_repeats(small: Callable[..., Run]) -> None:
    """dedupe_user_item=false: all 37 rows are split; repeats can be the held-out interaction."""
    split, manifest = small(*RUN_C)
    assert (manifest["rows_in"], manifest["rows_repeat_dropped"]) == (37, 0)
    assert _parts(split, "leave_last_out") == LLO_NO_DEDUPE


def test_random_by_user_counts(small: Callable[..., Run]) -> None:
    """Per-user sizes: train max(1, round_half_up(n * 0.675)), train + valid
    max(train, round_half_up(n * 0.75)), the rest test."""
    split, _ = small(*RUN_A)
    assert _counts(_parts(split, "random_by_user")) == RANDOM_COUNTS


def test_random_by_user_same_seed_is_deterministic(small: Callable[..., Run]) -> None:
    """Two separate split runs with seed 42 assign every interaction to the same part."""
    first, _ = small(*RUN_A)
    second, _ = small(*RUN_B)
    assert _parts(first, "random_by_user") == _parts(second, "random_by_user")


def test_random_by_user_other_seed_reshuffles(small: Callable[..., Run]) -> None:
    """Seed 7 holds out a different 3 of u7's 12 items than seed 42 (same counts)."""
    seed42, _ = small(*RUN_A)
    seed7, manifest = small(*RUN_C)
    test42 = {key for key in _parts(seed42, "random_by_user")["test"] if key[0] == "u7"}
    test7 = {key for key in _parts(seed7, "random_by_user")["test"] if key[0] == "u7"}
    assert len(test42) == len(test7) == 3
    assert test42 <= U7 and test7 <= U7
    assert test42 != test7
    assert manifest["protocols"]["random_by_user"]["settings"]["seed"] == 7


def test_temporal_explicit_cut(small: Callable[..., Run]) -> None:
    """ts >= cut -> test (a ts exactly at the cut included), [valid_cut, cut) -> valid."""
    split, manifest = small(*RUN_A)
    assert _parts(split, "temporal") == TEMPORAL_CUT
    settings = manifest["protocols"]["temporal"]["settings"]
    assert settings["test_cut"] == "2026-11-20T03:30:00+00:00"
    assert settings["valid_cut"] == "2026-11-20T02:30:00+00:00"


def test_temporal_test_ratio(small: Callable[..., Run]) -> None:
    """test_ratio=0.5 of 34 interactions at distinct times puts exactly the latest 17 in test."""
    split, _ = small(*RUN_B)
    parts = _parts(split, "temporal")
    assert len(parts["test"]) == 17
    assert parts == TEMPORAL_RATIO


def _expected_cold(
    interactions: set[Key], test_ratio: float, valid_ratio: float, side: int = 1
) -> Parts:
    """cold_items (``side`` 1, the item of a key) or cold_users (``side`` 0) by hand: items
    (users) ordered by first interaction; the latest ``test_ratio`` of them (percentile_disc:
    those after the ceil(q * n)-th) with all their interactions in test, the ``valid_ratio``
    before them in valid, everything else in train."""
    first: dict[str, dt.datetime] = {}
    for key in interactions:
        who, ts = key[side], key[3]
        first[who] = min(ts, first.get(who, ts))
    times = sorted(first.values())

    def last_below(q: float) -> dt.datetime:
        return times[math.ceil(q * len(times)) - 1]

    test_after = last_below(1 - test_ratio)
    valid_after = last_below(1 - test_ratio - valid_ratio)
    parts: Parts = {part: set() for part in PARTS}
    for key in interactions:
        when = first[key[side]]
        part = "test" if when > test_after else "valid" if when > valid_after else "train"
        parts[part].add(key)
    return parts


def test_cold_items_sends_every_interaction_of_the_newest_items_to_test(
    small: Callable[..., Run],
) -> None:
    """No scored item has a train interaction; A (first seen early, watched late by u1 too)
    stays in train whatever its later interactions."""
    split, manifest = small(
        "split.protocols=[cold_items]",
        "split.cold_items.test_ratio=0.25",
        "split.cold_items.valid_ratio=0.1",
    )
    parts = _parts(split, "cold_items")
    expected = _expected_cold(DEDUPED, 0.25, 0.1)
    assert parts == expected
    items = {part: {key[1] for key in parts[part]} for part in PARTS}
    assert items["test"] and items["valid"]
    assert not items["test"] & (items["train"] | items["valid"])
    assert not items["valid"] & items["train"]
    settings = manifest["protocols"]["cold_items"]["settings"]
    assert (settings["test_ratio"], settings["valid_ratio"]) == (0.25, 0.1)


def test_cold_users_sends_every_interaction_of_the_newest_users_to_test(
    small: Callable[..., Run],
) -> None:
    """No scored user has a train interaction: the users first seen last are wholly in test
    (valid before them), whatever items they touch."""
    split, manifest = small(
        "split.protocols=[cold_users]",
        "split.cold_users.test_ratio=0.34",
        "split.cold_users.valid_ratio=0.3",
    )
    parts = _parts(split, "cold_users")
    assert parts == _expected_cold(DEDUPED, 0.34, 0.3, side=0)
    users = {part: {key[0] for key in parts[part]} for part in PARTS}
    assert users["test"] and users["valid"] and users["train"]
    assert not users["test"] & (users["train"] | users["valid"])
    assert not users["valid"] & users["train"]
    settings = manifest["protocols"]["cold_users"]["settings"]
    assert settings["rule"].startswith("users first seen")


# ---------------------------------------------------------------------------- leakage


@pytest.mark.parametrize(
    ("run", "protocol", "interactions"),
    [
        (RUN_A, "leave_last_out", DEDUPED),
        (RUN_A, "temporal", DEDUPED),
        (RUN_A, "random_by_user", DEDUPED),
        (RUN_B, "temporal", DEDUPED),
        (RUN_C, "leave_last_out", ALL_EVENTS),
        (RUN_C, "random_by_user", ALL_EVENTS),
    ],
    ids=["llo", "temporal_cut", "random", "temporal_ratio", "llo_no_dedupe", "random_no_dedupe"],
)
def test_small_parts_disjoint_and_complete(
    small: Callable[..., Run], run: tuple[str, ...], protocol: str, interactions: set[Key]
) -> None:
    """Leakage: disjoint parts whose union is the (deduped) interactions."""
    split, _ = small(*run)
    _assert_no_leakage(_parts(split, protocol), interactions)


def test_small_chronological(small: Callable[..., Run]) -> None:
    """Leakage: held-out interactions never precede train (per user, or globally)."""
    run_a, _ = small(*RUN_A)
    run_b, _ = small(*RUN_B)
    run_c, _ = small(*RUN_C)
    _assert_chronological_per_user(_parts(run_a, "leave_last_out"))
    _assert_chronological_per_user(_parts(run_c, "leave_last_out"))
    _assert_chronological_global(_parts(run_a, "temporal"))
    _assert_chronological_global(_parts(run_b, "temporal"))


def _generated_events(seed: int = 2026) -> list[tuple[str, str, str, str]]:
    """30 users with 1..28 events over 40 items at distinct per-user seconds of DS."""
    rng = random.Random(seed)
    midnight = dt.datetime.fromisoformat(D + "00:00:00+00:00")
    events = []
    for n in range(30):
        count = rng.choice([1, 2, 3]) if n < 4 else rng.randint(12, 28)
        for second in rng.sample(range(86_400), count):
            ts = (midnight + dt.timedelta(seconds=second)).isoformat().replace("+00:00", "Z")
            kind = rng.choice(["view", "click", "cart", "purchase"])
            events.append((f"g{n:02d}", f"item{rng.randrange(40):02d}", kind, ts))
    rng.shuffle(events)
    return events


@pytest.fixture(scope="module")
def generated(
    spark: SparkSession, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Split, dict[str, Any], set[Key], set[Key]]:
    """Whole chain over the generated input with all three protocols (temporal by ratio 0.2).

    Returns the split, its manifest, all interactions and the first per (user, item).
    """
    events = _generated_events()
    base = tmp_path_factory.mktemp("split-generated")
    raw = write_jsonl(base / "raw.jsonl", _events(events))
    split, manifest = _run_and_read(
        spark, base / "root", ("clean", "vocab", "sessionize", "split"),
        f"paths.raw_events={raw}", ALL_PROTOCOLS,
    )  # fmt: skip
    everything = {k(*e) for e in events}
    first: dict[tuple[str, str], Key] = {}
    for key in sorted(everything, key=lambda key: key[3]):  # per-user times are distinct
        first.setdefault((key[0], key[1]), key)
    return split, manifest, everything, set(first.values())


def test_generated_input_is_not_trivial(generated: tuple[Split, Any, set[Key], set[Key]]) -> None:
    """The generated input has repeats to drop, small users and every part non-empty."""
    split, manifest, everything, deduped = generated
    assert manifest["rows_in"] == len(everything)
    assert manifest["rows_repeat_dropped"] == len(everything) - len(deduped) > 0
    for protocol in ("leave_last_out", "temporal", "random_by_user"):
        assert split[protocol]["train"] and split[protocol]["test"], protocol
    assert split["leave_last_out"]["valid"]


@pytest.mark.parametrize("protocol", ["leave_last_out", "temporal", "random_by_user"])
def test_generated_parts_disjoint_and_complete(
    generated: tuple[Split, Any, set[Key], set[Key]], protocol: str
) -> None:
    """Leakage on generated data: disjoint parts whose union is the deduped interactions."""
    split, _, _, deduped = generated
    _assert_no_leakage(_parts(split, protocol), deduped)


def test_generated_chronological(generated: tuple[Split, Any, set[Key], set[Key]]) -> None:
    """Leakage on generated data: leave_last_out per user, temporal globally."""
    split, _, _, deduped = generated
    llo = _parts(split, "leave_last_out")
    _assert_chronological_per_user(llo)
    _assert_chronological_global(_parts(split, "temporal"))
    # Exactly one test and one valid row for users with >= 3 interactions, none otherwise.
    sizes = Counter(key[0] for key in deduped)
    assert _counts(llo) == {u: (n - 2, 1, 1) if n >= 3 else (n, 0, 0) for u, n in sizes.items()}


def test_generated_random_counts(generated: tuple[Split, Any, set[Key], set[Key]]) -> None:
    """random_by_user with the defaults (0.675 / 0.075 / 0.25): per user, train =
    max(1, round_half_up(n * 0.675)), train + valid = max(train, round_half_up(n * 0.75)),
    the rest in test (Spark rounds the double's shortest decimal form half up)."""
    split, _, _, deduped = generated
    sizes = Counter(key[0] for key in deduped)

    def half_up(value: float) -> int:
        return int(Decimal(repr(value)).quantize(Decimal(1), rounding=ROUND_HALF_UP))

    expected = {}
    for user, n in sizes.items():
        train = max(1, half_up(n * 0.675))
        upto_valid = max(train, half_up(n * (0.675 + 0.075)))
        expected[user] = (train, upto_valid - train, n - upto_valid)
    assert sum(valid for _, valid, _ in expected.values()) > 0
    assert _counts(_parts(split, "random_by_user")) == expected
