"""The daily DAG under a real Airflow 3 scheduler on a Spark standalone cluster.

Airflow's api-server, scheduler and dag-processor run as separate processes (LocalExecutor: task
processes in parallel); one run is triggered for one ``ds`` with the ``spark_default``
connection pointing at a standalone master (two workers) and, as a cluster's
``spark-defaults.conf`` would, a Hive metastore in PostgreSQL with the JDBC driver on the
driver's classpath. Every task is a real spark-submit to that master. Airflow's own record of
the run (its metadata database) says what ran when; the outputs are read back with pyarrow,
json and psql.
"""

from __future__ import annotations

import json
import subprocess
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from airflow_services import AirflowServices, TaskRun
from conftest import DAG_ID, DS1, REPO
from dag_outputs import K, lake_counts, land, manifest, published, run_conf
from postgres_server import JDBC_JAR, PostgresServer, postgres_query, running_postgres
from spark_cluster import StandaloneCluster

DS = DS1  # the day the local dag.test() run processed too, on the same data
RUN_ID = f"scheduled_test__{DS}"
DATABASE = "airflow_cluster"
# Manifests the run writes (train-baseline and evaluate write one per model).
MANIFESTS = ["clean", "vocab", "sessionize", "split", "train-popularity", "train-als", "export",
             "train-bpr_mf", "evaluate-popularity", "evaluate-als", "evaluate-bpr_mf", "gate",
             "publish"]  # fmt: skip
STAGES = {"clean", "catalog", "vocab", "features", "sessionize", "split", "train_baselines",
          "export", "train",
          "evaluate", "score", "publish"}  # fmt: skip


def main_spark_home() -> Path:
    """Spark inside the main environment's pyspark (this environment's pyspark-client has no
    jars to start daemons with)."""
    done = subprocess.run(
        [str(REPO / ".venv" / "bin" / "python"), "-c",
         "import pathlib, pyspark; print(pathlib.Path(pyspark.__file__).parent)"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    return Path(done.stdout.strip())


def spark_defaults(folder: Path, postgres: PostgresServer) -> Path:
    """A SPARK_CONF_DIR whose spark-defaults.conf holds the shared metastore settings."""
    folder.mkdir(parents=True, exist_ok=True)
    settings = {
        **postgres.metastore_settings(),
        "spark.driver.extraClassPath": str(JDBC_JAR),
        "spark.executor.memory": "768m",
        # One core per application, so the DAG's parallel branches each get a worker.
        "spark.cores.max": "1",
    }
    lines = [f"{key} {value}\n" for key, value in settings.items()]
    (folder / "spark-defaults.conf").write_text("".join(lines))
    return folder


def timeline(tasks: dict[str, TaskRun]) -> str:
    """When each task started (seconds after the first) and how long it ran."""
    started = [t.start for t in tasks.values() if t.start]
    if not started:
        return "no task started"
    first = min(started)
    lines = ["task              start  seconds"]
    for task in sorted(tasks.values(), key=lambda t: (t.start or first, t.task_id)):
        if task.start and task.end:
            lines.append(f"{task.task_id:<16} {(task.start - first).total_seconds():6.0f} "
                         f"{(task.end - task.start).total_seconds():8.0f}")  # fmt: skip
    return "\n" + "\n".join(lines)


@pytest.fixture(scope="module")
def postgres(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PostgresServer]:
    """The metastore database the cluster's drivers share."""
    yield from running_postgres(tmp_path_factory)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StandaloneCluster]:
    """Master + two 1-core workers with private disks, stopped by PID."""
    spark_cluster = StandaloneCluster(
        tmp_path_factory.mktemp("standalone"), workers=2, spark_home=main_spark_home()
    )
    try:
        yield spark_cluster.start()
    finally:
        spark_cluster.stop()


@pytest.fixture(scope="module")
def scheduled(
    tmp_path_factory: pytest.TempPathFactory,
    cluster: StandaloneCluster,
    postgres: PostgresServer,
    first_day: dict,
) -> dict:
    """One triggered run of the DAG under the scheduler for the day ``first_day`` ran locally,
    on the same events; waited for (bounded), then the services stopped by PID."""
    work = tmp_path_factory.mktemp("scheduled")
    rows = first_day["events"]
    land(work / "landing", DS, rows)
    connection = {"conn_type": "spark", "host": "spark://127.0.0.1", "port": cluster.port}
    services = AirflowServices(
        work / "airflow-home",
        REPO / "airflow_dags",
        env={
            "AIRFLOW_CONN_SPARK_DEFAULT": json.dumps(connection),
            "SPARK_CONF_DIR": str(spark_defaults(work / "spark-conf", postgres)),
        },
    )
    # The local run's parameters, but training in barrier tasks on the executors.
    conf = run_conf(work / "landing", work / "root", DATABASE, "train.spark_local_mode=false")
    try:
        services.start()
        services.wait_for_dag(DAG_ID)
        services.trigger(DAG_ID, RUN_ID, f"{DS}T02:00:00+00:00", conf)
        state = services.wait_for_run(DAG_ID, RUN_ID, timeout=1500)
        tasks = services.task_runs(DAG_ID, RUN_ID)
        failed_logs = {
            task_id: services.task_log(DAG_ID, RUN_ID, task_id)
            for task_id, task in tasks.items() if task.state != "success"
        }  # fmt: skip
    finally:
        services.stop()
    print(timeline(tasks))
    return {"state": state, "tasks": tasks, "failed_logs": failed_logs, "root": work / "root",
            "events": rows}  # fmt: skip


@pytest.mark.timeout(1800)
def test_the_scheduler_ran_every_task_of_the_triggered_run(scheduled: dict) -> None:
    assert scheduled["state"] == "success", scheduled["failed_logs"]
    tasks = scheduled["tasks"]
    assert set(tasks) == STAGES
    assert {task.state for task in tasks.values()} == {"success"}, scheduled["failed_logs"]


def test_the_parallel_branches_ran_at_the_same_time(scheduled: dict) -> None:
    """train_baselines and export both follow split; the LocalExecutor runs them at once."""
    baselines, export = scheduled["tasks"]["train_baselines"], scheduled["tasks"]["export"]
    assert None not in (baselines.start, baselines.end, export.start, export.end)
    overlap = min(baselines.end, export.end) - max(baselines.start, export.start)
    assert overlap.total_seconds() > 0, (baselines, export)
    # ... and the chain's order held: nothing started before what it depends on had ended.
    tasks = scheduled["tasks"]
    for before, after in (("split", "export"), ("split", "train_baselines"), ("export", "train"),
                          ("train", "evaluate"), ("train_baselines", "evaluate"),
                          ("score", "publish")):  # fmt: skip
        assert tasks[before].end <= tasks[after].start, (before, after)


def test_every_stage_ran_on_the_standalone_master(
    scheduled: dict, cluster: StandaloneCluster
) -> None:
    """The DAG passes conf/local.yaml (local[*]) too: the connection's master must win."""
    manifests = {stage: manifest(scheduled["root"], stage, DS) for stage in MANIFESTS}
    assert {m["status"] for m in manifests.values()} == {"ok"}
    assert {m["spark_master"] for m in manifests.values()} == {cluster.master_url}
    status = cluster.status()
    assert status is not None
    finished = {app["id"]: app for app in status["completedapps"]}
    assert {f"recpipe-{task}-{DS}" for task in STAGES} <= {a["name"] for a in finished.values()}
    submitted = {m["spark_app_id"] for m in manifests.values()}
    assert submitted <= set(finished) and {finished[a]["state"] for a in submitted} == {"FINISHED"}
    # Executors of every application started on the workers (one core each: either worker).
    executor_dirs = {
        n: {path.parent.name for path in (cluster.work / f"worker{n}" / "work").glob("app-*/*")}
        for n in range(cluster.workers)
    }
    assert submitted <= set().union(*executor_dirs.values())
    assert all(executor_dirs.values()), executor_dirs  # both workers took work


def test_the_cluster_run_has_the_local_runs_row_counts(scheduled: dict, first_day: dict) -> None:
    assert lake_counts(scheduled["root"], DS) == lake_counts(first_day["root"], DS)

    def rows(root: Path, stage: str) -> tuple[int, int]:
        record = manifest(root, stage, DS)
        return record["rows_in"], record["rows_out"]

    for stage in MANIFESTS:
        assert rows(scheduled["root"], stage) == rows(first_day["root"], stage), stage
    assert manifest(first_day["root"], "clean", DS)["spark_master"].startswith("local")


def test_the_published_partition_is_complete_and_in_the_postgres_metastore(
    scheduled: dict, postgres: PostgresServer
) -> None:
    pointer, rows = published(scheduled["root"], DATABASE, DS)
    assert pointer["rows"] == len(rows)
    per_user = Counter(row["user_id"] for row in rows)
    assert set(per_user) == {e["user_id"] for e in scheduled["events"]}
    assert set(per_user.values()) == {K}
    seen = {(e["user_id"], e["item_id"]) for e in scheduled["events"]}
    assert not any((row["user_id"], row["item_id"]) in seen for row in rows)
    partitions = postgres_query(
        postgres,
        'SELECT d."NAME", t."TBL_NAME", p."PART_NAME" FROM "PARTITIONS" p '
        'JOIN "TBLS" t ON p."TBL_ID" = t."TBL_ID" JOIN "DBS" d ON t."DB_ID" = d."DB_ID"',
    )
    assert f"{DATABASE}|recommendations|ds={DS}/model=published" in partitions
    assert f"{DATABASE}|events|ds={DS}" in partitions
