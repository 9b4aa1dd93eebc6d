"""MLflow tracking against a real local MLflow store (SQLite backend, local artifacts): what
train, tune, evaluate and publish log equals their manifests and the warehouse rows."""

from __future__ import annotations

import json
import logging
import random
import sys
from pathlib import Path

import pytest
import yaml
from helpers import build_config, read_manifest, run_chain, write_jsonl
from pyspark.sql import SparkSession

from recpipe.config import ConfigError
from recpipe.query import metric_rows
from recpipe.stages.evaluate import run_evaluate
from recpipe.stages.export import run_export
from recpipe.stages.publish import run_publish
from recpipe.stages.train import run_train
from recpipe.stages.train_baseline import run_train_baseline
from recpipe.stages.tune import run_tune

mlflow = pytest.importorskip("mlflow", reason="MLflow (the tracking extra) is not installed")
from mlflow.tracking import MlflowClient  # noqa: E402

DS = "2026-11-20"
PROTOCOL = "random_by_user"
EXPERIMENT = "recpipe-tests"
BASE = (
    f"split.protocols=[{PROTOCOL}]",
    f"score.protocol={PROTOCOL}",
    "split.random_by_user.train=0.7",
    "split.random_by_user.valid=0.1",
    "split.random_by_user.test=0.2",
    "export.negatives=2",
    "export.max_len=6",
    "export.files_per_process=1",
    "train.launcher=local",
    "train.max_epochs=3",
    "train.torch_threads=1",
    "gate.candidate=bpr_mf",
    "gate.baseline=als",
    "evaluation.bootstrap.resamples=200",
    "warehouse.database=tracking_tests",
    f"tracking.experiment={EXPERIMENT}",
)


def events() -> list[dict]:
    rng = random.Random(4)
    rows = []
    for user in range(30):
        start = rng.randrange(20)
        for k in range(rng.randint(8, 14)):
            item = (user % 2) * 20 + (start + k) % 20
            rows.append({"user_id": f"u{user}", "item_id": f"i{item}", "event_type": "view",
                         "ts": f"{DS}T{k:02d}:00:{user:02d}Z"})  # fmt: skip
    return rows


def _config(root: Path, *overrides: str):
    store = root / "mlflow"
    return build_config(
        root, *BASE, f"tracking.mlflow_uri=sqlite:///{store}/mlflow.db",
        f"tracking.artifact_location={store}/artifacts", *overrides,
    )  # fmt: skip


@pytest.fixture(scope="module")
def root(spark: SparkSession, tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("tracking")
    (folder / "mlflow").mkdir()
    raw = write_jsonl(folder / "raw" / "events.jsonl", events())
    run_chain(spark, _config(folder, f"paths.raw_events={raw}"), DS)
    config = _config(folder)
    assert run_export(spark, config, DS)["status"] == "ok"
    assert run_train_baseline(spark, config, DS, "als")["status"] == "ok"
    run_evaluate(spark, config, DS, ["als"])
    run_train(spark, config, DS, ["bpr_mf"], evaluate=True)
    run_publish(spark, config, DS)
    run_tune(config, DS, "ease", trials=3, spark=spark)
    return folder


def _runs(root: Path, stage: str) -> dict[str, object]:
    """The stage's MLflow runs by protocol tag (read with MLflow's own client)."""
    client = MlflowClient(tracking_uri=f"sqlite:///{root}/mlflow/mlflow.db")
    experiment = client.get_experiment_by_name(EXPERIMENT)
    assert experiment is not None
    found = client.search_runs(
        [experiment.experiment_id], filter_string=f"tags.`recpipe.stage` = '{stage}'"
    )
    return {run.data.tags.get("recpipe.protocol", ""): run for run in found}


def _artifact(run, name: str) -> str:
    return mlflow.artifacts.load_text(f"{run.info.artifact_uri}/{name}")


def test_evaluation_metrics_and_intervals_equal_the_warehouse_rows(root) -> None:
    [run] = _runs(root, "evaluate-als").values()
    assert run.data.tags["recpipe.ds"] == DS and run.data.tags["recpipe.model"] == "als"
    rows = [r for r in metric_rows(_config(root), DS, "als") if r["k"] == 10]
    assert {r["metric"] for r in rows} >= {"ndcg", "recall", "coverage"}
    for row in rows:
        key = f"{row['metric']}_at_10"
        assert run.data.metrics[key] == pytest.approx(row["value"], rel=1e-12), key
        if row["ci_low"] is not None:
            assert run.data.metrics[f"{key}_ci_low"] == pytest.approx(row["ci_low"], rel=1e-12)
            assert run.data.metrics[f"{key}_ci_high"] == pytest.approx(row["ci_high"], rel=1e-12)
    assert "ndcg_at_10_ci_low" in run.data.metrics
    manifest = read_manifest(root, "evaluate-als", DS)
    assert json.loads(_artifact(run, "manifest.json"))["run_id"] == manifest["run_id"]
    assert run.data.tags["recpipe.run_id"] == manifest["run_id"]


def test_training_logs_settings_and_per_epoch_curves(root) -> None:
    runs = _runs(root, "train-bpr_mf")
    assert set(runs) == {PROTOCOL, "all"}  # the measured run and the serving refit
    manifest = read_manifest(root, "train-bpr_mf", DS)
    client = MlflowClient(tracking_uri=f"sqlite:///{root}/mlflow/mlflow.db")
    for protocol, run in runs.items():
        info = manifest["protocols"][protocol]
        assert run.data.params["dim"] == str(info["model_config"]["dim"])
        history = client.get_metric_history(run.info.run_id, "train_loss")
        assert [(m.step, m.value) for m in sorted(history, key=lambda m: m.step)] == [
            (entry["epoch"], pytest.approx(entry["loss"])) for entry in info["history"]
        ]
    assert runs["all"].data.params["refit.epochs"] == str(
        manifest["protocols"]["all"]["epochs_run"]
    )
    assert "best_valid_metric" in runs[PROTOCOL].data.metrics


def test_publish_logs_the_gate_decision(root) -> None:
    [run] = _runs(root, "publish").values()
    manifest = read_manifest(root, "publish", DS)
    assert run.data.params["published_model"] == manifest["published_model"]
    gate = manifest["gate"]
    assert run.data.metrics["gate_passed"] == float(gate["passed"])
    assert run.data.metrics["gate_candidate_value"] == pytest.approx(gate["candidate_value"])
    assert run.data.params["trained_on"] == f"every interaction up to ds={DS}"


def test_tuning_logs_every_trial_and_the_overlay(root) -> None:
    [run] = _runs(root, "tune-ease").values()
    manifest = read_manifest(root, "tune-ease", DS)
    client = MlflowClient(tracking_uri=f"sqlite:///{root}/mlflow/mlflow.db")
    history = client.get_metric_history(run.info.run_id, "trial_valid_metric")
    assert sorted((m.step, m.value) for m in history) == [
        (t["number"], pytest.approx(t["value"])) for t in manifest["trials"]
    ]
    assert run.data.metrics["best_valid_metric"] == pytest.approx(manifest["best"]["value"])
    overlay = yaml.safe_load(_artifact(run, "best.yaml"))
    assert overlay["baselines"]["ease"] == manifest["best"]["params"]


def test_an_unreachable_tracking_server_leaves_the_stage_committed(
    spark, root, monkeypatch, caplog
) -> None:
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "3")
    config = _config(root, "tracking.mlflow_uri=http://127.0.0.1:9")
    with caplog.at_level(logging.WARNING, logger="recpipe.tracking"):
        [manifest], _ = run_evaluate(spark, config, DS, ["als"])
    assert manifest["status"] == "ok"
    assert "not tracked in MLflow at http://127.0.0.1:9" in caplog.text


def test_tracking_without_mlflow_installed_is_a_config_error(spark, root, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "mlflow", None)  # as if the extra were not installed
    with pytest.raises(ConfigError, match=r"'tracking\.mlflow_uri' is set but MLflow"):
        run_evaluate(spark, _config(root), DS, ["als"])
