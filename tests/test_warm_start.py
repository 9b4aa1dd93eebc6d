"""Warm start across two days: recent-window export, grown tables, kept vectors, full retrains."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import TRAIN_BASE as BASE
from helpers import TRAIN_DS as DAY1
from helpers import build_config, read_manifest, read_rows, run_chain, train_events, write_jsonl
from pyspark.sql import SparkSession

from recpipe.data.batch import Batch
from recpipe.stages.export import run_export
from recpipe.stages.train import run_train
from recpipe.train.checkpoint import load_model, load_state
from recpipe.train.warm_start import plan_start

DAY2 = "2026-11-21"
SINCE = dt.datetime(2026, 11, 21, tzinfo=dt.UTC)  # window_days=1: day 2 only
PROTOCOL = "leave_last_out"
MODELS = ["bpr_mf", "gru4rec"]
WARM = (
    *BASE,
    f"split.protocols=[{PROTOCOL}]",
    "train.processes=1",
    "train.launcher=local",
    "train.max_epochs=2",
    "train.warm_start.enabled=true",
    "train.warm_start.window_days=1",
    "train.warm_start.full_retrain_days=7",
)


def day2_events() -> list[dict]:
    """Ten old users see new items; five new users arrive with old and new items."""
    rows = []
    for user in range(10):
        for k in range(3):
            rows.append({"user_id": f"u{user}", "item_id": f"i{100 + (user + k) % 5}",
                         "event_type": "view", "ts": f"{DAY2}T08:{k:02d}:{user:02d}Z"})  # fmt: skip
    for user in range(100, 105):
        for k in range(4):
            item = f"i{100 + k}" if k % 2 else f"i{(user * 7 + k) % 60}"
            rows.append({"user_id": f"u{user}", "item_id": item, "event_type": "view",
                         "ts": f"{DAY2}T09:{k:02d}:{user - 100:02d}Z"})  # fmt: skip
    return rows


def _config(root: Path, day: str, *overrides: str):
    raw = root / "raw" / day / "events.jsonl"
    return build_config(root, f"paths.raw_events={raw}", *WARM, *overrides)


@pytest.fixture(scope="module")
def days(spark: SparkSession, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Both days cleaned, split, exported and trained (BPR-MF and GRU4Rec)."""
    root = tmp_path_factory.mktemp("warm")
    write_jsonl(root / "raw" / DAY1 / "events.jsonl", train_events())
    write_jsonl(root / "raw" / DAY2 / "events.jsonl", day2_events())
    for day in (DAY1, DAY2):
        config = _config(root, day)
        run_chain(spark, config, day)
        assert run_export(spark, config, day)["status"] == "ok"
        run_train(None, config, day, MODELS, evaluate=False)
    return root


def _start(root: Path, name: str, day: str) -> dict:
    return read_manifest(root, f"train-{name}", day)["protocols"][PROTOCOL]


def _recent_train(root: Path) -> list[dict]:
    return [r for r in read_rows(root, "train", DAY2, PROTOCOL) if r["ts"] >= SINCE]


def test_the_first_day_trains_in_full_and_the_next_warm_on_the_recent_window(days) -> None:
    for name in MODELS:
        first, second = _start(days, name, DAY1), _start(days, name, DAY2)
        assert first["start"]["mode"] == "full" and "no earlier" in first["start"]["reason"]
        assert second["start"] | {"reason": None} == {
            "mode": "warm", "reason": None, "from_ds": DAY1, "full_ds": DAY1,
            "since": SINCE.isoformat(), "rows": second["rows"],
        }  # fmt: skip
        # The model file carries the lineage the next day reads.
        assert load_state(Path(second["path"]))["training"]["start"]["full_ds"] == DAY1
    # BPR-MF trained on one pairwise sample per recent train interaction, nothing older.
    recent = _recent_train(days)
    assert 0 < len(recent) < len(read_rows(days, "train", DAY2, PROTOCOL))
    assert _start(days, "bpr_mf", DAY2)["rows"] == len(recent)


def test_recent_samples_are_exactly_the_windows_interactions(days) -> None:
    recent = _recent_train(days)
    pairs = sorted((r["user_idx"], r["item_idx"]) for r in recent)
    samples = read_rows(days, "samples_pairwise_recent", DAY2, PROTOCOL)
    assert sorted((s["user_idx"], s["item_idx"]) for s in samples) == pairs
    # Negatives avoid every train item of the user, recent or older.
    seen: dict[int, set[int]] = {}
    for row in read_rows(days, "train", DAY2, PROTOCOL):
        seen.setdefault(row["user_idx"], set()).add(row["item_idx"])
    assert all(not set(s["negatives"]) & seen[s["user_idx"]] for s in samples)
    # Sequence windows: those whose target is recent (stride = max_len = 8, last one first).
    by_user: dict[int, list[tuple[dt.datetime, int]]] = {}
    for row in read_rows(days, "train", DAY2, PROTOCOL):
        by_user.setdefault(row["user_idx"], []).append((row["ts"], row["item_idx"]))
    expected = []
    for user, events in by_user.items():
        events.sort(key=lambda e: (int(e[0].timestamp()), e[1]))
        for end in range(len(events) - 1, 0, -8):
            if events[end][0] >= SINCE:
                expected.append((user, events[end][1]))
    windows = read_rows(days, "samples_sequence_recent", DAY2, PROTOCOL)
    assert sorted((w["user_idx"], w["item_idx"]) for w in windows) == sorted(expected)


def test_warm_model_keeps_untouched_vectors_and_scores_new_ids(days) -> None:
    before = load_model(Path(_start(days, "bpr_mf", DAY1)["path"]))
    warm = _start(days, "bpr_mf", DAY2)
    after = load_model(Path(warm["path"]))
    initial = load_state(Path(warm["path"]).parent / "warm_start.pt")["state_dict"]
    assert after.n_users > before.n_users and after.n_items > before.n_items
    recent = _recent_train(days)
    active = {r["user_idx"] for r in recent}
    old_users = range(1, before.n_users)
    idle = [u for u in old_users if u not in active]
    assert len(idle) >= 20
    kept = after.user_emb.weight[idle]
    assert torch.equal(kept, before.user_emb.weight[idle])
    moved = [u for u in old_users if u in active]
    assert moved and not torch.equal(after.user_emb.weight[moved], before.user_emb.weight[moved])
    # New items that were recent positives were trained away from their initial rows.
    new_items = sorted({r["item_idx"] for r in recent if r["item_idx"] > before.n_items})
    assert new_items
    trained = after.item_emb.weight[new_items]
    assert not torch.allclose(trained, initial["item_emb.weight"][new_items])
    # A new user gets finite scores for every item, new ones included.
    new_users = torch.tensor(sorted(u for u in active if u >= before.n_users))
    assert len(new_users)
    with torch.no_grad():
        scores = after.score_all(Batch(users=new_users))
    assert scores.shape == (len(new_users), after.n_items + 1)
    assert torch.isfinite(scores).all()


def test_grown_tables_start_from_the_old_rows_and_buffers_from_todays_data(days) -> None:
    for name in MODELS:
        before = load_state(Path(_start(days, name, DAY1)["path"]))["state_dict"]
        warm = _start(days, name, DAY2)
        initial = load_state(Path(warm["path"]).parent / "warm_start.pt")["state_dict"]
        table = initial["item_emb.weight"]
        old = before["item_emb.weight"]
        assert table.shape[0] > old.shape[0]
        assert torch.equal(table[: old.shape[0]], old)
    # GRU4Rec's item-count buffer (log-Q) is today's, not yesterday's grown.
    counts = load_state(Path(_start(days, "gru4rec", DAY2)["path"]))["state_dict"]["item_counts"]
    train = read_rows(days, "train", DAY2, PROTOCOL)
    expected = np.bincount([r["item_idx"] for r in train], minlength=len(counts))
    assert np.array_equal(counts.numpy().astype(np.int64), expected)


def test_full_retrain_when_due_settings_change_or_disabled(days) -> None:
    context = load_model(Path(_start(days, "bpr_mf", DAY2)["path"])).context.to_dict()
    settings = load_state(Path(_start(days, "bpr_mf", DAY2)["path"]))["model_config"]
    day3 = "2026-11-22"

    def plan(*overrides: str, model_config: dict = settings):
        return plan_start(_config(days, day3, *overrides), "bpr_mf", day3, PROTOCOL,
                          model_config, context)  # fmt: skip

    assert plan().warm and plan().from_ds == DAY2 and plan().full_ds == DAY1
    due = plan("train.warm_start.full_retrain_days=2")
    assert not due.warm and "full_retrain_days=2" in due.reason and due.full_ds == day3
    changed = plan(model_config={**settings, "dim": settings["dim"] * 2})
    assert not changed.warm and "settings differ" in changed.reason
    assert not plan("train.warm_start.enabled=false").warm
    # A knowledge graph numbers its entities per run: a changed graph cannot keep old rows.
    graph = {"kg": [{"name": "item_entity", "kind": "entity", "width": 1, "size": 9}]}
    context = {**context, "feature_layout": graph}
    regraphed = plan()
    assert not regraphed.warm and "knowledge graph differs" in regraphed.reason
