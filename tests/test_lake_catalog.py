"""Every lake table is a metastore table whose partitions are the committed versions."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

from helpers import build_config, run_chain, write_jsonl
from pyspark.sql import SparkSession

from recpipe.faults import KILL_AT
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
    # Each stage's commit registered its partitions: nothing is left for a sync to do.
    ensure_tables(spark, config)
    assert sync_lake_tables(spark, config) == {t: 0 for t in LAKE_TABLES}

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
    assert _sql_rows(spark, db, "events") == {f"ds={DS1}": 20}
    assert sync_lake_tables(spark, config) == {t: 0 for t in LAKE_TABLES}  # nothing to do

    # A second day adds a partition; a day whose commit record is removed leaves the table.
    raw3 = write_jsonl(tmp_path / "d2.jsonl", _events(DS2, range(3)))
    config2 = build_config(root, f"paths.raw_events={raw3}", f"warehouse.database={db}")
    run_clean(spark, config2, DS2)
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


def test_kill_between_commit_and_metastore_leaves_the_old_partition_until_repaired(
    spark: SparkSession, tmp_path: Path
) -> None:
    """SIGKILL right after the manifest (the commit point), before the metastore switch: Spark
    SQL still reads the complete previous version, and the next sync moves it to the new one."""
    db = f"lake_{uuid.uuid4().hex[:10]}"
    root = tmp_path / "root"
    raw1 = write_jsonl(tmp_path / "a.jsonl", _events(DS1, range(6)))
    raw2 = write_jsonl(tmp_path / "b.jsonl", _events(DS1, range(2)))
    base = [f"paths.root={root}", f"warehouse.database={db}", "spark.master=local[1]"]
    for raw, kill in ((raw1, None), (raw2, "clean:after_commit")):
        args = [sys.executable, "-m", "recpipe", "clean", "--ds", DS1,
                *(a for s in [*base, f"paths.raw_events={raw}"] for a in ("--set", s))]  # fmt: skip
        env = {**os.environ, **({KILL_AT: kill} if kill else {})}
        done = subprocess.run(args, capture_output=True, text=True, timeout=300, check=False,
                              env=env)  # fmt: skip
        assert done.returncode == (-9 if kill else 0), done.stderr[-2000:]
    assert _manifest_rows(root)[("events", f"ds={DS1}")] == 8  # the new commit point is there
    # Another process on the same (embedded) metastore reads through Spark SQL as it stands,
    # then syncs from the manifests and reads again.
    script = (
        "import sys\n"
        "from recpipe.config import load_config\n"
        "from recpipe.spark import get_spark\n"
        "from recpipe.lake_catalog import sync_lake_tables\n"
        "config = load_config(None, sys.argv[1:])\n"
        "spark = get_spark(config)\n"
        f"query = \"SELECT count(*) FROM {db}.events WHERE ds='{DS1}'\"\n"
        "print(spark.sql(query).first()[0])\n"
        "sync_lake_tables(spark, config)\n"
        "print(spark.sql(query).first()[0])\n"
    )
    done = subprocess.run([sys.executable, "-c", script, *base], capture_output=True, text=True,
                          timeout=300, check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["24", "8"]  # complete old, then complete new
