"""One commit point per stage run, one run per (stage, ds), and SIGKILL at every commit step.

Killed runs are real ``recpipe`` processes (their own JVM) stopped by an injected SIGKILL
(``RECPIPE_KILL_AT``); readers afterwards are Spark (``Lake.read``) and pyarrow on the folders
the manifests name. Expected row counts come from the raw input the test wrote.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
from helpers import build_config, run_chain, write_jsonl
from pyspark.sql import SparkSession

from recpipe.config import Config
from recpipe.errors import MissingInputError
from recpipe.lake import Lake
from recpipe.layout import lock_path
from recpipe.locks import StageLock, StageLockedError
from recpipe.manifest import StageRun, last_attempt
from recpipe.stages.clean import run_clean
from recpipe.stages.export import run_export
from recpipe.stages.sessionize import run_sessionize
from recpipe.stages.split import run_split
from recpipe.storage import Location

DS1, DS2, DS3 = "2026-11-10", "2026-11-11", "2026-11-12"
COMMON = (
    "split.protocols=[leave_last_out]",
    "export.kinds=[pairwise]",
    "export.negatives=1",
    "export.files_per_process=1",
    "train.processes=1",
    "spark.master=local[1]",
    "spark.shuffle_partitions=2",
    "spark.log_level=ERROR",
)


def _events(day: str, users: range, bad: int) -> list[Any]:
    good = [
        {"user_id": f"u{u}", "item_id": f"i{(u + k) % 9}", "event_type": "view",
         "ts": f"{day}T{10 + k:02d}:00:{u:02d}Z"}
        for u in users
        for k in range(5)
    ]  # fmt: skip
    return good + [{"user_id": f"bad{n}", "ts": f"{day}T09:00:00Z"} for n in range(bad)]


def _outputs(root: Path, stage: str, ds: str) -> dict[str, dict[str, Any]]:
    manifest = json.loads((root / "manifests" / stage / f"ds={ds}.json").read_text())
    assert manifest["status"] == "ok"
    return manifest["outputs"]


def _check_complete(spark: SparkSession, root: Path, outputs: dict[str, dict[str, Any]]) -> None:
    """Every version a manifest names is there, whole: footers and Spark agree with it."""
    lake = Lake(root)
    for table, parts in outputs.items():
        for name, record in parts.items():
            folder = root / record["path"]
            files = sorted(p.name for p in folder.glob("*.parquet"))
            assert files == sorted(f["file"] for f in record["files"]), (table, name)
            footer_rows = sum(pq.ParquetFile(folder / f).metadata.num_rows for f in files)
            assert footer_rows == record["rows"], (table, name)
            partition = dict(kv.split("=", 1) for kv in name.split("/"))
            assert lake.read(spark, table, [partition]).count() == record["rows"], (table, name)


def _versions(root: Path, table: str, ds: str) -> list[Path]:
    return sorted((root / "lake" / table).glob(f"ds={ds}/**/v=*"))


def _recpipe(root: Path, raw: Path, stage: str, ds: str, kill_at: str | None) -> Any:
    env = {**os.environ, "PYSPARK_PYTHON": sys.executable}
    env.pop("RECPIPE_KILL_AT", None)
    if kill_at:
        env["RECPIPE_KILL_AT"] = kill_at
    overrides = [f"paths.root={root}", f"paths.raw_events={raw}", *COMMON]
    args = [sys.executable, "-m", "recpipe", stage, "--ds", ds]
    for item in overrides:
        args += ["--set", item]
    return subprocess.run(
        args, env=env, capture_output=True, text=True, timeout=600, check=False,
        start_new_session=True,
    )  # fmt: skip


# ---------------------------------------------------------------------------------------------
# Locks and attempts (no Spark)


def test_second_run_of_same_stage_and_ds_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "x.lock"
    with StageLock(path, "clean", DS1, "run-a"):
        with pytest.raises(StageLockedError, match=rf"clean ds={DS1} is already running .*run-a"):
            StageLock(path, "clean", DS1, "run-b").acquire()
        assert json.loads(path.read_text())["pid"] == os.getpid()
    assert not path.exists()  # released
    StageLock(path, "clean", DS1, "run-c").acquire().release()


def test_lock_of_a_dead_process_is_taken_over_but_a_remote_one_is_not(tmp_path: Path) -> None:
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    path = tmp_path / "x.lock"
    path.write_text(json.dumps({"run_id": "killed", "pid": dead.pid, "host": os.uname().nodename}))
    lock = StageLock(path, "split", DS1, "next").acquire()
    assert lock.took_over is not None and lock.took_over["run_id"] == "killed"
    lock.release()
    path.write_text(json.dumps({"run_id": "far", "pid": dead.pid, "host": "another-host"}))
    with pytest.raises(StageLockedError, match="another-host"):
        StageLock(path, "split", DS1, "next").acquire()


def _write_version(config: Config, table: str, ds: str, rows: int) -> Path:
    import pyarrow as pa

    from recpipe.commit import new_version_name
    from recpipe.layout import partition_folder

    folder = (partition_folder(config.root, table, {"ds": ds}) / new_version_name()).local_path()
    folder.mkdir(parents=True)
    pq.write_table(pa.table({"x": list(range(rows))}), folder / "part-0.parquet")
    return folder


def test_failed_run_is_recorded_beside_and_its_versions_removed(tmp_path: Path) -> None:
    config = build_config(tmp_path / "root")
    with StageRun(config, "sessionize", DS1) as run:
        first = _write_version(config, "sessions", DS1, 3)
        run.add_output("sessions", f"ds={DS1}", first)
        run.record["rows_out"] = 3
    with pytest.raises(RuntimeError, match="boom"), StageRun(config, "sessionize", DS1) as run:
        doomed = _write_version(config, "sessions", DS1, 5)
        run.add_output("sessions", f"ds={DS1}", doomed)
        raise RuntimeError("boom")
    root = config.root.local_path()
    served = json.loads((root / "manifests" / "sessionize" / f"ds={DS1}.json").read_text())
    assert served["status"] == "ok" and served["rows_out"] == 3
    assert served["outputs"]["sessions"][f"ds={DS1}"]["rows"] == 3
    failed = last_attempt(config.root, "sessionize", DS1)
    assert failed is not None and failed["error"] == "RuntimeError: boom"
    assert not doomed.exists() and first.exists()
    assert Lake(config.root).partition_path("sessions", {"ds": DS1}) == Location(first)
    assert not lock_path(config.root, "sessionize", DS1).local_path().exists()


def test_versions_kept_are_current_and_previous_orphans_never_count(tmp_path: Path) -> None:
    config = build_config(tmp_path / "root")
    committed = []
    for rows in (1, 2, 3):
        with StageRun(config, "sessionize", DS1) as run:
            folder = _write_version(config, "sessions", DS1, rows)
            run.add_output("sessions", f"ds={DS1}", folder)
        committed.append(folder)
        orphan = _write_version(config, "sessions", DS1, 9)  # a killed run's leftover
    root = config.root.local_path()
    assert _versions(root, "sessions", DS1) == sorted([*committed[-2:], orphan])
    with StageRun(config, "sessionize", DS1):  # the next run sweeps before it starts
        assert _versions(root, "sessions", DS1) == committed[-2:]
        with pytest.raises(StageLockedError):
            StageRun(config, "sessionize", DS1).__enter__()
    lake = Lake(config.root)
    assert lake.ds_values("sessions") == []  # the last run committed no sessions output
    with pytest.raises(MissingInputError, match=rf"run `recpipe sessionize --ds {DS1}`"):
        lake.partition_path("sessions", {"ds": DS1})


# ---------------------------------------------------------------------------------------------
# SIGKILL at each commit step, real processes


@pytest.fixture(scope="module")
def day_one(spark: SparkSession, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A root with the whole chain for DS1, and two raw inputs for DS1 (A: committed, B: new)."""
    base = tmp_path_factory.mktemp("kill")
    root = base / "root"
    raw_a = write_jsonl(base / "a" / "e.jsonl", _events(DS1, range(10), bad=2))
    raw_b = write_jsonl(base / "b" / "e.jsonl", _events(DS1, range(14), bad=3))
    config = build_config(root, f"paths.raw_events={raw_a}", *COMMON)
    run_chain(spark, config, DS1)
    assert run_export(spark, config, DS1)["status"] == "ok"
    return {"root": root, "a": raw_a, "b": raw_b, "counts": {raw_a: (50, 2), raw_b: (70, 3)}}


RUNNERS = {
    "clean": run_clean,
    "sessionize": run_sessionize,
    "split": run_split,
    "export": run_export,
}
KILLS = [
    ("sessionize", "sessionize:before_commit"),
    ("sessionize", "sessionize:after_commit"),
    ("split", "split:before_commit"),
    ("split", "split:after_commit"),
    ("export", "export:before_commit"),
    ("export", "export:after_commit"),
    # clean last: a re-cleaned day leaves the downstream manifests of DS1 behind it, which
    # only the next day's run (below) reads through, and it reconciles per day.
    ("clean", "written:events"),  # events written, quarantine not yet
    ("clean", "clean:before_commit"),
    ("clean", "clean:after_commit"),
]


@pytest.mark.slow
@pytest.mark.parametrize(("stage", "point"), KILLS)
def test_sigkill_at_a_commit_step_leaves_old_or_new_never_a_mix(
    spark: SparkSession, day_one: dict[str, Any], stage: str, point: str
) -> None:
    root = day_one["root"]
    before = _outputs(root, stage, DS1)
    served_raw = json.loads((root / "manifests" / "clean" / f"ds={DS1}.json").read_text())["input"]
    new_raw = day_one["b"] if served_raw == str(day_one["a"]) else day_one["a"]

    killed = _recpipe(root, new_raw, stage, DS1, kill_at=point)
    assert killed.returncode == -9, killed.stderr[-2000:]

    after = _outputs(root, stage, DS1)
    assert set(after) == set(before)  # never a missing table
    assert {t: set(p) for t, p in after.items()} == {t: set(p) for t, p in before.items()}
    committed_new = point.endswith("after_commit")
    for table, parts in after.items():
        for name, record in parts.items():
            same = record["path"] == before[table][name]["path"]
            assert same != committed_new, (table, name)  # all old, or all new: never a mix
    _check_complete(spark, root, after)
    if stage == "clean":
        raw = new_raw if committed_new else Path(served_raw)
        rows_out, bad = day_one["counts"][raw]
        assert after["events"][f"ds={DS1}"]["rows"] == rows_out
        assert after["quarantine"][f"ds={DS1}"]["rows"] == bad

    # The next run of the same stage and ds is not blocked, and sweeps what the kill left.
    config = build_config(root, f"paths.raw_events={new_raw}", *COMMON)
    assert RUNNERS[stage](spark, config, DS1)["status"] == "ok"
    final = _outputs(root, stage, DS1)
    _check_complete(spark, root, final)
    manifest = json.loads((root / "manifests" / stage / f"ds={DS1}.json").read_text())
    for table, parts in final.items():
        kept = {r["path"] for r in parts.values()}
        kept |= {r["path"] for r in manifest["previous_outputs"][table].values()}
        on_disk = {str(p.relative_to(root)) for p in _versions(root, table, DS1)}
        assert on_disk == kept, table  # no orphan left, nothing referenced removed


@pytest.mark.slow
def test_next_day_runs_on_the_state_the_kills_left(
    spark: SparkSession, day_one: dict[str, Any], tmp_path: Path
) -> None:
    root = day_one["root"]
    raw = write_jsonl(tmp_path / "d2" / "e.jsonl", _events(DS2, range(5, 12), bad=0))
    config = build_config(root, f"paths.raw_events={raw}", *COMMON)
    manifests = run_chain(spark, config, DS2)  # vocab/sessionize reconcile DS1 per ds
    assert manifests["sessionize"]["events_ds"] == [DS1, DS2]
    # A day missing inside the history window is an error, not a shorter history.
    raw3 = write_jsonl(tmp_path / "d3" / "e.jsonl", _events(DS3, range(3), bad=0))
    run_clean(spark, build_config(root, f"paths.raw_events={raw3}", *COMMON), DS3)
    (root / "manifests" / "clean" / f"ds={DS2}.json").unlink()
    with pytest.raises(MissingInputError, match=rf"misses events for {DS2}.*clean --ds {DS2}"):
        run_chain(spark, build_config(root, *COMMON), DS3, ("vocab",))


def test_concurrent_cli_run_is_refused_with_one_line(tmp_path: Path) -> None:
    root = tmp_path / "root"
    raw = write_jsonl(tmp_path / "e.jsonl", _events(DS1, range(2), bad=0))
    with StageLock(lock_path(root, "clean", DS1), "clean", DS1, "holder"):
        result = _recpipe(root, raw, "clean", DS1, kill_at=None)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith(f"recpipe clean: clean ds={DS1} is already running (run holder")
    assert "Traceback" not in result.stderr
    assert not (root / "manifests" / "clean" / f"ds={DS1}.json").exists()
    assert not (root / "lake").exists()  # refused before anything was written


def test_sweep_command_removes_leftovers_and_skips_running_stages(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from recpipe.cli import main

    config = build_config(tmp_path / "root")
    root = config.root.local_path()
    with StageRun(config, "sessionize", DS1) as run:
        kept = _write_version(config, "sessions", DS1, 2)
        run.add_output("sessions", f"ds={DS1}", kept)
    orphan = _write_version(config, "sessions", DS1, 4)  # a killed re-run's version
    never_committed = _write_version(config, "sessions", DS2, 4)  # a killed first run
    running = _write_version(config, "sessions", DS3, 4)  # a run in progress
    scratch = root / "tmp" / f"clean-{DS1}-abc"
    scratch.mkdir(parents=True)
    (scratch / "part.parquet").write_bytes(b"x" * 100)
    legacy = root / "lake" / "events" / "_staging" / "old"
    legacy.mkdir(parents=True)
    with StageLock(lock_path(root, "sessionize", DS3), "sessionize", DS3, "live"):
        assert main(["sweep", "--set", f"paths.root={root}"]) == 0
    out = capsys.readouterr().out
    assert not orphan.exists() and not never_committed.exists() and not scratch.exists()
    assert not legacy.parent.exists()
    assert kept.exists() and running.exists()
    assert Lake(root).partition_path("sessions", {"ds": DS1}) == Location(kept)
    assert "already running (run live" in out and DS2 in out
    assert main(["sweep", "--set", f"paths.root={root}", "--ds", DS1]) == 0
    assert "nothing to remove" in capsys.readouterr().out
