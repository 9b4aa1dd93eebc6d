"""Downstream reconciliation: a stage refuses input that differs from its producer's manifest.

Files are added to or removed from published lake partitions behind the manifests' back (as
an operator's stray copy or a lost file would), and the next stage must fail naming the
partition and the command to re-run, instead of reading more or fewer rows silently.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from helpers import build_config, partition_dir, run_chain, write_jsonl
from pyspark.sql import SparkSession

from recpipe.errors import MissingInputError
from recpipe.reconcile import ReconciliationError
from recpipe.stages.export import run_export
from recpipe.stages.sessionize import run_sessionize
from recpipe.stages.split import run_split
from recpipe.stages.vocab import run_vocab

DS1, DS2 = "2026-11-10", "2026-11-11"


def _events(day: str, users: range) -> list[dict[str, str]]:
    return [
        {"user_id": f"u{u}", "item_id": f"i{(u + k) % 9}", "event_type": "view",
         "ts": f"{day}T{10 + k:02d}:00:{u:02d}Z"}
        for u in users
        for k in range(5)
    ]  # fmt: skip


def _stray_copy(folder: Path) -> Path:
    """Copy one data file of a published partition under a new name (what reconciliation must
    catch: Spark and pyarrow read every part file in the folder)."""
    source = sorted(folder.glob("part-*.parquet"))[0]
    return Path(shutil.copy(source, folder / "part-99999-stray.snappy.parquet"))


def test_every_stage_checks_what_it_reads_against_the_producer(
    spark: SparkSession, tmp_path: Path
) -> None:
    common = ["split.protocols=[leave_last_out]", "export.kinds=[pairwise]", "export.negatives=1"]
    raw1 = write_jsonl(tmp_path / "raw" / DS1 / "e.jsonl", _events(DS1, range(12)))
    raw2 = write_jsonl(tmp_path / "raw" / DS2 / "e.jsonl", _events(DS2, range(6, 18)))
    root = tmp_path / "root"
    run_chain(spark, build_config(root, f"paths.raw_events={raw1}", *common), DS1)
    config = build_config(root, f"paths.raw_events={raw2}", *common)
    run_chain(spark, config, DS2, ("clean",))
    lake = root / "lake"

    # A stray file in a past day's events: both readers of the history refuse it.
    stray = _stray_copy(partition_dir(root, "events", DS1))
    with pytest.raises(ReconciliationError, match=rf"events ds={DS1}: read \d+ rows, but `clean` "
                       rf"published 60 .*re-run `recpipe clean --ds {DS1}`"):  # fmt: skip
        run_vocab(spark, config, DS2)
    stray.unlink()
    run_chain(spark, config, DS2, ("vocab",))
    stray = _stray_copy(partition_dir(root, "events", DS1))
    with pytest.raises(ReconciliationError, match=rf"events ds={DS1}: read"):
        run_sessionize(spark, config, DS2)
    stray.unlink()
    run_chain(spark, config, DS2, ("sessionize",))

    # Lost sessions rows (one file rewritten with half its rows): split refuses and publishes
    # nothing.
    data_file = sorted(partition_dir(root, "sessions", DS2).glob("part-*.parquet"))[0]
    checksum = data_file.with_name(f".{data_file.name}.crc")  # Hadoop's, else it flags the edit
    original, original_checksum = data_file.read_bytes(), checksum.read_bytes()
    table = pq.read_table(data_file)
    pq.write_table(table.slice(0, table.num_rows // 2), data_file)
    checksum.unlink()
    with pytest.raises(ReconciliationError, match=rf"sessions ds={DS2}: read \d+ rows, but "
                       r"`sessionize` published"):  # fmt: skip
        run_split(spark, config, DS2)
    assert not (root / "manifests" / "split" / f"ds={DS2}.json").exists()
    assert not list((lake / "train").glob(f"ds={DS2}/*/v=*"))  # the failed run's versions are gone
    data_file.write_bytes(original)
    checksum.write_bytes(original_checksum)
    run_chain(spark, config, DS2, ("split",))

    # A stray train file: export refuses.
    stray = _stray_copy(partition_dir(root, "train", DS2, "leave_last_out"))
    with pytest.raises(ReconciliationError, match=rf"train protocol=leave_last_out ds={DS2}"):
        run_export(spark, config, DS2)
    stray.unlink()
    assert run_export(spark, config, DS2)["status"] == "ok"

    # A manifest that is not a successful commit (failed runs no longer write one; an older
    # recpipe's or a hand-edited one) commits nothing: the partition is missing, with the fix.
    manifest_file = root / "manifests" / "sessionize" / f"ds={DS2}.json"
    manifest = json.loads(manifest_file.read_text())
    manifest_file.write_text(json.dumps({**manifest, "status": "failed"}))
    with pytest.raises(MissingInputError, match=rf"run `recpipe sessionize --ds {DS2}` first"):
        run_split(spark, config, DS2)
