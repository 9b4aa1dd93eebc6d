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
    from recpipe.warehouse import RECOMMENDATIONS, publish_partition
    root, mode, db, ds = sys.argv[1:5]
    config = load_config(None, [f"paths.root={root}", f"warehouse.database={db}",
                                "spark.master=local[1]", "spark.log_level=ERROR"])
    spark = get_spark(config)
    if mode == "sql":
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

    assert pointer(tmp_path) == before  # readers without a JVM still see version 1
    rows = pads.dataset(current).to_table().to_pylist()
    assert len(rows) == 7 and {r["score"] for r in rows} == {7.0}
    check = run_script(tmp_path, "sql")
    out, _ = check.communicate(timeout=300)
    assert "RESULT 7 7.0" in out, out  # and so does Spark SQL through the metastore
