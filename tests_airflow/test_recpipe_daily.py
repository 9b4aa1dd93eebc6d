"""The daily DAG under real Airflow: parsing, task graph, and dag.test() end to end.

dag.test() runs every task in this process; each task is a real spark-submit of a jobs/ script
in the main environment. Outputs are read back here with pyarrow and json only (recpipe is not
installed in the Airflow environment).
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

from conftest import DAG_ID, DS1, REPO, run_with_dag_test
from dag_outputs import K, events, lake_counts, land, manifest, published, run_conf

DS2 = "2026-11-21"
STAGES = [
    "clean", "catalog", "vocab", "features", "sessionize", "split", "train_baselines", "export",
    "train",
    "evaluate", "score", "publish",
]  # fmt: skip


def _bag():
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(REPO / "airflow_dags"))


def test_dagbag_loads_without_import_errors_and_the_graph_is_the_pipeline(airflow_db) -> None:
    bag = _bag()
    assert bag.import_errors == {}
    dag = bag.get_dag(DAG_ID)
    assert dag is not None and set(dag.task_ids) == set(STAGES)
    upstream = {task_id: dag.get_task(task_id).upstream_task_ids for task_id in STAGES}
    assert upstream == {
        "clean": set(), "catalog": {"clean"}, "vocab": {"catalog"}, "features": {"vocab"},
        "sessionize": {"features"},
        "split": {"sessionize"},
        "train_baselines": {"split"}, "export": {"split"}, "train": {"export"},
        "evaluate": {"train_baselines", "train"}, "score": {"evaluate"}, "publish": {"score"},
    }  # fmt: skip
    assert dag.max_active_runs == 1 and dag.catchup is False
    assert dag.get_task("vocab").depends_on_past is True
    assert dag.get_task("features").depends_on_past is True
    assert all(dag.get_task(t).execution_timeout is not None for t in STAGES)
    assert "recpipe" in dag.tags and dag.doc_md


def test_parsing_the_dag_imports_nothing_heavy() -> None:
    code = (
        "import sys, runpy; runpy.run_path(sys.argv[1]); "
        "print(sorted(m for m in ('pyspark', 'torch', 'recpipe', 'pandas') if m in sys.modules))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, str(REPO / "airflow_dags" / "recpipe_daily.py")],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert done.stdout.strip().splitlines()[-1] == "[]"


def _run(work: Path, ds: str) -> None:
    run_with_dag_test(ds, run_conf(work / "landing", work / "root", "airflow_tests"))


def _manifest(work: Path, stage: str, ds: str) -> dict:
    return manifest(work / "root", stage, ds)


def _published(work: Path, ds: str) -> tuple[dict, list[dict]]:
    return published(work / "root", "airflow_tests", ds)


def _lake_counts(work: Path, ds: str) -> dict[str, int]:
    return lake_counts(work / "root", ds)


def test_dag_run_publishes_a_reconciled_partition(work, first_day) -> None:
    for stage in ("clean", "vocab", "sessionize", "split", "export", "train-bpr_mf", "gate",
                  "publish"):  # fmt: skip
        assert _manifest(work, stage, DS1)["status"] == "ok", stage
    clean = _manifest(work, "clean", DS1)
    assert clean["rows_in"] == len(first_day["events"])
    catalog = _manifest(work, "catalog", DS1)["inputs"]
    assert set(catalog) == {"items"}  # only raw_items was given
    assert catalog["items"]["rows_out"] == len({e["item_id"] for e in first_day["events"]})
    features = _manifest(work, "features", DS1)
    items = len({e["item_id"] for e in first_day["events"]})
    assert features["tables"]["items"]["rows_out"] == items  # every item is titled and indexed
    assert features["features"]["items.title_words"]["rows_with_value"] == items
    pointer, rows = _published(work, DS1)
    publish = _manifest(work, "publish", DS1)
    chosen = publish["published_model"]
    assert pointer["source_model"] == chosen and pointer["rows"] == len(rows)
    assert publish["rows_out"] == len(rows) == sum(publish["source_counts"].values())
    per_user = Counter(row["user_id"] for row in rows)
    assert set(per_user) == {e["user_id"] for e in first_day["events"]}
    assert set(per_user.values()) == {K}
    seen = {(e["user_id"], e["item_id"]) for e in first_day["events"]}
    assert not any((row["user_id"], row["item_id"]) in seen for row in rows)


def test_rerunning_a_day_is_idempotent_and_a_new_day_adds_a_partition(work, first_day) -> None:
    counts = _lake_counts(work, DS1)
    pointer, rows = _published(work, DS1)
    _run(work, DS1)
    again_pointer, again_rows = _published(work, DS1)
    assert _lake_counts(work, DS1) == counts
    assert len(again_rows) == len(rows) and again_pointer["rows"] == pointer["rows"]
    assert again_pointer["path"] != pointer["path"]  # really re-published

    land(work / "landing", DS2, events(DS2, range(10, 30)))  # returning users and 6 new ones
    _run(work, DS2)
    day2_pointer, day2_rows = _published(work, DS2)
    assert day2_rows and day2_pointer["path"] != again_pointer["path"]
    assert _published(work, DS1)[0] == again_pointer  # day 1 untouched
    assert _lake_counts(work, DS1) == counts


def test_train_task_can_be_a_configured_cluster_command(airflow_db) -> None:
    """RECPIPE_TRAIN_COMMAND swaps spark-submit training for a shell command (torchrun,
    horovodrun on a GPU box); the command gets the run's ds and arguments."""
    code = """
import json, os, sys
os.environ["RECPIPE_TRAIN_COMMAND"] = "ssh gpu01 recpipe train {args} # {ds}"
from airflow.dag_processing.dagbag import DagBag
dag = DagBag(dag_folder=sys.argv[1]).get_dag("recpipe_daily")
task = dag.get_task("train")
params = {"baselines": ["als"], "deep_models": ["sasrec"], "raw_events": "",
          "overrides": ["a.b=c d"]}
env = dag.get_template_env()
text = env.from_string(task.bash_command).render(ds="2026-11-22", params=params)
print(json.dumps([type(task).__name__, text]))
"""
    kind, command = _last_json_line(code, str(REPO / "airflow_dags"))
    assert kind == "BashOperator"
    assert command.startswith("ssh gpu01 recpipe train --ds 2026-11-22 --conf ")
    assert "--set 'train.models=[sasrec]'" in command and "--set 'a.b=c d'" in command
    assert command.endswith("--no-evaluate # 2026-11-22")


def test_cluster_deploy_mode_ships_the_config_files() -> None:
    code = """
import json, os, sys
os.environ["RECPIPE_DEPLOY_MODE"] = "cluster"
os.environ["RECPIPE_CONF"] = "/etc/recpipe/base.yaml:/etc/recpipe/cluster.yaml"
import runpy
module = runpy.run_path(sys.argv[1])
task = module["dag"].get_task("clean")
params = {"baselines": ["als"], "deep_models": ["sasrec"], "raw_events": "", "overrides": []}
print(json.dumps([task.files, module["stage_args"]("2026-11-22", params)]))
"""
    files, args = _last_json_line(code, str(REPO / "airflow_dags" / "recpipe_daily.py"))
    assert files == "/etc/recpipe/base.yaml,/etc/recpipe/cluster.yaml"
    assert args[:6] == ["--ds", "2026-11-22", "--conf", "base.yaml", "--conf", "cluster.yaml"]


def test_executors_get_the_shipped_environment_and_the_driver_its_own_python() -> None:
    """RECPIPE_ENV_ARCHIVE ships the executors' environment with --archives; the driver keeps
    RECPIPE_PYTHON. The spark-submit command line is built by the provider's own hook."""
    code = """
import json, os, sys
os.environ["RECPIPE_ENV_ARCHIVE"] = "hdfs://nn/recpipe/recpipe-env.tar.gz"
os.environ["RECPIPE_PYTHON"] = "/opt/recpipe/.venv/bin/python"
import runpy
module = runpy.run_path(sys.argv[1])
task = module["dag"].get_task("clean")
from airflow.providers.apache.spark.hooks.spark_submit import SparkSubmitHook
hook = SparkSubmitHook(conn_id="spark_default", archives=task._archives,
                       env_vars=task.env_vars)
print(json.dumps([hook._build_spark_submit_command(task.application), task.env_vars]))
"""
    command, env = _last_json_line(code, str(REPO / "airflow_dags" / "recpipe_daily.py"))
    at = command.index("--archives")
    assert command[at + 1] == "hdfs://nn/recpipe/recpipe-env.tar.gz#environment"
    assert env == {"PYSPARK_PYTHON": "./environment/bin/python",
                   "PYSPARK_DRIVER_PYTHON": "/opt/recpipe/.venv/bin/python"}  # fmt: skip


def _last_json_line(code: str, path: str) -> object:
    """Run ``code`` in a fresh interpreter of this environment with ``path`` as its argument;
    the JSON its last output line holds."""
    done = subprocess.run(
        [sys.executable, "-c", code, path], capture_output=True, text=True, check=False
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])
