"""Run manifests: ``<root>/manifests/<stage>/ds=<ds>.json`` plus the resolved config beside it."""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import sys
import time
import traceback
from pathlib import Path
from types import TracebackType
from typing import Any

from recpipe import __version__
from recpipe.config import Config
from recpipe.errors import MissingInputError

log = logging.getLogger(__name__)


def manifest_path(root: Path, stage: str, ds: str) -> Path:
    """Where the manifest of ``stage`` for ``ds`` lives."""
    return Path(root) / "manifests" / stage / f"ds={ds}.json"


def read_manifest(root: Path, stage: str, ds: str) -> dict[str, Any]:
    """Load a manifest, with a clear error when the stage has not run for ``ds``."""
    path = manifest_path(root, stage, ds)
    if not path.is_file():
        raise MissingInputError(f"no manifest for stage '{stage}' ds={ds} at {path}")
    return json.loads(path.read_text())


def runtime_info() -> dict[str, str | None]:
    """Where this process ran: Spark master, application id, Spark and recpipe versions.

    Reads the active session only when pyspark is already imported (JVM-free commands such as
    ``recs`` record nulls and never pay for the import).
    """
    info: dict[str, str | None] = {
        "recpipe_version": __version__,
        "spark_version": None,
        "spark_master": None,
        "spark_app_id": None,
    }
    if "pyspark.sql" not in sys.modules:
        return info
    from pyspark.sql import SparkSession

    active = SparkSession.getActiveSession()
    if active is not None:
        context = active.sparkContext
        info.update(
            spark_version=active.version,
            spark_master=context.master,
            spark_app_id=context.applicationId,
        )
    return info


def _write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    tmp.replace(path)


class StageRun:
    """Context manager that times a stage and writes its manifest, on success or failure.

    Stage code fills :attr:`record` with row counts and stage-specific figures.
    """

    def __init__(self, config: Config, stage: str, ds: str) -> None:
        self.config = config
        self.stage = stage
        self.ds = ds
        self.record: dict[str, Any] = {}
        self.manifest: dict[str, Any] = {}
        self._t0 = 0.0
        self._started = ""

    @property
    def path(self) -> Path:
        """Manifest file of this run."""
        return manifest_path(self.config.root, self.stage, self.ds)

    def __enter__(self) -> StageRun:
        self._t0 = time.perf_counter()
        self._started = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
        log.info("%s ds=%s: started", self.stage, self.ds)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        manifest: dict[str, Any] = {
            "stage": self.stage,
            "ds": self.ds,
            "started_at": self._started,
            "seconds": round(time.perf_counter() - self._t0, 3),
            "config_hash": self.config.hash(),
            "status": "ok" if exc is None else "failed",
            **runtime_info(),
            **self.record,
        }
        if exc is not None:
            manifest["error"] = f"{type(exc).__name__}: {exc}"
            manifest["traceback"] = "".join(traceback.format_exception(exc_type, exc, tb))[-4000:]
        self.manifest = manifest
        _write_atomic(self.path, json.dumps(manifest, indent=2, sort_keys=False, default=str))
        _write_atomic(self.path.with_suffix(".config.yaml"), self.config.to_yaml())
        log.info(
            "%s ds=%s: %s in %.1fs", self.stage, self.ds, manifest["status"], manifest["seconds"]
        )
