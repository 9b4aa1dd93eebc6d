"""Failures a user causes or meets are one line naming the key, file or partition."""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq
import pytest
from helpers import build_config, partition_dir, write_jsonl
from pyspark.sql import SparkSession

from recpipe import storage
from recpipe.cli import main, os_error_line
from recpipe.errors import is_spark_failure, spark_failure_line
from recpipe.lake import Lake
from recpipe.stages.clean import run_clean

DS = "2026-11-22"


@pytest.mark.parametrize("value", ["2026-13-45", "2026-02-30"])
def test_set_value_that_looks_like_a_date_but_is_none(
    value: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["clean", "--ds", DS, "--set", f"clean.ts_min={value}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(
        f"recpipe: config error: --set clean.ts_min: value '{value}'"
    )


def test_damaged_lake_file_names_its_partition_and_the_fix(
    spark: SparkSession, tmp_path: Path
) -> None:
    events = [
        {"user_id": f"u{n}", "item_id": f"i{n % 7}", "event_type": "view",
         "ts": f"{DS}T10:{n % 60:02d}:00Z"}
        for n in range(300)
    ]  # fmt: skip
    raw = write_jsonl(tmp_path / "e.jsonl", events)
    config = build_config(tmp_path / "root", f"paths.raw_events={raw}")
    run_clean(spark, config, DS)
    folder = partition_dir(config.root.local_path(), "events", DS)
    damaged = next(
        p for p in sorted(folder.glob("*.parquet")) if pq.ParquetFile(p).metadata.num_rows
    )
    chunk = pq.ParquetFile(damaged).metadata.row_group(0).column(0)
    data = bytearray(damaged.read_bytes())
    data[chunk.data_page_offset + chunk.total_compressed_size - 1] ^= 0xFF  # same size
    damaged.write_bytes(bytes(data))
    with pytest.raises(Exception) as caught:
        Lake(config.root).read(spark, "events", [{"ds": DS}]).collect()
    assert is_spark_failure(caught.value)
    line = spark_failure_line(caught.value)
    assert "\n" not in line
    assert line.startswith(f"events ds={DS}: file://{damaged}")
    assert "is damaged (" in line and line.endswith(f"re-run `recpipe clean --ds {DS}`")


def test_file_system_errors_read_reason_then_path(tmp_path: Path) -> None:
    """The CLI's OSError line is ``reason: path`` whether Python or pyarrow.fs (storage) failed."""
    blocked = tmp_path / "a-file"
    blocked.write_text("not a folder")
    for operation in (
        lambda: (blocked / "x").mkdir(),
        lambda: storage.write_text(blocked / "x" / "y.json", "{}"),
        lambda: storage.read_bytes(tmp_path / "missing"),
    ):
        with pytest.raises(OSError) as caught:
            operation()
        line = os_error_line(caught.value)
        assert "\n" not in line
        assert line.startswith(("Not a directory: ", "No such file or directory: ")), line
        assert line.endswith(("/a-file", "/a-file/x", "/missing")), line


def test_unreachable_metastore_fails_before_anything_is_written(tmp_path: Path) -> None:
    """A Hive metastore URI nobody answers: one recpipe line naming the settings, a non-zero
    exit, and no lake version, manifest or attempt left behind."""
    import subprocess
    import sys

    raw = write_jsonl(
        tmp_path / "e.jsonl",
        [{"user_id": "u1", "item_id": "i1", "event_type": "view", "ts": f"{DS}T10:00:00Z"}],
    )
    root = tmp_path / "root"
    settings = [
        f"paths.root={root}",
        f"paths.raw_events={raw}",
        "spark.master=local[1]",
        "spark.log_level=ERROR",
        'spark.conf={spark.hadoop.hive.metastore.uris: "thrift://127.0.0.1:9"}',
    ]
    args = [sys.executable, "-m", "recpipe", "clean", "--ds", DS,
            *(a for s in settings for a in ("--set", s))]  # fmt: skip
    done = subprocess.run(args, capture_output=True, text=True, timeout=300, check=False,
                          cwd=tmp_path)  # fmt: skip
    assert done.returncode != 0
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("recpipe clean: the metastore (spark.sql.catalogImplementation=hive,")
    assert "hive.metastore.uris" in last and "Traceback" not in done.stderr
    assert not (root / "lake").exists() and not (root / "manifests" / "clean").exists()
