"""A publishing process killed midway (SIGKILL, JVM and all) leaves the old partition current."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pyarrow.dataset as pads
import pytest

DS = "2026-11-22"
DB = "killtest"

pytestmark = pytest.mark.slow

SCRIPT = textwrap.dedent(
    """
    import sys, time
    from pyspark.sql import functions as F
    from recpipe.config import load_config
    from recpipe.spark import get_spark
    from recpipe.warehouse import RECOMMENDATIONS, ensure_tables, publish_partition
    root, mode, db, ds = sys.argv[1:5]
    config = load_config(None, [f"paths.root={root}", f"warehouse.database={db}",
                                "spark.master=local[1]", "spark.log_level=ERROR"])
    spark = get_spark(config)
    if mode == "sql":
        ensure_tables(spark, config)  # as `recpipe sql` does: finishes a pending switch
        rows = spark.sql(f"SELECT count(*) AS n, max(score) AS s FROM {db}.recommendations").first()
        print("RESULT", rows["n"], rows["s"], flush=True)
        raise SystemExit(0)
    n = int(mode)
    slow = F.udf(lambda x: time.sleep(0.002) or x, "double")  # makes the write take a while
    df = spark.range(n).select(
        F.concat(F.lit("u"), F.col("id").cast("string")).alias("user_id"),
        F.lit("i1").alias("item_id"), F.lit(1).alias("rank"),
        (slow(F.col("id").cast("double")) if n > 100 else F.lit(float(n))).alias("score"),
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


def test_killed_publish_leaves_previous_version(tmp_path: Path) -> None:
    first = run_script(tmp_path, "7")
    out, _ = first.communicate(timeout=300)
    assert "DONE" in out, out
    before = pointer(tmp_path)
    assert before["rows"] == 7

    victim = run_script(tmp_path, "8000")  # ~16 s of UDF work on one core
    assert victim.stdout is not None
    assert victim.stdout.readline().strip() == "PUBLISHING"
    current = tmp_path / before["path"]  # pointers are relative to paths.root
    versions = before_versions = set(current.parent.glob("v=*"))
    deadline = time.time() + 120
    while versions == before_versions and time.time() < deadline:
        time.sleep(0.5)  # wait until the new version's folder exists: the write is under way
        versions = set(current.parent.glob("v=*"))
    time.sleep(2)
    assert victim.poll() is None, "publish finished before it could be killed"
    os.killpg(victim.pid, signal.SIGKILL)
    victim.wait(timeout=60)

    # Killed while writing (the usual case): readers without a JVM still see version 1. On a
    # slow machine the kill may land after the pointer write (the commit point): then they see
    # the complete version 2. Never anything in between.
    after = pointer(tmp_path)
    if after != before:
        assert after["rows"] == 8000 and after["metastore"] == "pending"
    rows = pads.dataset(tmp_path / after["path"]).to_table().to_pylist()
    assert len(rows) == after["rows"]
    scores = {r["score"] for r in rows}
    assert scores == {7.0} if after == before else scores == {float(n) for n in range(8000)}
    check = run_script(tmp_path, "sql")
    out, _ = check.communicate(timeout=300)
    top = "7.0" if after == before else "7999.0"
    assert f"RESULT {after['rows']} {top}" in out, out  # Spark SQL agrees with the pointer


def _sql(root: Path) -> subprocess.CompletedProcess:
    """``recpipe sql`` as a user runs it (its own JVM)."""
    query = f"SELECT count(*) AS n, max(score) AS s FROM {DB}.recommendations"
    args = [sys.executable, "-m", "recpipe", "sql", query, "--format", "json"]
    for item in (f"paths.root={root}", f"warehouse.database={DB}", "spark.master=local[1]"):
        args += ["--set", item]
    return subprocess.run(args, capture_output=True, text=True, timeout=300, check=False)


@pytest.mark.parametrize("point", ["publish:before_pointer", "publish:before_metastore"])
def test_kill_between_pointer_and_metastore(tmp_path: Path, point: str) -> None:
    """Killed just before or after the commit point: recs and Spark SQL agree afterwards."""
    first = run_script(tmp_path, "7")
    out, _ = first.communicate(timeout=300)
    assert "DONE" in out, out
    before = pointer(tmp_path)
    env = {**os.environ, "PYSPARK_PYTHON": sys.executable, "RECPIPE_KILL_AT": point}
    victim = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(tmp_path), "9", DB, DS],
        env=env, capture_output=True, text=True, timeout=300, start_new_session=True,
    )  # fmt: skip
    assert victim.returncode == -9, victim.stderr[-2000:]
    after = pointer(tmp_path)
    expected = 7 if point == "publish:before_pointer" else 9
    assert after["rows"] == expected
    assert after == before if expected == 7 else after["metastore"] == "pending"
    rows = pads.dataset(tmp_path / after["path"]).to_table().to_pylist()
    assert len(rows) == expected and {r["score"] for r in rows} == {float(expected)}
    result = _sql(tmp_path)  # recpipe sql finishes a pending switch before it reads
    assert result.returncode == 0, result.stderr[-2000:]
    assert json.loads(result.stdout) == [{"n": expected, "s": float(expected)}]
    assert pointer(tmp_path)["metastore"] == "switched"
    folder = (tmp_path / after["path"]).parent
    if expected == 9:  # the killed publish finished: old and new version kept
        assert {p.name for p in folder.glob("v=*")} == {
            Path(before["path"]).name, Path(after["path"]).name
        }
        return
    # The killed publish's folder is an orphan: the next publish removes it, and it never
    # counts as one of the warehouse.keep_versions kept.
    assert len(list(folder.glob("v=*"))) == 2
    again = run_script(tmp_path, "5")
    out, _ = again.communicate(timeout=300)
    assert "DONE" in out, out
    latest = pointer(tmp_path)
    assert latest["previous"] == [before["path"]]
    assert {p.name for p in folder.glob("v=*")} == {
        Path(before["path"]).name, Path(latest["path"]).name
    }
