"""A real Spark standalone cluster on loopback: one master and N workers from the installed pyspark.

Each worker has private disks: its own work folder (executor working directories, where
``spark.archives`` are unpacked), local dirs (``SPARK_LOCAL_DIRS``: shuffle and block files) and
temp folder; only the state root the test names is shared, as a cluster's HDFS would be.

The pyspark wheel has no ``sbin/start-master.sh``; the daemons start with ``bin/spark-class``.
Each daemon runs in its own process group (its executors are its children), and
:meth:`StandaloneCluster.stop` ends every group by PID, escalating to SIGKILL.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any


def installed_spark_home() -> Path:
    """The Spark distribution inside this environment's pyspark wheel (jars, bin/)."""
    import pyspark  # only here: the Airflow environment's pyspark-client has no jars

    return Path(pyspark.__file__).resolve().parent


def free_port() -> int:
    """A TCP port on 127.0.0.1 nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class StandaloneCluster:
    """Master on ``127.0.0.1:port`` with ``workers`` workers of ``cores`` cores and ``memory``."""

    work: Path
    workers: int = 2
    cores: int = 1
    memory: str = "1g"
    port: int = 0
    ui_port: int = 0
    spark_home: Path = field(default_factory=installed_spark_home)
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)
    _logs: list[IO[bytes]] = field(default_factory=list)

    @property
    def master_url(self) -> str:
        """``spark://127.0.0.1:<port>``, what spark-submit --master takes."""
        return f"spark://127.0.0.1:{self.port}"

    def _env(self, name: str) -> dict[str, str]:
        # Private disks: each daemon (and the executors a worker forks, and their Python
        # workers) keeps scratch, shuffle and temp files in its own folder, as separate
        # machines would.
        tmp = self.work / name / "tmp"
        tmp.mkdir(parents=True, exist_ok=True)
        local = self.work / name / "local"
        local.mkdir(parents=True, exist_ok=True)
        return {
            **os.environ,
            "SPARK_HOME": str(self.spark_home),
            "SPARK_LOCAL_IP": "127.0.0.1",
            "SPARK_LOCAL_DIRS": str(local),
            "TMPDIR": str(tmp),
            "SPARK_LOG_DIR": str(self.work / name / "logs"),
            "SPARK_WORKER_DIR": str(self.work / name / "work"),
            # Daemons and the executors they fork keep scratch files in the cluster's folder.
            "SPARK_DAEMON_JAVA_OPTS": f"-Djava.io.tmpdir={tmp} -XX:-UsePerfData",
            "SPARK_DAEMON_MEMORY": "512m",
        }

    def _spawn(self, name: str, args: list[str]) -> None:
        log = (self.work / f"{name}.log").open("wb")
        self._logs.append(log)
        command = [str(self.spark_home / "bin" / "spark-class"), *args]
        self.processes.append(
            subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, env=self._env(name),
                start_new_session=True,  # its own process group: stop() kills executors too
            )
        )  # fmt: skip

    def start(self, timeout: float = 120.0) -> StandaloneCluster:
        """Start the master and the workers; return once all workers are ALIVE."""
        self.work.mkdir(parents=True, exist_ok=True)
        self.port, self.ui_port = free_port(), free_port()
        self._spawn(
            "master",
            ["org.apache.spark.deploy.master.Master", "--host", "127.0.0.1",
             "--port", str(self.port), "--webui-port", str(self.ui_port)],
        )  # fmt: skip
        for n in range(self.workers):
            self._spawn(
                f"worker{n}",
                ["org.apache.spark.deploy.worker.Worker", self.master_url,
                 "--host", "127.0.0.1", "--cores", str(self.cores), "--memory", self.memory,
                 "--webui-port", str(free_port()),
                 "--work-dir", str(self.work / f"worker{n}" / "work")],
            )  # fmt: skip
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            dead = [p.args for p in self.processes if p.poll() is not None]
            if dead:
                raise RuntimeError(f"a Spark daemon exited early: {dead}\n{self.logs()}")
            status = self.status()
            if status and status.get("aliveworkers") == self.workers:
                return self
            time.sleep(0.5)
        raise RuntimeError(f"{self.workers} workers not alive after {timeout}s\n{self.logs()}")

    def status(self) -> dict[str, Any] | None:
        """The master's JSON status page (workers, running and completed applications)."""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.ui_port}/json/", timeout=5) as r:
                return json.loads(r.read())
        except (urllib.error.URLError, ConnectionError, TimeoutError, json.JSONDecodeError):
            return None

    def logs(self, tail: int = 3000) -> str:
        """The end of every daemon's log, for failure messages."""
        parts = []
        for path in sorted(self.work.glob("*.log")):
            parts.append(f"--- {path.name}\n{path.read_text(errors='replace')[-tail:]}")
        return "\n".join(parts)

    def stop(self, grace: float = 15.0) -> None:
        """SIGTERM every daemon's process group, SIGKILL what is left after ``grace`` seconds."""
        for proc in self.processes:
            _signal_group(proc, signal.SIGTERM)
        deadline = time.monotonic() + grace
        for proc in self.processes:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(max(0.1, deadline - time.monotonic()))
            _signal_group(proc, signal.SIGKILL)  # executors may outlive their worker
            proc.wait()
        for log in self._logs:
            log.close()


def stop_server(
    process: subprocess.Popen[bytes], first: signal.Signals, grace: float, group: bool = True
) -> None:
    """Stop a server started with ``start_new_session=True`` by PID: ``first`` to its process
    group (or, ``group=False``, to it alone), then SIGKILL to the group after ``grace`` s."""
    if process.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        (os.killpg if group else os.kill)(process.pid, first)
    try:
        process.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        _signal_group(process, signal.SIGKILL)
        process.wait()


def _signal_group(proc: subprocess.Popen[bytes], sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, sig)
