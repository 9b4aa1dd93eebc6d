"""The clean stage on hand-written corpora: every reason code, exact reconciliation, formats."""

from __future__ import annotations

import datetime as dt
import json
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from helpers import partition_dir
from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from recpipe.config import Config
from recpipe.etl.clean import KEY_HASH, dedupe_exact, dedupe_repeated
from recpipe.etl.sources import RawInputError
from recpipe.manifest import last_attempt
from recpipe.stages.clean import run_clean
from recpipe.storage import Location

DS = "2026-11-22"
T0 = 1795341600  # 2026-11-22T10:00:00Z


def ev(user: object = "u1", item: object = "i1", etype: object = "view", ts: object = T0, **kw):
    """One raw event line; keyword ``drop`` removes a field."""
    record = {"user_id": user, "item_id": item, "event_type": etype, "ts": ts, **kw}
    for name in record.pop("drop", ()):
        record.pop(name)
    return json.dumps(record)


# (line, expected reason or None for valid). Each bad line fails exactly one check.
CORPUS: list[tuple[str, str | None]] = [
    (ev("u1", "i1", "view", T0), None),
    (ev("u1", "i2", "click", T0 * 1000 + 5000), None),  # epoch ms -> T0 + 5 s
    (ev("u2", "i1", "PURCHASE", "2026-11-22T11:00:00+01:00", value=19.5), None),  # = T0
    (ev(42, "i3", "rating", "2026-11-22T10:00:07Z", value="4"), None),  # numeric id, string value
    (ev("u3", "i1", "view", T0 + 9, device="ios", tags=["a"]), None),  # extra fields kept
    (ev("u1", "i1", "view", T0), None),  # exact duplicate of the first line: dropped, counted
    (ev("u1", "i1", "view", T0), None),  # and a second copy
    ("", "empty_record"),
    ("   ", "empty_record"),
    ('{"user_id": "u1", "item_id": "i1", "event_ty', "malformed_record"),
    ("{not json at all", "malformed_record"),
    ('["u1", "i1"]', "not_an_object"),
    ('"u1"', "not_an_object"),
    ("17", "not_an_object"),
    ("null", "not_an_object"),
    (ev(drop=["user_id"]), "missing_user_id"),
    (ev(user=None), "missing_user_id"),
    (ev(user=""), "missing_user_id"),
    (ev(user="   "), "missing_user_id"),
    (ev(item=None), "missing_item_id"),
    (ev(drop=["item_id"]), "missing_item_id"),
    (ev(etype=""), "missing_event_type"),
    (ev(drop=["ts"]), "missing_ts"),
    (ev(ts=None), "missing_ts"),
    (ev(user="u" * 129), "id_too_long"),
    (ev(item="i" * 200), "id_too_long"),
    (ev(etype="hover"), "unknown_event_type"),
    (ev(ts="yesterday"), "bad_ts"),
    (ev(ts="2026-11-22T10:00:00"), "bad_ts"),  # ISO without a zone is ambiguous
    (ev(ts="2026-13-45T10:00:00Z"), "bad_ts"),
    (ev(ts=631152000), "ts_out_of_window"),  # 1990-01-01, before clean.ts_min
    (ev(ts="2026-11-24T00:00:00Z"), "ts_out_of_window"),  # end of ds + 1 day, exclusive
    (ev(ts=99999999999999999), "ts_out_of_window"),  # ms far in the future
    (ev(etype="purchase", value="abc"), "bad_value"),
    (ev(etype="purchase", value="NaN"), "bad_value"),
    (ev(etype="rating"), "missing_value"),
]


def write_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n")
    return path


def read_table(spark: SparkSession, root: Location, table: str, ds: str = DS):
    return spark.read.parquet(f"file://{partition_dir(root.local_path(), table, ds)}")


@pytest.fixture
def corpus_run(spark: SparkSession, make_config, tmp_path: Path) -> tuple[Config, dict]:
    raw = write_lines(tmp_path / "raw.jsonl", [line for line, _ in CORPUS])
    config = make_config(f"paths.raw_events={raw}")
    return config, run_clean(spark, config, DS)


def test_every_reason_code_reconciles_exactly(spark: SparkSession, corpus_run) -> None:
    config, manifest = corpus_run
    expected_reasons = Counter(reason for _, reason in CORPUS if reason)
    assert manifest["status"] == "ok"
    assert manifest["rows_in"] == len(CORPUS)
    assert manifest["rows_duplicate"] == 2
    assert manifest["rows_out"] == 5
    assert manifest["rows_quarantined"] == sum(expected_reasons.values())
    assert manifest["quarantine_by_reason"] == dict(expected_reasons)
    assert manifest["rows_in"] == (
        manifest["rows_out"] + manifest["rows_quarantined"] + manifest["rows_duplicate"]
    )
    # Every bad line is in quarantine with its own text and reason.
    quarantine = read_table(spark, config.root, "quarantine").collect()
    assert Counter((r["raw"], r["reason"]) for r in quarantine) == Counter(
        (line, reason) for line, reason in CORPUS if reason
    )
    # Manifest and resolved config are beside the outputs.
    manifest_file = config.root.local_path() / "manifests" / "clean" / f"ds={DS}.json"
    assert json.loads(manifest_file.read_text())["rows_in"] == len(CORPUS)
    assert manifest_file.with_suffix(".config.yaml").is_file()
    assert (partition_dir(config.root.local_path(), "events", DS) / "_config.yaml").is_file()


def test_valid_rows_are_normalised(spark: SparkSession, corpus_run) -> None:
    config, _ = corpus_run
    rows = {
        (r["user_id"], r["item_id"]): r for r in read_table(spark, config.root, "events").collect()
    }
    t0 = dt.datetime(2026, 11, 22, 10, 0, 0)  # Spark returns UTC wall time (session tz UTC)
    assert set(rows) == {("u1", "i1"), ("u1", "i2"), ("u2", "i1"), ("42", "i3"), ("u3", "i1")}
    assert rows[("u1", "i1")]["ts"] == t0
    assert rows[("u1", "i2")]["ts"] == t0 + dt.timedelta(seconds=5)
    assert rows[("u2", "i1")]["ts"] == t0  # 11:00+01:00 is 10:00Z
    assert rows[("u2", "i1")]["event_type"] == "purchase"  # lower-cased
    assert rows[("u2", "i1")]["value"] == 19.5
    assert rows[("42", "i3")]["value"] == 4.0
    assert rows[("42", "i3")]["ts"] == t0 + dt.timedelta(seconds=7)
    assert rows[("u3", "i1")]["extra"] == {"device": "ios", "tags": '["a"]'}
    assert rows[("u1", "i1")]["value"] is None


def test_rerun_same_ds_replaces_partition(spark: SparkSession, make_config, tmp_path) -> None:
    first = write_lines(tmp_path / "day1.jsonl", [ev("a", "x"), ev("b", "y"), "oops"])
    config = make_config(f"paths.raw_events={first}")
    run_clean(spark, config, DS)
    run_clean(spark, config, DS)  # identical re-run: no duplicates
    events = read_table(spark, config.root, "events")
    assert events.count() == 2
    assert read_table(spark, config.root, "quarantine").count() == 1
    # A re-run on corrected input replaces the partition: no leftovers of the old version.
    fixed = write_lines(tmp_path / "fixed.jsonl", [ev("c", "z")])
    config2 = make_config(f"paths.raw_events={fixed}")
    manifest = run_clean(spark, config2, DS)
    assert [r["user_id"] for r in read_table(spark, config.root, "events").collect()] == ["c"]
    assert read_table(spark, config.root, "quarantine").count() == 0
    assert manifest["rows_in"] == 1 and manifest["rows_quarantined"] == 0
    # The previous run's version is kept (readers in flight), older ones are removed.
    root = config.root.local_path()
    versions = sorted((root / "lake" / "events" / f"ds={DS}").iterdir())
    assert len(versions) == 2 and partition_dir(root, "events", DS) == versions[-1]


def test_other_ds_partitions_are_untouched(spark: SparkSession, make_config, tmp_path) -> None:
    raw = write_lines(tmp_path / "d.jsonl", [ev("a", "x", ts=T0 - 86400)])
    config = make_config(f"paths.raw_events={raw}")
    run_clean(spark, config, "2026-11-21")
    run_clean(spark, config, DS)
    assert read_table(spark, config.root, "events", "2026-11-21").count() == 1
    assert read_table(spark, config.root, "events", DS).count() == 1


def test_bot_filter_quarantines_heavy_user_days(spark: SparkSession, make_config, tmp_path):
    # bot: 6 events on one UTC day (> limit 5); human: 5 events that day (= limit, kept),
    # and the bot's single event on the previous day stays (its own day is under the limit).
    lines = [ev("bot", f"i{k}", ts=T0 + k) for k in range(6)]
    lines += [ev("human", f"i{k}", ts=T0 + k) for k in range(5)]
    lines += [ev("bot", "i0", ts=T0 - 86400)]
    raw = write_lines(tmp_path / "bots.jsonl", lines)
    config = make_config(f"paths.raw_events={raw}", "clean.bot_max_events_per_day=5")
    manifest = run_clean(spark, config, DS)
    assert manifest["quarantine_by_reason"] == {"bot_suspect": 6}
    assert manifest["rows_out"] == 6
    kept = Counter(r["user_id"] for r in read_table(spark, config.root, "events").collect())
    assert kept == {"human": 5, "bot": 1}
    reasons = {r["reason"] for r in read_table(spark, config.root, "quarantine").collect()}
    assert reasons == {"bot_suspect"}


def test_csv_input_with_bad_rows(spark: SparkSession, make_config, tmp_path) -> None:
    csv = tmp_path / "events.csv"
    csv.write_text(
        "user_id,item_id,event_type,ts,value,campaign\n"
        f"u1,i1,view,{T0},,spring\n"
        f"u1,i2,purchase,{T0 + 1},9.99,\n"
        f"u2,i1,hover,{T0},,x\n"
        f"u3,i1,view,{T0},,x,surplus,fields\n"
        f"u4,,view,{T0},,\n"
        "u5,i1\n"
    )
    config = make_config(f"paths.raw_events={csv}")
    manifest = run_clean(spark, config, DS)
    assert manifest["rows_in"] == 6
    assert manifest["rows_out"] == 2
    assert manifest["quarantine_by_reason"] == {
        "malformed_record": 2,  # more, and fewer, fields than the header
        "unknown_event_type": 1,
        "missing_item_id": 1,
    }
    events = {r["item_id"]: r for r in read_table(spark, config.root, "events").collect()}
    assert events["i1"]["extra"] == {"campaign": "spring"}
    assert events["i2"]["value"] == pytest.approx(9.99)


def test_parquet_and_json_folder_mix(spark: SparkSession, make_config, tmp_path) -> None:
    folder = tmp_path / "raw"
    (folder / "sub").mkdir(parents=True)
    table = pa.table(
        {
            "user_id": [1, 2, None],
            "item_id": ["a", "b", "c"],
            "event_type": ["view", "click", "view"],
            "ts": [T0, T0 + 1, T0 + 2],
        }
    )
    pq.write_table(table, folder / "sub" / "part.parquet")
    write_lines(folder / "more.jsonl", [ev("9", "z"), "{broken"])
    (folder / "_SUCCESS").write_text("")  # marker files are not input
    config = make_config(f"paths.raw_events={folder}")
    manifest = run_clean(spark, config, DS)
    assert manifest["rows_in"] == 5
    assert manifest["quarantine_by_reason"] == {"missing_user_id": 1, "malformed_record": 1}
    users = sorted(r["user_id"] for r in read_table(spark, config.root, "events").collect())
    assert users == ["1", "2", "9"]


def test_glob_input_and_clear_errors(spark: SparkSession, make_config, tmp_path) -> None:
    write_lines(tmp_path / "a.jsonl", [ev("a", "x")])
    write_lines(tmp_path / "b.jsonl", [ev("b", "x")])
    config = make_config(f"paths.raw_events={tmp_path}/*.jsonl")
    assert run_clean(spark, config, DS)["rows_out"] == 2
    with pytest.raises(RawInputError, match=r"paths\.raw_events: .*does not exist"):
        run_clean(spark, make_config(f"paths.raw_events={tmp_path}/nope"), DS)
    with pytest.raises(RawInputError, match=r"paths\.raw_events is not set"):
        run_clean(spark, make_config(), DS)
    (tmp_path / "odd.txt").write_text("x")
    with pytest.raises(RawInputError, match="input_format"):
        run_clean(spark, make_config(f"paths.raw_events={tmp_path / 'odd.txt'}"), DS)
    # The failure is recorded beside the manifest of the data still served, not over it.
    root = make_config().root.local_path()
    served = json.loads((root / "manifests" / "clean" / f"ds={DS}.json").read_text())
    assert served["status"] == "ok" and served["rows_out"] == 2
    failed = last_attempt(make_config().root, "clean", DS)
    assert failed is not None and failed["status"] == "failed" and "input_format" in failed["error"]


def test_raw_events_at_a_hadoop_uri(spark: SparkSession, make_config, tmp_path) -> None:
    """paths.raw_events read through Hadoop's FileSystem: a viewfs:// mount of a local folder
    (a real non-local scheme), and clear errors for schemes this classpath cannot reach."""
    landing = tmp_path / "landing"
    (landing / "day").mkdir(parents=True)
    write_lines(landing / "day" / "a.jsonl", [ev("a", "x"), ev("b", "y")])
    write_lines(landing / "day" / "b.jsonl", [ev("c", "x"), "{broken"])
    hadoop = spark.sparkContext._jsc.hadoopConfiguration()
    hadoop.set("fs.viewfs.mounttable.rawtest.link./landing", f"file://{landing}")
    config = make_config("paths.raw_events=viewfs://rawtest/landing/day")
    manifest = run_clean(spark, config, DS)
    assert (manifest["rows_in"], manifest["rows_out"], manifest["rows_quarantined"]) == (4, 3, 1)
    sources = {r["source_file"] for r in read_table(spark, config.root, "quarantine").collect()}
    assert sources == {"viewfs://rawtest/landing/day/b.jsonl"}
    globbed = make_config("paths.raw_events=viewfs://rawtest/landing/*/a.jsonl")
    assert run_clean(spark, globbed, DS)["rows_in"] == 2
    with pytest.raises(RawInputError, match=r"paths\.raw_events: .*s3a:// needs hadoop-aws"):
        run_clean(spark, make_config("paths.raw_events=s3a://bucket/landing"), DS)
    with pytest.raises(RawInputError, match=r"paths\.raw_events: .*gs:// needs the GCS connector"):
        run_clean(spark, make_config("paths.raw_events=gs://bucket/landing"), DS)


def test_empty_input_never_replaces_a_day_silently(
    spark: SparkSession, make_config, tmp_path
) -> None:
    from recpipe.cli import main
    from recpipe.stages.clean import EmptyReplacementError

    good = write_lines(tmp_path / "good.jsonl", [ev("a", "x"), ev("b", "y"), ev("c", "z")])
    config = make_config(f"paths.raw_events={good}")
    assert run_clean(spark, config, DS)["rows_out"] == 3
    broken = write_lines(tmp_path / "broken.jsonl", ["{not json", ev(user="")])
    with pytest.raises(EmptyReplacementError, match=r"events ds=.* has 3 rows; nothing was"):
        run_clean(spark, make_config(f"paths.raw_events={broken}"), DS)
    assert read_table(spark, config.root, "events").count() == 3  # the day is kept
    assert read_table(spark, config.root, "quarantine").count() == 0  # and its quarantine
    code = main(["clean", "--ds", DS, "--set", f"paths.root={config.root}",
                 "--set", f"paths.raw_events={broken}", "--allow-empty"])  # fmt: skip
    assert code == 0
    assert read_table(spark, config.root, "events").count() == 0
    assert read_table(spark, config.root, "quarantine").count() == 2


def _dedupe_input(spark: SparkSession):
    """Rows with many exact duplicates (null values too), distinguishable by source and raw."""
    rows = []
    for n in range(400):
        key = (f"u{n % 37}", f"i{n % 11}", "view", n % 5, None if n % 3 else float(n % 2))
        for copy in range(1 + n % 4 * (n % 2)):  # most keys once, some up to 4 times
            rows.append((*key, f"f{(n + copy) % 3}", f"raw-{n}-{copy}"))
    schema = "user_id string, item_id string, event_type string, ts int, value double, " \
             "source_file string, raw string"  # fmt: skip
    return spark.createDataFrame(rows, schema)


def _sorted_rows(frame) -> list[tuple]:
    return sorted(tuple(r) for r in frame.select(sorted(frame.columns)).collect())


@pytest.mark.parametrize("hashing", ["xxhash64", "colliding", "all grouped"])
def test_dedupe_of_repeated_hashes_equals_grouping_every_row(spark: SparkSession, hashing) -> None:
    """Only rows whose key hash repeats are grouped, yet the result is the full grouping's:
    with the real hash, with a hash that collides on purpose (keys told apart by the key
    itself), and above the broadcast limit (every row grouped)."""
    rows = _dedupe_input(spark)
    expected = _sorted_rows(dedupe_exact(rows))
    if hashing == "colliding":
        rows = rows.withColumn(KEY_HASH, F.length("user_id").cast("long"))
    deduped = dedupe_repeated(rows, max_broadcast=0 if hashing == "all grouped" else 10**6)
    try:
        assert _sorted_rows(deduped.rows) == expected
        grouped = deduped.grouped.agg(F.sum("copies")).collect()[0][0]
        assert grouped == deduped.grouped_input_rows
        duplicates = sum(r["copies"] - 1 for r in deduped.rows.select("copies").collect())
        assert duplicates == rows.count() - len(expected) > 0
        if hashing == "xxhash64":  # the keys seen once passed without grouping
            keys = Counter(tuple(r)[:5] for r in rows.collect())
            repeated = sum(n for n in keys.values() if n > 1)
            assert deduped.grouped_input_rows == repeated < rows.count()
        if hashing == "all grouped":
            assert deduped.grouped_input_rows == rows.count()
    finally:
        deduped.release()
