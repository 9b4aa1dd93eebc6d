"""Deep training end to end on tiny data: every registered model, resume, DDP, Spark launcher."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from helpers import TRAIN_BASE as BASE
from helpers import TRAIN_DS as DS
from helpers import TRAIN_N_ITEMS as N_ITEMS
from helpers import (
    build_config,
    read_manifest,
    read_rows,
    run_chain,
    train_at_location,
    train_events,
    write_jsonl,
)
from pyspark.sql import SparkSession

from recpipe import storage
from recpipe.config import ConfigError
from recpipe.errors import MissingInputError
from recpipe.models import registry
from recpipe.scoring.histories import UserHistories
from recpipe.stages.export import run_export
from recpipe.stages.train import build_spec, run_train
from recpipe.tables import load_split
from recpipe.train.checkpoint import LAST_FILE, load_model, load_state
from recpipe.train.launchers import launch
from recpipe.train.loop import StoppedEarly
from recpipe.train.memory import TrainerMemoryError
from recpipe.train.validation import Validator


@pytest.fixture(scope="module")
def root(spark: SparkSession, tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("train")
    raw = write_jsonl(folder / "raw" / "events.jsonl", train_events())
    # Split and export protocol all too: the every-model test trains each model's refit.
    config = build_config(folder, f"paths.raw_events={raw}", *BASE, "score.train_on=all")
    run_chain(spark, config, DS)
    assert run_export(spark, config, DS)["status"] == "ok"
    return folder


def config_for(root: Path, *overrides: str):
    return build_config(root, *BASE, *overrides)


@pytest.mark.parametrize("name", sorted(registry()))
def test_every_model_trains_one_epoch_and_is_evaluated(spark, root, name) -> None:
    config = config_for(root, "train.max_epochs=1", "train.launcher=local", "score.train_on=all")
    _, evaluations = run_train(spark, config, DS, [name])
    train_manifest = read_manifest(root, f"train-{name}", DS)
    assert train_manifest["status"] == "ok"
    # The served refit: every interaction, the epoch count validation chose, rebuilt alone.
    refit = train_manifest["protocols"]["all"]
    assert refit["refit"]["epochs"] == refit["epochs_run"] == 1
    assert load_model(Path(refit["path"])).name == name
    assert {e.result.protocol.split_protocol for e in evaluations} == {
        "leave_last_out", "random_by_user"
    }  # fmt: skip
    for protocol in ("leave_last_out", "random_by_user"):
        info = train_manifest["protocols"][protocol]
        assert info["epochs_run"] == 1
        assert np.isfinite(info["history"][0]["loss"])
        # Rebuilt from the checkpoint file alone, it scores every item.
        model = load_model(Path(info["path"]))
        assert model.name == name and model.n_items == N_ITEMS
        # The evaluation scored every test user of the protocol.
        test_users = {r["user_idx"] for r in read_rows(root, "test", DS, protocol)}
        [evaluation] = [e for e in evaluations if e.result.protocol.split_protocol == protocol]
        assert evaluation.result.n_users == len(test_users)
        assert 0.0 <= evaluation.result.values[("ndcg", 10)] <= 1.0
    assert read_manifest(root, f"evaluate-{name}", DS)["status"] == "ok"


def _spec(root: Path, name: str, *overrides: str, resume: bool = False):
    config = config_for(root, *overrides)
    return build_spec(config, DS, "leave_last_out", name, resume), config


def test_resume_gives_the_same_model_as_an_uninterrupted_run(root, tmp_path) -> None:
    settings = (
        "train.launcher=local",
        "train.max_epochs=3",
        "train.checkpoint_every=2",
        "train.checkpoint_max_overhead=null",  # every due checkpoint written, as said below
        "models.sasrec.batch_size=16",
        "train.shuffle_buffer=64",
    )
    spec, config = _spec(root, "sasrec", *settings)
    launch(spec, config.train)
    uninterrupted = load_state(spec.model_file)["state_dict"]
    steps = load_state(Path(spec.model_file))["training"]["steps"]
    assert steps >= 6

    spec, config = _spec(root, "sasrec", *settings)
    spec.stop_after_steps = steps // 2 + 1  # dies one step after a checkpoint at an even step
    with pytest.raises(StoppedEarly):
        launch(spec, config.train)
    spec, config = _spec(root, "sasrec", *settings, resume=True)
    result = launch(spec, config.train)
    resumed = load_state(spec.model_file)["state_dict"]
    assert result["steps"] == steps
    for key, value in uninterrupted.items():
        assert torch.equal(value, resumed[key]), key


def test_mid_epoch_checkpoints_are_skipped_past_their_share_of_time(root) -> None:
    """With a tiny share only the first due checkpoint of the run is written mid-epoch;
    every epoch still ends with one, and the run resumes from the last."""
    spec, config = _spec(
        root, "bpr_mf", "train.launcher=local", "train.max_epochs=2",
        "train.checkpoint_every=1", "train.checkpoint_max_overhead=1e-9",
        "models.bpr_mf.batch_size=16",
    )  # fmt: skip
    result = launch(spec, config.train)
    steps = result["steps"]
    assert steps >= 4
    assert result["checkpoints"]["written"] == 1 + 2
    assert result["checkpoints"]["skipped"] == steps - 1
    last = load_state(spec.checkpoint_dir / LAST_FILE)
    assert last["progress"]["step"] == steps and last["progress"]["epoch"] == 2


def test_two_process_gloo_run_keeps_replicas_identical_and_loss_falls(
    root, tmp_path, monkeypatch
) -> None:
    spec, config = _spec(
        root,
        "bpr_mf",
        "train.launcher=torchrun",
        "train.processes=2",
        "train.max_epochs=4",
        "models.bpr_mf.batch_size=32",
        "models.bpr_mf.lr=0.01",
    )
    system_temp = tmp_path / "system-temp"
    system_temp.mkdir()
    monkeypatch.setenv("TMPDIR", str(system_temp))
    result = launch(spec, config.train)
    # torchrun's own temp folders (torchelastic_*) stay in the launch's local folder
    assert list(system_temp.iterdir()) == []
    assert any(Path(spec.local_dir, "tmp").iterdir())
    assert result["world_size"] == 2
    checksums = result["replica_checksums"]
    assert len(checksums) == 2 and checksums[0] == checksums[1]
    losses = [epoch["loss"] for epoch in result["history"]]
    assert losses[-1] < losses[0]
    assert load_model(Path(spec.model_file)).name == "bpr_mf"


def test_torchrun_across_two_nodes_meets_at_the_configured_rendezvous(root) -> None:
    """Two torchrun agents, as on two machines: node 0 is recpipe's launcher, node 1 runs the
    command it logs, reading the spec from the run's state (not from node 0's local folder);
    they meet at a c10d rendezvous on a fixed host:port and train one 2-rank DDP job."""
    import subprocess
    import threading
    import time

    from spark_cluster import free_port

    from recpipe.train.launchers import torchrun_command

    endpoint = f"127.0.0.1:{free_port()}"
    spec, config = _spec(
        root, "bpr_mf", "train.launcher=torchrun", "train.processes=1", "train.nnodes=2",
        f"train.rdzv_endpoint={endpoint}", "train.max_epochs=1", "train.rdzv_id=two-nodes",
    )  # fmt: skip
    shared = Path(spec.run_dir) / "spec.json"
    shared.unlink(missing_ok=True)
    outcome: dict = {}
    node0 = threading.Thread(target=lambda: outcome.update(result=launch(spec, config.train)))
    node0.start()
    deadline = time.monotonic() + 120
    while not shared.exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert shared.exists(), "node 0 never published the spec for the other nodes"
    node1_settings = config.train.model_copy(update={"node_rank": 1})
    command = torchrun_command(str(shared), node1_settings)
    assert "--node-rank=1" in command and f"--rdzv-endpoint={endpoint}" in command
    node1 = subprocess.run(command, capture_output=True, text=True, timeout=600, check=False,
                           cwd=Path(spec.local_dir).parent)  # fmt: skip
    node0.join(timeout=600)
    assert node1.returncode == 0, node1.stderr[-3000:]
    result = outcome["result"]
    assert result["world_size"] == 2
    assert result["replica_checksums"][0] == result["replica_checksums"][1]
    assert load_model(Path(spec.model_file)).name == "bpr_mf"


def test_spark_launcher_trains_on_local_spark(spark, root, tmp_path, monkeypatch) -> None:
    spec, config = _spec(
        root, "two_tower", "train.launcher=spark", "train.processes=2", "train.max_epochs=1"
    )
    system_temp = tmp_path / "system-temp"
    system_temp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(system_temp))
    result = launch(spec, config.train)
    assert result["world_size"] == 2 and result["epochs_run"] == 1
    assert result["replica_checksums"][0] == result["replica_checksums"][1]
    assert load_model(Path(spec.model_file)).name == "two_tower"
    # The launch wrote nothing through the driver's tempfile and left its temp folder alone.
    assert list(system_temp.iterdir()) == []
    assert tempfile.tempdir == str(system_temp)


def test_validator_reads_the_splits_on_first_use_not_at_construction(root, tmp_path) -> None:
    missing = Validator(root=str(tmp_path / "no-root"), ds=DS, protocol="leave_last_out")
    with pytest.raises(MissingInputError, match="no train split"):
        _ = missing.usable
    validator = Validator(root=str(root), ds=DS, protocol="leave_last_out")
    assert "data" not in vars(validator)
    assert validator.usable and "data" in vars(validator)


def test_validation_ranks_a_seeded_sample_of_valid_users(root) -> None:
    from recpipe.evaluation import csr_from_pairs, ranking_metrics, top_k
    from recpipe.scoring.scorers import evaluation_scorer

    config = config_for(root, "train.max_epochs=1", "train.launcher=local",
                        "split.protocols=[leave_last_out]")  # fmt: skip
    manifests, _ = run_train(None, config, DS, ["bpr_mf"], evaluate=False)
    model = load_model(Path(manifests[0]["protocols"]["leave_last_out"]["path"]))
    train = load_split(root, DS, "leave_last_out", "train")
    valid = load_split(root, DS, "leave_last_out", "valid")
    valid_users = np.unique(valid.users)
    every = Validator(root=str(root), ds=DS, protocol="leave_last_out", max_users=None)
    np.testing.assert_array_equal(every.data.users, valid_users)
    half = len(valid_users) // 2
    sample = Validator(root=str(root), ds=DS, protocol="leave_last_out", max_users=half, seed=1)
    again = Validator(root=str(root), ds=DS, protocol="leave_last_out", max_users=half, seed=1)
    other = Validator(root=str(root), ds=DS, protocol="leave_last_out", max_users=half, seed=2)
    assert len(sample.data.users) == half and set(sample.data.users) < set(valid_users)
    np.testing.assert_array_equal(sample.data.users, again.data.users)
    assert set(sample.data.users) != set(other.data.users)
    assert f"seeded sample of {len(valid_users)} valid users, seed 1" in sample.describe()
    # Independent reference: whole splits read into memory, the evaluation library over the
    # same users.
    scorer = evaluation_scorer(model, train)
    seen = csr_from_pairs(train.users, train.items, train.n_users)
    truth = csr_from_pairs(valid.users, valid.items, train.n_users)
    for validator in (every, sample):
        users = validator.data.users
        items, _ = top_k(scorer.score, users, 10, train.n_items, seen)
        expected = ranking_metrics(items, truth, users, [10])[("ndcg", 10)]
        assert expected > 0 or validator is sample  # the full comparison is not vacuous
        assert validator.evaluate(model) == pytest.approx(expected, rel=1e-12, abs=1e-15)


def test_model_config_errors_name_the_key(root) -> None:
    with pytest.raises(ConfigError, match=r"models\.sasrec\.dimm"):
        run_train(None, config_for(root, "models.sasrec.dimm=3"), DS, ["sasrec"])
    with pytest.raises(ConfigError, match=r"models\.sasrec\.dim"):
        run_train(None, config_for(root, "models.sasrec.dim=many"), DS, ["sasrec"])
    with pytest.raises(ConfigError, match=r"train\.models"):
        run_train(None, config_for(root), DS, ["no_such_model"])


def _trained_files(root: Path, name: str) -> list[tuple[Path, int]]:
    folder = root / "models" / name
    found = [p for p in folder.rglob("*") if "checkpoints" in p.parts or p.name == "model.pt"]
    return sorted((p, p.stat().st_mtime_ns) for p in found if p.is_file())


def test_a_model_larger_than_its_memory_stops_before_training(root) -> None:
    before = _trained_files(root, "bpr_mf")
    config = config_for(root, "train.launcher=local", "train.memory_mib=100")
    with pytest.raises(TrainerMemoryError, match=r"train\.memory_mib=100\).*models\.bpr_mf\.dim"):
        run_train(None, config, DS, ["bpr_mf"], evaluate=False)
    assert _trained_files(root, "bpr_mf") == before  # no checkpoint, no model written


def test_a_run_records_its_memory_estimate_from_the_model_it_trains(root) -> None:
    config = config_for(root, "train.launcher=local", "train.max_epochs=1", "train.memory_mib=4000")
    [manifest], _ = run_train(None, config, DS, ["svdpp"], evaluate=False)
    info = manifest["protocols"]["leave_last_out"]
    model = load_model(Path(info["path"]))
    held = sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()])
    assert info["memory"]["weights_bytes"] == held
    assert info["memory"]["available_mib"] == 4000
    assert info["memory"]["needed_mib"] > held * 4 / 2**20


def test_evaluation_without_a_session_fails_before_training(root) -> None:
    config = config_for(root)
    runs = config.root.local_path() / "manifests" / "train-bpr_mf"
    before = sorted(runs.rglob("*")) if runs.exists() else []
    with pytest.raises(ValueError, match="needs a SparkSession"):
        run_train(None, config, DS, ["bpr_mf"])
    assert (sorted(runs.rglob("*")) if runs.exists() else []) == before  # nothing ran


def test_histories_match_each_users_latest_train_items(root) -> None:
    train = load_split(root, DS, "leave_last_out", "train")
    built = UserHistories.from_events(
        train.users, train.items, train.ts, distinct=False, n_users=train.n_users
    )
    histories = built.recent(8, np.ones(train.n_items + 1, dtype=bool))
    for user in np.unique(train.users):
        mask = train.users == user
        ordered = [i for _, i in sorted(zip(train.ts[mask], train.items[mask], strict=True))]
        expected = ordered[-8:]
        row = histories[user]
        assert list(row[8 - len(expected) :]) == expected
        assert not row[: 8 - len(expected)].any()


def test_report_shows_training_curves(spark, root) -> None:
    from recpipe.report.run_report import write_run_report

    config = config_for(root, "train.max_epochs=2", "train.launcher=local")
    manifests, evaluations = run_train(spark, config, DS, ["bpr_mf"])
    path = write_run_report(config, DS, manifests, evaluations, [], 10)
    page = storage.read_text(path)
    assert "Deep model training" in page and "training curves, leave_last_out" in page
    history = manifests[0]["protocols"]["leave_last_out"]["history"]
    assert [entry["epoch"] for entry in history] == [1, 2]
    assert all("metric" in entry for entry in history)  # validated every epoch


def train_with_pretraining(spark, root, model: str) -> tuple[dict[str, Any], Path]:
    """One epoch of pre-training and one of ``model`` on leave_last_out: the protocol's
    manifest entry and the model's folder (pre-training runs and ``init.pt`` inside)."""
    config = config_for(
        root, "train.launcher=local", f"models.{model}.pretrain_epochs=1",
        f"models.{model}.epochs=1", "split.protocols=[leave_last_out]",
    )  # fmt: skip
    manifests, _ = run_train(spark, config, DS, [model], evaluate=False)
    info = manifests[0]["protocols"]["leave_last_out"]
    return info, Path(info["path"]).parent


def test_neumf_pretraining_initialises_from_gmf_and_mlp(spark, root) -> None:
    info, folder = train_with_pretraining(spark, root, "neumf")
    assert set(info["pretraining"]) == {"gmf", "mlp"}
    gmf = load_model(folder / "pretrain-gmf" / "model.pt")
    mlp = load_model(folder / "pretrain-mlp" / "model.pt")
    assert (gmf.config.mode, mlp.config.mode) == ("gmf", "mlp")
    init = load_state(folder / "init.pt")["state_dict"]
    # The fused start copies each branch and mixes the output layers 0.5 / 0.5.
    assert torch.equal(init["gmf_user.weight"], gmf.state_dict()["gmf_user.weight"])
    assert torch.equal(init["mlp_item.weight"], mlp.state_dict()["mlp_item.weight"])
    expected_bias = 0.5 * gmf.state_dict()["out.bias"] + 0.5 * mlp.state_dict()["out.bias"]
    assert torch.allclose(init["out.bias"], expected_bias)
    # ...and training then moved away from it.
    final = load_state(info["path"])["state_dict"]
    assert not torch.equal(final["gmf_user.weight"], init["gmf_user.weight"])


def test_irgan_pretrains_as_mf_then_starts_both_players_from_it(spark, root) -> None:
    info, folder = train_with_pretraining(spark, root, "irgan")
    assert set(info["pretraining"]) == {"mf"}
    mf = load_model(folder / "pretrain-mf" / "model.pt")
    assert mf.config.mode == "mf" and mf.discriminator is None  # type: ignore[attr-defined]
    init = load_state(folder / "init.pt")["state_dict"]
    for name, value in mf.state_dict().items():  # generator.* only
        assert torch.equal(init[name], value)
        assert torch.equal(init[name.replace("generator.", "discriminator.")], value)
    final = load_state(info["path"])["state_dict"]
    assert not torch.equal(final["generator.item.weight"], init["generator.item.weight"])
    assert not torch.equal(final["discriminator.item.weight"], init["discriminator.item.weight"])


def test_spec_item_counts_are_the_train_interactions_per_item(root) -> None:
    spec, _ = _spec(root, "two_tower")
    counts = np.load(spec.item_counts_file)
    rows = read_rows(root, "train", DS, "leave_last_out")
    expected = np.zeros(N_ITEMS + 1, dtype=np.int64)
    for row in rows:
        expected[row["item_idx"]] += 1
    assert counts.tolist() == expected.tolist()


def test_ranks_keep_state_at_a_uri_and_launcher_files_local(tmp_path) -> None:
    """State at a viewfs location mounted onto a local folder: torchrun's ranks (fresh
    processes) read the shards and item counts and write checkpoints, the model and the result
    through recpipe.storage with the Hadoop settings the spec carries; the spec file, logs and
    temp folders stay in the launch's local folder."""
    from recpipe.storage import Location

    state, local = tmp_path / "state", tmp_path / "local"
    hadoop = {"fs.viewfs.mounttable.train-test.link./root": state.as_uri()}
    spec, result = train_at_location(Location("viewfs://train-test/root"), hadoop, local)
    assert result["world_size"] == 2 and result["epochs_run"] == 1
    written = state / "models" / "bpr_mf"
    assert {p.name for p in written.iterdir()} >= {"model.pt", "result.json", "checkpoints"}
    assert (written / "checkpoints" / "last.pt").is_file()
    assert load_model(spec.model_file).name == "bpr_mf"
    assert {p.name for p in local.iterdir()} == {"spec.json", "torchrun.log", "tmp"}
    assert (local / "spec.json").stat().st_mode & 0o077 == 0  # it carries the storage settings


def test_ranks_get_the_hadoop_settings_of_the_config_and_the_session(spark, tmp_path) -> None:
    import json

    from recpipe.stages.train import rank_storage_settings

    mount = {"spark.hadoop.fs.viewfs.mounttable.ranks.link./x": tmp_path.as_uri()}
    settings = rank_storage_settings(build_config(tmp_path, f"spark.conf={json.dumps(mount)}"))
    assert settings["fs.viewfs.mounttable.ranks.link./x"] == tmp_path.as_uri()
    session = {
        key.removeprefix("spark.hadoop."): value
        for key, value in spark.sparkContext.getConf().getAll()
        if key.startswith("spark.hadoop.")
    }
    assert session.items() <= settings.items()


def test_launch_errors_keep_the_workers_messages_above_torchrun_summary() -> None:
    from recpipe.train.launchers import failure_excerpt

    summary = [f"summary line {n}" for n in range(30)]
    log = "\n".join(
        ["step 1", "terminate called after throwing an instance of 'gloo::IoException'",
         "  what():  Connection closed by peer", "step 2", *summary]
    )  # fmt: skip
    excerpt = failure_excerpt(log, tail=15).splitlines()
    assert excerpt[:2] == [
        "terminate called after throwing an instance of 'gloo::IoException'",
        "  what():  Connection closed by peer",
    ]
    assert excerpt[-15:] == summary[-15:]
    assert "step 1" not in excerpt
    # horovodrun's rank-prefixed lines: the exception line of a non-builtin exception is kept.
    horovod_log = "\n".join(
        ["[0]<stdout>:model.pt: saved, epoch 1 loss: 0.5",
         "[1]<stderr>:recpipe.train.loop.StoppedEarly: stopped after 5 steps", *summary]
    )  # fmt: skip
    kept = failure_excerpt(horovod_log, tail=15).splitlines()
    assert kept[0] == "[1]<stderr>:recpipe.train.loop.StoppedEarly: stopped after 5 steps"
    assert kept[1] == "..."
