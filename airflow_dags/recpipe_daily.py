"""recpipe daily pipeline: one ``spark-submit`` of a ``jobs/`` script per stage.

Deployment settings are read from the environment when the DAG is parsed (cheap, no database
access); runtime choices are DAG params. Nothing heavy (pyspark, torch, recpipe) is imported
here: every stage runs in the main recpipe environment through its ``spark-submit``.
"""

from __future__ import annotations

import importlib.util
import os
import shlex
import shutil
import sys
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from airflow.providers.apache.spark.operators.spark_submit import SparkSubmitOperator
from airflow.providers.standard.operators.bash import BashOperator
from airflow.sdk import DAG, BaseOperator, Param
from airflow.timetables.interval import CronDataIntervalTimetable

DAG_ID = "recpipe_daily"
# The catalog stage's landing paths (optional): item catalogue, user profiles, knowledge graph,
# item -> entity links, each a DAG param named like its paths.* config key.
REFERENCE_PARAMS = ("raw_items", "raw_users", "raw_kg", "raw_links")


def _home() -> Path:
    """The recpipe deployment (``jobs/`` and ``conf/``): $RECPIPE_HOME, else this checkout."""
    configured = os.environ.get("RECPIPE_HOME")
    return Path(configured) if configured else Path(__file__).resolve().parent.parent


HOME = _home()
SPARK_SUBMIT = os.environ.get("RECPIPE_SPARK_SUBMIT") or (
    str(HOME / ".venv" / "bin" / "spark-submit")
    if (HOME / ".venv" / "bin" / "spark-submit").exists()
    else shutil.which("spark-submit") or "spark-submit"
)
# The driver's interpreter, of the main environment: it must import recpipe, torch and full
# pyspark (spark-submit runs the job script with it).
PYTHON = os.environ.get("RECPIPE_PYTHON") or str(Path(SPARK_SUBMIT).parent / "python")
# The executors' environment: an archive from `make dist` (dist/recpipe-env.tar.gz, a path or
# URI every node can fetch) that spark-submit ships with --archives ARCHIVE#environment; its
# executors then run ./environment/bin/python. Without an archive, executors run
# RECPIPE_EXECUTOR_PYTHON (default: the driver's interpreter, for machines sharing one install).
ENV_ARCHIVE = os.environ.get("RECPIPE_ENV_ARCHIVE") or None
EXECUTOR_PYTHON = os.environ.get("RECPIPE_EXECUTOR_PYTHON") or (
    "./environment/bin/python" if ENV_ARCHIVE else PYTHON
)
# Under spark-submit recpipe takes master, deploy mode and resources from the launcher (the
# Spark connection below), never from these files: local.yaml's local[*] does not apply here.
CONF_FILES = os.environ.get(
    "RECPIPE_CONF", f"{HOME / 'conf' / 'base.yaml'}:{HOME / 'conf' / 'local.yaml'}"
).split(":")


def _registered_models(kind: str) -> list[str]:
    """Model names of one kind from recpipe's model table (a plain-Python file, loaded by path:
    importing the recpipe package here would need the main environment)."""
    path = HOME / "recpipe" / "registry.py"
    spec = importlib.util.spec_from_file_location("_recpipe_registry", path)
    if spec is None or spec.loader is None:
        raise ImportError(f"recpipe model table not found: {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return list(module.model_names(kind))


PY_FILES = os.environ.get("RECPIPE_PY_FILES")  # e.g. dist/recpipe.zip for a cluster
# cluster: the driver runs on the cluster, so the config files travel with --files and the
# job reads them from its working directory; client: the driver reads them where they are.
DEPLOY_MODE = os.environ.get("RECPIPE_DEPLOY_MODE", "client")
SPARK_CONN = os.environ.get("RECPIPE_SPARK_CONN", "spark_default")
RETRIES = int(os.environ.get("RECPIPE_RETRIES", "2"))
# Training on a torchrun/horovodrun cluster instead of under spark-submit: a shell command with
# {ds} and {args} (the stage's arguments, shell-quoted), e.g.
#   ssh gpu01 'cd /opt/recpipe && .venv/bin/recpipe train {args} --set train.launcher=torchrun'
# or, on a Horovod cluster (the Horovod environment built with make legacy-venv):
#   .venv/bin/recpipe train {args} --set train.launcher=horovod --set train.loader=petastorm
#     --set train.horovod_env=.venv-legacy --set train.horovod_hosts=gpu01:4,gpu02:4
TRAIN_COMMAND = os.environ.get("RECPIPE_TRAIN_COMMAND")

DOC = f"""
# recpipe daily

One task per stage, each a `spark-submit` of `jobs/<stage>.py --ds {{{{ ds }}}}` with the
config files `{", ".join(CONF_FILES)}` and the run's params as `--set` overrides:

clean → catalog → vocab → features → sessionize → split → (train_baselines, export) → train
→ evaluate (+ gate) → score (the gate's choice) → publish (`recommendations` partition
`model=published`). `catalog` cleans the item catalogue, user profiles and knowledge graph
when their params are set, and does nothing otherwise; `features` builds the feature tables
the config declares (`features.items`, `features.users`), and does nothing without them.

* **Data interval**: `ds` is the start of the daily data interval; every task reads and
  writes only that `ds` partition (never the wall clock), so re-running a day replaces it
  exactly and a backfill runs day after day (`max_active_runs=1`; `vocab` depends on the
  previous day's run because indexes extend the previous day's).
* **Params**: `raw_events` and `raw_items`, `raw_users`, `raw_kg`, `raw_links` (landing
  paths, `{{ds}}` is replaced by the run's ds; the last four optional), `baselines`,
  `deep_models`, `overrides` (extra `key=value` config overrides, e.g. `train.processes=4`).
* **Where things run**: `spark-submit` = `{SPARK_SUBMIT}`, connection `{SPARK_CONN}`
  (its host is the master, e.g. `local[2]` or `yarn`; the config files never override the
  master or resources under spark-submit, and each manifest records `spark_master`); training
  `{TRAIN_COMMAND or "under spark-submit with the spark launcher (TorchDistributor)"}`.
* **Python**: the driver runs `{PYTHON}`; executors run `{EXECUTOR_PYTHON}`{
    f" from the archive `{ENV_ARCHIVE}` (shipped with `--archives`)" if ENV_ARCHIVE else ""
}.
* **What a run did**: `<paths.root>/manifests/<stage>/ds=<ds>.json`.
"""


def stage_args(ds: str, params: dict[str, Any], *extra: str) -> list[str]:
    """Arguments of a ``jobs/`` script for this run (a DAG macro; rendered natively)."""
    args = ["--ds", ds]
    for path in CONF_FILES:
        args += ["--conf", Path(path).name if DEPLOY_MODE == "cluster" else path]
    overrides = [
        f"baselines.models=[{','.join(params['baselines'])}]",
        f"train.models=[{','.join(params['deep_models'])}]",
    ]
    for name in ("raw_events", *REFERENCE_PARAMS):
        if params.get(name):
            overrides.append(f"paths.{name}={params[name].replace('{ds}', ds)}")
    overrides += list(params.get("overrides") or [])
    for override in overrides:
        args += ["--set", override]
    return [*args, *extra]


def shell_args(ds: str, params: dict[str, Any], *extra: str) -> str:
    """:func:`stage_args` as one shell-quoted string (for ``RECPIPE_TRAIN_COMMAND``)."""
    return shlex.join(stage_args(ds, params, *extra))


def train_task(timeout: timedelta) -> BaseOperator:
    """Training under spark-submit (the ``spark`` launcher), or ``RECPIPE_TRAIN_COMMAND``."""
    if not TRAIN_COMMAND:
        return stage(
            "train", "train", "--no-evaluate", "--set", "train.launcher=spark", timeout=timeout
        )
    command = TRAIN_COMMAND.replace("{ds}", "{{ ds }}").replace(
        "{args}", "{{ shell_args(ds, params, '--no-evaluate') }}"
    )
    return BashOperator(task_id="train", bash_command=command, execution_timeout=timeout)


def stage(task_id: str, job: str, *extra: str, timeout: timedelta) -> SparkSubmitOperator:
    """A ``spark-submit jobs/<job>.py`` task with this run's arguments."""
    quoted = ", ".join(repr(item) for item in extra)
    return SparkSubmitOperator(
        task_id=task_id,
        conn_id=SPARK_CONN,
        spark_binary=SPARK_SUBMIT,
        application=str(HOME / "jobs" / f"{job}.py"),
        application_args=f"{{{{ stage_args(ds, params, {quoted}) }}}}",  # type: ignore[arg-type]
        py_files=PY_FILES,
        files=",".join(CONF_FILES) if DEPLOY_MODE == "cluster" else None,
        name=f"recpipe-{task_id}-{{{{ ds }}}}",
        archives=f"{ENV_ARCHIVE}#environment" if ENV_ARCHIVE else None,
        conf={"spark.ui.enabled": "false"},
        env_vars={"PYSPARK_PYTHON": EXECUTOR_PYTHON, "PYSPARK_DRIVER_PYTHON": PYTHON},
        execution_timeout=timeout,
    )


with DAG(
    dag_id=DAG_ID,
    description="raw logs -> cleaned events -> models -> gated top-K recommendations",
    schedule=CronDataIntervalTimetable("0 2 * * *", timezone="UTC"),
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
    tags=["recpipe", "spark", "recommendations"],
    doc_md=DOC,
    render_template_as_native_obj=True,  # stage_args renders to the argument list itself
    user_defined_macros={"stage_args": stage_args, "shell_args": shell_args},
    params={
        "raw_events": Param("", type="string", description="landing path; {ds} = the run's ds"),
        **{
            name: Param("", type="string", description=f"optional {name} landing path for catalog")
            for name in REFERENCE_PARAMS
        },
        "baselines": Param(_registered_models("baseline"), type="array"),
        "deep_models": Param(_registered_models("deep"), type="array"),
        "overrides": Param([], type="array", description="extra key=value config overrides"),
    },
    default_args={
        "owner": "recpipe",
        "retries": RETRIES,
        "retry_delay": timedelta(minutes=2),
        "retry_exponential_backoff": 2.0,
        "max_retry_delay": timedelta(minutes=30),
    },
) as dag:
    short, long = timedelta(hours=1), timedelta(hours=6)
    clean = stage("clean", "clean", timeout=short)
    catalog = stage("catalog", "catalog", timeout=short)
    vocab = stage("vocab", "vocab", timeout=short)
    vocab.depends_on_past = True  # indexes extend the previous day's vocabulary
    features = stage("features", "features", timeout=short)
    features.depends_on_past = True  # feature value indexes extend the previous day's too
    sessionize = stage("sessionize", "sessionize", timeout=short)
    split = stage("split", "split", timeout=short)
    baselines = stage("train_baselines", "train_baseline", timeout=long)
    export = stage("export", "export", timeout=short)
    train = train_task(timeout=long)
    evaluate = stage("evaluate", "evaluate", timeout=long)
    score = stage("score", "score", timeout=long)
    publish = stage("publish", "publish", timeout=short)

    clean >> catalog >> vocab >> features >> sessionize >> split >> [baselines, export]
    export >> train
    [baselines, train] >> evaluate >> score >> publish
