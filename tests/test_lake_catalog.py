"""Every lake table is a metastore table whose partitions are the committed versions."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from pathlib import Path

from helpers import build_config, run_chain, write_jsonl
from pyspark.sql import SparkSession

from recpipe.lake_catalog import sync_lake_tables
from recpipe.query import run_sql
from recpipe.stages.clean import run_clean
from recpipe.warehouse import ensure_tables

DS1, DS2 = "2026-11-10", "2026-11-11"
LAKE_TABLES = ("events", "quarantine", "vocab_users", "vocab_items", "sessions", "train",
               "valid", "test")  # fmt: skip


def _events(day: str, users: range) -> list[dict[str, str]]:
    return [
        {"user_id": f"u{u}", "item_id": f"i{(u + k) % 9}", "event_type": "view",
         "ts": f"{day}T{10 + k:02d}:00:{u:02d}Z"}
        for u in users
        for k in range(4)
    ] + [{"user_id": "no-item", "ts": f"{day}T09:00:00Z"}]  # fmt: skip


def _manifest_rows(root: Path) -> dict[tuple[str, str], int]:
    """(table, partition) -> rows, read from the manifests' outputs by hand."""
    rows = {}
    for path in (root / "manifests").glob("*/ds=*.json"):
        for table, parts in json.loads(path.read_text()).get("outputs", {}).items():
            for name, record in parts.items():
                rows[(table, name)] = record["rows"]
    return rows


def _sql_rows(spark: SparkSession, db: str, table: str) -> dict[str, int]:
    keys = "ds, protocol" if table in ("train", "valid", "test") else "ds"
    found = run_sql(spark, f"SELECT {keys}, count(*) AS n FROM {db}.{table} GROUP BY {keys}")
    return {"/".join(f"{k}={row[k]}" for k in keys.split(", ")): row["n"] for row in found}


def test_recpipe_sql_sees_every_lake_table_as_committed(spark: SparkSession, tmp_path: Path):
    db = f"lake_{uuid.uuid4().hex[:10]}"
    root = tmp_path / "root"
    raw1 = write_jsonl(tmp_path / "d1.jsonl", _events(DS1, range(8)))
    config = build_config(root, f"paths.raw_events={raw1}", f"warehouse.database={db}",
                          "split.protocols=[leave_last_out,random_by_user]")  # fmt: skip
    run_chain(spark, config, DS1)
    ensure_tables(spark, config)
    changes = sync_lake_tables(spark, config)
    assert changes == {t: (2 if t in ("train", "valid", "test") else 1) for t in LAKE_TABLES}

    expected = _manifest_rows(root)
    for table in LAKE_TABLES:
        counted = _sql_rows(spark, db, table)
        want = {name: n for (t, name), n in expected.items() if t == table and n}
        assert counted == want, table
    assert _sql_rows(spark, db, "events") == {f"ds={DS1}": 32}
    assert _sql_rows(spark, db, "quarantine") == {f"ds={DS1}": 1}

    # A re-run commits new versions: only its tables change, and SQL follows.
    raw2 = write_jsonl(tmp_path / "d1b.jsonl", _events(DS1, range(5)))
    run_clean(spark, build_config(root, f"paths.raw_events={raw2}", f"warehouse.database={db}"),
              DS1)  # fmt: skip
    again = sync_lake_tables(spark, config)
    assert again == {**{t: 0 for t in LAKE_TABLES}, "events": 1, "quarantine": 1}
    assert _sql_rows(spark, db, "events") == {f"ds={DS1}": 20}
    assert sync_lake_tables(spark, config) == {t: 0 for t in LAKE_TABLES}  # nothing to do

    # A second day adds a partition; a day whose commit record is removed leaves the table.
    raw3 = write_jsonl(tmp_path / "d2.jsonl", _events(DS2, range(3)))
    config2 = build_config(root, f"paths.raw_events={raw3}", f"warehouse.database={db}")
    run_clean(spark, config2, DS2)
    sync_lake_tables(spark, config)
    assert _sql_rows(spark, db, "events") == {f"ds={DS1}": 20, f"ds={DS2}": 12}
    (root / "manifests" / "clean" / f"ds={DS2}.json").unlink()
    assert sync_lake_tables(spark, config)["events"] == 1
    assert _sql_rows(spark, db, "events") == {f"ds={DS1}": 20}

    # `recpipe sql` as a user runs it, with its own (here: fresh, embedded) metastore: the
    # tables are created there and filled from the manifests before the query runs.
    query = f"SELECT count(*) AS n FROM {db}.sessions WHERE ds='{DS1}'"
    args = [sys.executable, "-m", "recpipe", "sql", query, "--format", "json",
            "--set", f"paths.root={root}", "--set", f"warehouse.database={db}",
            "--set", "spark.master=local[1]"]  # fmt: skip
    result = subprocess.run(args, capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    assert json.loads(result.stdout) == [{"n": expected[("sessions", f"ds={DS1}")]}]
