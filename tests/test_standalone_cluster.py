"""Deep training on a real Spark standalone cluster's executors, in a shipped Python.

A master and two 1-core workers run on loopback, each worker with private disks (see
``spark_cluster``). The chain runs locally (the ``recpipe`` CLI in this process) up to the
export; then ``jobs/train.py`` is spark-submitted to the cluster (the driver on the shared
PostgreSQL metastore, the JDBC driver given to spark-submit, as a cluster's defaults would) and
trains BPR-MF on the executors (spark launcher, ``local_mode=false``, two barrier tasks) in the
Python of an environment archive built here with ``make dist``'s builder and shipped with
``spark.python_env``: the ranks report their interpreter from inside their barrier tasks, and
it must be the unpacked archive's in each worker's own folder, not this environment's.

Every stage of the chain submitted to such a cluster by a real Airflow scheduler, with row
counts compared to a local run, is ``tests_airflow/test_scheduler.py``.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import subprocess
import sys
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from postgres_server import JDBC_JAR, PostgresServer, running_postgres
from pyspark.sql import SparkSession
from spark_cluster import StandaloneCluster

from recpipe.cli import main as recpipe_main
from recpipe.executor_env import build as build_executor_env
from recpipe.train.checkpoint import load_model

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
DS = "2026-11-20"
pytestmark = pytest.mark.slow


def _events() -> list[dict[str, str]]:
    rng = random.Random(7)
    rows = []
    for user in range(30):
        for k in range(rng.randint(5, 12)):
            item = (user % 3) * 15 + rng.randrange(15)
            clock = f"{k:02d}:{rng.randrange(60):02d}:{user % 60:02d}"
            rows.append({"user_id": f"u{user}", "item_id": f"i{item}", "event_type": "view",
                         "ts": f"{DS}T{clock}Z"})  # fmt: skip
    rows.append({"user_id": "", "item_id": "i1", "event_type": "view", "ts": f"{DS}T01:00:00Z"})
    return rows


def _settings(root: Path, raw: Path) -> list[str]:
    overrides = [
        f"paths.root={root}", f"paths.raw_events={raw}", "split.protocols=[random_by_user]",
        "export.kinds=[pairwise]", "export.negatives=2", "spark.shuffle_partitions=4",
    ]  # fmt: skip
    return ["--ds", DS, *(arg for o in overrides for arg in ("--set", o))]


def _env(work: Path) -> dict[str, str]:
    return {
        **os.environ,
        "PYSPARK_PYTHON": sys.executable,  # executors run this environment's Python
        "SPARK_LOCAL_IP": "127.0.0.1",
        "TZ": "UTC",
    }


def cluster_submit(cluster: StandaloneCluster, postgres: PostgresServer) -> list[str]:
    """spark-submit to the cluster with the shared metastore, the JDBC driver on the driver's
    classpath (as a cluster's spark-defaults would have them)."""
    metastore = [a for k, v in postgres.metastore_settings().items()
                 for a in ("--conf", f"{k}={v}")]  # fmt: skip
    return [str(BIN / "spark-submit"), "--master", cluster.master_url,
            "--conf", "spark.executor.memory=768m", "--driver-class-path", str(JDBC_JAR),
            *metastore]  # fmt: skip


def _run(command: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        command, cwd=cwd, env=_env(cwd), capture_output=True, text=True, timeout=600, check=False
    )
    assert done.returncode == 0, f"{command[:3]} failed:\n{done.stderr[-4000:]}"
    assert "Traceback" not in done.stderr
    return done


def _manifest(root: Path, stage: str) -> dict:
    return json.loads((root / "manifests" / stage / f"ds={DS}.json").read_text())


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StandaloneCluster]:
    """Master + two 1-core workers; stopped by PID even when a test fails."""
    spark_cluster = StandaloneCluster(tmp_path_factory.mktemp("standalone"), workers=2)
    try:
        yield spark_cluster.start()
    finally:
        spark_cluster.stop()


@pytest.fixture(scope="module")
def postgres(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PostgresServer]:
    """The metastore database the cluster's drivers share (as a cluster's would be)."""
    yield from running_postgres(tmp_path_factory)


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory, spark: SparkSession) -> dict:
    """The chain up to the export, locally (the recpipe CLI on the test session's Spark)."""
    work = tmp_path_factory.mktemp("chain")
    raw = work / "landing" / "events.jsonl"
    raw.parent.mkdir()
    raw.write_text("".join(json.dumps(e) + "\n" for e in _events()))
    assert spark.sparkContext.master.startswith("local")
    for command in (["etl"], ["export"]):
        assert recpipe_main([*command, *_settings(work / "root", raw)]) == 0, command
    return {"work": work, "root": work / "root"}


@pytest.fixture(scope="module")
def executor_archive(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The executors' environment archive, built as ``make dist`` builds it (with torch)."""
    out = tmp_path_factory.mktemp("dist") / "recpipe-env.tar.gz"
    started = time.perf_counter()
    build_executor_env(out, source=REPO, extras=["train"],
                       constraints=REPO / "requirements" / "constraints.txt",
                       compress_level=1)  # fmt: skip
    print(f"\nexecutor archive: {out.stat().st_size / 2**20:.0f} MiB in "
          f"{time.perf_counter() - started:.0f}s")  # fmt: skip
    return out


def test_the_archive_holds_recpipe_and_torch_but_not_pyspark(executor_archive: Path) -> None:
    digest = hashlib.sha256(executor_archive.read_bytes()).hexdigest()
    sidecar = executor_archive.with_name(executor_archive.name + ".sha256").read_text()
    assert sidecar.split()[0] == digest
    with tarfile.open(executor_archive) as tar:
        tops = {re.sub(r"^\./", "", n).split("/")[3] for n in tar.getnames()
                if re.match(r"(\./)?lib/python3\.\d+/site-packages/[^/]+", n)}  # fmt: skip
    assert {"recpipe", "torch", "numpy", "pyarrow", "pandas"} <= tops
    assert "pyspark" not in tops and "py4j" not in tops


@pytest.fixture(scope="module")
def trained(
    cluster: StandaloneCluster, postgres: PostgresServer, runs: dict, executor_archive: Path
) -> dict:
    """bpr_mf trained on the executors (2 barrier tasks) from the chain's export."""
    work, root = runs["work"], runs["root"]
    overrides = ["train.models=[bpr_mf]", "train.launcher=spark", "train.spark_local_mode=false",
                 "train.processes=2", "train.max_epochs=1", "train.torch_threads=1",
                 f"spark.python_env={executor_archive}"]  # fmt: skip
    settings = _settings(root, work / "landing" / "events.jsonl")
    started = time.perf_counter()
    _run(
        [
            *cluster_submit(cluster, postgres),
            str(REPO / "jobs" / "train.py"),
            *settings,
            *(a for o in overrides for a in ("--set", o)),
            "--no-evaluate",
        ],
        work,
    )
    print(f"\ntraining on the executors: {time.perf_counter() - started:.0f}s")
    return _manifest(root, "train-bpr_mf")


def test_ranks_ran_on_both_workers_in_the_shipped_python(
    cluster: StandaloneCluster, trained: dict
) -> None:
    assert trained["status"] == "ok" and trained["spark_master"] == cluster.master_url
    result = trained["protocols"]["random_by_user"]
    assert result["world_size"] == 2 and result["collectives"] == "torch.distributed"
    pythons = [rank.split(" ", 1)[1] for rank in result["ranks"]]
    assert sys.executable not in pythons
    # <worker>/work/<app id>/<executor id>/environment/bin/python: unpacked by each worker.
    pattern = re.compile(
        rf"{re.escape(str(cluster.work))}/(worker\d)/work/app-[\w-]+/\d+/environment/bin/python"
    )
    workers = {match.group(1) for p in pythons if (match := pattern.fullmatch(p))}
    assert workers == {"worker0", "worker1"}, pythons
    assert len(set(result["replica_checksums"])) == 1  # DDP kept the replicas identical


def test_the_model_lands_under_the_root_and_the_driver_reads_it_back(
    runs: dict, trained: dict
) -> None:
    result = trained["protocols"]["random_by_user"]
    model_file = Path(result["path"])
    assert model_file.is_relative_to(runs["root"])
    expected = hashlib.sha256(model_file.read_bytes()).hexdigest()
    assert expected in json.dumps(result["sha256"])
    model = load_model(str(model_file))
    assert type(model).__name__.lower().startswith("bpr")
    # Nothing of the launch stayed on the driver's local folder after the commit.
    assert not list(runs["root"].glob("tmp/runs/*/*/*/spec.json"))
