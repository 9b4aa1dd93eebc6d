"""The ``train`` stage: deep models trained on the export stage's samples, then evaluated.

For each model in ``train.models`` and each protocol in ``split.protocols`` (then ``all``, the
served refit, when ``score.train_on: all``: see recpipe.serving) it launches the training run
(``train.launcher``), writes ``<root>/models/<name>/<ds>/<protocol>/model.pt``, records
manifest ``train-<name>``, then evaluates the model with the evaluation library exactly as the
baselines are evaluated (manifest ``evaluate-<name>`` and ``recpipe.model_metrics``).

The model folder (checkpoints, ``result.json``, the model) may be at any location under
``paths.root``; the launchers' own files (spec, logs, child temp) go to
``<paths.local>/tmp/runs/<model>-<ds>-<run id>/<protocol>/`` on this machine.
"""

from __future__ import annotations

import dataclasses
import logging
import time
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from pydantic import ValidationError
from pyspark.sql import SparkSession

from recpipe import storage
from recpipe.artifacts import SHA256, file_digests, model_dir
from recpipe.baselines import baseline_class
from recpipe.config import Config, ConfigError, config_error
from recpipe.errors import MissingInputError
from recpipe.evaluation.metrics import Evaluation
from recpipe.feature_specs import CONTEXT
from recpipe.features_data import context_tables, feature_tables, save_tables
from recpipe.knowledge import KG, knowledge_tables
from recpipe.lake import Lake
from recpipe.layout import launcher_run_dir, user_rows_table
from recpipe.manifest import ExportManifest, StageRun, read_manifest
from recpipe.model_store import read_model_files
from recpipe.models import model_class, registry
from recpipe.models.base import ModelConfig, RecModel
from recpipe.models.user_rows import ITEM_SIDE_FILE
from recpipe.reconcile import ReconciliationError
from recpipe.schema import DS
from recpipe.serving import ALL, refit_epochs, written_protocols
from recpipe.stages.evaluate import run_evaluate
from recpipe.stages.export import STAGE as EXPORT_STAGE
from recpipe.stages.export import export_shards
from recpipe.stages.split import PROTOCOL
from recpipe.storage import Location, as_location, hadoop_settings
from recpipe.tables import split_item_counts, split_user_mask
from recpipe.train.checkpoint import MODEL_FILE, load_model, model_state, save_atomic
from recpipe.train.launchers import launch
from recpipe.train.memory import check_trainer_memory
from recpipe.train.spec import TrainSpec, save_array
from recpipe.train.warm_start import StartPlan, WarmStartError, grown_state, plan_start

log = logging.getLogger(__name__)
# Beside item_counts.npy in the run folder: the item and user feature tables of the run.
FEATURES_FILE = "features.pt"


def model_settings(config: Config, name: str) -> ModelConfig:
    """The typed settings of model ``name``: its defaults overridden by ``models.<name>``."""
    unknown = sorted(set(config.models) - set(registry()))
    if unknown:
        raise ConfigError(
            f"invalid config: unknown key 'models.{unknown[0]}' (registered models: "
            f"{', '.join(sorted(registry()))})"
        )
    try:
        cls = model_class(name)
    except ValueError as exc:
        raise ConfigError(f"invalid config: 'train.models': {exc}") from None
    try:
        return cls.config_class.model_validate(config.models.get(name, {}))
    except ValidationError as exc:
        raise config_error(exc, ("models", name)) from None


def build_spec(
    config: Config,
    ds: str,
    protocol: str,
    name: str,
    resume: bool = False,
    run_id: str | None = None,
    folder: Location | None = None,
) -> TrainSpec:
    """The training run of ``name`` on ``protocol``'s exported samples for ``ds``.

    ``run_id`` names the launch's local folder (the stage run's id; a fresh one by default);
    ``folder`` is where the run's files go (default: the model's folder, what is published;
    tuning trials use a scratch folder).
    """
    settings = model_settings(config, name)
    cls = model_class(name)
    shards = export_shards(config.root, ds, protocol, cls.sample_kind)
    export = read_manifest(config.root, EXPORT_STAGE, ds)
    folder = folder or model_dir(config.root, name, ds, protocol)
    counts_file = folder / "item_counts.npy"
    save_array(
        counts_file, split_item_counts(config.root, ds, protocol, "train", export["n_items"])
    )
    trained_file = folder / "trained_users.npy"
    save_array(
        trained_file, split_user_mask(config.root, ds, protocol, "train", export["user_index_size"])
    )
    local = launcher_run_dir(config.local_root, name, ds, run_id or uuid.uuid4().hex[:12])
    context: dict[str, Any] = {
        "n_users": export["user_index_size"],
        "n_items": export["n_items"],
        # A bag model's history is a bag sample, export.bag_max_len items long.
        "max_len": export["settings"]["bag_max_len" if cls.sample_kind == "bag" else "max_len"],
    }
    layout, tables, _ = feature_tables(config.root, ds, context["n_users"], context["n_items"])
    graph, graph_tables = knowledge_tables(config.root, ds, context["n_items"])
    if graph:  # the knowledge graph rides with the feature tables (models.cke reads it)
        layout[KG], tables = graph, {**tables, **graph_tables}
    moments, moment_tables = context_tables(config.root, ds, protocol, context["n_users"])
    if moments:  # event context: layout entity "context", per-user last-event tables
        layout[CONTEXT], tables = moments, {**tables, **moment_tables}
    features_file = None
    if layout:
        features_file = folder / FEATURES_FILE
        save_tables(features_file, tables)
        context["feature_layout"] = layout
    return TrainSpec(
        model=name,
        model_config=settings.model_dump(mode="json"),
        context=context,
        features_file=None if features_file is None else str(features_file),
        item_counts_file=str(counts_file),
        trained_users_file=str(trained_file),
        shards=shards,
        settings=config.train.model_dump(mode="json"),
        run_dir=str(folder),
        model_file=str(folder / MODEL_FILE),
        local_dir=str(local / protocol),
        validation={
            "root": str(config.root),
            "ds": ds,
            "protocol": protocol,
            "block_mib": config.evaluation.block_mib,
        },
        resume=resume,
        storage=rank_storage_settings(config),
    )


def rank_storage_settings(config: Config) -> dict[str, str]:
    """The Hadoop settings the driver's storage uses, for the ranks' own (fresh processes).

    The config's ``spark.hadoop.*``, then a running session's (what spark-submit ``--conf``
    passed), in the order recpipe.spark hands them to the driver's storage.
    """
    settings = hadoop_settings(config.spark.conf)
    session = SparkSession.getActiveSession()
    if session is not None:
        settings.update(hadoop_settings(dict(session.sparkContext.getConf().getAll())))
    return settings


def apply_start(config: Config, spec: TrainSpec, ds: str, protocol: str) -> StartPlan:
    """Decide how ``spec``'s run starts (:mod:`recpipe.train.warm_start`) and record it there.

    A warm start points ``spec`` at the earlier model's weights, grown for new ids
    (``warm_start.pt`` in the run folder), and at the export's recent-window samples; too few
    recent samples for the ranks, or none exported, make it a full retrain instead.
    """
    plan = plan_start(config, spec.model, ds, protocol, spec.model_config, spec.context)
    extra: dict[str, Any] = {}
    previous = plan.previous_weights
    if plan.warm and previous is not None:
        kind = model_class(spec.model).sample_kind
        try:
            shards = export_shards(config.root, ds, protocol, kind, recent=True)
        except MissingInputError:
            shards = None
        rows = sum(r for _, r in shards or [])
        processes = config.train.processes * config.train.nnodes
        if shards is None:
            plan = plan.as_full(ds, f"no recent-window {kind} samples were exported for {ds}")
        elif len(shards) < processes:
            plan = plan.as_full(
                ds, f"the recent window holds {rows} {kind} samples, too few for {processes} ranks"
            )
        else:
            try:
                spec.init_file = str(_grown_init(spec, previous))
            except WarmStartError as exc:
                plan = plan.as_full(ds, f"the {plan.from_ds} model does not fit: {exc}")
            else:
                spec.shards = shards
                samples = (ExportManifest.read(config.root, ds).samples or {}).get(protocol)
                extra = {"since": samples.since if samples else None, "rows": rows}
    spec.start = {**plan.record(), **extra}
    log.info("train %s on %s: %s start (%s)", spec.model, protocol, plan.mode, plan.reason)
    return plan


def _grown_init(spec: TrainSpec, previous: dict[str, torch.Tensor]) -> Location:
    """Write the earlier model's weights grown to ``spec``'s vocabulary; returns the file."""
    model = spec.new_model()  # new rows as a run's
    model.load_state_dict(grown_state(previous, model))
    init = as_location(spec.run_dir) / "warm_start.pt"
    save_atomic(model_state(model), init)
    return init


def apply_item_init(
    config: Config, spec: TrainSpec, ds: str, protocol: str
) -> dict[str, Any] | None:
    """With ``train.item_init``, start ``spec``'s model from a fresh model whose item table
    holds that baseline's item vectors (``item_init.pt`` in the run folder); returns the
    record for the manifest, or None when not asked for."""
    source = config.train.item_init
    if source is None:
        return None
    try:
        files = read_model_files(config.root, source, ds, protocol)  # checked against its manifest
    except MissingInputError as exc:
        raise MissingInputError(
            f"train.item_init={source}: {exc} (run `recpipe train-baseline --model {source} "
            f"--ds {ds}` first)"
        ) from None
    vectors = baseline_class(source).from_files(files).item_factors()
    if vectors is None:
        raise ConfigError(f"train.item_init={source}: {source} has no item vectors")
    model = spec.new_model()
    try:
        rows = model.init_item_vectors(torch.as_tensor(vectors))
    except ValueError as exc:
        raise ConfigError(
            f"train.item_init={source}: {exc} (baselines.{source}.vector_size must equal "
            f"models.{spec.model}.dim)"
        ) from None
    init = as_location(spec.run_dir) / "item_init.pt"
    save_atomic(model_state(model), init)
    spec.init_file = str(init)
    log.info("train %s on %s: item table from %s (%d items)", spec.model, protocol, source, rows)
    return {"from": source, "items": rows}


def plan_user_rows(config: Config, spec: TrainSpec, ds: str, protocol: str) -> str | None:
    """Point ``spec`` at a fresh version of the model's user-rows table when the model has
    user-indexed tables (:mod:`recpipe.models.user_rows`); returns the table, else None."""
    cls = model_class(spec.model)
    if not cls.user_table_names(cls.config_class.model_validate(spec.model_config)):
        return None
    table = user_rows_table(spec.model)
    spec.user_rows_dir = str(Lake(config.root).new_version(table, {DS: ds, PROTOCOL: protocol}))
    return table


def publish_user_rows(
    run: StageRun, spec: TrainSpec, table: str, ds: str, protocol: str
) -> dict[str, Any]:
    """Hand the user rows rank 0 wrote to ``run`` (committed with its manifest), checked to
    hold one row per user index of the model."""
    assert spec.user_rows_dir is not None
    staged = Lake(run.config.root).staged(table, {DS: ds, PROTOCOL: protocol}, spec.user_rows_dir)
    record = staged.publish(run)
    expected = int(spec.context["n_users"])
    if record.get("rows") != expected:
        raise ReconciliationError(
            f"{table} ds={ds} protocol={protocol}: {record.get('rows')} rows written for "
            f"{expected} user indexes of the model"
        )
    return {table: {"rows": expected, "path": record.get("path")}}


def plan_refit(
    config: Config, spec: TrainSpec, protocol: str, trained: Mapping[str, Mapping[str, Any]]
) -> dict[str, Any] | None:
    """For protocol ``all`` (the served refit: nothing held out, so nothing to validate on),
    fix ``spec``'s epoch counts to those validation chose in ``trained``'s runs; returns the
    refit's record (None for other protocols)."""
    if protocol != ALL:
        return None
    source, epochs = refit_epochs(config, trained)
    spec.validation = None
    spec.stop_after_epochs = epochs
    pretraining = {
        label: int(run["best_epoch"])
        for label, run in trained[source].get("pretraining", {}).items()
        if isinstance(run.get("best_epoch"), int) and run["best_epoch"] > 0
    }
    return {"epochs_from": source, "epochs": epochs, "pretraining_epochs": pretraining}


def refit_pretrain_epochs(refit: Mapping[str, Any] | None) -> dict[str, int] | None:
    """The pre-training epoch counts a refit repeats (None: not a refit)."""
    return None if refit is None else dict(refit["pretraining_epochs"])


def pretrain(
    config: Config, spec: TrainSpec, epochs: Mapping[str, int] | None = None
) -> dict[str, Any]:
    """Train the model's pre-training runs (e.g. NeuMF's GMF and MLP) and point ``spec`` at
    the fused initialisation; returns a record per run ({} for models without any).
    ``epochs`` fixes a run's epoch count by label (a refit repeats what validation chose)."""
    cls = model_class(spec.model)
    settings = cls.config_class.model_validate(spec.model_config)
    runs = cls.pretraining(settings)
    init = as_location(spec.run_dir) / "init.pt"
    if not runs:
        return {}
    if spec.resume and storage.is_file(init):
        spec.init_file = str(init)
        return {"reused": str(init)}
    trained: dict[str, RecModel] = {}
    record: dict[str, Any] = {}
    for label, run_settings in runs.items():
        folder = as_location(spec.run_dir) / f"pretrain-{label}"
        run = dataclasses.replace(
            spec,
            model_config=run_settings.model_dump(mode="json"),
            run_dir=str(folder),
            model_file=str(folder / MODEL_FILE),
            local_dir=str(Path(spec.local_dir) / f"pretrain-{label}"),
            init_file=None,
            resume=False,
            user_rows_dir=None,
            stop_after_epochs=(epochs or {}).get(label),
        )
        log.info("pre-train %s: %s", spec.model, label)
        result = launch(run, config.train)
        trained[label] = load_model(run.model_file)
        record[label] = {
            key: result[key]
            for key in ("epochs_run", "best_epoch", "best_valid_metric", "seconds")
            if key in result
        }
    pretrained = cls.from_pretrained(settings, spec.model_context(), trained)
    save_atomic(model_state(pretrained), init)
    spec.init_file = str(init)
    return record


def run_train(
    spark: SparkSession | None,
    config: Config,
    ds: str,
    models: list[str] | None = None,
    resume: bool = False,
    evaluate: bool = True,
) -> tuple[list[dict[str, Any]], list[Evaluation]]:
    """Train (then evaluate) each model; returns the train and evaluate manifests."""
    names = models or config.train.models
    for name in names:
        model_settings(config, name)  # fail on config errors before any training starts
    if evaluate and spark is None:  # before hours of training, not after
        raise ValueError("run_train: evaluate=True needs a SparkSession")
    manifests: list[dict[str, Any]] = []
    for name in names:
        with StageRun(config, f"train-{name}", ds) as run:
            run.record.update(
                model=name,
                launcher=config.train.launcher,
                loader=config.train.loader,
                processes=config.train.processes,
                protocols={},
            )
            for protocol in written_protocols(config):
                spec = build_spec(config, ds, protocol, name, resume, run.run_id)
                memory = check_trainer_memory(spec, config.train)  # before any training work
                refit = plan_refit(config, spec, protocol, run.record["protocols"])
                rows_table = plan_user_rows(config, spec, ds, protocol)
                started = time.perf_counter()
                plan = apply_start(config, spec, ds, protocol)
                pretrained = (
                    {} if plan.warm else pretrain(config, spec, refit_pretrain_epochs(refit))
                )
                # Warm starts and pre-training bring their own weights.
                item_init = (
                    None if plan.warm or pretrained else apply_item_init(config, spec, ds, protocol)
                )
                log.info(
                    "train %s on %s (%s launcher, %d process(es))",
                    name, protocol, config.train.launcher, config.train.processes,
                )  # fmt: skip
                result = launch(spec, config.train)
                result["wall_seconds"] = round(time.perf_counter() - started, 3)
                result["path"] = spec.model_file
                files = [MODEL_FILE]
                if rows_table is not None:
                    result["lake_tables"] = publish_user_rows(run, spec, rows_table, ds, protocol)
                    files.append(ITEM_SIDE_FILE)
                result[SHA256] = file_digests(as_location(spec.model_file).parent, files)
                result["rows"] = sum(rows for _, rows in spec.shards)
                if memory is not None:
                    result["memory"] = memory
                if pretrained:
                    result["pretraining"] = pretrained
                if item_init:
                    result["item_init"] = item_init
                if refit is not None:
                    result["refit"] = refit
                run.record["protocols"][protocol] = result
            run.record["rows_in"] = sum(p["rows"] for p in run.record["protocols"].values())
            run.record["rows_out"] = len(run.record["protocols"])
        # A committed run needs its launcher files no more; a failed run's stay for its logs.
        storage.remove_tree(Location(launcher_run_dir(config.local_root, name, ds, run.run_id)))
        manifests.append(run.manifest)
    evaluations: list[Evaluation] = []
    if evaluate and spark is not None:  # checked above: evaluate implies a session
        evaluated, evaluations = run_evaluate(spark, config, ds, list(names))
        manifests.extend(evaluated)
    return manifests, evaluations
