"""Synthetic raw log generator, checked by re-reading the written files (no Spark)."""

from __future__ import annotations

import datetime as dt
import itertools
import json
import math
import statistics
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from recpipe import storage
from recpipe.datasets import synthetic
from recpipe.datasets.synthetic import MALFORMED_REASONS, SyntheticSpec, generate_events
from recpipe.schema import Reason

SPEC = SyntheticSpec(
    n_events=60_000,
    bot_users=2,
    bot_events_per_day=3_000,
    malformed_fraction=0.02,
    duplicate_fraction=0.01,
    n_files=3,
    seed=7,
)
WINDOW_START = int(dt.datetime(2026, 11, 1, tzinfo=dt.UTC).timestamp())
WINDOW_END = WINDOW_START + SPEC.days * 86_400
MAX_ID_LENGTH = 128
EVENT_TYPES = {"view", "click", "cart", "purchase", "rating"}


def _blank(value: Any) -> bool:
    return value is None or (isinstance(value, str) and value.strip() == "")


def _seconds(ts: Any) -> int | None:
    """Epoch seconds of a raw ts, or None when it is not epoch s/ms or ISO with a zone."""
    if isinstance(ts, int) and not isinstance(ts, bool):
        return ts // 1000 if abs(ts) >= 100_000_000_000 else ts
    if isinstance(ts, str):
        try:
            parsed = dt.datetime.fromisoformat(ts)
        except ValueError:
            return None
        return int(parsed.timestamp()) if parsed.tzinfo is not None else None
    return None


def classify(line: bytes, window: tuple[int, int] = (WINDOW_START, WINDOW_END)) -> str | None:
    """First failing check in the consumer's order, or None for a valid event."""
    try:
        text = line.decode()
    except UnicodeDecodeError:
        return Reason.BAD_ENCODING
    if text.strip() == "":
        return Reason.EMPTY_RECORD
    if "\x00" in text:
        return Reason.BAD_ENCODING
    try:
        record = json.loads(text)
    except ValueError:
        return Reason.MALFORMED_RECORD
    if not isinstance(record, dict):
        return Reason.NOT_AN_OBJECT
    if any(isinstance(record.get(k), dict | list | bool) for k in ("user_id", "item_id")):
        return Reason.BAD_ID_TYPE
    for key, reason in (
        ("user_id", Reason.MISSING_USER_ID),
        ("item_id", Reason.MISSING_ITEM_ID),
        ("event_type", Reason.MISSING_EVENT_TYPE),
        ("ts", Reason.MISSING_TS),
    ):
        if _blank(record.get(key)):
            return reason
    if any(len(str(record[k]).strip()) > MAX_ID_LENGTH for k in ("user_id", "item_id")):
        return Reason.ID_TOO_LONG
    event_type = str(record["event_type"]).strip().lower()
    if event_type not in EVENT_TYPES:
        return Reason.UNKNOWN_EVENT_TYPE
    seconds = _seconds(record["ts"])
    if seconds is None:
        return Reason.BAD_TS
    if not window[0] <= seconds < window[1]:
        return Reason.TS_OUT_OF_WINDOW
    value = record.get("value")
    if value is not None and not (
        isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    ):
        return Reason.BAD_VALUE
    if event_type == "rating" and value is None:
        return Reason.MISSING_VALUE
    return None


def read_lines(out: Path) -> list[bytes]:
    lines: list[bytes] = []
    for path in sorted(out.glob("part-*.jsonl")):
        data = path.read_bytes()
        if not data:
            continue
        assert data.endswith(b"\n")
        lines += data[:-1].split(b"\n")
    return lines


class Data:
    """Everything the tests need, parsed once from the files."""

    def __init__(self, out: Path, summary: dict) -> None:
        self.out = out
        self.summary = summary
        self.lines = read_lines(out)
        self.reasons = Counter()
        self.duplicates = 0
        self.events: list[dict[str, Any]] = []  # distinct valid events, in file order
        seen: set[bytes] = set()
        for line in self.lines:
            reason = classify(line)
            if reason is not None:
                self.reasons[reason] += 1
            elif line in seen:
                self.duplicates += 1
            else:
                seen.add(line)
                event = json.loads(line)
                event["_seconds"] = _seconds(event["ts"])
                self.events.append(event)
        bots = set(summary["bot_user_ids"])
        self.human = [e for e in self.events if e["user_id"] not in bots]
        self.bot = [e for e in self.events if e["user_id"] in bots]


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Data:
    out = tmp_path_factory.mktemp("synthetic")
    return Data(out, generate_events(SPEC, out))


def test_files_and_summary(data: Data) -> None:
    s = data.summary
    parts = sorted(p.name for p in data.out.glob("part-*.jsonl"))
    assert parts == [f"part-{k:05d}.jsonl" for k in range(SPEC.n_files)]
    assert s["files"] == [str(data.out / name) for name in parts]
    assert s["lines_total"] == len(data.lines)
    assert s["lines_total"] == s["events_valid"] + s["duplicates"] + sum(s["malformed"].values())
    written = json.loads((data.out / "_generation.json").read_text())
    assert written == {k: v for k, v in s.items() if k != "elapsed_s"}
    json.dumps(s)
    assert abs(s["events_valid"] - SPEC.n_events) < 0.1 * SPEC.n_events


def test_reason_counts_match_independent_classifier(data: Data) -> None:
    s = data.summary
    assert set(s["malformed"]) == set(MALFORMED_REASONS)
    assert Reason.BOT_SUSPECT not in s["malformed"]
    assert dict(data.reasons) == {k: v for k, v in s["malformed"].items() if v}
    counts = list(s["malformed"].values())
    assert min(counts) > 0 and max(counts) - min(counts) <= 1
    assert sum(counts) == round(SPEC.malformed_fraction * s["events_valid"])


def test_blank_lines_are_lines_of_their_own(data: Data) -> None:
    blanks = [line for line in data.lines if line.strip() == b""]
    assert len(blanks) == data.summary["malformed"][Reason.EMPTY_RECORD]
    assert b"" in blanks


def test_duplicates_are_copies_of_earlier_valid_lines(data: Data) -> None:
    s = data.summary
    assert data.duplicates == s["duplicates"] == round(SPEC.duplicate_fraction * s["events_valid"])
    assert len(data.events) == s["events_valid"]
    keys = {
        (e["user_id"], e["item_id"], e["event_type"], e["_seconds"], e.get("value"))
        for e in data.events
    }
    assert len(keys) == len(data.events)


def test_valid_ts_strictly_increasing_per_user(data: Data) -> None:
    last: dict[str, int] = {}
    for e in data.events:
        previous = last.get(e["user_id"])
        assert previous is None or e["_seconds"] >= previous + 1
        last[e["user_id"]] = e["_seconds"]
    s = data.summary
    assert s["ts_min"] == min(e["_seconds"] for e in data.events) >= WINDOW_START
    assert s["ts_max"] == max(e["_seconds"] for e in data.events) < WINDOW_END


def test_ts_formats_are_mixed(data: Data) -> None:
    kinds = Counter()
    for e in data.events:
        ts = e["ts"]
        if isinstance(ts, int):
            kinds["ms" if ts >= 100_000_000_000 else "s"] += 1
            assert ts < 100_000_000_000 or ts % 1000 == 0
        elif ts.endswith("Z"):
            kinds["iso_z"] += 1
        else:
            kinds["iso_offset"] += 1
            assert ts[-6] in "+-" and ts[-3] == ":"
    assert all(kinds[k] > 0.05 * len(data.events) for k in ("s", "ms", "iso_z", "iso_offset"))


def test_event_type_ratios_and_values(data: Data) -> None:
    types = Counter(e["event_type"] for e in data.human)
    n = len(data.human)
    assert 0.62 < types["view"] / n < 0.78
    assert 0.15 < types["click"] / n < 0.25
    assert 0.045 < types["cart"] / n < 0.095
    assert 0.015 < types["purchase"] / n < 0.045
    assert "rating" not in types
    all_types = Counter(e["event_type"] for e in data.events)
    assert data.summary["event_types"] == {k: all_types[k] for k in data.summary["event_types"]}
    for e in data.events:
        if e["event_type"] == "purchase":
            assert isinstance(e["value"], float) and e["value"] > 0
        else:
            assert "value" not in e


def test_item_popularity_is_zipf_like(data: Data) -> None:
    per_item = Counter(e["item_id"] for e in data.human)
    counts = sorted(per_item.values(), reverse=True)
    top = max(1, len(counts) // 100)
    assert sum(counts[:top]) / sum(counts) > 0.10
    assert counts[0] > 20 * statistics.median(counts)
    assert data.summary["n_items_active"] == len({e["item_id"] for e in data.events})


def test_extra_fields(data: Data) -> None:
    category: dict[str, str] = {}
    for e in data.events:
        assert category.setdefault(e["item_id"], e["category"]) == e["category"]
        assert e["category"].startswith("c")
        assert e["device"] in {"web", "ios", "android"}
    assert len(set(category.values())) == SPEC.n_categories


def test_user_activity_is_heavy_tailed(data: Data) -> None:
    per_user = Counter(e["user_id"] for e in data.human)
    counts = list(per_user.values())
    assert max(counts) > 10 * statistics.median(counts)
    assert data.summary["n_users_active"] == len({e["user_id"] for e in data.events})


def test_sessions(data: Data) -> None:
    min_gap = 2 * SPEC.session_gap_minutes * 60
    by_user: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for e in data.human:
        by_user[e["user_id"]].append(e)
    with_sid = 0
    session_owner: dict[str, str] = {}
    for user, events in by_user.items():
        sids = [e.get("session_id") for e in events]
        assert all(sids) or not any(sids)
        if sids[0]:
            with_sid += 1
        for a, b in itertools.pairwise(events):
            gap = b["_seconds"] - a["_seconds"]
            if a.get("session_id") is not None and a["session_id"] == b["session_id"]:
                assert 5 <= gap <= 300
            elif a.get("session_id") is not None:
                assert gap >= min_gap
            else:
                assert 5 <= gap <= 300 or gap >= min_gap
        for sid in set(sids) - {None}:
            assert session_owner.setdefault(sid, user) == user
    assert 0.35 < with_sid / len(by_user) < 0.65
    # Different sessions of a user never share an id: their events are one contiguous run.
    runs = Counter()
    for events in by_user.values():
        sids = [e.get("session_id") for e in events]
        for i, sid in enumerate(sids):
            if sid is not None and (i == 0 or sids[i - 1] != sid):
                runs[sid] += 1
    assert set(runs.values()) <= {1}


def test_bots_stay_in_one_utc_day(data: Data) -> None:
    s = data.summary
    per_bot: dict[str, set[int]] = defaultdict(set)
    for e in data.bot:
        per_bot[e["user_id"]].add(e["_seconds"] // 86_400)
    assert len(per_bot) == SPEC.bot_users
    assert all(len(days) == 1 for days in per_bot.values())
    assert Counter(e["user_id"] for e in data.bot) == dict.fromkeys(
        s["bot_user_ids"], SPEC.bot_events_per_day
    )
    assert s["bot_events"] == len(data.bot) == SPEC.bot_users * SPEC.bot_events_per_day
    per_user_day = Counter((e["user_id"], e["_seconds"] // 86_400) for e in data.human)
    assert s["max_events_per_user_day"] == max(per_user_day.values())
    assert s["max_events_per_user_day"] < SPEC.bot_events_per_day // 5


def test_same_seed_same_bytes_other_seed_differs(data: Data, tmp_path: Path) -> None:
    again = generate_events(SPEC, tmp_path / "again")
    for name in (f"part-{k:05d}.jsonl" for k in range(SPEC.n_files)):
        assert (tmp_path / "again" / name).read_bytes() == (data.out / name).read_bytes()
    strip = {"files", "elapsed_s", "raw_items", "raw_users"}  # where they went
    assert {k: v for k, v in again.items() if k not in strip} == {
        k: v for k, v in data.summary.items() if k not in strip
    }
    other = SyntheticSpec(**{**SPEC.__dict__, "seed": 8})
    generate_events(other, tmp_path / "other")
    assert read_lines(tmp_path / "other") != data.lines


def test_rerun_replaces_old_part_files(tmp_path: Path) -> None:
    (tmp_path / "part-00009.jsonl").write_text("stale\n")
    (tmp_path / "keep.txt").write_text("not ours\n")
    spec = SyntheticSpec(n_events=2_000, n_files=2, seed=1)
    summary = generate_events(spec, tmp_path)
    assert sorted(p.name for p in tmp_path.glob("part-*")) == [
        "part-00000.jsonl",
        "part-00001.jsonl",
    ]
    assert (tmp_path / "keep.txt").exists()
    assert len(read_lines(tmp_path)) == summary["lines_total"]


@pytest.mark.parametrize(
    "spec",
    [
        SyntheticSpec(n_events=300, days=1, n_files=5, seed=3),
        SyntheticSpec(n_events=5_000, n_users=20, n_items=7, n_categories=3, days=2, seed=4),
        SyntheticSpec(n_events=100, bot_users=1, bot_events_per_day=500, n_files=1),
        SyntheticSpec(n_events=1_000, malformed_fraction=0, duplicate_fraction=0),
    ],
)
def test_small_and_extreme_specs(spec: SyntheticSpec, tmp_path: Path) -> None:
    check_invariants(spec, generate_events(spec, tmp_path), tmp_path)


def test_sessions_that_do_not_fit_are_dropped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Far more sessions than a day can hold: the generator must drop the overflow.
    monkeypatch.setattr(
        synthetic._Generator, "_sessions_per_user", lambda self, rng, n: np.full(n, 400)
    )
    spec = SyntheticSpec(n_events=1_000, n_users=30, days=1, seed=5)
    summary = generate_events(spec, tmp_path)
    assert summary["sessions"] < 30 * 400
    check_invariants(spec, summary, tmp_path)


def check_invariants(spec: SyntheticSpec, s: dict, out: Path) -> None:
    """Counts, window, per-user ts order and session gaps of any generated folder."""
    lines = read_lines(out)
    assert len(lines) == s["lines_total"]
    assert s["lines_total"] == s["events_valid"] + s["duplicates"] + sum(s["malformed"].values())
    start = int(dt.datetime.fromisoformat(spec.start).replace(tzinfo=dt.UTC).timestamp())
    window = (start, start + spec.days * 86_400)
    min_gap = 2 * spec.session_gap_minutes * 60
    bots = set(s["bot_user_ids"])
    last: dict[str, int] = {}
    distinct: set[bytes] = set()
    reasons = Counter()
    for line in lines:
        reason = classify(line, window)
        if reason is not None:
            reasons[reason] += 1
        elif line not in distinct:
            distinct.add(line)
            record = json.loads(line)
            user, seconds = record["user_id"], _seconds(record["ts"])
            if user in last:
                gap = seconds - last[user]
                assert gap >= 1 if user in bots else (5 <= gap <= 300 or gap >= min_gap)
            last[user] = seconds
    assert len(distinct) == s["events_valid"]
    assert dict(reasons) == {k: v for k, v in s["malformed"].items() if v}


def test_invalid_specs_are_rejected() -> None:
    for bad in (
        {"n_events": 0},
        {"n_files": 0},
        {"malformed_fraction": 1.0},
        {"days": 0},
        {"start": "not a date"},
        {"session_gap_minutes": 24 * 60, "days": 1},
    ):
        with pytest.raises(ValueError):
            SyntheticSpec(**{"n_events": 100, **bad})


def test_progress_goes_to_stderr(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    generate_events(SyntheticSpec(n_events=1_000), tmp_path, progress=True)
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "events/s" in captured.err


def test_writes_to_a_uri_through_storage(tmp_path: Path) -> None:
    """Output at a URI (a viewfs:// mount of a local folder: a non-local scheme resolved by
    recpipe.storage) holds the same bytes as a local run, and old parts there are replaced."""
    storage.configure({"fs.viewfs.mounttable.synthtest.link./raw": f"file://{tmp_path / 'mnt'}"})
    (tmp_path / "mnt" / "day").mkdir(parents=True)
    (tmp_path / "mnt" / "day" / "part-00007.jsonl").write_text("stale\n")
    spec = SyntheticSpec(n_events=2_000, n_files=2, seed=3)
    remote = generate_events(spec, "viewfs://synthtest/raw/day")
    local = generate_events(spec, tmp_path / "local")
    names = [f"part-{k:05d}.jsonl" for k in range(spec.n_files)]
    assert remote["files"] == [f"viewfs://synthtest/raw/day/{name}" for name in names]
    target = tmp_path / "mnt" / "day"
    assert sorted(p.name for p in target.iterdir()) == ["_generation.json", *names]
    for name in names:
        assert (target / name).read_bytes() == (tmp_path / "local" / name).read_bytes()
    written = json.loads((target / "_generation.json").read_text())
    assert written["files"] == remote["files"] and written["lines_total"] == local["lines_total"]


def test_catalogue_and_profiles_carry_the_hidden_structure(data: Data, tmp_path: Path) -> None:
    """Items and profiles beside the events: every item of the events has one record with the
    events' category and purchase price, most tokens from its category's vocabulary; a user's
    region follows the category they view most far more often than chance."""
    catalog = data.out.parent / f"{data.out.name}-catalog"
    assert data.summary["raw_items"] == str(catalog / "items")
    items = {
        r["item_id"]: r
        for r in map(json.loads, (catalog / "items" / "items.jsonl").read_text().splitlines())
    }
    assert len(items) == data.summary["catalog_items"] == SPEC.items
    for e in data.events:
        record = items[e["item_id"]]
        assert record["category"] == e["category"]
        if e["event_type"] == "purchase":
            assert float(record["price"]) == pytest.approx(float(e["value"]))
    for record in items.values():
        category = int(record["category"][1:])
        own = [t for t in record["tokens"] if t.startswith(f"{record['category']}w")]
        assert len(record["tokens"]) == 4 and len(own) == 3
        assert int(record["brand"][1:]) // 4 == category
    users = {
        r["user_id"]: r
        for r in map(json.loads, (catalog / "users" / "users.jsonl").read_text().splitlines())
    }
    assert set(users) == {e["user_id"] for e in data.human} | set(users)  # bots: no profile
    assert not set(users) & set(data.summary["bot_user_ids"])
    views: dict[str, Counter] = {}
    for e in data.human:
        views.setdefault(e["user_id"], Counter())[int(e["category"][1:])] += 1
    active = [u for u, c in views.items() if sum(c.values()) >= 30]
    agree = sum(
        int(users[u]["region"][1:]) == views[u].most_common(1)[0][0] % 8 for u in active
    ) / len(active)
    assert len(active) >= 50 and agree > 0.4, (len(active), agree)  # chance: 1/8
    # Its own random stream: without the catalogue the events are the same bytes.
    plain = tmp_path / "plain"
    generate_events(SyntheticSpec(**{**SPEC.__dict__, "catalog": False}), plain)
    assert read_lines(plain) == data.lines
    assert not (tmp_path / "plain-catalog").exists()


def test_late_items_have_no_event_before_their_release(data: Data) -> None:
    """late_item_fraction of the items carry a release time inside the window in the
    catalogue; none of their events (bots included) comes before it, most of them do occur
    after it."""
    catalog = data.out.parent / f"{data.out.name}-catalog"
    items = [
        json.loads(line)
        for line in (catalog / "items" / "items.jsonl").read_text().split("\n")
        if line
    ]
    release = {r["item_id"]: _seconds(r["available_from"]) for r in items}
    late = {item for item, at in release.items() if at > WINDOW_START}
    assert len(late) == data.summary["late_items"] == round(SPEC.late_item_fraction * SPEC.items)
    assert all(WINDOW_START < release[i] < WINDOW_END for i in late)
    first: dict[str, int] = {}
    for e in data.events:
        first[e["item_id"]] = min(e["_seconds"], first.get(e["item_id"], e["_seconds"]))
        assert e["_seconds"] >= release[e["item_id"]], e
    seen_late = late & set(first)
    assert len(seen_late) >= len(late) // 2  # they do appear, after their release
    assert min(first[i] for i in seen_late) >= WINDOW_START + 0.5 * (WINDOW_END - WINDOW_START)


def test_a_sessions_device_shifts_what_it_browses(data: Data) -> None:
    """Sessions on a device browse that device's own category (summary device_categories) far
    more often than sessions on the other devices do."""
    own = {device: category for device, category in data.summary["device_categories"].items()}
    assert len(set(own.values())) == len(own) == 3
    shares = {}
    for device, category in own.items():
        on = [e["category"] == category for e in data.human if e.get("device") == device]
        off = [e["category"] == category for e in data.human if e.get("device") != device]
        shares[device] = (sum(on) / len(on), sum(off) / len(off))
    # device_category_share 0.3 of a device's sessions pick its category outright.
    assert all(on > off + 0.15 for on, off in shares.values()), shares
