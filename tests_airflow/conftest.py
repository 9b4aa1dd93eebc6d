"""Airflow test set-up: a throwaway AIRFLOW_HOME (SQLite) and the repo's DAG folder.

Airflow reads its settings when first imported, so the environment is set here, before any
test module imports it. The DAG calls the main environment's spark-submit (.venv).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path

import pytest
from dag_outputs import events, land, run_conf

REPO = Path(__file__).resolve().parent.parent
WORK = Path(tempfile.mkdtemp(prefix="recpipe-airflow-tests-"))
# The Spark standalone cluster and PostgreSQL server helpers the main tests use (plain Python).
sys.path.append(str(REPO / "tests"))
from jvm_startup import submit_opts  # noqa: E402  (found through the line above)

os.environ.update(
    {
        "AIRFLOW_HOME": str(WORK / "airflow-home"),
        "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "airflow_dags"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__UNIT_TEST_MODE": "False",
        "AIRFLOW_CONN_SPARK_DEFAULT": json.dumps({"conn_type": "spark", "host": "local[2]"}),
        "RECPIPE_HOME": str(REPO),
        "RECPIPE_SPARK_SUBMIT": str(REPO / ".venv" / "bin" / "spark-submit"),
        "RECPIPE_RETRIES": "0",  # a failing stage fails the test at once
        "SPARK_LOCAL_IP": "127.0.0.1",
        # Each task is a short-lived spark-submit: its driver JVM starts from a shared class
        # archive, C1 only (tests/jvm_startup.py; about half the time of a cold JVM).
        "SPARK_SUBMIT_OPTS": submit_opts(),
    }
)


@pytest.fixture(scope="session")
def airflow_db() -> Path:
    """``airflow db migrate`` into the throwaway SQLite database."""
    airflow = Path(sys.executable).parent / "airflow"
    done = subprocess.run(
        [str(airflow), "db", "migrate"], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return Path(os.environ["AIRFLOW_HOME"])


@pytest.fixture(scope="session")
def work() -> Path:
    """Folder for the pipeline's data (landing files and paths.root)."""
    return WORK


DAG_ID = "recpipe_daily"
DS1 = "2026-11-20"  # the day every module's checks can build on


def run_with_dag_test(ds: str, conf: dict) -> None:
    """One DAG run through ``dag.test()`` (every task in this process, serially); fails the
    test unless the run and every task succeeded."""
    from airflow.dag_processing.dagbag import DagBag  # after the environment above is set

    dag = DagBag(dag_folder=str(REPO / "airflow_dags")).get_dag(DAG_ID)
    logical_date = datetime.fromisoformat(ds).replace(hour=2, tzinfo=UTC)
    run = dag.test(logical_date=logical_date, run_conf=conf)
    states = {ti.task_id: ti.state for ti in run.get_task_instances()}
    assert str(run.state) == "success" and set(map(str, states.values())) == {"success"}, states


@pytest.fixture(scope="session")
def first_day(airflow_db: Path, work: Path) -> dict:
    """Day one run locally (``local[2]``) with ``dag.test()``: the reference other runs of
    the same data are compared with."""
    rows = events(DS1, range(24))
    land(work / "landing", DS1, rows)
    run_with_dag_test(DS1, run_conf(work / "landing", work / "root", "airflow_tests"))
    return {"events": rows, "root": work / "root"}
