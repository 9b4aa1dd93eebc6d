"""The chain submitted to a real Spark standalone cluster (a master and two workers on loopback).

Every stage is a real ``spark-submit --master spark://127.0.0.1:<port>`` of its ``jobs/``
script with the default config files, whose ``local.yaml`` asks for ``local[*]``: the launcher
must win. The same data then runs locally through the ``recpipe`` CLI and every stage's row
counts must agree. Evidence that the work ran on the cluster comes from outside recpipe: the
master's JSON status page (finished applications) and the workers' executor folders.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from spark_cluster import StandaloneCluster

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
DS = "2026-11-20"
JOBS = [
    ("clean", []), ("vocab", []), ("sessionize", []), ("split", []), ("train_baseline", []),
    ("export", []), ("evaluate", []), ("score", ["--model", "als"]), ("publish", []),
]  # fmt: skip
# Manifests the chain writes (evaluate and train-baseline write one per model).
MANIFESTS = [
    "clean", "vocab", "sessionize", "split", "train-popularity", "train-als", "export",
    "evaluate-popularity", "evaluate-als", "gate", "score-als", "publish",
]  # fmt: skip

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
        "baselines.models=[popularity,als]", "baselines.als.rank=8", "baselines.als.max_iter=5",
        "export.kinds=[pairwise]", "export.negatives=2", "score.k=5", "spark.shuffle_partitions=4",
        "gate.candidate=als", "gate.baseline=popularity", "gate.tolerance=1.0",
    ]  # fmt: skip
    return ["--ds", DS, *(arg for o in overrides for arg in ("--set", o))]


def _env(work: Path) -> dict[str, str]:
    return {
        **os.environ,
        "PYSPARK_PYTHON": sys.executable,  # executors run this environment's Python
        "SPARK_LOCAL_IP": "127.0.0.1",
        "TZ": "UTC",
    }


def _run(command: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        command, cwd=cwd, env=_env(cwd), capture_output=True, text=True, timeout=600, check=False
    )
    assert done.returncode == 0, f"{command[:3]} failed:\n{done.stderr[-4000:]}"
    assert "Traceback" not in done.stderr
    return done


def _manifest(root: Path, stage: str) -> dict:
    return json.loads((root / "manifests" / stage / f"ds={DS}.json").read_text())


def _counts(root: Path) -> dict[str, tuple[int, int]]:
    return {m: (_manifest(root, m)["rows_in"], _manifest(root, m)["rows_out"]) for m in MANIFESTS}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StandaloneCluster]:
    """Master + two 1-core workers; stopped by PID even when a test fails."""
    spark_cluster = StandaloneCluster(tmp_path_factory.mktemp("standalone"), workers=2)
    try:
        yield spark_cluster.start()
    finally:
        spark_cluster.stop()


@pytest.fixture(scope="module")
def runs(cluster: StandaloneCluster, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The chain on the cluster (9 spark-submits) and the same data locally (recpipe CLI)."""
    work = tmp_path_factory.mktemp("chain")
    raw = work / "landing" / "events.jsonl"
    raw.parent.mkdir()
    raw.write_text("".join(json.dumps(e) + "\n" for e in _events()))
    seconds = {}
    started = time.perf_counter()
    submit = [str(BIN / "spark-submit"), "--master", cluster.master_url,
              "--conf", "spark.executor.memory=768m"]  # fmt: skip
    for job, extra in JOBS:
        script = str(REPO / "jobs" / f"{job}.py")
        _run([*submit, script, *_settings(work / "cluster", raw), *extra], work)
    seconds["cluster"] = time.perf_counter() - started
    started = time.perf_counter()
    local = [str(BIN / "recpipe")]
    for command in (["etl"], ["train-baseline"], ["export"], ["evaluate"],
                    ["score", "--model", "als"], ["publish"]):  # fmt: skip
        _run([*local, *command, *_settings(work / "local", raw)], work)
    seconds["local"] = time.perf_counter() - started
    print(f"\nchain wall time: cluster {seconds['cluster']:.0f}s, local {seconds['local']:.0f}s")
    return {"work": work, "seconds": seconds}


def test_every_stage_ran_on_the_cluster_not_local(cluster: StandaloneCluster, runs: dict) -> None:
    root = runs["work"] / "cluster"
    manifests = {m: _manifest(root, m) for m in MANIFESTS}
    assert {m["status"] for m in manifests.values()} == {"ok"}
    assert {m["spark_master"] for m in manifests.values()} == {cluster.master_url}
    status = cluster.status()
    assert status is not None
    finished = {app["id"]: app for app in status["completedapps"]}
    submitted = {m["spark_app_id"] for m in manifests.values()}
    assert len(submitted) == len(JOBS)  # one application per spark-submit
    assert submitted <= set(finished), (submitted, sorted(finished))
    assert {finished[app]["state"] for app in submitted} == {"FINISHED"}
    # Executors really started on both workers, for every application.
    for n in range(cluster.workers):
        executors = (cluster.work / f"worker{n}" / "work").glob("app-*/*")
        executor_dirs = {path.parent.name for path in executors}
        assert submitted <= executor_dirs, (n, submitted - executor_dirs)
    assert not (runs["work"] / "derby.log").exists()  # the embedded metastore kept its log
    assert (root / "metastore" / "derby.log").exists()


def test_cluster_row_counts_equal_the_local_run(runs: dict) -> None:
    cluster_counts = _counts(runs["work"] / "cluster")
    local_counts = _counts(runs["work"] / "local")
    assert cluster_counts == local_counts
    clean = _manifest(runs["work"] / "cluster", "clean")
    assert (clean["rows_in"], clean["rows_quarantined"]) == (len(_events()), 1)
    published = _manifest(runs["work"] / "cluster", "publish")
    assert published["published_model"] == "als" and published["rows_out"] == 30 * 5
    local_manifest = _manifest(runs["work"] / "local", "clean")
    assert local_manifest["spark_master"].startswith("local")
