"""The pipeline's steps, in order: one table the CLI, the jobs, the demo and the DAG follow.

Each step runs one stage for one ``ds`` through a uniform runner ``run(ctx) -> StepResult``,
so a caller never needs to know a stage's own signature. Stage modules (Spark, torch) are
imported only when a step runs: reading this table costs nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from recpipe.config import Config, ConfigError
from recpipe.errors import MissingInputError
from recpipe.registry import kind_of, model_names

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

Manifest = dict[str, Any]


@dataclass
class StepContext:
    """What a step runs with: the config, the day, and the caller's choices.

    ``models`` is the caller's model selection (``--model``), None for the step's default;
    ``options`` carries step-specific switches (``resume``, ``evaluate``).
    """

    config: Config
    ds: str
    models: list[str] | None = None
    options: dict[str, Any] = field(default_factory=dict)
    _spark: SparkSession | None = None

    def spark(self) -> SparkSession:
        """The Spark session (built, or taken from the launcher, on first use)."""
        if self._spark is None:
            from recpipe.spark import get_spark

            self._spark = get_spark(self.config)
        return self._spark


@dataclass
class StepResult:
    """A step's manifests, plus model evaluations where the step evaluated models."""

    manifests: list[Manifest]
    evaluations: list[Any] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # what the step chose not to do, and why


Runner = Callable[[StepContext], StepResult]


@dataclass(frozen=True)
class Step:
    """One pipeline step: its command name (also ``jobs/<name>.py``), help and runner."""

    name: str
    help: str
    run: Runner
    description: str = ""  # the command's --help text, when more than ``help``
    etl: bool = False  # part of `recpipe etl` (the lake chain up to the splits)
    models: str | None = None  # "baseline" | "deep" | "any": which models --model may name
    model_help: str = ""  # --help of --model, for steps with ``models``


def _lake_stage(module: str) -> Runner:
    def run(ctx: StepContext) -> StepResult:
        import importlib

        stage = getattr(importlib.import_module(f"recpipe.stages.{module}"), f"run_{module}")
        return StepResult([stage(ctx.spark(), ctx.config, ctx.ds)])

    return run


def _catalog(ctx: StepContext) -> StepResult:
    from recpipe.stages.catalog import configured_inputs, run_catalog, unset_message

    # Catalogues are optional: a chain without one runs on, and says so.
    if not configured_inputs(ctx.config):
        return StepResult([], notes=[f"catalog: {unset_message()}"])
    return StepResult([run_catalog(ctx.spark(), ctx.config, ctx.ds)])


def _features(ctx: StepContext) -> StepResult:
    from recpipe.stages.features import configured_entities, run_features, unset_message

    # Features are optional like the catalogue: without specs the chain runs on, and says so.
    if not configured_entities(ctx.config):
        return StepResult([], notes=[f"features: {unset_message()}"])
    return StepResult([run_features(ctx.spark(), ctx.config, ctx.ds)])


def _train_baseline(ctx: StepContext) -> StepResult:
    from recpipe.stages.train_baseline import run_train_baseline

    models = ctx.models or list(ctx.config.baselines.models)
    return StepResult([run_train_baseline(ctx.spark(), ctx.config, ctx.ds, m) for m in models])


def _train(ctx: StepContext) -> StepResult:
    from recpipe.stages.train import run_train

    evaluate = bool(ctx.options.get("evaluate", True))
    # TorchDistributor needs the session; evaluation writes model_metrics through it.
    needs_spark = evaluate or ctx.config.train.launcher == "spark"
    spark = ctx.spark() if needs_spark else None
    manifests, evaluations = run_train(
        spark, ctx.config, ctx.ds, ctx.models, bool(ctx.options.get("resume")), evaluate
    )
    return StepResult(manifests, evaluations)


def _evaluate(ctx: StepContext) -> StepResult:
    from recpipe.model_store import trained_models
    from recpipe.stages.evaluate import run_evaluate

    for name in ctx.models or []:
        check_model_name(name)
    chosen = ctx.models or trained_models(ctx.config.root, ctx.ds, ctx.config.split.protocols)
    if not chosen:
        raise MissingInputError(f"no trained models for ds={ctx.ds}: run `recpipe train-baseline`")
    manifests, evaluations = run_evaluate(ctx.spark(), ctx.config, ctx.ds, chosen)
    result = StepResult(manifests, evaluations)
    if ctx.options.get("gate"):
        from recpipe.stages.gate import run_gate

        try:
            result.manifests.append(run_gate(ctx.config, ctx.ds))
        except MissingInputError as exc:  # candidate or baseline not evaluated: no decision
            result.notes.append(f"gate: not decided ({exc})")
    return result


def _gate(ctx: StepContext) -> StepResult:
    from recpipe.stages.gate import run_gate

    return StepResult([run_gate(ctx.config, ctx.ds)])


def _score(ctx: StepContext) -> StepResult:
    from recpipe.stages.score import run_score

    notes: list[str] = []
    if ctx.models:
        models = ctx.models
    else:
        chosen, decision = gate_choice(ctx.config, ctx.ds)
        models, notes = [chosen], [decision]
    for name in models:
        check_model_name(name)
    return StepResult([run_score(ctx.spark(), ctx.config, ctx.ds, m) for m in models], notes=notes)


def _publish(ctx: StepContext) -> StepResult:
    from recpipe.stages.publish import run_publish

    return StepResult([run_publish(ctx.spark(), ctx.config, ctx.ds)])


PIPELINE: tuple[Step, ...] = (
    Step(
        "clean",
        "raw logs -> lake tables events + quarantine (bad rows with a reason code)",
        _lake_stage("clean"),
        etl=True,
    ),
    Step(
        "catalog",
        "item catalogue, user profiles, knowledge graph -> lake tables (bad rows quarantined)",
        _catalog,
        description=(
            "Clean the reference inputs that are set (paths.raw_items: item_id, title, any "
            "fields; paths.raw_users: user_id, any fields; paths.raw_kg: head, relation, tail; "
            "paths.raw_links: item_id, entity) into lake tables items, users, kg_triples and "
            "item_entities for --ds, each record kept once or quarantined with a reason in "
            "catalog_quarantine (a key with conflicting versions: conflicting_record), counts "
            "reconciled exactly. With none set it does nothing and says so."
        ),
        etl=True,
    ),
    Step(
        "vocab",
        "extend the persistent user/item integer indexes with new ids",
        _lake_stage("vocab"),
        etl=True,
    ),
    Step(
        "features",
        "declared feature specs -> item_features, user_features (stable value indexes)",
        _features,
        description=(
            "Build the features declared in features.items and features.users (kind "
            "categorical, multi, numeric or text; see conf/features/) from the newest catalogue "
            "snapshot at or before --ds, one row per item or user that vocab indexed: "
            "categorical and multi-valued values get stable indexes in feature_vocab (0 "
            "missing, 1 out of vocabulary), numbers are standardised or bucketised, text is "
            "hashed into tokens. Statistics per feature go to the manifest. With no feature "
            "declared it does nothing and says so."
        ),
        etl=True,
    ),
    Step(
        "sessionize",
        "events -> sessions (explicit session_id or an inactivity gap)",
        _lake_stage("sessionize"),
        etl=True,
    ),
    Step(
        "split",
        "sessions -> train/valid/test under each protocol in split.protocols",
        _lake_stage("split"),
        etl=True,
    ),
    Step(
        "export",
        "train splits -> Parquet training samples (pairwise, pointwise, sequence, bag) for the "
        "deep models, train.processes x n files per table of about export.rows_per_file rows",
        _lake_stage("export"),
        description=(
            "Export each protocol's train split as the deep models' samples (pairwise, pointwise, "
            "sequence): train.processes x n Parquet files per table, n at least "
            "export.files_per_process and enough for files of about export.rows_per_file rows."
        ),
    ),
    Step(
        "train-baseline",
        "train a baseline on the train split of each protocol in split.protocols",
        _train_baseline,
        models="baseline",
        model_help="baseline to train; repeat for several (default: baselines.models)",
        description=(
            "Train popularity, item-kNN (Spark), implicit ALS (Spark MLlib) or EASE; models go to "
            "<paths.root>/models/<model>/<ds>/<protocol>/."
        ),
    ),
    Step(
        "train",
        "train deep models (PyTorch) on the exported samples, then evaluate them",
        _train,
        models="deep",
        model_help=(
            f"deep model to train ({', '.join(model_names('deep'))}); repeat for several "
            "(default: train.models)"
        ),
        description=(
            "Train each model in train.models (or --model) on the export stage's samples of every "
            "protocol in split.protocols, with train.launcher (local | torchrun | spark | horovod, "
            "the last in the Horovod environment: train.horovod_env, make legacy-venv) reading "
            "through train.loader (arrow | petastorm) and early stopping on the valid split; the "
            "model goes to <paths.root>/models/<model>/<ds>/<protocol>/model.pt and is then "
            "evaluated like the baselines. Model settings: conf/models/<model>.yaml (keys "
            "models.<model>.*)."
        ),
    ),
    Step(
        "evaluate",
        "full-ranking metrics of trained models on evaluation.split",
        _evaluate,
        models="any",
        model_help=(
            f"model to evaluate: a baseline ({', '.join(model_names('baseline'))}) or a trained "
            "deep model; repeat for several (default: every model trained for --ds)"
        ),
        description=(
            "Evaluate trained models under every protocol in split.protocols; metrics go to the "
            "manifest and to table <warehouse.database>.model_metrics."
        ),
    ),
    Step(
        "gate",
        "compare the candidate model with the baseline (gate.*) and record the decision",
        _gate,
        description=(
            "Read gate.metric@gate.k of gate.candidate (default: the best evaluated deep model) "
            "and gate.baseline from model_metrics (score.protocol, evaluation.split); the "
            "candidate passes when it is at least the baseline minus gate.tolerance. Writes "
            "manifest 'gate'. A failing gate exits 0."
        ),
    ),
    Step(
        "score",
        "top-K per user scored on the Spark executors, published to the recommendations table",
        _score,
        models="any",
        model_help=(
            "trained model (baseline or deep) to score; repeat for several (default: the gate's "
            "choice for --ds, from model_metrics)"
        ),
        description=(
            "Score every user of the sessions partition of --ds with one trained model (trained "
            "for score.model_ds, default --ds, on every interaction up to it with score.train_on="
            "all, the default, else on score.protocol's train split): blocked matrix "
            "products and top-K in torch on each partition (score.partitions, score.user_block, "
            "score.item_block, score.device), each user's history excluded. Users the model cannot "
            "score get the popularity list of the last score.popular_window_days days (source "
            "'popular'). Published to recommendations partition (ds, model)."
        ),
    ),
    Step(
        "publish",
        "publish the gate's choice as the served recommendations (model=publish.name)",
        _publish,
        description=(
            "Decide with the gate, then copy the chosen model's scored partition (scored first if "
            "missing) into recommendations partition (ds, publish.name); the decision and its "
            "reason go to the manifest and to model_metrics (ds, publish.name). A failing gate "
            "publishes the baseline and exits 0."
        ),
    ),
)

STEPS: dict[str, Step] = {step.name: step for step in PIPELINE}
ETL_STEPS: tuple[str, ...] = tuple(step.name for step in PIPELINE if step.etl)


def step(name: str) -> Step:
    """The step called ``name``."""
    try:
        return STEPS[name]
    except KeyError:
        raise ValueError(f"unknown pipeline step {name!r}; steps: {', '.join(STEPS)}") from None


def run_steps(ctx: StepContext, names: Sequence[str]) -> StepResult:
    """Run the named steps in order on one context (one Spark session); results concatenated."""
    total = StepResult([])
    for name in names:
        result = step(name).run(ctx)
        total.manifests += result.manifests
        total.evaluations += result.evaluations
        total.notes += result.notes
    return total


def check_model_name(name: str) -> None:
    """ConfigError unless ``name`` is a registered baseline or deep model."""
    try:
        kind_of(name)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def gate_choice(config: Config, ds: str) -> tuple[str, str]:
    """The model the gate picks for ``ds`` (from ``model_metrics``), and its decision in words."""
    from recpipe.stages.gate import decide_for, outcome

    decision = decide_for(config, ds)
    return decision.published, outcome(decision.to_dict())
