"""A Hive metastore several processes share: PostgreSQL behind ``javax.jdo.option.*``.

Embedded Derby (the laptop default) admits one JVM at a time; a scheduler running a DAG's
parallel branches needs a metastore database. Here a real PostgreSQL server (started and
stopped by PID) holds the metastore, configured as a cluster would: the ``javax.jdo.option``
settings under ``spark.conf`` and the Debian JDBC driver on the driver's classpath. Evidence
comes from outside recpipe: the metastore's own tables, read with ``psql``.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import write_jsonl
from postgres_server import JDBC_JAR, PostgresServer, postgres_query, running_postgres
from spark_cluster import free_port

pytestmark = pytest.mark.slow

DS1, DS2 = "2026-11-20", "2026-11-21"


@pytest.fixture(scope="module")
def postgres(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PostgresServer]:
    yield from running_postgres(tmp_path_factory)


def _events(ds: str, users: int) -> list[dict[str, str]]:
    return [{"user_id": f"u{u}", "item_id": f"i{(u * 7 + k) % 13}", "event_type": "view",
             "ts": f"{ds}T{k:02d}:{u % 60:02d}:00Z"}
            for u in range(users) for k in range(3)]  # fmt: skip


def _spark_conf(settings: dict[str, str]) -> str:
    return "spark.conf=" + json.dumps({**settings, "spark.driver.extraClassPath": str(JDBC_JAR)})


def _recpipe(
    work: Path, metastore: dict[str, str], *args: str, ds: str = DS1
) -> subprocess.Popen[str]:
    root = work / "root"
    settings = [
        f"paths.root={root}",
        f"paths.raw_events={work}/landing/{ds}.jsonl",
        "spark.master=local[1]",
        "spark.log_level=ERROR",
        _spark_conf(metastore),
    ]
    command = [sys.executable, "-m", "recpipe", *args,
               *(a for s in settings for a in ("--set", s))]  # fmt: skip
    return subprocess.Popen(command, cwd=work, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)  # fmt: skip


def _finish(process: subprocess.Popen[str], what: str) -> tuple[str, float]:
    out, err = process.communicate(timeout=600)
    assert process.returncode == 0, f"{what} failed:\n{err[-4000:]}"
    # Embedded Derby would have refused the second JVM (XSDB6) and left Hive retrying.
    assert "Failed initialising database" not in err and "XSDB6" not in err
    return out, time.monotonic()


@pytest.fixture(scope="module")
def concurrent(postgres: PostgresServer, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Day 1 through the lake stages, then day 2's clean and a query of day 1 at once."""
    work = tmp_path_factory.mktemp("shared-metastore")
    (work / "landing").mkdir()
    write_jsonl(work / "landing" / f"{DS1}.jsonl", _events(DS1, 20))
    write_jsonl(work / "landing" / f"{DS2}.jsonl", _events(DS2, 12))
    settings = postgres.metastore_settings()
    _finish(_recpipe(work, settings, "etl", "--ds", DS1), "etl")
    started = time.monotonic()
    writer = _recpipe(work, settings, "clean", "--ds", DS2, ds=DS2)
    reader = _recpipe(work, settings, "sql", "--format", "json",
                      f"SELECT count(*) AS n FROM recpipe.events WHERE ds = '{DS1}'")  # fmt: skip
    _, writer_done = _finish(writer, "clean")
    out, reader_done = _finish(reader, "sql")
    return {"work": work, "started": started, "writer_done": writer_done,
            "reader_done": reader_done, "query": out}  # fmt: skip


def test_two_processes_use_the_metastore_at_once(concurrent: dict) -> None:
    rows = json.loads(concurrent["query"])
    manifest = json.loads(
        (concurrent["work"] / "root" / "manifests" / "clean" / f"ds={DS1}.json").read_text()
    )
    assert rows == [{"n": manifest["rows_out"]}] and manifest["rows_out"] == 20 * 3
    # Both JVMs lived at the same time (each holds its metastore connection until it exits).
    assert min(concurrent["writer_done"], concurrent["reader_done"]) > concurrent["started"]
    assert not (concurrent["work"] / "root" / "metastore" / "metastore_db").exists()


def test_the_partitions_live_in_postgres(postgres: PostgresServer, concurrent: dict) -> None:
    tables = set(postgres_query(postgres, 'SELECT "TBL_NAME" FROM "TBLS"'))
    assert {"events", "quarantine", "vocab_users", "sessions", "train"} <= tables
    partitions = postgres_query(
        postgres,
        'SELECT p."PART_NAME" FROM "PARTITIONS" p JOIN "TBLS" t ON p."TBL_ID" = t."TBL_ID" '
        "WHERE t.\"TBL_NAME\" = 'events' ORDER BY 1",
    )
    assert partitions == [f"ds={DS1}", f"ds={DS2}"]


def test_an_unreachable_metastore_database_is_one_line_and_writes_nothing(
    postgres: PostgresServer, tmp_path: Path
) -> None:
    (tmp_path / "landing").mkdir()
    write_jsonl(tmp_path / "landing" / f"{DS1}.jsonl", _events(DS1, 3))
    nobody = f"jdbc:postgresql://127.0.0.1:{free_port()}/metastore"
    settings = {**postgres.metastore_settings(),
                "spark.hadoop.javax.jdo.option.ConnectionURL": nobody}  # fmt: skip
    process = _recpipe(tmp_path, settings, "clean", "--ds", DS1)
    _, err = process.communicate(timeout=600)
    assert process.returncode != 0
    last = err.strip().splitlines()[-1]
    assert last.startswith(
        "recpipe clean: the metastore (spark.sql.catalogImplementation=hive, "
        f"spark.hadoop.javax.jdo.option.ConnectionURL={nobody})"
    ), last
    assert "Traceback" not in err
    root = tmp_path / "root"
    assert not (root / "lake").exists() and not (root / "manifests" / "clean").exists()
