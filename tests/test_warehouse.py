"""Warehouse tables: atomic, versioned partition publishes through the Hive metastore."""

from __future__ import annotations

import datetime as dt
import json
import uuid
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from recpipe import warehouse
from recpipe.config import Config
from recpipe.errors import RecpipeError
from recpipe.storage import Location
from recpipe.warehouse import (
    MODEL_METRICS,
    POINTER_FILE,
    RECOMMENDATIONS,
    PublishError,
    ensure_tables,
    partition_location,
    partition_path,
    publish_copy,
    publish_partition,
    qualified_name,
    write_model_metrics,
)

DS = "2026-11-22"
GENERATED = dt.datetime(2026, 11, 22, 6, 0)
SCHEMA = (
    "user_id string, item_id string, rank int, score double, generated_at timestamp, source string"
)


@pytest.fixture
def config(make_config) -> Config:
    """A config rooted in the test's temp folder, with a database of its own."""
    return make_config(f"warehouse.database=wh_{uuid.uuid4().hex[:12]}")


def recs(spark: SparkSession, users: list[str], items: int = 10, tag: str = "a") -> DataFrame:
    """``items`` recommendations per user; item ids carry ``tag`` to tell versions apart."""
    rows = [
        (user, f"{tag}{user}-{rank}", rank, 1.0 / rank, GENERATED, "als")
        for user in users
        for rank in range(1, items + 1)
    ]
    return spark.createDataFrame(rows, SCHEMA)


def select_rows(spark: SparkSession, config: Config, ds: str = DS, model: str = "als") -> set:
    """Rows of one recommendations partition as seen through the metastore."""
    name = qualified_name(config, RECOMMENDATIONS)
    query = f"SELECT user_id, item_id, rank FROM {name} WHERE ds = '{ds}' AND model = '{model}'"
    return {tuple(row) for row in spark.sql(query).collect()}


def expected_rows(df: DataFrame) -> set:
    """The (user_id, item_id, rank) triples of ``df``."""
    return {tuple(row) for row in df.select("user_id", "item_id", "rank").collect()}


def versions(config: Config, table: str = RECOMMENDATIONS, model: str = "als") -> list[Path]:
    """Version folders on disk of one partition, oldest first."""
    return sorted(local(partition_path(config, table, DS, model)).glob("v=*"))


def local(location: Location) -> Path:
    """The local folder behind a location the warehouse returned (tests run on local roots)."""
    return location.local_path()


def local_or_none(location: Location | None) -> Path | None:
    """As :func:`local`, passing None through."""
    return None if location is None else location.local_path()


def test_failure_mid_write_keeps_previous_version(spark: SparkSession, config: Config) -> None:
    first = recs(spark, ["u1", "u2"])
    v1 = local(publish_partition(spark, config, RECOMMENDATIONS, first, DS, "als"))
    failing = recs(spark, ["u1", "u2", "u3"], tag="b").withColumn(
        "score", F.when(F.col("rank") > 5, F.raise_error(F.lit("boom"))).otherwise(F.col("score"))
    )

    with pytest.raises(Exception, match="boom"):
        publish_partition(spark, config, RECOMMENDATIONS, failing, DS, "als")

    assert select_rows(spark, config) == expected_rows(first)
    assert local_or_none(partition_location(config, RECOMMENDATIONS, DS, "als")) == v1
    assert versions(config) == [v1]  # the failed folder is gone, never became current


def test_metastore_failure_after_write_keeps_previous_version(
    spark: SparkSession, config: Config, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = recs(spark, ["u1"])
    v1 = local(publish_partition(spark, config, RECOMMENDATIONS, first, DS, "als"))
    written: list[Path] = []

    def failing_switch(*args: object) -> None:
        written.extend(local(args[-1]).glob("part-*.parquet"))  # type: ignore[arg-type]
        raise RuntimeError("metastore down")

    monkeypatch.setattr(warehouse, "_switch_partition", failing_switch)
    with pytest.raises(RuntimeError, match="metastore down"):
        publish_partition(spark, config, RECOMMENDATIONS, recs(spark, ["u2"]), DS, "als")

    assert written  # the new version was complete on disk when the switch failed
    assert select_rows(spark, config) == expected_rows(first)
    assert local_or_none(partition_location(config, RECOMMENDATIONS, DS, "als")) == v1
    assert versions(config) == [v1]


def test_row_count_mismatch_keeps_previous_version(spark: SparkSession, config: Config) -> None:
    first = recs(spark, ["u1"])
    v1 = local(publish_partition(spark, config, RECOMMENDATIONS, first, DS, "als"))
    second = recs(spark, ["u1", "u2"], tag="b")

    with pytest.raises(PublishError, match="wrote 20 rows, expected 25"):
        publish_partition(spark, config, RECOMMENDATIONS, second, DS, "als", expected_rows=25)

    assert select_rows(spark, config) == expected_rows(first)
    assert local_or_none(partition_location(config, RECOMMENDATIONS, DS, "als")) == v1
    assert versions(config) == [v1]


def test_republish_replaces_without_duplicates(spark: SparkSession, config: Config) -> None:
    publish_partition(spark, config, RECOMMENDATIONS, recs(spark, ["u1", "u2", "u3"]), DS, "als")
    second = recs(spark, ["u2", "u4"], items=5, tag="b")

    folder = local(publish_partition(spark, config, RECOMMENDATIONS, second, DS, "als"))

    assert select_rows(spark, config) == expected_rows(second)
    pointer = json.loads((folder.parent / POINTER_FILE).read_text())
    assert pointer["rows"] == 10
    assert config.root.local_path() / pointer["path"] == folder  # relative to paths.root
    assert pointer["files"] == {p.name: p.stat().st_size for p in folder.glob("*.parquet")}
    assert pointer["version"] == folder.name.removeprefix("v=")


def test_second_partition_leaves_first_untouched(spark: SparkSession, config: Config) -> None:
    first = recs(spark, ["u1", "u2"])
    v1 = local(publish_partition(spark, config, RECOMMENDATIONS, first, DS, "als"))
    other = recs(spark, ["u3"], tag="p")

    publish_partition(spark, config, RECOMMENDATIONS, other, DS, "popularity")
    publish_partition(spark, config, RECOMMENDATIONS, other, "2026-11-23", "als")

    assert select_rows(spark, config) == expected_rows(first)
    assert select_rows(spark, config, model="popularity") == expected_rows(other)
    assert select_rows(spark, config, ds="2026-11-23") == expected_rows(other)
    assert local_or_none(partition_location(config, RECOMMENDATIONS, DS, "als")) == v1


def file_digests(folder: Path) -> dict[str, str]:
    """SHA-256 of each data file of a version folder."""
    import hashlib

    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.glob("*.parquet")}


def test_publish_copy_serves_the_source_files_byte_for_byte(
    spark: SparkSession, config: Config
) -> None:
    scored = recs(spark, ["u1", "u2", "u3"])
    source = local(publish_partition(spark, config, RECOMMENDATIONS, scored, DS, "als"))
    publish_partition(spark, config, RECOMMENDATIONS, recs(spark, ["u9"], tag="old"), DS, "pub")

    extra = {"source_model": "als"}
    copied = publish_copy(spark, config, RECOMMENDATIONS, DS, "als", "pub", pointer_extra=extra)
    folder = local(copied)

    assert select_rows(spark, config, model="pub") == expected_rows(scored)  # old rows gone
    assert file_digests(folder) == file_digests(source) and file_digests(folder)
    pointer = json.loads((folder.parent / POINTER_FILE).read_text())
    assert pointer["rows"] == 30 and pointer["source_model"] == "als"
    assert local_or_none(partition_location(config, RECOMMENDATIONS, DS, "pub")) == folder
    # The source stays as it was, and a later change of it leaves the copy alone.
    publish_partition(spark, config, RECOMMENDATIONS, recs(spark, ["u4"], tag="n"), DS, "als")
    assert select_rows(spark, config, model="pub") == expected_rows(scored)


def test_publish_copy_of_a_damaged_source_keeps_the_previous_version(
    spark: SparkSession, config: Config
) -> None:
    source = local(
        publish_partition(spark, config, RECOMMENDATIONS, recs(spark, ["u1"]), DS, "als")
    )
    before = recs(spark, ["u7"], tag="p")
    current = local(publish_partition(spark, config, RECOMMENDATIONS, before, DS, "pub"))
    data_file = sorted(source.glob("*.parquet"))[0]
    with data_file.open("ab") as handle:
        handle.write(b"\0")

    with pytest.raises(warehouse.PointerError, match=r"model=als: .* has \d+ bytes.*republish"):
        publish_copy(spark, config, RECOMMENDATIONS, DS, "als", "pub")

    assert versions(config, model="pub") == [current]  # the half-made copy is removed
    assert select_rows(spark, config, model="pub") == expected_rows(before)
    with pytest.raises(PublishError, match=r"model=never has never been published"):
        publish_copy(spark, config, RECOMMENDATIONS, DS, "never", "pub")


def test_publish_copy_rewrites_files_whose_columns_are_not_the_tables(
    spark: SparkSession, config: Config
) -> None:
    """A source written before a schema change (here: an extra column, and rank as a long)
    is rewritten with the table's columns instead of copied."""
    scored = recs(spark, ["u1", "u2"])
    source = local(publish_partition(spark, config, RECOMMENDATIONS, scored, DS, "als"))
    pointer_file = source.parent / POINTER_FILE
    pointer = json.loads(pointer_file.read_text())
    old = source.parent / "v=old-layout"
    legacy = scored.withColumn("rank", F.col("rank").cast("long")).withColumn("legacy", F.lit(1))
    legacy.coalesce(1).write.parquet(str(old))
    files = {p.name: p.stat().st_size for p in old.glob("*.parquet")}
    pointer_file.write_text(json.dumps({**pointer, "path": str(old.relative_to(
        config.root.local_path())), "files": files, "footers": {}}))  # fmt: skip

    folder = local(publish_copy(spark, config, RECOMMENDATIONS, DS, "als", "pub"))

    assert select_rows(spark, config, model="pub") == expected_rows(scored)
    written = pq.read_schema(sorted(folder.glob("*.parquet"))[0])
    assert "legacy" not in written.names and str(written.field("rank").type) == "int32"


def test_show_partitions_lists_published_ones(spark: SparkSession, config: Config) -> None:
    df = recs(spark, ["u1"], items=2)
    for ds, model in [(DS, "als"), (DS, "popularity"), ("2026-11-23", "als"), (DS, "als")]:
        publish_partition(spark, config, RECOMMENDATIONS, df, ds, model)

    listed = spark.sql(f"SHOW PARTITIONS {qualified_name(config, RECOMMENDATIONS)}").collect()

    assert sorted(row.partition for row in listed) == [
        "ds=2026-11-22/model=als",
        "ds=2026-11-22/model=popularity",
        "ds=2026-11-23/model=als",
    ]


def test_keep_versions_prunes_old_folders(spark: SparkSession, make_config) -> None:
    config = make_config(
        f"warehouse.database=wh_{uuid.uuid4().hex[:12]}", "warehouse.keep_versions=2"
    )
    published = [
        local(
            publish_partition(
                spark, config, RECOMMENDATIONS, recs(spark, ["u1"], tag=tag), DS, "als"
            )
        )
        for tag in "abcd"
    ]

    assert versions(config) == published[-2:]
    assert local_or_none(partition_location(config, RECOMMENDATIONS, DS, "als")) == published[-1]
    assert select_rows(spark, config) == expected_rows(recs(spark, ["u1"], tag="d"))


def test_written_files_are_sorted_by_user_and_rank(spark: SparkSession, config: Config) -> None:
    df = recs(spark, ["u3", "u1", "u2"], items=4).orderBy(F.rand(seed=1))

    folder = local(publish_partition(spark, config, RECOMMENDATIONS, df, DS, "als"))

    files = sorted(folder.glob("part-*.parquet"))
    assert len(files) == 1
    table = pq.read_table(files[0])
    keys = list(zip(table["user_id"].to_pylist(), table["rank"].to_pylist(), strict=True))
    assert keys == sorted(keys)
    assert table.schema.field("rank").type == "int32"


def test_tables_are_external_parquet(spark: SparkSession, config: Config) -> None:
    ensure_tables(spark, config)
    ensure_tables(spark, config)  # idempotent

    for table in (RECOMMENDATIONS, MODEL_METRICS):
        described = spark.sql(f"DESCRIBE TABLE EXTENDED {qualified_name(config, table)}")
        info = {row.col_name: row.data_type for row in described.collect()}
        assert info["Type"] == "EXTERNAL"
        assert info["Provider"] == "parquet"
        assert info["Location"].endswith(f"/warehouse/{config.warehouse.database}.db/{table}")


def test_model_metrics_replace_partition(spark: SparkSession, config: Config) -> None:
    rows = [
        {"protocol": "leave_last_out", "split": "test", "metric": "ndcg", "k": 10, "value": 0.25},
        {"protocol": "leave_last_out", "split": "test", "metric": "recall", "k": 10, "value": 1},
        {"protocol": "leave_last_out", "split": "test", "metric": "auc", "k": None, "value": 0.7},
    ]
    write_model_metrics(spark, config, rows, DS, "als")
    write_model_metrics(spark, config, rows[:1], DS, "popularity")
    replacement = [{**rows[0], "value": 0.5}]

    write_model_metrics(spark, config, replacement, DS, "als")

    name = qualified_name(config, MODEL_METRICS)
    got = spark.sql(f"SELECT model, metric, k, value FROM {name} ORDER BY model").collect()
    assert [tuple(row) for row in got] == [
        ("als", "ndcg", 10, 0.5),
        ("popularity", "ndcg", 10, 0.25),
    ]


def test_model_metrics_rejects_incomplete_rows(spark: SparkSession, config: Config) -> None:
    with pytest.raises(RecpipeError, match="lacks"):
        write_model_metrics(spark, config, [{"metric": "ndcg", "value": 1.0}], DS, "als")


@pytest.mark.parametrize(("ds", "model"), [("22-11-2026", "als"), (DS, "a'; DROP"), (DS, "../x")])
def test_bad_partition_values_are_rejected(
    spark: SparkSession, config: Config, ds: str, model: str
) -> None:
    with pytest.raises(RecpipeError):
        publish_partition(spark, config, RECOMMENDATIONS, recs(spark, ["u1"]), ds, model)


def test_missing_column_is_rejected(spark: SparkSession, config: Config) -> None:
    df = recs(spark, ["u1"]).drop("score")

    with pytest.raises(RecpipeError, match=r"\['score'\] missing"):
        publish_partition(spark, config, RECOMMENDATIONS, df, DS, "als")
    assert local_or_none(partition_location(config, RECOMMENDATIONS, DS, "als")) is None


def test_database_registered_under_another_root_is_refused(
    spark: SparkSession, config: Config, make_config, tmp_path: Path
) -> None:
    ensure_tables(spark, config)
    moved = config.model_copy(deep=True)
    moved.paths.root = str(tmp_path / "elsewhere")

    with pytest.raises(RecpipeError, match="registered at"):
        ensure_tables(spark, moved)


def test_pointer_readers_follow_a_moved_root_and_refuse_tampered_files(
    spark: SparkSession, config: Config, make_config, tmp_path: Path
) -> None:
    """The JVM-free reader takes the version's path relative to the root (a moved root reads
    its own copy) and checks the files, sizes and row count the pointer recorded."""
    import shutil

    from recpipe.query import lookup_recs
    from recpipe.warehouse import PointerError

    publish_partition(spark, config, RECOMMENDATIONS, recs(spark, ["u1", "u2"]), DS, "als")
    before = lookup_recs(config, "u1")
    assert [r["item_id"] for r in before] == [f"au1-{rank}" for rank in range(1, 11)]
    moved_root = tmp_path / "moved"
    shutil.move(config.root.local_path(), moved_root)  # the old absolute paths are gone
    database = f"warehouse.database={config.warehouse.database}"
    moved = make_config(f"paths.root={moved_root}", database)
    assert lookup_recs(moved, "u1") == before
    folder = local_or_none(partition_location(moved, RECOMMENDATIONS, DS, "als"))
    assert folder is not None and folder.is_relative_to(moved_root)

    data_file = sorted(folder.glob("*.parquet"))[0]
    hidden = data_file.with_name("_" + data_file.name)
    data_file.rename(hidden)
    with pytest.raises(PointerError, match=rf"{data_file.name} is missing\); republish"):
        lookup_recs(moved, "u1")
    hidden.rename(data_file)
    with data_file.open("ab") as handle:
        handle.write(b"\0")
    with pytest.raises(PointerError, match=rf"{data_file.name} has \d+ bytes, the pointer"):
        lookup_recs(moved, "u1")


def _flip_byte(path: Path, offset: int) -> bytes:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))
    return bytes(data)


def test_pointer_readers_refuse_files_edited_in_place(spark: SparkSession, config: Config) -> None:
    """Same names, same sizes: an edited data page fails its CRC, an edited footer its digest."""
    import pyarrow.parquet as pq

    from recpipe.query import lookup_recs
    from recpipe.warehouse import PointerError

    users = [f"u{n}" for n in range(200)]
    publish_partition(spark, config, RECOMMENDATIONS, recs(spark, users), DS, "als")
    assert len(lookup_recs(config, "u7")) == 10
    folder = local_or_none(partition_location(config, RECOMMENDATIONS, DS, "als"))
    assert folder is not None
    data_file = sorted(folder.glob("*.parquet"))[0]
    original = data_file.read_bytes()
    chunk = pq.ParquetFile(data_file).metadata.row_group(0).column(0)
    # The last byte of the first column chunk: inside a data page's compressed payload.
    _flip_byte(data_file, chunk.data_page_offset + chunk.total_compressed_size - 1)
    with pytest.raises(PointerError, match=r"recommendations ds=.* is damaged .*republish"):
        lookup_recs(config, "u7")
    data_file.write_bytes(original)
    footer_length = int.from_bytes(original[-8:-4], "little")
    _flip_byte(data_file, len(original) - 8 - footer_length // 2)
    with pytest.raises(PointerError, match=r"not the file that was published"):
        lookup_recs(config, "u7")
    data_file.write_bytes(original)
    assert len(lookup_recs(config, "u7")) == 10
