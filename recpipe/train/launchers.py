"""Launchers: run a :class:`TrainSpec` in one process, under torchrun, or under Spark.

``local`` trains in this process. ``torchrun`` starts N processes per node with
``python -m torch.distributed.run`` (DDP; gloo on CPU, NCCL on GPU): ``--standalone`` on one
node, a c10d rendezvous at ``train.rdzv_endpoint`` across ``train.nnodes`` nodes. ``spark``
hands the entry point itself and the spec (as its argument) to
``pyspark.ml.torch.distributor.TorchDistributor`` (barrier tasks on executors, or processes on
the driver with ``train.spark_local_mode``) and returns the value rank 0 returns. ``horovod``
runs ``horovodrun -np N`` with the Python of the Horovod environment (``train.horovod_env``),
whose ranks average gradients through ``hvd.DistributedOptimizer``. Rank 0 writes
``result.json`` into the run's folder under ``paths.root`` (any location, through
:mod:`recpipe.storage`), which the torchrun and horovod launchers read back. What the launching
tools need as real files (the spec file, logs, the children's temp folder) goes to the spec's
``local_dir`` on this machine.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import recpipe
from recpipe import storage
from recpipe.config import TrainConfig
from recpipe.errors import RecpipeError
from recpipe.storage import as_location
from recpipe.train.spec import TrainSpec

log = logging.getLogger(__name__)

LAUNCHERS = ("local", "torchrun", "spark", "horovod")


class LaunchError(RecpipeError):
    """A training launch failed; the message carries the launcher's exit status and log tail."""


def launch(spec: TrainSpec, settings: TrainConfig) -> dict[str, Any]:
    """Train ``spec`` with ``settings.launcher`` and return rank 0's summary."""
    if settings.launcher == "horovod":
        return _horovod(spec, settings)
    if settings.loader == "petastorm" and importlib.util.find_spec("petastorm") is None:
        raise LaunchError(
            "train.loader=petastorm: petastorm is not installed in this environment (it needs "
            "pyarrow < 15); train with train.launcher=horovod and train.horovod_env pointing "
            "at the Horovod environment (make legacy-venv), or use train.loader=arrow"
        )
    if settings.launcher == "local":
        from recpipe.train.loop import train_from_spec

        return train_from_spec(spec.to_json())
    if settings.launcher == "torchrun":
        return _torchrun(spec, settings)
    if settings.launcher == "spark":
        return _spark(spec, settings)
    raise ValueError(f"train.launcher: unknown launcher {settings.launcher!r}")


def torchrun_command(spec_file: str | Path, settings: TrainConfig) -> list[str]:
    """The torchrun command line of this node.

    One node: ``--standalone`` (rendezvous on a free local port). Several nodes: a c10d
    rendezvous at ``train.rdzv_endpoint`` that every node's torchrun joins with its own
    ``--node-rank``; ``spec_file`` is then a location every node can read.
    """
    if settings.nnodes == 1:
        rendezvous = ["--standalone"]
    else:
        rendezvous = [
            f"--nnodes={settings.nnodes}", f"--node-rank={settings.node_rank}",
            "--rdzv-backend=c10d", f"--rdzv-endpoint={settings.rdzv_endpoint}",
            f"--rdzv-id={settings.rdzv_id}",
        ]  # fmt: skip
    return [
        sys.executable, "-m", "torch.distributed.run", *rendezvous,
        f"--nproc-per-node={settings.processes}", "-m", "recpipe.train.worker", str(spec_file),
    ]  # fmt: skip


_FAILURE_MARKERS = ("Traceback", "Error", "terminate called", "what():", "Aborted", "Signal")
# A non-builtin exception's last traceback line: "package.module.Name: message".
_QUALIFIED_EXCEPTION = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*\.[A-Z]\w*: ")
# horovodrun prefixes every rank's line with "[rank]<stdout>:" / "[rank]<stderr>:".
_RANK_PREFIX = re.compile(r"^\[\d+\]<std(out|err)>:")


def failure_excerpt(log_text: str, tail: int = 15, limit: int = 40) -> str:
    """The log lines that say why workers died (tracebacks, C++ aborts), then its last lines.

    torchrun's own summary fills the tail of the log, so the workers' messages above it would
    otherwise be cut off.
    """
    lines = log_text.splitlines()
    marked = [
        line
        for line in lines[:-tail]
        if any(marker in line for marker in _FAILURE_MARKERS)
        or _QUALIFIED_EXCEPTION.match(_RANK_PREFIX.sub("", line))
    ]
    return "\n".join([*marked[:limit], "...", *lines[-tail:]])


def _read_result(spec: TrainSpec) -> dict[str, Any]:
    try:
        text = storage.read_text(spec.result_file)
    except FileNotFoundError:
        raise LaunchError(f"training of {spec.model} ended without {spec.result_file}") from None
    return dict(json.loads(text))


def _run_logged(
    spec: TrainSpec, name: str, command: list[str], env: dict[str, str] | None = None
) -> dict[str, Any]:
    """Run a launcher command with its output in ``<local dir>/<name>.log``; rank 0's result."""
    log_file = Path(spec.local_dir) / f"{name}.log"
    # torchrun and horovodrun make temp folders of their own (torchelastic_*): keep them in
    # the launch's local folder, under paths.local, through the child's environment only.
    scratch = Path(spec.local_dir) / "tmp"
    scratch.mkdir(parents=True, exist_ok=True)
    child_env = {**(env if env is not None else os.environ), "TMPDIR": str(scratch)}
    log.info("launch: %s (log: %s)", " ".join(command), log_file)
    with log_file.open("w") as out:
        done = subprocess.run(
            command, stdout=out, stderr=subprocess.STDOUT, env=child_env, check=False
        )
    if done.returncode != 0:
        raise LaunchError(
            f"{name} exited with {done.returncode} for {spec.model} (log: {log_file}):\n"
            + failure_excerpt(log_file.read_text())
        )
    return _read_result(spec)


def _spec_file(spec: TrainSpec) -> Path:
    """Clear any previous result and write the spec the ranks read (a local file)."""
    storage.delete(spec.result_file)
    return spec.write(Path(spec.local_dir) / "spec.json")


def _torchrun(spec: TrainSpec, settings: TrainConfig) -> dict[str, Any]:
    if settings.nnodes == 1:
        return _run_logged(spec, "torchrun", torchrun_command(_spec_file(spec), settings))
    # The other nodes read the spec from state (they share no disk with this one), so this
    # node reads it there too; no local spec file.
    spec_file = shared_spec(spec)
    others = torchrun_command(spec_file, settings.model_copy(update={"node_rank": 1}))
    log.info(
        "torchrun: waiting for %d more node(s) at %s; on node k run: %s",
        settings.nnodes - 1, settings.rdzv_endpoint,
        " ".join(others).replace("--node-rank=1", "--node-rank=<k>"),
    )  # fmt: skip
    return _run_logged(spec, "torchrun", torchrun_command(spec_file, settings))


# Hadoop settings never written to state: credentials come from each node's own environment.
_SECRET = re.compile(r"secret|password|token|access\.key|credential", re.IGNORECASE)


def shared_spec(spec: TrainSpec) -> str:
    """Clear any previous result and write the spec beside the run's state (credentials left
    out), for nodes that share no disk; return its location."""
    storage.delete(spec.result_file)
    public = dataclasses.replace(
        spec, storage={k: v for k, v in spec.storage.items() if not _SECRET.search(k)}
    )
    location = as_location(spec.run_dir) / "spec.json"
    storage.write_text(location, public.to_json())
    return str(location)


def horovod_command(spec_file: Path, settings: TrainConfig) -> tuple[list[str], dict[str, str]]:
    """The horovodrun command line and the environment it runs in.

    The ranks run the Horovod environment's Python with this recpipe's source first on
    ``PYTHONPATH``, so driver and ranks run the same code.
    """
    if settings.horovod_env:
        bin_dir = Path(settings.horovod_env).expanduser().absolute() / "bin"
        horovodrun, python = bin_dir / "horovodrun", bin_dir / "python"
        if not horovodrun.is_file() or not python.is_file():
            raise LaunchError(
                f"train.horovod_env: {bin_dir.parent} has no bin/horovodrun and bin/python "
                "(make legacy-venv builds .venv-legacy)"
            )
        path = f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"
    else:
        found = shutil.which("horovodrun")
        if found is None:
            raise LaunchError(
                "train.launcher=horovod: horovodrun is not on PATH; set train.horovod_env to "
                "the Horovod environment (make legacy-venv builds .venv-legacy)"
            )
        horovodrun = Path(found)
        beside = horovodrun.with_name("python")
        python = beside if beside.is_file() else Path("python")
        path = os.environ.get("PATH", "")
    hosts = settings.horovod_hosts or f"localhost:{settings.processes}"
    command = [
        # A loaded machine can take more than the default 30 s to start the ranks.
        str(horovodrun), "-np", str(settings.processes), "-H", hosts,
        f"--{settings.horovod_transport}",
        "--start-timeout", "120",
        str(python), "-m", "recpipe.train.worker", str(spec_file),
    ]  # fmt: skip
    source = _source_path(Path(spec_file).parent / "pythonpath")
    pythonpath = os.pathsep.join(p for p in (source, os.environ.get("PYTHONPATH")) if p)
    # horovodrun starts its own helpers with `python` from PATH: the environment's comes first.
    return command, {**os.environ, "PATH": path, "PYTHONPATH": pythonpath}


def _source_path(folder: Path) -> str:
    """A folder holding only a link to this recpipe package, for another environment's path.

    Adding the package's parent instead could put this environment's site-packages (numpy 2,
    pyarrow 26) in front of the Horovod environment's own.
    """
    folder.mkdir(parents=True, exist_ok=True)
    link = folder / "recpipe"
    package = Path(recpipe.__file__).resolve().parent
    if not (link.is_symlink() and link.resolve() == package):
        link.unlink(missing_ok=True)
        link.symlink_to(package, target_is_directory=True)
    return str(folder)


def _horovod(spec: TrainSpec, settings: TrainConfig) -> dict[str, Any]:
    command, env = horovod_command(_spec_file(spec), settings)
    return _run_logged(spec, "horovodrun", command, env)


@contextlib.contextmanager
def _temp_folder(folder: Path) -> Iterator[None]:
    """Point Python's temp folder (``tempfile.tempdir``) at ``folder`` for the duration.

    TorchDistributor pickles the training function and its result into ``tempfile.mkdtemp()``
    and takes no folder argument; on the driver (``local_mode``) that would be the system temp
    folder instead of the launch's folder under ``paths.local``.
    """
    folder.mkdir(parents=True, exist_ok=True)
    previous = tempfile.tempdir
    tempfile.tempdir = str(folder)
    try:
        yield
    finally:
        tempfile.tempdir = previous


def _spark(spec: TrainSpec, settings: TrainConfig) -> dict[str, Any]:
    """Train under TorchDistributor: the spec travels as the function's argument.

    Ranks need no file from this machine (executors have their own disks): the function
    (``train_from_spec``, pickled by reference: executors import recpipe from their environment)
    and the spec JSON go with the barrier tasks, and rank 0's summary comes back as the value
    ``TorchDistributor.run`` returns.
    """
    from pyspark.ml.torch.distributor import TorchDistributor
    from pyspark.sql import SparkSession

    from recpipe.train.loop import train_from_spec

    if SparkSession.getActiveSession() is None:
        raise LaunchError(
            "train.launcher=spark needs a SparkSession: run through `recpipe train` or "
            "spark-submit jobs/train.py, or build one with recpipe.spark.get_spark first"
        )
    storage.delete(spec.result_file)
    use_gpu = settings.device == "cuda"
    distributor = TorchDistributor(
        num_processes=settings.processes, local_mode=settings.spark_local_mode, use_gpu=use_gpu
    )
    log.info(
        "launch: TorchDistributor(num_processes=%d, local_mode=%s, use_gpu=%s)",
        settings.processes, settings.spark_local_mode, use_gpu,
    )  # fmt: skip
    with _temp_folder(Path(spec.local_dir) / "tmp"):
        summary = distributor.run(train_from_spec, spec.to_json())
    if not isinstance(summary, dict):
        raise LaunchError(
            f"TorchDistributor returned no summary for {spec.model} (got {type(summary).__name__})"
        )
    return summary
