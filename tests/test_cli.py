"""The real console script and spark-submit jobs, run as subprocesses (fresh JVMs)."""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from recpipe.cli import build_parser
from recpipe.spark import SparkStartError, check_embedded_metastore_free

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
DS = "2026-11-22"
T0 = 1795341600  # 2026-11-22T10:00:00Z


def run(args: list[str], cwd: Path, env_extra: dict[str, str] | None = None):
    env = {**os.environ, "PYSPARK_PYTHON": sys.executable, **(env_extra or {})}
    return subprocess.run(
        args, cwd=cwd, env=env, capture_output=True, text=True, timeout=600, check=False
    )


def mixed_lines() -> list[str]:
    good = [
        {"user_id": f"u{u}", "item_id": f"i{k}", "event_type": "view", "ts": T0 + 60 * k + u}
        for u in range(3)
        for k in range(4)
    ]
    lines = [json.dumps(r) for r in good]
    lines += [lines[0], "{trunc", "[]", json.dumps({"user_id": "u9", "ts": T0})]
    return lines


def test_help_explains_every_option() -> None:
    parser = build_parser()
    text = parser.format_help()
    for command in ("fetch-data", "generate", "clean", "vocab", "sessionize", "split", "demo"):
        assert command in text
    sub = subprocess.run(
        [str(BIN / "recpipe"), "clean", "--help"], capture_output=True, text=True, check=True
    )
    for option in ("--conf", "--set", "--ds", "--verbose"):
        assert option in sub.stdout
    # every option of every command carries a help text
    for action in parser._subparsers._group_actions[0].choices.values():
        for option in action._actions:
            assert option.help, f"{action.prog} {option.option_strings} has no help"


def test_demo_defaults_to_today_and_stages_require_ds(capsys) -> None:
    """`make demo` runs `recpipe demo` with no --ds: the demo takes today's UTC date; a stage
    never silently processes the wall-clock date."""
    before = dt.datetime.now(dt.UTC).date().isoformat()
    parsed = build_parser().parse_args(["demo"])
    after = dt.datetime.now(dt.UTC).date().isoformat()
    assert parsed.ds in {before, after}
    assert build_parser().parse_args(["demo", "--ds", "2026-11-20"]).ds == "2026-11-20"
    with pytest.raises(SystemExit):
        build_parser().parse_args(["clean"])
    assert "--ds" in capsys.readouterr().err


@pytest.mark.slow
def test_clean_cli_relocates_everything_under_root(tmp_path: Path) -> None:
    """The acceptance command: exit 0, exact reconciliation, all state under paths.root."""
    raw = tmp_path / "input" / "events.jsonl"
    raw.parent.mkdir()
    raw.write_text("\n".join(mixed_lines()) + "\n")
    root = tmp_path / "state"
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    scratch = tmp_path / "tmpdir"
    scratch.mkdir()
    result = run(
        [str(BIN / "recpipe"), "etl", "--set", f"paths.root={root}", "--set",
         f"paths.raw_events={raw}", "--ds", DS],
        cwd,
        {"TMPDIR": str(scratch)},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "recpipe stage summary" in result.stdout
    manifest = json.loads((root / "manifests" / "clean" / f"ds={DS}.json").read_text())
    assert manifest["rows_in"] == 16
    assert manifest["rows_out"] == 12
    assert manifest["rows_duplicate"] == 1
    assert manifest["quarantine_by_reason"] == {
        "malformed_record": 1,
        "not_an_object": 1,
        "missing_item_id": 1,
    }
    for stage in ("clean", "vocab", "sessionize", "split"):
        assert (root / "manifests" / stage / f"ds={DS}.json").is_file()
        assert (root / "manifests" / stage / f"ds={DS}.config.yaml").is_file()
    # A real Hive catalog write in a second process, also from the empty cwd.
    script = (
        "from recpipe.config import load_config; from recpipe.spark import get_spark; "
        f"s = get_spark(load_config(None, ['paths.root={root}'])); "
        "s.sql('CREATE DATABASE IF NOT EXISTS recpipe_check'); "
        "print(s.catalog.getDatabase('recpipe_check').locationUri)"
    )
    hive = run([sys.executable, "-c", script], cwd, {"TMPDIR": str(scratch)})
    assert hive.returncode == 0, hive.stderr[-3000:]
    assert str(root / "warehouse") in hive.stdout
    assert (root / "metastore" / "metastore_db").is_dir()
    assert (root / "metastore" / "derby.log").is_file()
    assert list(cwd.iterdir()) == []  # nothing written to the working directory
    assert list(scratch.iterdir()) == []  # nor to the temp folder


def test_unreachable_master_is_one_line_and_starts_nothing(tmp_path: Path) -> None:
    import socket

    with socket.socket() as sock:  # free a moment ago: nothing listens there
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    root = tmp_path / "state"
    result = run(
        [str(BIN / "recpipe"), "clean", "--ds", DS, "--set", f"paths.root={root}",
         "--set", f"paths.raw_events={tmp_path}", "--set", f"spark.master=spark://127.0.0.1:{port}"],
        tmp_path,
    )  # fmt: skip
    assert result.returncode == 1
    assert (
        result.stderr.strip()
        .splitlines()[-1]
        .startswith(
            f"recpipe clean: spark.master spark://127.0.0.1:{port}: no Spark master reachable"
        )
    )
    assert "Traceback" not in result.stderr and "Exception" not in result.stderr
    assert not (root / "lake").exists()


def test_an_embedded_metastore_open_elsewhere_is_one_line(spark, tmp_path: Path) -> None:
    """This test process's JVM has its session's Derby metastore open: a recpipe command on
    the same paths.local is refused in one line before it starts a JVM, not with Hive's page of
    Java traces; a lock file nobody holds (a killed run's) is no obstacle."""
    spark.sql("SHOW DATABASES").collect()  # Derby boots on first use
    url = spark.sparkContext.getConf().get("spark.hadoop.javax.jdo.option.ConnectionURL")
    found = re.match(r"jdbc:derby:;databaseName=([^;]+)", url or "")
    assert found, url
    database = Path(found.group(1))
    assert (database / "dbex.lck").exists()
    result = run(
        [str(BIN / "recpipe"), "sql", "SHOW DATABASES", "--set", f"paths.root={tmp_path / 'r'}",
         "--set", f"paths.local={database.parent.parent}"],
        tmp_path,
    )  # fmt: skip
    assert result.returncode == 1, result.stderr
    assert (
        result.stderr.strip()
        .splitlines()[-1]
        .startswith(f"recpipe sql: the embedded metastore {database} is open in another process")
    ), result.stderr
    assert "Traceback" not in result.stderr and "\tat org." not in result.stderr

    stale = tmp_path / "stale" / "metastore_db"
    stale.mkdir(parents=True)
    (stale / "dbex.lck").write_bytes(b"\0" * 8)  # what a killed JVM leaves: the file, no lock
    check_embedded_metastore_free(
        {"spark.hadoop.javax.jdo.option.ConnectionURL": f"jdbc:derby:;databaseName={stale}"}
    )


def test_a_metastore_let_go_within_the_grace_period_is_waited_for(tmp_path: Path) -> None:
    """A chain's previous command may still be shutting its JVM down: the probe waits for a
    lock released within ``grace_seconds`` and refuses one held past it."""
    database = tmp_path / "metastore_db"
    database.mkdir()
    lock = database / "dbex.lck"
    lock.write_bytes(b"\0" * 8)
    conf = {"spark.hadoop.javax.jdo.option.ConnectionURL": f"jdbc:derby:;databaseName={database}"}
    hold = (
        "import fcntl, os, sys, time; h = os.open(sys.argv[1], os.O_RDWR); "
        "fcntl.lockf(h, fcntl.LOCK_EX); print('held', flush=True); time.sleep(float(sys.argv[2]))"
    )

    def holder(seconds: float) -> subprocess.Popen[str]:
        process = subprocess.Popen(
            [sys.executable, "-c", hold, str(lock), str(seconds)], stdout=subprocess.PIPE, text=True
        )
        assert process.stdout is not None and process.stdout.readline().strip() == "held"
        return process

    brief = holder(1.5)
    started = time.monotonic()
    check_embedded_metastore_free(conf, grace_seconds=20)
    waited = time.monotonic() - started
    brief.wait()
    assert 0.5 < waited < 20  # it did wait, and went on once the holder let go
    long = holder(30)
    try:
        with pytest.raises(SparkStartError, match="is open in another process"):
            check_embedded_metastore_free(conf, grace_seconds=1)
    finally:
        long.kill()
        long.wait()


def test_bad_ds_and_unwritable_root_are_one_line(tmp_path: Path) -> None:
    far = run([str(BIN / "recpipe"), "clean", "--ds", "9999-12-31"], tmp_path)
    assert far.returncode == 2 and "--ds must lie between" in far.stderr
    blocked = tmp_path / "a-file"
    blocked.write_text("not a folder")
    result = run(
        [str(BIN / "recpipe"), "clean", "--ds", DS, "--set", f"paths.root={blocked / 'root'}",
         "--set", f"paths.raw_events={blocked}"],
        tmp_path,
    )  # fmt: skip
    assert result.returncode == 1
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(f"recpipe clean: Not a directory: {blocked}")
    assert "Traceback" not in result.stderr


@pytest.mark.slow
def test_config_error_exit_code_names_key(tmp_path: Path) -> None:
    result = run(
        [str(BIN / "recpipe"), "clean", "--ds", DS, "--set", "clean.max_id_length=long"], tmp_path
    )
    assert result.returncode == 2
    assert "'clean.max_id_length'" in result.stderr
    assert "Traceback" not in result.stderr
    missing = run(
        [str(BIN / "recpipe"), "vocab", "--set", f"paths.root={tmp_path}", "--ds", DS], tmp_path
    )
    assert missing.returncode == 1
    assert "recpipe clean --ds" in missing.stderr
    assert "Traceback" not in missing.stderr


@pytest.mark.slow
def test_spark_submit_job(tmp_path: Path) -> None:
    """jobs/clean.py under the real spark-submit, with the same arguments as the CLI."""
    raw = tmp_path / "events.jsonl"
    raw.write_text("\n".join(mixed_lines()) + "\n")
    root = tmp_path / "state"
    result = run(
        [str(BIN / "spark-submit"), "--master", "local[1]", str(REPO / "jobs" / "clean.py"),
         "--ds", DS, "--set", f"paths.root={root}", "--set", f"paths.raw_events={raw}"],
        tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    manifest = json.loads((root / "manifests" / "clean" / f"ds={DS}.json").read_text())
    assert (manifest["rows_in"], manifest["rows_out"], manifest["rows_quarantined"]) == (16, 12, 3)
    # conf/local.yaml asks for local[*]; spark-submit's --master wins and the manifest says so.
    assert manifest["spark_master"] == "local[1]"
    assert manifest["spark_app_id"].startswith("local-") and manifest["spark_version"]
    assert not (tmp_path / "derby.log").exists()


@pytest.mark.slow
def test_spark_submit_export_and_train_with_torch_distributor(tmp_path: Path) -> None:
    """jobs/export.py, then jobs/train.py training through TorchDistributor on the submitted
    session (2 processes), then the evaluation it runs, all under the real spark-submit."""
    events = [
        {"user_id": f"u{u}", "item_id": f"i{(u * 3 + k) % 20}", "event_type": "view",
         "ts": T0 + 60 * k + u}
        for u in range(12)
        for k in range(8)
    ]  # fmt: skip
    raw = tmp_path / "events.jsonl"
    raw.write_text("".join(json.dumps(e) + "\n" for e in events))
    root = tmp_path / "state"
    common = [
        "--ds", DS, "--set", f"paths.root={root}", "--set", f"paths.raw_events={raw}",
        "--set", "train.processes=2", "--set", "export.files_per_process=1",
        "--set", "export.max_len=4", "--set", "spark.shuffle_partitions=2",
    ]  # fmt: skip
    etl = run([str(BIN / "recpipe"), "etl", *common], tmp_path)
    assert etl.returncode == 0, etl.stderr[-3000:]
    submit = [str(BIN / "spark-submit"), "--master", "local[2]"]
    export = run([*submit, str(REPO / "jobs" / "export.py"), *common], tmp_path)
    assert export.returncode == 0, export.stderr[-3000:]
    train = run(
        [*submit, str(REPO / "jobs" / "train.py"), *common, "--model", "bpr_mf",
         "--set", "train.launcher=spark", "--set", "train.max_epochs=1"],
        tmp_path,
    )  # fmt: skip
    assert train.returncode == 0, train.stderr[-3000:]
    manifest = json.loads((root / "manifests" / "train-bpr_mf" / f"ds={DS}.json").read_text())
    info = manifest["protocols"]["leave_last_out"]
    assert manifest["launcher"] == "spark" and info["world_size"] == 2
    assert info["replica_checksums"][0] == info["replica_checksums"][1]
    evaluated = json.loads((root / "manifests" / "evaluate-bpr_mf" / f"ds={DS}.json").read_text())
    assert evaluated["status"] == "ok" and evaluated["results"][0]["users"] == 12
    assert "trained deep models" in train.stdout
