"""Horovod + Petastorm against torchrun + Arrow: same model, same checkpoints, same results.

The Horovod ranks run in the Horovod environment (``make legacy-venv``, found through
RECPIPE_LEGACY_ENV or ``.venv-legacy``); this suite drives them from the main environment the
way ``recpipe train`` does.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import TRAIN_BASE as BASE
from helpers import TRAIN_DS as DS
from helpers import build_config, in_ci, run_chain, train_events, write_jsonl
from pyspark.sql import SparkSession

from recpipe.config import ConfigError
from recpipe.data.batch import Batch
from recpipe.stages.export import run_export
from recpipe.stages.train import build_spec, run_train
from recpipe.train.checkpoint import load_model, load_state
from recpipe.train.launchers import LaunchError, launch

REPO = Path(__file__).resolve().parent.parent


def _legacy_env() -> Path | None:
    folder = Path(os.environ.get("RECPIPE_LEGACY_ENV", REPO / ".venv-legacy"))
    return folder if (folder / "bin" / "horovodrun").is_file() else None


LEGACY = _legacy_env()
if LEGACY is None and in_ci():
    # make test builds the environment first; in CI its absence is a failure, not a skip.
    raise RuntimeError("CI: the Horovod environment is missing (make legacy-venv)")
needs_legacy = pytest.mark.skipif(
    LEGACY is None, reason="needs the Horovod environment .venv-legacy (make legacy-venv)"
)
# Same data order in both paths: no shuffle (files in manifest order, rows in file order).
FIXED = ("train.processes=2", "train.shuffle_buffer=0", "train.max_epochs=4",
         "models.bpr_mf.batch_size=32", "models.bpr_mf.lr=0.01")  # fmt: skip


@pytest.fixture(scope="module")
def root(spark: SparkSession, tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("horovod")
    raw = write_jsonl(folder / "raw" / "events.jsonl", train_events())
    config = build_config(folder, f"paths.raw_events={raw}", *BASE, "warehouse.database=hvd")
    run_chain(spark, config, DS)
    assert run_export(spark, config, DS)["status"] == "ok"
    return folder


def _horovod(*overrides: str) -> tuple[str, ...]:
    return ("train.launcher=horovod", f"train.horovod_env={LEGACY}", *overrides)


def _train(root: Path, run: str, *overrides: str, resume: bool = False, stop: int | None = None):
    config = build_config(root, *BASE, "warehouse.database=hvd", *overrides)
    spec = build_spec(config, DS, "leave_last_out", "bpr_mf", resume)
    # Each run in its own folder, so the two paths' checkpoints sit side by side.
    spec.run_dir = str(root / "runs" / run)
    spec.model_file = str(root / "runs" / run / "model.pt")
    spec.stop_after_steps = stop
    return launch(spec, config.train), Path(spec.model_file)


def _scores(model_file: Path, python: str) -> np.ndarray:
    """Every item's score for users 1..5, computed by ``python`` from the checkpoint alone."""
    code = (
        "import sys, json, torch\n"
        "from recpipe.data.batch import Batch\n"
        "from recpipe.train.checkpoint import load_model\n"
        "m = load_model(sys.argv[1])\n"
        "with torch.no_grad():\n"
        "    print(json.dumps(m.score_all(Batch(users=torch.arange(1, 6))).tolist()))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    out = subprocess.run([python, "-c", code, str(model_file)], capture_output=True, text=True,
                         env=env, check=True, cwd=REPO)  # fmt: skip
    return np.array(json.loads(out.stdout.strip().splitlines()[-1]))


@needs_legacy
def test_horovod_petastorm_matches_torchrun_arrow_and_checkpoints_cross_load(root) -> None:
    reference, reference_file = _train(root, "torchrun", "train.launcher=torchrun", *FIXED)
    legacy, legacy_file = _train(root, "horovod", *_horovod("train.loader=petastorm", *FIXED))

    assert legacy["collectives"] == "horovod" and legacy["loader"] == "petastorm"
    assert reference["collectives"] == "torch.distributed" and reference["loader"] == "arrow"
    assert legacy["world_size"] == reference["world_size"] == 2
    assert legacy["steps"] == reference["steps"] > 0
    checksums = legacy["replica_checksums"]
    assert len(checksums) == 2 and checksums[0] == checksums[1]
    # Same batches in the same order, gradients averaged by Horovod instead of DDP: the runs
    # differ only by floating-point rounding in the allreduce.
    for ours, theirs in zip(legacy["history"], reference["history"], strict=True):
        assert ours["loss"] == pytest.approx(theirs["loss"], rel=1e-3)
        assert ours["metric"] == pytest.approx(theirs["metric"], abs=0.01)
    assert legacy["best_valid_metric"] == pytest.approx(reference["best_valid_metric"], abs=0.01)
    a, b = load_state(legacy_file)["state_dict"], load_state(reference_file)["state_dict"]
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-3, atol=1e-4)

    # Each environment loads the other's checkpoint and scores exactly as this one does.
    main_python = str(REPO / ".venv" / "bin" / "python")
    legacy_python = str(LEGACY / "bin" / "python")
    users = Batch(users=torch.arange(1, 6))
    for model_file in (legacy_file, reference_file):
        with torch.no_grad():
            here = load_model(model_file).score_all(users).numpy()
        np.testing.assert_allclose(_scores(model_file, legacy_python), here, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(_scores(model_file, main_python), here, rtol=1e-5, atol=1e-6)


@needs_legacy
@pytest.mark.parametrize("loader", ["petastorm", "arrow"])
def test_horovod_resume_equals_an_uninterrupted_run(root, loader) -> None:
    settings = _horovod(f"train.loader={loader}", "train.processes=2", "train.max_epochs=3",
                        "train.checkpoint_every=3", "models.bpr_mf.batch_size=32")  # fmt: skip
    whole, whole_file = _train(root, f"hvd-whole-{loader}", *settings)
    steps = whole["steps"]
    assert whole["loader"] == loader
    with pytest.raises(LaunchError, match="StoppedEarly"):
        _train(root, f"hvd-resumed-{loader}", *settings, stop=steps // 2 + 1)
    resumed, resumed_file = _train(root, f"hvd-resumed-{loader}", *settings, resume=True)
    assert resumed["steps"] == steps
    a, b = load_state(whole_file)["state_dict"], load_state(resumed_file)["state_dict"]
    for key in a:
        assert torch.equal(a[key], b[key]), key


@needs_legacy
def test_recpipe_train_runs_horovod_with_petastorm_shuffling(spark, root) -> None:
    settings = _horovod("train.loader=petastorm", "train.processes=2", "train.max_epochs=4",
                        "models.bpr_mf.batch_size=32", "models.bpr_mf.lr=0.01")  # fmt: skip
    config = build_config(root, *BASE, "warehouse.database=hvd", *settings)
    manifests, evaluations = run_train(spark, config, DS, ["bpr_mf"])
    train = manifests[0]
    assert train["status"] == "ok" and train["launcher"] == "horovod"
    assert train["loader"] == "petastorm"
    for protocol, result in train["protocols"].items():
        assert result["collectives"] == "horovod", protocol
        assert result["replica_checksums"][0] == result["replica_checksums"][1]
        losses = [epoch["loss"] for epoch in result["history"]]
        assert losses[-1] < losses[0], protocol
        assert load_model(Path(result["path"])).name == "bpr_mf"
    assert {e.result.protocol.split_protocol for e in evaluations} == set(train["protocols"])


@needs_legacy
def test_a_short_petastorm_epoch_stops_horovod_training_with_the_counts(root) -> None:
    config = build_config(root, *BASE, "warehouse.database=hvd", "train.max_epochs=1",
                          *_horovod("train.loader=petastorm", "train.processes=2"))  # fmt: skip
    spec = build_spec(config, DS, "leave_last_out", "bpr_mf", False)
    spec.run_dir = str(root / "runs" / "short")
    spec.model_file = str(root / "runs" / "short" / "model.pt")
    (path, rows), other = spec.shards
    spec.shards = [(path, rows + 5), other]  # the manifest promises rows the file lacks
    with pytest.raises(LaunchError) as failure:
        launch(spec, config.train)
    message = str(failure.value)
    assert "ShortReadError: rank 0" in message
    assert f"returned {rows} rows this epoch, the manifest has {rows + 5}" in message
    assert not Path(spec.model_file).exists()


def test_petastorm_outside_the_horovod_environment_is_a_clear_error(root) -> None:
    config = build_config(root, *BASE, "train.launcher=local", "train.loader=petastorm")
    spec = build_spec(config, DS, "leave_last_out", "bpr_mf", False)
    with pytest.raises(LaunchError, match=r"train\.horovod_env"):
        launch(spec, config.train)


def test_horovod_launcher_names_a_bad_environment(root, tmp_path) -> None:
    config = build_config(root, *BASE, "train.launcher=horovod",
                          f"train.horovod_env={tmp_path / 'nothing'}")  # fmt: skip
    spec = build_spec(config, DS, "leave_last_out", "bpr_mf", False)
    with pytest.raises(LaunchError, match=r"train\.horovod_env"):
        launch(spec, config.train)


def test_unknown_loader_names_the_key(root) -> None:
    with pytest.raises(ConfigError, match=r"train\.loader"):
        build_config(root, "train.loader=tfrecord")
