"""`recpipe tune`: an Optuna search scored on the valid split, with the test split deleted."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml
from helpers import (
    CONF_DIR,
    TRAIN_BASE,
    TRAIN_DS,
    build_config,
    partition_dir,
    run_chain,
    train_events,
    write_jsonl,
)
from pyspark.sql import SparkSession

from recpipe.cli import main
from recpipe.config import ConfigError, load_config
from recpipe.model_settings import BprMfConfig
from recpipe.stages.evaluate import evaluate_model
from recpipe.stages.export import run_export
from recpipe.stages.train import model_settings, run_train
from recpipe.stages.train_baseline import run_train_baseline
from recpipe.stages.tune import declared_space, run_tune

PROTOCOL = "random_by_user"
FAST = (
    *TRAIN_BASE,
    "train.processes=1",
    "train.launcher=local",
    "train.max_epochs=2",
    "tune.startup_trials=2",
)


@pytest.fixture(scope="module")
def root(spark: SparkSession, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Exported samples of the tiny data set, then every test split deleted: whatever tuning
    reads, it cannot be the test split."""
    folder = tmp_path_factory.mktemp("tune")
    raw = write_jsonl(folder / "raw" / "events.jsonl", train_events())
    config = build_config(folder, f"paths.raw_events={raw}", *TRAIN_BASE)
    run_chain(spark, config, TRAIN_DS)
    assert run_export(spark, config, TRAIN_DS)["status"] == "ok"
    for protocol in config.split.protocols:
        shutil.rmtree(partition_dir(folder, "test", TRAIN_DS, protocol))
    return folder


def test_tune_reads_valid_only_and_its_overlay_reproduces_the_best_trial(
    spark, root, capsys
) -> None:
    where = [arg for o in (*FAST, f"paths.root={root}") for arg in ("--set", o)]
    code = main(["tune", "--model", "bpr_mf", "--trials", "3", "--protocol", PROTOCOL,
                 "--ds", TRAIN_DS, *where])  # fmt: skip
    assert code == 0
    out = capsys.readouterr().out
    manifest = json.loads((root / "manifests" / "tune-bpr_mf" / f"ds={TRAIN_DS}.json").read_text())
    trials = manifest["trials"]
    assert [t["number"] for t in trials] == [0, 1, 2]
    assert all(t["state"] == "complete" and 0 <= t["value"] <= 1 for t in trials)
    space = BprMfConfig.search_space
    # Trial 0 is the settings in force: conf/models/bpr_mf.yaml's, read here directly.
    written = yaml.safe_load((CONF_DIR / "models" / "bpr_mf.yaml").read_text())["models"]["bpr_mf"]
    assert trials[0]["params"] == {name: written[name] for name in space}
    for trial in trials:
        assert trial["params"].keys() == space.keys()
        assert space["lr"].low <= trial["params"]["lr"] <= space["lr"].high
        assert trial["params"]["dim"] in space["dim"].choices
    assert len({json.dumps(t["params"], sort_keys=True) for t in trials}) == 3
    best = max(trials, key=lambda t: (t["value"], -t["number"]))
    assert manifest["best"]["number"] == best["number"] and "best: trial" in out
    assert f"tune bpr_mf (valid = ndcg@10 on {PROTOCOL}/valid" in out
    # The trials' weights were scratch: the overlay, the trial log and the page remain.
    folder = root / "tuning" / "bpr_mf" / TRAIN_DS / PROTOCOL
    assert sorted(p.name for p in folder.iterdir()) == ["best.yaml", "report.html", "trials.json"]
    assert not (root / "models" / "bpr_mf").exists()
    page = (folder / "report.html").read_text()
    assert all(f"{t['value']:.4f}" in page for t in trials) and "tuning history" in page
    overlay = yaml.safe_load((folder / "best.yaml").read_text())
    # The trials ran under train.max_epochs=2 (their schedules spanned 2 epochs): so does it.
    assert written["epochs"] > 2
    assert overlay == {"models": {"bpr_mf": {**best["params"], "epochs": 2}}}

    # Independent check: `train` with the overlay alone (no epoch cap), then the evaluation
    # library on the valid split, gives the best trial's number (same seed, same settings,
    # same samples, the same schedule).
    uncapped = [o for o in FAST if not o.startswith("train.max_epochs")]
    tuned = load_config(
        [CONF_DIR / "base.yaml", CONF_DIR / "local.yaml", folder / "best.yaml"],
        [*uncapped, f"paths.root={root}", "evaluation.split=valid"],
    )
    assert tuned.train.max_epochs is None
    assert tuned.models["bpr_mf"] == {**best["params"], "epochs": 2}
    run_train(spark, tuned, TRAIN_DS, ["bpr_mf"], evaluate=False)
    result = evaluate_model(spark, tuned, TRAIN_DS, PROTOCOL, "bpr_mf").result
    assert result.values[("ndcg", 10)] == pytest.approx(best["value"], abs=1e-6)
    # The deleted test split bites: evaluating on it fails.
    on_test = build_config(root, *FAST, "evaluation.split=test")
    with pytest.raises(FileNotFoundError, match="lake/test/"):
        evaluate_model(spark, on_test, TRAIN_DS, PROTOCOL, "bpr_mf")


@pytest.mark.parametrize("model", ["als", "ease"])
def test_tune_a_baseline_and_its_overlay_reproduces_the_best_trial(spark, root, model) -> None:
    """ALS (fitted in Spark, user factors collected from the fitted frame) and EASE (fitted
    in this process): trials write nothing; `train-baseline` with the overlay, evaluated on
    valid by the evaluation library, gives the best trial's NDCG@10 back."""
    config = build_config(root, *FAST)
    manifest = run_tune(config, TRAIN_DS, model, trials=3, protocol=PROTOCOL, spark=spark)
    trials = manifest["trials"]
    assert len(trials) == 3 and all(t["state"] == "complete" for t in trials)
    space = type(getattr(config.baselines, model)).search_space
    # Trial 0 is the settings in force: conf/base.yaml's, read here directly.
    written = yaml.safe_load((CONF_DIR / "base.yaml").read_text())["baselines"][model]
    assert trials[0]["params"] == {name: written[name] for name in space}
    assert all(t["params"].keys() == space.keys() for t in trials)
    assert not (root / "models" / model).exists()  # trials publish nothing
    assert manifest["split_read"] == ["train", "valid"]  # never test
    best = max(trials, key=lambda t: (t["value"], -t["number"]))
    overlay = Path(manifest["overlay"])
    assert yaml.safe_load(overlay.read_text()) == {"baselines": {model: best["params"]}}
    tuned = load_config(
        [CONF_DIR / "base.yaml", CONF_DIR / "local.yaml", overlay],
        [*FAST, f"paths.root={root}", "evaluation.split=valid"],
    )
    assert run_train_baseline(spark, tuned, TRAIN_DS, model)["status"] == "ok"
    result = evaluate_model(spark, tuned, TRAIN_DS, PROTOCOL, model).result
    assert result.values[("ndcg", 10)] == pytest.approx(best["value"], abs=1e-6)


def test_tune_refuses_a_protocol_that_was_not_split(root) -> None:
    config = build_config(root, *FAST)
    with pytest.raises(ConfigError, match=r"tune\.protocol: 'temporal'"):
        run_tune(config, TRAIN_DS, "bpr_mf", trials=1, protocol="temporal")
    with pytest.raises(ConfigError, match="baseline popularity declares no search space"):
        run_tune(config, TRAIN_DS, "popularity", trials=1, protocol=PROTOCOL)


def test_only_models_with_a_search_space_are_tunable() -> None:
    config = load_config(None, [])
    # Popularity has no settings to search; ALS and the deep models declare theirs.
    assert not declared_space(config, "popularity")
    assert declared_space(config, "als")
    assert declared_space(config, "stamp")
    assert declared_space(config, "cdae")


TUNED_DIR = CONF_DIR / "tuned"


@pytest.mark.parametrize(
    "overlay",
    sorted(TUNED_DIR.rglob("*.yaml")),
    ids=lambda path: str(path.relative_to(TUNED_DIR)),
)
def test_every_kept_tuned_overlay_sets_valid_settings_of_its_model(overlay: Path) -> None:
    """Overlays kept in conf/tuned still name today's keys within today's bounds, so a
    bench run that applies them cannot fail on a renamed or tightened setting."""
    written = yaml.safe_load(overlay.read_text())
    assert len(written) == 1, "one section per overlay"
    ((section, models),) = written.items()
    ((name, params),) = models.items()
    assert overlay.stem == name
    config = load_config([CONF_DIR / "base.yaml", overlay], [])
    if section == "models":
        settings = model_settings(config, name)
    else:
        assert section == "baselines"
        settings = getattr(config.baselines, name)
    assert {key: getattr(settings, key) for key in params} == params
