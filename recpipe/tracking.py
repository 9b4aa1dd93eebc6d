"""Experiment tracking in MLflow, for teams that already run it (``tracking.mlflow_uri``).

Off by default. When the URI is set, every committed run of ``train-<model>`` (deep models and
baselines), ``tune-<model>``, ``evaluate-<model>`` and ``publish`` is also logged to MLflow
experiment ``tracking.experiment``, one MLflow run per model and protocol:

- tags: ``recpipe.stage``, ``recpipe.ds``, ``recpipe.model``, ``recpipe.protocol`` and
  ``recpipe.run_id`` (the stage run's id, as in its manifest);
- params: the model's settings, the protocol's description, the gate's settings;
- metrics: ``ndcg_at_10`` and the rest, each with its 95 % interval as ``ndcg_at_10_ci_low``
  and ``ndcg_at_10_ci_high``; per-epoch training loss and validation metric, and each tuning
  trial's valid metric, as steps;
- artifacts: the stage's manifest (``manifest.json``) and, for ``tune``, ``best.yaml``,
  ``trials.json`` and ``report.html``.

The stage's manifest stays the record of truth: tracking runs after the commit, and a
tracking server that fails is a warning, never a failed stage. MLflow is an optional extra
(``pip install 'recpipe[tracking]'``); a set URI without it is a config error at stage start.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from recpipe import storage
from recpipe.config import Config, ConfigError

log = logging.getLogger(__name__)

PUBLISH = "publish"
MAX_PARAM_CHARS = 6000  # MLflow's limit on a param value
GATE_SETTINGS = ("candidate", "baseline", "metric", "k", "tolerance", "require_significant")


@dataclass
class TrackedRun:
    """One MLflow run to log: what a stage manifest says about one model and protocol."""

    name: str
    tags: dict[str, str]
    params: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    series: dict[str, list[tuple[int, float]]] = field(default_factory=dict)  # key: (step, v)
    texts: dict[str, str] = field(default_factory=dict)  # artifact file name -> content


def enabled(config: Config) -> bool:
    """Whether runs are tracked in MLflow."""
    return bool(config.tracking.mlflow_uri)


def _builder(stage: str) -> Callable[[Mapping[str, Any]], list[TrackedRun]] | None:
    """The function turning a manifest of ``stage`` into MLflow runs (None: not tracked)."""
    if stage == PUBLISH:
        return publish_runs
    by_prefix = (("train-", training_runs), ("tune-", tune_runs), ("evaluate-", evaluation_runs))
    return next((build for prefix, build in by_prefix if stage.startswith(prefix)), None)


def tracked(stage: str) -> bool:
    """Whether runs of ``stage`` are logged to MLflow (when tracking is on)."""
    return _builder(stage) is not None


def require(config: Config, stage: str) -> None:
    """Fail before a tracked stage runs when tracking is on but MLflow cannot be imported."""
    if not (enabled(config) and tracked(stage)):
        return
    try:
        import mlflow  # noqa: F401
    except ImportError:
        raise ConfigError(
            "invalid config: 'tracking.mlflow_uri' is set but MLflow is not installed: "
            "pip install 'recpipe[tracking]' (or unset the key)"
        ) from None


def metric_key(name: str) -> str:
    """An MLflow-safe metric or param key: ``ndcg@10`` -> ``ndcg_at_10``."""
    return re.sub(r"[^0-9A-Za-z_\-. /]", "_", name.replace("@", "_at_"))


def _flat(prefix: str, value: Any) -> Iterator[tuple[str, Any]]:
    if isinstance(value, Mapping):
        for key, item in value.items():
            yield from _flat(f"{prefix}.{key}" if prefix else str(key), item)
    else:
        yield prefix, value


def _params(values: Mapping[str, Any]) -> dict[str, Any]:
    """Nested settings as flat ``a.b`` params, values as text within MLflow's limit."""
    return {metric_key(key): str(value)[:MAX_PARAM_CHARS] for key, value in _flat("", values)}


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, int | float) and value == value:  # NaN is not logged
        return float(value)
    return None


def _put(metrics: dict[str, float], key: str, value: Any) -> None:
    """Set ``metrics[key]`` when ``value`` is a number (None, text and NaN are skipped)."""
    number = _number(value)
    if number is not None:
        metrics[key] = number


def _append(series: dict[str, list[tuple[int, float]]], key: str, step: int, value: Any) -> None:
    """Add ``(step, value)`` to ``series[key]`` when ``value`` is a number."""
    number = _number(value)
    if number is not None:
        series.setdefault(key, []).append((step, number))


def _tags(manifest: Mapping[str, Any], model: str, protocol: str | None) -> dict[str, str]:
    tags = {
        "recpipe.stage": str(manifest["stage"]),
        "recpipe.ds": str(manifest["ds"]),
        "recpipe.model": model,
        "recpipe.run_id": str(manifest.get("run_id")),
    }
    if protocol:
        tags["recpipe.protocol"] = protocol
    return tags


def _manifest_text(manifest: Mapping[str, Any]) -> dict[str, str]:
    return {"manifest.json": json.dumps(manifest, indent=2, default=str)}


def training_runs(manifest: Mapping[str, Any]) -> list[TrackedRun]:
    """A run per protocol of a ``train-<model>`` manifest (deep model or baseline)."""
    model = str(manifest["model"])
    runs = []
    for protocol, info in manifest.get("protocols", {}).items():
        settings = info.get("model_config") or manifest.get("settings") or {}
        run = TrackedRun(
            f"train {model} {protocol} {manifest['ds']}",
            _tags(manifest, model, protocol),
            params=_params(
                {
                    **settings,
                    **{k: manifest[k] for k in ("launcher", "processes") if k in manifest},
                    **({"refit": info["refit"]} if "refit" in info else {}),
                }
            ),
            texts=_manifest_text(manifest),
        )
        for key in ("rows", "seconds", "wall_seconds", "epochs_run", "best_epoch",
                    "best_valid_metric", "rows_per_second"):  # fmt: skip
            _put(run.metrics, key, info.get(key))
        for entry in info.get("history", []):
            for key, name in (("loss", "train_loss"), ("metric", "valid_metric")):
                _append(run.series, name, int(entry["epoch"]), entry.get(key))
        runs.append(run)
    return runs


def evaluation_runs(manifest: Mapping[str, Any]) -> list[TrackedRun]:
    """A run per protocol of an ``evaluate-<model>`` manifest: metrics with intervals and
    the per-activity-quartile values."""
    model = str(manifest["model"])
    runs = []
    for result in manifest.get("results", []):
        protocol = result["protocol"]
        name = protocol.get("split_protocol", "?") if isinstance(protocol, Mapping) else protocol
        run = TrackedRun(
            f"evaluate {model} {name} {manifest['ds']}",
            _tags(manifest, model, str(name)),
            params=_params({"protocol": result.get("protocol_text"), "users": result["users"]}),
            texts=_manifest_text(manifest),
        )
        for key, value in result.get("metrics", {}).items():
            _put(run.metrics, metric_key(key), value)
        for key, (low, high) in result.get("intervals", {}).items():
            run.metrics[f"{metric_key(key)}_ci_low"] = float(low)
            run.metrics[f"{metric_key(key)}_ci_high"] = float(high)
        for group in (result.get("by_activity") or {}).get("groups", []):
            for key, value in group["metrics"].items():
                _put(run.metrics, f"{metric_key(key)}_activity_q{group['group']}", value)
        runs.append(run)
    return runs


def tune_runs(manifest: Mapping[str, Any]) -> list[TrackedRun]:
    """One run for a ``tune-<model>`` search: the best settings as params, each trial's valid
    metric as a step, the overlay, trials and report as artifacts."""
    model = str(manifest["model"])
    best = manifest["best"]
    run = TrackedRun(
        f"tune {model} {manifest['protocol']} {manifest['ds']}",
        _tags(manifest, model, str(manifest["protocol"])),
        params=_params({"best": best["params"], "metric": manifest.get("metric")}),
        metrics={"best_valid_metric": float(best["value"]), "trials": len(manifest["trials"])},
        texts=_manifest_text(manifest),
    )
    for trial in manifest["trials"]:
        _append(run.series, "trial_valid_metric", int(trial["number"]), trial.get("value"))
    files = {"best.yaml": manifest.get("overlay"), "report.html": manifest.get("report")}
    for name, location in files.items():
        if location:
            run.texts[name] = storage.read_text(location)
    run.texts["trials.json"] = json.dumps(manifest["trials"], indent=2, default=str)
    return [run]


def publish_runs(manifest: Mapping[str, Any]) -> list[TrackedRun]:
    """One run for ``publish``: the gate's decision and what the served model learned."""
    gate = manifest["gate"]
    trained_on = manifest.get("trained_on") or {}
    run = TrackedRun(
        f"publish {manifest['published_model']} {manifest['ds']}",
        _tags(manifest, str(manifest["published_model"]), gate.get("protocol")),
        params=_params(
            {
                "published_model": manifest["published_model"],
                "partition": manifest.get("partition"),
                "gate": {k: gate.get(k) for k in GATE_SETTINGS},
                "trained_on": trained_on.get("rule"),
            }
        ),
        texts=_manifest_text(manifest),
    )
    for key in ("candidate_value", "baseline_value", "difference_low", "difference_high",
                "passed", "significant"):  # fmt: skip
        _put(run.metrics, f"gate_{key}", gate.get(key))
    _put(run.metrics, "rows", manifest.get("rows_out"))
    return [run]


def runs_of(manifest: Mapping[str, Any]) -> list[TrackedRun]:
    """The MLflow runs a committed manifest gives (none for stages not tracked)."""
    build = _builder(str(manifest.get("stage", "")))
    return [] if build is None else build(manifest)


def log_runs(config: Config, runs: list[TrackedRun]) -> list[str]:
    """Log ``runs`` to ``tracking.mlflow_uri``; returns their MLflow run ids."""
    from mlflow.entities import Metric, Param, RunTag
    from mlflow.tracking import MlflowClient

    settings = config.tracking
    client = MlflowClient(tracking_uri=settings.mlflow_uri)
    experiment = client.get_experiment_by_name(settings.experiment)
    experiment_id = (
        experiment.experiment_id
        if experiment is not None
        else client.create_experiment(
            settings.experiment, artifact_location=settings.artifact_location
        )
    )
    ids = []
    for run in runs:
        created = client.create_run(experiment_id, tags=run.tags, run_name=run.name)
        run_id = created.info.run_id
        now = created.info.start_time
        metrics = [Metric(key, value, now, 0) for key, value in run.metrics.items()]
        metrics += [
            Metric(key, value, now, step) for key, steps in run.series.items()
            for step, value in steps
        ]  # fmt: skip
        params = [Param(key, value) for key, value in run.params.items()]
        # log_batch takes at most 1,000 metrics and 100 params a call.
        for start in range(0, max(len(metrics), len(params) * 10, 1), 1000):
            client.log_batch(
                run_id,
                metrics=metrics[start : start + 1000],
                params=params[start // 10 : start // 10 + 100],
                tags=[RunTag("recpipe", "1")] if start == 0 else [],
            )
        for name, text in run.texts.items():
            client.log_text(run_id, text, name)
        client.set_terminated(run_id, "FINISHED")
        ids.append(run_id)
    return ids


def track_manifest(config: Config, manifest: Mapping[str, Any]) -> list[str]:
    """Log a committed manifest's runs when tracking is on; a failure is a warning (the
    stage is committed already). Returns the MLflow run ids logged."""
    if not enabled(config):
        return []
    runs = runs_of(manifest)
    if not runs:
        return []
    try:
        ids = log_runs(config, runs)
    except Exception as exc:  # any tracking failure: the stage is committed already
        log.warning(
            "%s ds=%s: not tracked in MLflow at %s: %s",
            manifest.get("stage"), manifest.get("ds"), config.tracking.mlflow_uri, exc,
        )  # fmt: skip
        return []
    log.info(
        "%s ds=%s: tracked as MLflow run(s) %s in experiment %r",
        manifest.get("stage"), manifest.get("ds"), ", ".join(ids), config.tracking.experiment,
    )  # fmt: skip
    return ids
