"""Serving refit (``score.train_on: all``): served lists come from models trained on every
interaction up to ``ds``; deep refits stop at the validated epoch; evaluation never sees it."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from helpers import build_config, read_manifest, read_rows, run_chain, write_jsonl
from pyspark.sql import SparkSession

from recpipe.errors import MissingInputError
from recpipe.query import format_recs, lookup_recs, metric_rows
from recpipe.stages.export import run_export
from recpipe.stages.publish import run_publish
from recpipe.stages.score import run_score
from recpipe.stages.train import build_spec, run_train
from recpipe.stages.train_baseline import run_train_baseline
from recpipe.train.checkpoint import load_model, load_state
from recpipe.train.launchers import launch
from recpipe.train.loop import lr_factor
from recpipe.warehouse import RECOMMENDATIONS, partition_location

DS = "2026-11-20"
N_USERS, N_ITEMS, K = 24, 30, 5
HOT = "hot"  # the last item of two users in three: under leave_last_out only ever in test
PROTOCOL = "leave_last_out"
BASE = (
    f"split.protocols=[{PROTOCOL}]",
    f"score.protocol={PROTOCOL}",
    "export.negatives=2",
    "export.max_len=6",
    "export.files_per_process=1",
    "train.processes=1",
    "train.launcher=local",
    "train.max_epochs=4",
    "train.torch_threads=1",
    "train.early_stopping.patience=1",
    f"score.k={K}",
    "gate.candidate=bpr_mf",
    "gate.baseline=als",
    "evaluation.bootstrap.resamples=0",
    "warehouse.database=refit_tests",
)


def events() -> list[dict]:
    """Two taste groups walking their half of the catalogue; most users end on ``HOT``."""
    rng = random.Random(11)
    rows = []
    for user in range(N_USERS):
        items = [
            f"i{(user % 2) * (N_ITEMS // 2) + (rng.randrange(N_ITEMS // 2) + k) % (N_ITEMS // 2)}"
            for k in range(rng.randint(6, 10))
        ]
        if user % 3:
            items.append(HOT)
        for k, item in enumerate(items):
            rows.append({"user_id": f"u{user}", "item_id": item, "event_type": "view",
                         "ts": f"{DS}T{k:02d}:00:{user:02d}Z"})  # fmt: skip
    return rows


def _config(root: Path, *overrides: str):
    return build_config(root, *BASE, *overrides)


@pytest.fixture(scope="module")
def root(spark: SparkSession, tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("refit")
    raw = write_jsonl(folder / "raw" / "events.jsonl", events())
    run_chain(spark, _config(folder, f"paths.raw_events={raw}"), DS)
    config = _config(folder)
    assert run_export(spark, config, DS)["status"] == "ok"
    run_train(spark, config, DS, ["bpr_mf"], evaluate=True)
    assert run_train_baseline(spark, config, DS, "als")["status"] == "ok"
    from recpipe.stages.evaluate import run_evaluate

    run_evaluate(spark, config, DS, ["als"])
    return folder


def _distinct_pairs() -> set[tuple[str, str]]:
    return {(row["user_id"], row["item_id"]) for row in events()}


def test_split_writes_every_interaction_as_protocol_all(root) -> None:
    pairs = _distinct_pairs()
    train = {(r["user_id"], r["item_id"]) for r in read_rows(root, "train", DS, "all")}
    assert train == pairs
    assert read_rows(root, "valid", DS, "all") == read_rows(root, "test", DS, "all") == []
    counts = read_manifest(root, "split", DS)["protocols"]["all"]
    assert (counts["train"]["rows"], counts["valid"]["rows"], counts["test"]["rows"]) == (
        len(pairs), 0, 0,
    )  # fmt: skip
    # The measured protocol still holds HOT back: only ever the last item, so only in test.
    held_out = {r["item_id"] for r in read_rows(root, "train", DS, PROTOCOL)}
    assert HOT not in held_out


def test_deep_refit_trains_for_the_epoch_validation_chose(root) -> None:
    record = read_manifest(root, "train-bpr_mf", DS)["protocols"]
    validated, refit = record[PROTOCOL], record["all"]
    assert validated["best_epoch"] >= 1
    assert refit["refit"]["epochs_from"] == PROTOCOL
    assert refit["refit"]["epochs"] == validated["best_epoch"] == refit["epochs_run"]
    assert "best_epoch" not in refit and not refit["early_stopped"]
    # The refit learned every interaction: its samples are the exported all-protocol rows.
    samples = read_manifest(root, "export", DS)["samples"]["all"]["pairwise"]["rows"]
    assert refit["rows"] == samples
    assert load_model(Path(refit["path"])).n_items == len({item for _, item in _distinct_pairs()})


def test_a_refit_keeps_the_validated_runs_learning_rate_schedule(root) -> None:
    config = _config(root, "train.max_epochs=5", "models.bpr_mf.warmup_steps=0")
    spec = build_spec(config, DS, "all", "bpr_mf")
    spec.validation = None
    spec.stop_after_epochs = 2
    result = launch(spec, config.train)
    assert result["epochs_run"] == 2
    steps_per_epoch = result["steps"] // 2
    settings = spec.model_config
    last = load_state(spec.checkpoint_dir / "last.pt")
    # LambdaLR's rate after n steps is lr * factor(n); a 2-epoch schedule would be at its floor.
    expected = settings["lr"] * lr_factor(result["steps"], 0, 5 * steps_per_epoch)
    assert last["scheduler"]["_last_lr"][0] == pytest.approx(expected, rel=1e-9)
    assert expected > settings["lr"] * 0.5 > settings["lr"] * lr_factor(2, 0, 2)


def _recommended(config, model: str) -> set[tuple[str, str]]:
    import pyarrow.dataset as pads

    location = partition_location(config, RECOMMENDATIONS, DS, model)
    table = pads.dataset(str(location), format="parquet").to_table()
    return {(row["user_id"], row["item_id"]) for row in table.to_pylist() if row["source"] == model}


def test_served_lists_come_from_the_refit_on_every_interaction(spark, root) -> None:
    protocol_config = _config(root, "score.train_on=protocol")
    measured = run_score(spark, protocol_config, DS, "als")
    assert measured["trained_on"]["protocol"] == PROTOCOL
    assert HOT not in {item for _, item in _recommended(protocol_config, "als")}

    config = _config(root)
    served = run_score(spark, config, DS, "als")
    assert served["trained_on"] == {
        "protocol": "all", "ds": DS, "rows": len(_distinct_pairs()),
        "rule": f"every interaction up to ds={DS}",
    }  # fmt: skip
    recommended = _recommended(config, "als")
    # HOT, the most popular item of the day, reaches the users who have not seen it...
    assert HOT in {item for _, item in recommended}
    # ...and never a user who has (seen items stay excluded).
    assert not recommended & _distinct_pairs()


def test_publish_and_recs_say_what_the_served_model_learned(spark, root) -> None:
    config = _config(root)
    published = run_publish(spark, config, DS)
    assert published["trained_on"]["protocol"] == "all"
    assert (
        read_manifest(root, f"score-{published['published_model']}", DS)["trained_on"]["protocol"]
        == "all"
    )
    rows = lookup_recs(config, "u0")
    assert rows and {row["trained_on"] for row in rows} == {f"every interaction up to ds={DS}"}
    assert f"trained on every interaction up to ds={DS}" in format_recs(rows, "table")
    # The gate measured the held-out protocol; nothing was ever evaluated on `all`.
    assert {row["protocol"] for row in metric_rows(config, DS, None)} == {PROTOCOL}


def test_scoring_a_model_without_its_refit_names_the_setting(spark, root) -> None:
    trained_without = _config(root, "score.train_on=protocol")
    assert run_train_baseline(spark, trained_without, DS, "itemknn")["status"] == "ok"
    assert set(read_manifest(root, "train-itemknn", DS)["protocols"]) == {PROTOCOL}
    with pytest.raises(MissingInputError, match=r"score\.train_on=all serves itemknn refit"):
        run_score(spark, _config(root), DS, "itemknn")
