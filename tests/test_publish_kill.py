"""A publishing process killed (SIGKILL, JVM and all) leaves the old or the new partition, whole."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pyarrow.dataset as pads
import pytest

DS = "2026-11-22"
DB = "killtest"

pytestmark = pytest.mark.slow

SCRIPT = textwrap.dedent(
    """
    import sys
    from pyspark.sql import functions as F
    from recpipe.config import load_config
    from recpipe.spark import get_spark
    from recpipe.warehouse import RECOMMENDATIONS, publish_partition
    root, mode, db, ds = sys.argv[1:5]
    config = load_config(None, [f"paths.root={root}", f"warehouse.database={db}",
                                "spark.master=local[1]", "spark.log_level=ERROR"])
    spark = get_spark(config)
    n = int(mode)
    df = spark.range(n).select(
        F.concat(F.lit("u"), F.col("id").cast("string")).alias("user_id"),
        F.lit("i1").alias("item_id"), F.lit(1).alias("rank"),
        F.lit(float(n)).alias("score"),
        F.current_timestamp().alias("generated_at"), F.lit("model").alias("source"),
    )
    print("PUBLISHING", flush=True)
    publish_partition(spark, config, RECOMMENDATIONS, df, ds, "als", expected_rows=n)
    print("DONE", flush=True)
    """
)


def run_script(root: Path, mode: str, **kwargs) -> subprocess.Popen:
    env = {**os.environ, "PYSPARK_PYTHON": sys.executable}
    return subprocess.Popen(
        [sys.executable, "-c", SCRIPT, str(root), mode, DB, DS],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        start_new_session=True,  # its own process group: the kill takes the JVM too
        **kwargs,
    )


def pointer(root: Path) -> dict:
    path = root / "warehouse" / f"{DB}.db" / "recommendations" / f"ds={DS}" / "model=als"
    return json.loads((path / "_CURRENT.json").read_text())


def _killed_at(root: Path, point: str, rows: int) -> None:
    env = {**os.environ, "PYSPARK_PYTHON": sys.executable, "RECPIPE_KILL_AT": point}
    victim = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(root), str(rows), DB, DS],
        env=env, capture_output=True, text=True, timeout=300, start_new_session=True,
    )  # fmt: skip
    assert victim.returncode == -9, victim.stderr[-2000:]


def _sql(root: Path) -> list[dict]:
    """``recpipe sql`` as a user runs it (its own JVM)."""
    query = f"SELECT count(*) AS n, max(score) AS s FROM {DB}.recommendations"
    args = [sys.executable, "-m", "recpipe", "sql", query, "--format", "json"]
    for item in (f"paths.root={root}", f"warehouse.database={DB}", "spark.master=local[1]"):
        args += ["--set", item]
    result = subprocess.run(args, capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    return json.loads(result.stdout)


def _rows(root: Path, record: dict) -> list[dict]:
    return pads.dataset(root / record["path"]).to_table().to_pylist()


def test_publish_killed_before_or_after_its_commit_point(tmp_path: Path) -> None:
    """SIGKILL (JVM and all) just before the pointer write, then just after it: readers see
    the complete old, then the complete new version; recs and Spark SQL never disagree."""
    first = run_script(tmp_path, "7")
    out, _ = first.communicate(timeout=300)
    assert "DONE" in out, out
    v1 = pointer(tmp_path)
    assert v1["rows"] == 7 and v1["metastore"] == "switched"
    folder = (tmp_path / v1["path"]).parent

    _killed_at(tmp_path, "publish:before_pointer", 9)  # the version was written, not committed
    assert pointer(tmp_path) == v1
    rows = _rows(tmp_path, v1)
    assert len(rows) == 7 and {r["score"] for r in rows} == {7.0}
    orphans = {p.name for p in folder.glob("v=*")} - {Path(v1["path"]).name}
    assert len(orphans) == 1  # the killed run's folder, never current

    _killed_at(tmp_path, "publish:before_metastore", 5)  # committed, metastore not switched
    v2 = pointer(tmp_path)
    assert v2["rows"] == 5 and v2["metastore"] == "pending" and v2["previous"] == [v1["path"]]
    rows = _rows(tmp_path, v2)
    assert len(rows) == 5 and {r["score"] for r in rows} == {5.0}
    # `recpipe sql` finishes the switch before it reads: it agrees with the pointer.
    assert _sql(tmp_path) == [{"n": 5, "s": 5.0}]
    assert pointer(tmp_path) == {**v2, "metastore": "switched"}
    # Kept: the current and the previous published version; the orphan never counted.
    assert {p.name for p in folder.glob("v=*")} == {Path(v1["path"]).name, Path(v2["path"]).name}
