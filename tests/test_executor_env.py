"""The executors' environment archive: checked before Spark starts, shipped on cluster masters.

Building a real archive (venv-pack of recpipe with torch) and running executors from it is
tested on the standalone cluster (``test_standalone_cluster.py``); here, small archives made
with ``tarfile`` exercise the checks and the session settings.
"""

from __future__ import annotations

import hashlib
import io
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
from helpers import build_config, write_jsonl

from recpipe.executor_env import (
    ALIAS,
    EXECUTOR_PYTHON,
    ArchiveError,
    check_archive,
    executor_requirements,
)
from recpipe.spark import ship_executor_environment

DS = "2026-11-22"
REPO = Path(__file__).resolve().parent.parent


def _small_archive(path: Path, with_checksum: bool = True) -> Path:
    """A tar.gz holding a fake ``bin/python``, and its ``.sha256`` (computed here)."""
    data = b"#!/bin/sh\n"
    with tarfile.open(path, "w:gz") as tar:
        info = tarfile.TarInfo("bin/python")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    if with_checksum:
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        path.with_name(path.name + ".sha256").write_text(f"{digest}  {path.name}\n")
    return path


def test_a_good_archive_passes_with_and_without_its_checksum(tmp_path: Path) -> None:
    check_archive(str(_small_archive(tmp_path / "env.tar.gz")), "k")
    check_archive(str(_small_archive(tmp_path / "bare.tar.gz", with_checksum=False)), "k")
    check_archive(f"{tmp_path / 'env.tar.gz'}#{ALIAS}", "k")  # Spark's #alias is allowed


def test_a_changed_byte_breaks_the_checksum(tmp_path: Path) -> None:
    archive = _small_archive(tmp_path / "env.tar.gz")
    data = bytearray(archive.read_bytes())
    data[len(data) // 2] ^= 0x01
    archive.write_bytes(bytes(data))
    with pytest.raises(ArchiveError, match=r"^spark\.python_env: environment archive .* is "
                       r"corrupt: its SHA-256 \w+… does not match"):  # fmt: skip
        check_archive(str(archive), "spark.python_env")


def test_wrong_suffix_and_wrong_magic_are_refused(tmp_path: Path) -> None:
    (tmp_path / "env.rar").write_bytes(b"x")
    with pytest.raises(ArchiveError, match="not an archive Spark unpacks"):
        check_archive(str(tmp_path / "env.rar"), "k")
    (tmp_path / "env.tar.gz").write_bytes(b"<html>not found</html>")
    with pytest.raises(ArchiveError, match=r"is corrupt \(not a valid archive\)"):
        check_archive(str(tmp_path / "env.tar.gz"), "k")


def test_executor_requirements_leave_pyspark_to_the_executors_spark() -> None:
    names = [r.split(">")[0].split("=")[0].split("<")[0] for r in
             executor_requirements(REPO / "pyproject.toml", ["train"])]  # fmt: skip
    assert "pyspark" not in names and "py4j" not in names
    assert {"numpy", "pandas", "pyarrow", "torch"} <= set(names)
    with pytest.raises(ArchiveError, match="no extra 'gpu'"):
        executor_requirements(REPO / "pyproject.toml", ["gpu"])


def test_cluster_masters_ship_the_archive_and_executors_run_its_python(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    archive = _small_archive(tmp_path / "env.tar.gz")
    config = build_config(tmp_path / "root", f"spark.python_env={archive}")
    monkeypatch.setenv("PYSPARK_PYTHON", sys.executable)
    conf: dict[str, str] = {}
    ship_executor_environment(config, conf, {"spark.archives": ""}, "spark://10.0.0.1:7077")
    assert conf["spark.archives"] == f"file://{archive}#{ALIAS}"
    assert os.environ["PYSPARK_PYTHON"] == EXECUTOR_PYTHON
    # Archives the launcher gave are kept (and checked) beside it.
    other = _small_archive(tmp_path / "other.tgz")
    conf = {}
    ship_executor_environment(config, conf, {"spark.archives": f"{other}#x"}, "yarn")
    assert conf["spark.archives"] == f"{other}#x,file://{archive}#{ALIAS}"
    # A local master runs no executors: nothing shipped, the driver's Python kept.
    monkeypatch.setenv("PYSPARK_PYTHON", sys.executable)
    conf = {}
    ship_executor_environment(config, conf, None, "local[2]")
    assert "spark.archives" not in conf and os.environ["PYSPARK_PYTHON"] == sys.executable


def _clean(tmp_path: Path, *settings: str) -> subprocess.CompletedProcess[str]:
    raw = write_jsonl(
        tmp_path / "e.jsonl",
        [{"user_id": "u1", "item_id": "i1", "event_type": "view", "ts": f"{DS}T10:00:00Z"}],
    )
    base = [f"paths.root={tmp_path / 'root'}", f"paths.raw_events={raw}",
            "spark.master=local[1]"]  # fmt: skip
    args = [sys.executable, "-m", "recpipe", "clean", "--ds", DS,
            *(a for s in (*base, *settings) for a in ("--set", s))]  # fmt: skip
    return subprocess.run(args, capture_output=True, text=True, timeout=300, check=False,
                          cwd=tmp_path)  # fmt: skip


@pytest.mark.parametrize("problem", ["missing", "corrupt"])
def test_a_bad_archive_fails_the_stage_in_one_line_before_spark_starts(
    tmp_path: Path, problem: str
) -> None:
    archive = tmp_path / "env.tar.gz"
    if problem == "corrupt":
        _small_archive(archive)
        archive.write_bytes(archive.read_bytes()[:-5])  # truncated copy
    done = _clean(tmp_path, f"spark.python_env={archive}")
    assert done.returncode != 0
    lines = done.stderr.strip().splitlines()
    assert lines[-1].startswith(f"recpipe clean: spark.python_env: environment archive {archive}")
    assert ("does not exist" if problem == "missing" else "is corrupt") in lines[-1]
    assert "Traceback" not in done.stderr
    root = tmp_path / "root"
    assert not (root / "lake").exists() and not (root / "manifests" / "clean").exists()
    assert not (root / "metastore").exists()  # Spark never started
