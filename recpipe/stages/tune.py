"""The ``tune`` stage: a hyper-parameter search for one model, read on the valid split only.

Trial 0 scores the settings in force (the config's, so the overlay never does worse on valid
than they do); each later trial draws settings from the model's ``search_space`` (Optuna's TPE
sampler, seeded). Every trial is scored by training's own validation:
``train.early_stopping.metric@k`` on the valid split, full ranking, train items masked. A
deep model's trial trains on the protocol's exported train samples with ``train.launcher``
(so a trial is as distributed as a training run) in a scratch folder under ``<root>/tuning``
that is removed after the trial, and scores its best epoch; a baseline's trial is fitted on
the train split (in Spark for those fitted there) and scored in memory, nothing written.
Trials run one after another. The test split is never read. The best trial's settings are
written as a config overlay (``--conf``) that ``recpipe train`` / ``train-baseline`` accept,
and every trial is recorded in the manifest ``tune-<model>``, ``trials.json`` and an HTML
page beside the overlay.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import yaml
from pydantic import ValidationError
from pyspark.sql import SparkSession

from recpipe import storage
from recpipe.baselines import baseline_class
from recpipe.baselines.base import SplitFacts
from recpipe.config import Config, ConfigError
from recpipe.errors import MissingInputError
from recpipe.layout import VALID
from recpipe.manifest import StageRun
from recpipe.models import model_class
from recpipe.registry import is_baseline
from recpipe.scoring.model_columns import attach_fitted_state
from recpipe.search_space import Param, suggest
from recpipe.stages.train import build_spec, model_settings, pretrain
from recpipe.stages.train_baseline import fit_inputs
from recpipe.storage import Location, LocationLike, as_location
from recpipe.tables import split_rows
from recpipe.train.launchers import launch
from recpipe.train.memory import TrainerMemoryError, check_trainer_memory
from recpipe.train.validation import Validator

log = logging.getLogger(__name__)


@dataclass
class TrialRecord:
    """One trial: its settings, the valid metric at its best epoch, and what it cost."""

    number: int
    params: dict[str, Any]
    value: float | None
    best_epoch: int | None
    epochs_run: int | None
    seconds: float
    state: str  # complete | invalid (settings the model refuses)
    error: str | None = None


def tuning_dir(root: LocationLike, model: str, ds: str, protocol: str) -> Location:
    """``<root>/tuning/<model>/<ds>/<protocol>``: overlay, trials and report of a search."""
    return as_location(root) / "tuning" / model / ds / protocol


def with_model_settings(config: Config, model: str, settings: dict[str, Any]) -> Config:
    """``config`` with ``models.<model>`` replaced by ``settings``."""
    return config.model_copy(update={"models": {**config.models, model: settings}})


def _import_optuna() -> Any:
    try:
        import optuna
    except ImportError:
        raise ConfigError(
            "recpipe tune needs Optuna, an optional extra: pip install 'recpipe[tune]' "
            "(make venv installs it)"
        ) from None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna


def _protocol(config: Config, ds: str, protocol: str | None) -> str:
    """The protocol to tune on (``tune.protocol``, else ``score.protocol``), checked to be
    split for ``ds`` with valid rows."""
    chosen = protocol or config.tune.protocol or config.score.protocol
    if chosen not in config.split.protocols:
        raise ConfigError(
            f"tune.protocol: {chosen!r} is not in split.protocols {config.split.protocols}"
        )
    if split_rows(config.root, ds, chosen, VALID) == 0:
        raise MissingInputError(
            f"tune: the {chosen} valid split of ds={ds} is empty; tuning reads valid only "
            f"(set split.{chosen} so that it has a valid part)"
        )
    return chosen


def declared_space(config: Config, model: str) -> dict[str, Param]:
    """The search space declared on ``model``'s settings class (deep model or baseline);
    empty for a model with nothing to tune (popularity)."""
    if is_baseline(model):
        return getattr(type(getattr(config.baselines, model)), "search_space", {})
    return model_class(model).config_class.search_space


def _space(config: Config, model: str) -> dict[str, Param]:
    """:func:`declared_space`, after checking that the model can be tuned from here."""
    if not is_baseline(model):
        model_settings(config, model)  # the starting settings must be valid
    space = declared_space(config, model)
    if is_baseline(model) and not space:
        raise ConfigError(f"tune: baseline {model} declares no search space")
    return space


def run_tune(
    config: Config,
    ds: str,
    model: str,
    trials: int | None = None,
    protocol: str | None = None,
    spark: SparkSession | None = None,
) -> dict[str, Any]:
    """Search ``model``'s settings on ``protocol``'s valid split; manifest ``tune-<model>``.

    Deep models train each trial with ``train.launcher``; baselines are fitted here (in
    ``spark`` for those fitted in Spark) and scored by the same validation.
    """
    optuna = _import_optuna()
    space = _space(config, model)
    protocol = _protocol(config, ds, protocol)
    settings = config.tune
    n_trials = trials or settings.trials
    folder = tuning_dir(config.root, model, ds, protocol)
    early = config.train.early_stopping
    metric = f"{early.metric}@{early.k}"
    records: list[TrialRecord] = []
    validator = Validator(
        root=str(config.root), ds=ds, protocol=protocol, metric=early.metric, k=early.k,
        user_batch=config.evaluation.user_batch, max_users=early.max_users, seed=early.seed,
        block_mib=config.evaluation.block_mib,
    )  # fmt: skip
    with StageRun(config, f"tune-{model}", ds) as run:

        def score(number: int, params: dict[str, Any]) -> TrialRecord:
            if is_baseline(model):
                record = _baseline_trial(config, ds, model, protocol, number, params,
                                         validator, spark)  # fmt: skip
            else:
                record = _run_trial(config, ds, model, protocol, number, params, run.run_id)
            records.append(record)
            log.info(
                "tune %s trial %d/%d: %s %s = %s (%.1fs)", model, number + 1, n_trials,
                params, metric, record.value, record.seconds,
            )  # fmt: skip
            return record

        def objective(trial: Any) -> float:
            record = score(trial.number + 1, suggest(trial, space))
            if record.value is None:
                raise optuna.TrialPruned(record.error or "no valid metric")
            return record.value

        # Trial 0 is the settings in force (outside the sampler: they may lie outside the
        # space, e.g. a weight decay of 0 under a log-uniform range), so the overlay is never
        # worse on valid than what training uses without it.
        score(0, current_settings(config, model, space))
        sampler_startup = min(settings.startup_trials, n_trials - 1)
        sampler = optuna.samplers.TPESampler(seed=settings.seed, n_startup_trials=sampler_startup)
        study = optuna.create_study(direction="maximize", sampler=sampler)
        if n_trials > 1:
            study.optimize(objective, n_trials=n_trials - 1, timeout=settings.timeout_seconds)
        complete = [r for r in records if r.value is not None]
        if not complete:
            raise RuntimeError(f"tune {model}: no trial finished with a {metric}")
        best = max(complete, key=lambda r: (r.value, -r.number))
        if is_baseline(model):
            overlay = {"baselines": {model: best.params}}
        else:
            overlay = {"models": {model: _model_overlay(config, model, best.params)}}
        overlay_file = folder / "best.yaml"
        storage.write_text(overlay_file, _overlay_text(model, protocol, metric, best, overlay))
        storage.write_text(folder / "trials.json", json.dumps([asdict(r) for r in records]))
        report = _write_report(folder / "report.html", model, protocol, metric, records, best)
        run.record.update(
            model=model,
            protocol=protocol,
            metric=f"{metric} on {protocol}/valid, full ranking, train items excluded",
            split_read=["train" if is_baseline(model) else "train (exported samples)", "valid"],
            sampler=(
                f"trial 0: the settings in force; then optuna TPE (seed {settings.seed}, "
                f"{sampler_startup} random startup trials)"
            ),
            space={name: param.describe() for name, param in space.items()},
            trials=[asdict(r) for r in records],
            best={
                "number": best.number,
                "value": best.value,
                "params": best.params,
                "best_epoch": best.best_epoch,
            },
            overlay=str(overlay_file),
            report=str(report),
            rows_in=len(records),
            rows_out=1,
        )
    return run.manifest


def current_settings(config: Config, model: str, space: Mapping[str, Param]) -> dict[str, Any]:
    """The values ``config`` gives the searched fields of ``model`` (its first trial)."""
    if is_baseline(model):
        values = getattr(config.baselines, model).model_dump()
    else:
        values = model_settings(config, model).model_dump()
    return {name: values[name] for name in space if name in values}


def _run_trial(
    config: Config,
    ds: str,
    model: str,
    protocol: str,
    number: int,
    params: dict[str, Any],
    run_id: str,
) -> TrialRecord:
    """Train one trial's settings in a scratch folder and read its best valid metric."""
    started = time.perf_counter()
    trial_config = with_model_settings(config, model, {**config.models.get(model, {}), **params})
    try:
        model_settings(trial_config, model)
    except ConfigError as exc:  # e.g. heads that do not divide the dimension
        return TrialRecord(number, params, None, None, None, 0.0, "invalid", str(exc))
    folder = tuning_dir(config.root, model, ds, protocol) / f"trial-{number:03d}"
    spec = build_spec(trial_config, ds, protocol, model, run_id=f"{run_id}-{number}",
                      folder=folder)  # fmt: skip
    spec.user_rows_dir = None  # the trial model keeps its user tables inside
    try:
        try:
            check_trainer_memory(spec, trial_config.train)
        except TrainerMemoryError as exc:  # a size the machine cannot hold: no trial
            return TrialRecord(number, params, None, None, None, 0.0, "invalid", str(exc))
        pretrain(trial_config, spec)
        result = launch(spec, trial_config.train)
    finally:
        storage.remove_tree(folder)
        storage.remove_tree(Location(spec.local_dir).parent)
    value = result.get("best_valid_metric")
    return TrialRecord(
        number=number,
        params=params,
        value=None if value is None else float(value),
        best_epoch=result.get("best_epoch"),
        epochs_run=result.get("epochs_run"),
        seconds=round(time.perf_counter() - started, 3),
        state="complete" if value is not None else "no-valid-metric",
    )


def trial_rows(
    trials: Sequence[Mapping[str, Any]],
    valid_label: str,
    show: Callable[[Any], Any] = lambda value: value,
) -> list[dict[str, Any]]:
    """A table row per recorded trial: number, settings (each through ``show``), valid
    metric (column ``valid_label``), best epoch, seconds and state."""
    return [
        {
            "trial": trial["number"],
            **{name: show(value) for name, value in trial["params"].items()},
            valid_label: trial["value"],
            "best epoch": trial["best_epoch"],
            "seconds": trial["seconds"],
            "state": trial["state"],
        }
        for trial in trials
    ]


def _write_report(
    path: Location,
    model: str,
    protocol: str,
    metric: str,
    records: list[TrialRecord],
    best: TrialRecord,
) -> Location:
    """An HTML page: every trial in a table and the search's history as a chart."""
    from recpipe.report.html import html_table, image, tuning_history, write_report

    rows = trial_rows([asdict(r) for r in records], f"valid {metric}")
    caption = f"trials ({metric} on {protocol}/valid, full ranking; best: trial {best.number})"
    body = html_table(rows, caption=caption) + image(
        tuning_history([r.value for r in records], metric), "tuning history"
    )
    return write_report(path, title=f"recpipe tune {model}", sections=[("Trials", body)])


def _baseline_trial(
    config: Config,
    ds: str,
    model: str,
    protocol: str,
    number: int,
    params: dict[str, Any],
    validator: Validator,
    spark: SparkSession | None,
) -> TrialRecord:
    """Fit one trial's baseline on the train split and score it on the valid split; nothing
    is written (the tables it keeps in Spark are collected for the validation only)."""
    started = time.perf_counter()
    cls = baseline_class(model)
    current = getattr(config.baselines, model)
    try:
        settings = type(current).model_validate({**current.model_dump(), **params})
    except ValidationError as exc:
        return TrialRecord(number, params, None, None, None, 0.0, "invalid", str(exc))
    data, context = fit_inputs(spark, config, ds, protocol, cls)
    fitted = cls.fit(data, settings, **context)
    attach_fitted_state(fitted, SplitFacts.of(data).n_users)
    value = validator.evaluate(fitted)
    return TrialRecord(
        number=number,
        params=params,
        value=float(value),
        best_epoch=None,
        epochs_run=None,
        seconds=round(time.perf_counter() - started, 3),
        state="complete",
    )


def _model_overlay(config: Config, model: str, params: dict[str, Any]) -> dict[str, Any]:
    """A deep model's tuned settings: the configured ones with ``params`` on top, and the
    ``train.max_epochs`` cap the trials ran under as its ``epochs``.

    The cap also spans the learning-rate schedule (warm-up then cosine to zero over the
    epochs run), so without it in the overlay, training with the overlay alone would run a
    longer schedule than the one validation chose.
    """
    settings = {**config.models.get(model, {}), **params}
    cap = config.train.max_epochs
    epochs = settings.get("epochs", model_settings(config, model).epochs)
    if cap is not None and cap < epochs:
        settings["epochs"] = cap
    return settings


def _overlay_text(
    model: str, protocol: str, metric: str, best: TrialRecord, overlay: dict[str, Any]
) -> str:
    """The overlay YAML with a header saying where its numbers came from."""
    header = (
        f"# recpipe tune --model {model}: best of the trials by {metric} on {protocol}/valid\n"
        f"# (trial {best.number}: {best.value:.4f}"
        + (f" at epoch {best.best_epoch}" if best.best_epoch is not None else "")
        + ").\n"
        f"# Use it with: recpipe {'train-baseline' if is_baseline(model) else 'train'} "
        f"--model {model} --conf conf/base.yaml "
        "--conf conf/local.yaml --conf <this file>\n"
    )
    return header + yaml.safe_dump(overlay, sort_keys=False)
