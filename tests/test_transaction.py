"""``lake.transaction``: stage -> reconcile -> publish at the commit point, or discard.

And the typed manifest models: they read and write the same JSON objects the stages wrote.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from helpers import build_config
from pyspark.sql import DataFrame, SparkSession

from recpipe.config import Config
from recpipe.lake import Lake, transaction
from recpipe.manifest import (
    CleanManifest,
    ExportManifest,
    SessionizeManifest,
    SplitManifest,
    VocabManifest,
    last_attempt,
    lock_path,
    manifest_path,
    read_stage_manifest,
)
from recpipe.reconcile import ReconciliationError
from recpipe.storage import Location

DS = "2026-11-10"
TABLES = ("vocab_users", "vocab_items")


def _frame(spark: SparkSession, rows: int) -> DataFrame:
    return spark.createDataFrame([(f"u{n}", n + 1) for n in range(rows)], "user_id string, idx int")


def _commit(spark: SparkSession, config: Config, rows: int) -> dict[str, Any]:
    """A successful run of ``vocab`` for DS with ``rows`` rows in each of its two tables."""
    with transaction(config, "vocab", DS, VocabManifest()) as tx:
        staged = [tx.stage(_frame(spark, rows), table) for table in TABLES]
        tx.reconcile(None if all(p.count(spark) == rows for p in staged) else "rows differ")
        tx.record.events_ds = [DS]
        tx.record.rows_out = 2 * rows
    return tx.manifest


def _served(config: Config) -> tuple[str, dict[str, Path]]:
    lake = Lake(config.root)
    paths = {table: lake.partition_path(table, {"ds": DS}) for table in TABLES}
    return manifest_path(config.root, "vocab", DS).local_path().read_text(), paths


@pytest.fixture
def config(tmp_path: Path) -> Config:
    return build_config(tmp_path / "root")


def test_commit_publishes_every_staged_partition_with_the_typed_record(
    spark: SparkSession, config: Config
) -> None:
    manifest = _commit(spark, config, 3)
    on_disk = json.loads(manifest_path(config.root, "vocab", DS).local_path().read_text())
    assert on_disk == json.loads(json.dumps(manifest, default=str))
    assert manifest["status"] == "ok"
    assert list(on_disk)[-3:] == ["events_ds", "rows_out", "outputs"]  # record, then outputs
    assert "n_users" not in on_disk  # fields the stage never set are left out
    lake = Lake(config.root)
    for table in TABLES:
        assert lake.read(spark, table, [{"ds": DS}]).count() == 3
        assert (lake.partition_path(table, {"ds": DS}) / "_config.yaml").local_path().is_file()
    typed = VocabManifest.read(config.root, DS)
    assert typed.ok and typed.rows_out == 6 and typed.events_ds == [DS]


def test_exception_keeps_the_served_state_and_records_the_attempt(
    spark: SparkSession, config: Config
) -> None:
    _commit(spark, config, 3)
    before_manifest, before_paths = _served(config)
    with (
        pytest.raises(RuntimeError, match="boom"),
        transaction(config, "vocab", DS, VocabManifest()) as tx,
    ):
        staged = [tx.stage(_frame(spark, 5), table) for table in TABLES]
        tx.record.events_ds = [DS]
        raise RuntimeError("boom")
    assert _served(config) == (before_manifest, before_paths)
    assert all(not part.path.local_path().exists() for part in staged)  # staged output discarded
    for table in TABLES:
        assert before_paths[table].local_path().is_dir()
        assert Lake(config.root).read(spark, table, [{"ds": DS}]).count() == 3
    failed = last_attempt(config.root, "vocab", DS)
    assert failed is not None and failed["status"] == "failed"
    assert failed["error"] == "RuntimeError: boom"
    assert failed["events_ds"] == [DS] and "rows_out" not in failed  # what was set, only
    assert json.loads(json.dumps(tx.manifest, default=str)) == failed
    assert not lock_path(config.root, "vocab", DS).local_path().exists()


def test_reconciliation_mismatch_publishes_nothing(spark: SparkSession, config: Config) -> None:
    # A first run: nothing is served afterwards, and no manifest is written.
    with (
        pytest.raises(ReconciliationError, match="vocab_users: 5 staged, 4 read"),
        transaction(config, "vocab", DS, VocabManifest()) as tx,
    ):
        first = tx.stage(_frame(spark, 5), "vocab_users")
        tx.reconcile("vocab_users: 5 staged, 4 read")
    assert not manifest_path(config.root, "vocab", DS).local_path().exists()
    assert not first.path.local_path().exists()
    assert not Lake(config.root).exists("vocab_users", {"ds": DS})

    # Over a served day, with the stage's own error type: the served day stays.
    _commit(spark, config, 3)
    served = _served(config)
    with (
        pytest.raises(ValueError, match="does not add up"),
        transaction(config, "vocab", DS, VocabManifest()) as tx,
    ):
        staged = [tx.stage(_frame(spark, 5), table) for table in TABLES]
        tx.reconcile("does not add up", ValueError)
    assert _served(config) == served
    assert all(not part.path.local_path().exists() for part in staged)
    failed = last_attempt(config.root, "vocab", DS)
    assert failed is not None and failed["error"] == "ValueError: does not add up"


def test_output_staged_after_the_last_check_is_refused(spark: SparkSession, config: Config) -> None:
    _commit(spark, config, 3)
    served = _served(config)
    with (
        pytest.raises(ReconciliationError, match=rf"vocab_items ds={DS} staged without a recon"),
        transaction(config, "vocab", DS, VocabManifest()) as tx,
    ):
        checked = tx.stage(_frame(spark, 4), "vocab_users")
        tx.reconcile(None)
        unchecked = tx.stage(_frame(spark, 4), "vocab_items")
    assert _served(config) == served
    assert not checked.path.local_path().exists() and not unchecked.path.local_path().exists()
    failed = last_attempt(config.root, "vocab", DS)
    assert failed is not None and "staged without a reconciliation check" in failed["error"]


# Stage fields as the dict-based stages wrote them (a real run; file names shortened).
WRITTEN: dict[type, dict[str, Any]] = {
    CleanManifest: {
        "input": "/raw/e.jsonl",
        "ts_window": ["1995-01-01T00:00:00+00:00", "2026-11-12T00:00:00+00:00"],
        "rows_in": 64, "rows_out": 50, "rows_quarantined": 11, "rows_duplicate": 3,
        "quarantine_by_reason": {"malformed_record": 1, "missing_item_id": 2, "bot_suspect": 8},
    },
    VocabManifest: {
        "events_ds": ["2026-11-10", "2026-11-11"],
        "users": {"base_ds": "2026-11-10", "before": 10, "new": 4, "ids_in_events": 14},
        "n_users": 14,
        "items": {"base_ds": None, "before": 0, "new": 9, "ids_in_events": 9},
        "n_items": 9, "rows_in": 23, "rows_out": 23,
    },
    SessionizeManifest: {
        "events_ds": ["2026-11-10"], "rows_in": 50, "rows_duplicate": 0, "rows_out": 10,
        "events_in_sessions": 50, "users": 10, "sessions": 10, "mean_session_length": 5.0,
        "max_session_length": 5,
    },
    SplitManifest: {
        "rows_in": 50, "rows_repeat_dropped": 0,
        "protocols": {
            "temporal": {
                "settings": {"dedupe_user_item": True, "valid_cut": "2026-11-10T11:00:11+00:00",
                             "test_cut": "2026-11-10T11:00:11+00:00", "test_ratio": 0.2,
                             "valid_ratio": 0.0},
                "train": {"rows": 40, "users": 10}, "valid": {"rows": 0, "users": 0},
                "test": {"rows": 10, "users": 4},
            },
        },
        "rows_out": 50,
    },
    ExportManifest: {
        "settings": {"kinds": ["pairwise", "sequence"], "negatives": 1}, "stride": 50,
        "planned_world_size": 1, "files_per_table": 1, "n_items": 9, "n_users": 10,
        "user_index_size": 11,
        "samples": {
            "leave_last_out": {
                "users": 10, "interactions": 30,
                "pairwise": {"table": "samples_pairwise", "rows": 30,
                             "files": [{"file": "part-00000.parquet", "rows": 30}]},
                "sequence": {"table": "samples_sequence", "rows": 10,
                             "files": [{"file": "part-00000.parquet", "rows": 10}]},
            },
        },
        "rows_in": 30, "rows_out": 40,
    },
}  # fmt: skip


@pytest.mark.parametrize("model", list(WRITTEN), ids=lambda m: m.STAGE)
def test_typed_manifests_write_the_same_json(model: type, tmp_path: Path) -> None:
    fields = WRITTEN[model]
    common = {"stage": model.STAGE, "ds": DS, "run_id": "r", "status": "ok", "seconds": 1.5}
    manifest = {**common, **fields, "outputs": {}}
    typed = model.parse(manifest)
    assert json.dumps(typed.stage_fields()) == json.dumps(fields)  # same keys, order, values
    assert typed.ok and typed.rows_out == fields["rows_out"]
    folder = tmp_path / "manifests" / model.STAGE
    folder.mkdir(parents=True)
    (folder / f"ds={DS}.json").write_text(json.dumps(manifest))
    assert type(read_stage_manifest(tmp_path, model.STAGE, DS)) is model
    # A failed run's record: only what the stage set.
    partial = model()
    first = next(iter(fields))
    setattr(partial, first, model.parse({first: fields[first]}).__dict__[first])
    assert json.dumps(partial.stage_fields()) == json.dumps({first: fields[first]})


def test_a_stage_that_does_not_reconcile_publishes_nothing(
    spark: SparkSession, config: Config, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from helpers import write_jsonl

    from recpipe.stages import clean

    event = {"user_id": "u", "item_id": "i", "event_type": "view", "ts": f"{DS}T10:00:00Z"}
    raw = write_jsonl(tmp_path / "e.jsonl", [event, {"user_id": "bad"}])
    config = build_config(config.root, f"paths.raw_events={raw}")
    assert clean.run_clean(spark, config, DS)["rows_out"] == 1
    served = manifest_path(config.root, "clean", DS).local_path().read_text()
    lake = Lake(config.root)
    paths = {t: lake.partition_path(t, {"ds": DS}) for t in ("events", "quarantine")}
    real = clean.staged_counts
    monkeypatch.setattr(clean, "staged_counts", lambda *a: (real(*a)[0] + 1, real(*a)[1]))
    with pytest.raises(clean.ReconciliationError, match="clean did not reconcile: rows_in 2 !="):
        clean.run_clean(spark, config, DS)
    assert manifest_path(config.root, "clean", DS).local_path().read_text() == served
    assert {t: lake.partition_path(t, {"ds": DS}) for t in paths} == paths
    lake_dir = config.root.local_path() / "lake"
    versions = {Location(p) for t in paths for p in (lake_dir / t).glob(f"ds={DS}/v=*")}
    assert versions == set(paths.values())  # the failed run's versions are gone
    failed = last_attempt(config.root, "clean", DS)
    assert failed is not None and "did not reconcile" in failed["error"]
    assert "rows_out" not in failed and failed["input"] == str(raw)
