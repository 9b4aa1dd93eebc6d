"""JVM-free recommendation lookups through the partition pointer, and Spark SQL queries."""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys
import uuid

import pytest
from pyspark.sql import SparkSession

from recpipe.config import Config
from recpipe.errors import MissingInputError, RecpipeError
from recpipe.query import (
    UnknownUserError,
    format_recs,
    latest_ds,
    list_models,
    lookup_recs,
    run_sql,
)
from recpipe.warehouse import RECOMMENDATIONS, publish_partition, qualified_name

DS = "2026-11-22"
GENERATED = dt.datetime(2026, 11, 22, 6, 30)
SCHEMA = (
    "user_id string, item_id string, rank int, score double, generated_at timestamp, source string"
)
# Stored out of order on purpose: the lookup must order by rank.
ROWS = [
    ("u1", "i3", 3, 0.5, GENERATED, "als"),
    ("u1", "i9", 1, 0.9, GENERATED, "als"),
    ("u2", "i1", 1, 0.8, GENERATED, "als"),
    ("u1", "i7", 2, 0.7, GENERATED, "als"),
    ("u2", "i2", 2, 0.6, GENERATED, "fallback"),
]


@pytest.fixture
def config(spark: SparkSession, make_config) -> Config:
    """A config with one published partition: recommendations ds=2026-11-22, model=als."""
    config = make_config(f"warehouse.database=q_{uuid.uuid4().hex[:12]}")
    df = spark.createDataFrame(ROWS, SCHEMA)
    publish_partition(spark, config, RECOMMENDATIONS, df, DS, "als")
    return config


def test_lookup_returns_user_rows_ordered_by_rank(config: Config) -> None:
    rows = lookup_recs(config, "u1")

    assert [(r["rank"], r["item_id"], r["score"]) for r in rows] == [
        (1, "i9", 0.9),
        (2, "i7", 0.7),
        (3, "i3", 0.5),
    ]
    assert {(r["model"], r["source"], r["user_id"], r["ds"]) for r in rows} == {
        ("als", "als", "u1", DS)
    }


def test_lookup_truncates_to_k(config: Config) -> None:
    rows = lookup_recs(config, "u1", model="als", ds=DS, k=2)

    assert [r["item_id"] for r in rows] == ["i9", "i7"]


def test_unknown_user_names_user_model_and_ds(config: Config) -> None:
    with pytest.raises(UnknownUserError, match=f"'nobody'.*'als'.*ds={DS}"):
        lookup_recs(config, "nobody")


def test_missing_partition_and_ambiguous_model(spark: SparkSession, config: Config) -> None:
    with pytest.raises(MissingInputError, match="model 'ease'"):
        lookup_recs(config, "u1", model="ease", ds=DS)
    with pytest.raises(MissingInputError):
        lookup_recs(config, "u1", model="ease")
    other = spark.createDataFrame(ROWS[:1], SCHEMA)
    publish_partition(spark, config, RECOMMENDATIONS, other, DS, "popularity")

    with pytest.raises(RecpipeError, match="als, popularity"):
        lookup_recs(config, "u1")
    assert lookup_recs(config, "u1", model="popularity")[0]["item_id"] == "i3"


def test_latest_ds_and_list_models(spark: SparkSession, config: Config) -> None:
    later = spark.createDataFrame(ROWS, SCHEMA)
    publish_partition(spark, config, RECOMMENDATIONS, later, "2026-11-23", "popularity")

    assert latest_ds(config) == "2026-11-23"
    assert latest_ds(config, "als") == DS
    assert latest_ds(config, "ease") is None
    assert list_models(config, DS) == ["als"]
    assert lookup_recs(config, "u2")[0]["ds"] == "2026-11-23"


def test_json_format_parses_back_to_rows(config: Config) -> None:
    rows = lookup_recs(config, "u2")

    parsed = json.loads(format_recs(rows, "json"))

    assert parsed == rows
    assert all({"rank", "item_id", "score", "model", "source"} <= set(row) for row in parsed)


def test_table_format_titles_user_model_and_ds(config: Config) -> None:
    text = format_recs(lookup_recs(config, "u2"), "table")

    assert text.splitlines()[0] == f"recommendations for user u2 (model als, ds {DS})"
    assert "fallback" in text
    with pytest.raises(RecpipeError, match="unknown output format"):
        format_recs([], "xml")


def test_run_sql_returns_table_rows(spark: SparkSession, config: Config) -> None:
    name = qualified_name(config, RECOMMENDATIONS)

    rows = run_sql(spark, f"SELECT * FROM {name} ORDER BY user_id, rank")

    expected = sorted(ROWS, key=lambda row: (row[0], row[2]))
    assert rows == [
        {
            "user_id": user,
            "item_id": item,
            "rank": rank,
            "score": score,
            "generated_at": "2026-11-22T06:30:00+00:00",
            "source": source,
            "ds": DS,
            "model": "als",
        }
        for user, item, rank, score, _, source in expected
    ]
    json.dumps(rows)  # JSON-ready


def test_query_module_does_not_import_pyspark() -> None:
    code = "import sys, recpipe.query; print('pyspark' in sys.modules)"

    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)

    assert out.stdout.strip() == "False"


REFUSED = [
    # (statement template, what the refusal names); {t} is the recommendations table
    ("SELECT TRANSFORM(user_id) USING 'touch {marker}' FROM {t}", "TRANSFORM"),
    ("WITH x AS (SELECT TRANSFORM(1) USING 'touch {marker}') SELECT * FROM x", "TRANSFORM"),
    ("SELECT * FROM text.`/etc/hostname`", "by path"),
    ("SELECT * FROM {t} WHERE user_id IN (SELECT value FROM text.`{marker_dir}`)", "by path"),
    ("SELECT reflect('java.lang.System', 'exit', 3)", "reflect"),
    ("SELECT java_method('java.lang.Runtime', 'getRuntime')", "reflect"),
    ("INSERT INTO {t} PARTITION (ds='{ds}', model='als') "
     "SELECT 'u9', 'evil', 0, 1.0, current_timestamp(), 'x'", "InsertIntoStatement"),
    ("INSERT OVERWRITE DIRECTORY '{marker_dir}/out' SELECT 1", "InsertIntoDir"),
    ("DROP TABLE {t}", "DropTable"),
    ("ALTER TABLE {t} DROP PARTITION (ds='{ds}', model='als')", "not a query"),
    ("CREATE TABLE {t}_copy AS SELECT * FROM {t}", "CreateTableAsSelect"),
    ("SET spark.sql.warehouse.dir=/tmp", "SetCommand"),
    ("ADD JAR {marker_dir}/x.jar", "AddJarsCommand"),
    ("CREATE TEMPORARY FUNCTION f AS 'com.example.Udf'", "CreateFunctionCommand"),
    ("CACHE TABLE {t}", "CacheTable"),
    ("DELETE FROM {t} WHERE ds='{ds}'", "DeleteFromTable"),
    ("EXPLAIN SELECT TRANSFORM(user_id) USING 'touch {marker}' FROM {t}", "TRANSFORM"),
    ("EXPLAIN SELECT * FROM json.`{marker_dir}`", "by path"),
    ("EXPLAIN DROP TABLE {t}", "DropTable"),
]  # fmt: skip


@pytest.mark.parametrize(("template", "reason"), REFUSED, ids=[r[1] for r in REFUSED])
def test_sql_is_read_only_and_nothing_of_a_refused_statement_runs(
    spark: SparkSession, config: Config, tmp_path, template: str, reason: str
) -> None:
    from recpipe.sql_guard import ReadOnlyError

    name = qualified_name(config, RECOMMENDATIONS)
    marker = tmp_path / "ran"
    statement = template.format(t=name, marker=marker, marker_dir=tmp_path, ds=DS)
    before = lookup_recs(config, "u1")
    with pytest.raises(ReadOnlyError, match=reason):
        run_sql(spark, statement)
    assert not marker.exists() and not (tmp_path / "out").exists()
    assert spark.catalog.tableExists(name)
    after = spark.sql(f"SELECT count(*) AS n FROM {name}").collect()[0]["n"]
    assert after == len(ROWS)
    assert lookup_recs(config, "u1") == before
    assert spark.conf.get("spark.sql.warehouse.dir") != "/tmp"
    assert spark.conf.get("spark.sql.runSQLOnFiles") == "true"  # the guard restored it


def test_sql_reads_queries_and_catalog_inspections(spark: SparkSession, config: Config) -> None:
    from recpipe.sql_guard import QueryError

    name = qualified_name(config, RECOMMENDATIONS)
    counted = run_sql(
        spark, f"WITH r AS (SELECT * FROM {name}) SELECT user_id, count(*) AS n FROM r "
        "GROUP BY user_id ORDER BY user_id",
    )  # fmt: skip
    expected: dict[str, int] = {}
    for row in ROWS:
        expected[row[0]] = expected.get(row[0], 0) + 1
    assert counted == [{"user_id": u, "n": n} for u, n in sorted(expected.items())]
    tables = run_sql(spark, f"SHOW TABLES IN {config.warehouse.database}")
    assert RECOMMENDATIONS in {row["tableName"] for row in tables}
    columns = [row["col_name"] for row in run_sql(spark, f"DESCRIBE {name}")]
    assert columns[:6] == ["user_id", "item_id", "rank", "score", "generated_at", "source"]
    assert run_sql(spark, "SELECT id FROM range(2)") == [{"id": 0}, {"id": 1}]
    plan = run_sql(spark, f"EXPLAIN SELECT count(*) FROM {name}")[0]["plan"]
    assert "Physical Plan" in plan and RECOMMENDATIONS in plan
    scratch = f"{config.warehouse.database}.scratch"
    run_sql(spark, f"CREATE TABLE {scratch} (a INT) USING parquet", admin=True)
    assert spark.catalog.tableExists(scratch)  # --admin runs maintenance statements unchecked
    with pytest.raises(QueryError, match="cannot parse"):
        run_sql(spark, "SELEC 1")
    with pytest.raises(QueryError, match="TABLE_OR_VIEW_NOT_FOUND"):
        run_sql(spark, f"SELECT * FROM {config.warehouse.database}.nope")
