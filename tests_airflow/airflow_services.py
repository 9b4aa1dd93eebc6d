"""Airflow 3 as it runs on one machine: api-server, scheduler and dag-processor, started and
stopped by PID, with the LocalExecutor (task processes in parallel) and a SQLite database.

Airflow 3's task processes report to the api-server's execution API, so all three run. The
state of runs and task instances is read straight from the metadata database (sqlite3), not
through Airflow's code, so a test checks Airflow's own record of what ran when.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import IO

from spark_cluster import free_port, stop_server

AIRFLOW = Path(sys.executable).parent / "airflow"
SERVICES = ("api-server", "scheduler", "dag-processor")


@dataclass
class TaskRun:
    """One task instance as the metadata database records it."""

    task_id: str
    state: str | None
    start: datetime | None
    end: datetime | None


@dataclass
class AirflowServices:
    """The three Airflow 3 services over ``home`` (AIRFLOW_HOME), with ``env`` added."""

    home: Path
    dags_folder: Path
    env: dict[str, str]
    port: int = 0
    _secret: str = field(default_factory=lambda: secrets.token_hex(16), repr=False)
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    _logs: list[IO[bytes]] = field(default_factory=list, repr=False)

    def environment(self) -> dict[str, str]:
        """What every Airflow process (and the tasks they fork) runs with."""
        return {
            **os.environ,
            **self.env,
            "AIRFLOW_HOME": str(self.home),
            "AIRFLOW__CORE__DAGS_FOLDER": str(self.dags_folder),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
            "AIRFLOW__CORE__PARALLELISM": "4",
            "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
            # Only triggered runs: the DAG's daily cron would otherwise start today's run too.
            "AIRFLOW__SCHEDULER__USE_JOB_SCHEDULE": "False",
            "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
            "AIRFLOW__API__HOST": "127.0.0.1",
            "AIRFLOW__API__PORT": str(self.port),
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{self.port}/execution/",
            "AIRFLOW__API_AUTH__JWT_SECRET": self._secret,
        }

    def cli(self, *args: str, timeout: float = 300) -> str:
        """``airflow <args>`` against this home; its stdout (fails the test on a non-zero exit)."""
        done = subprocess.run(
            [str(AIRFLOW), *args], env=self.environment(), capture_output=True, text=True,
            timeout=timeout, check=False,
        )  # fmt: skip
        if done.returncode != 0:
            raise AssertionError(f"airflow {' '.join(args)} failed:\n{done.stderr[-3000:]}")
        return done.stdout

    def start(self) -> AirflowServices:
        """Migrate the database, then start the three services, each in its own process group."""
        self.home.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.cli("db", "migrate")
        for name in SERVICES:
            args = [name]
            if name == "api-server":
                args += ["--port", str(self.port), "--host", "127.0.0.1"]
            log = (self.home / f"{name}.log").open("wb")
            self._logs.append(log)
            self.processes[name] = subprocess.Popen(
                [str(AIRFLOW), *args], env=self.environment(), stdout=log,
                stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
        self._wait_for_api(timeout=180)
        return self

    def _wait_for_api(self, timeout: float) -> None:
        """Until the api-server accepts connections: task processes report to it from their
        first line, so a task started before it listens would fail."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.check_alive()
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.port), timeout=1),
            ):
                return
            time.sleep(1)
        raise AssertionError(f"api-server not listening after {timeout}s:\n"
                             f"{self.log('api-server')}")  # fmt: skip

    def _query(self, sql: str, *params: object) -> list[tuple]:
        with contextlib.closing(sqlite3.connect(self.home / "airflow.db", timeout=30)) as db:
            return db.execute(sql, params).fetchall()

    def check_alive(self) -> None:
        """Fail with the service's log when one of the services has exited."""
        for name, process in self.processes.items():
            if process.poll() is not None:
                raise AssertionError(f"airflow {name} exited ({process.returncode}):\n"
                                     f"{self.log(name)}")  # fmt: skip

    def wait_for_dag(self, dag_id: str, timeout: float = 300) -> None:
        """Until the dag-processor has parsed and serialized ``dag_id``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.check_alive()
            with contextlib.suppress(sqlite3.OperationalError):  # tables not made yet
                if self._query("SELECT 1 FROM serialized_dag WHERE dag_id = ?", dag_id):
                    return
            time.sleep(2)
        raise AssertionError(f"{dag_id} not parsed within {timeout}s:\n"
                             f"{self.log('dag-processor')}")  # fmt: skip

    def trigger(self, dag_id: str, run_id: str, logical_date: str, conf: dict) -> None:
        """``airflow dags trigger`` one run (what a user or an upstream system does)."""
        self.cli("dags", "trigger", dag_id, "--run-id", run_id, "--logical-date", logical_date,
                 "--conf", json.dumps(conf))  # fmt: skip

    def wait_for_run(self, dag_id: str, run_id: str, timeout: float) -> str:
        """The run's final state (success or failed), waiting at most ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        state = None
        while time.monotonic() < deadline:
            self.check_alive()
            rows = self._query(
                "SELECT state FROM dag_run WHERE dag_id = ? AND run_id = ?", dag_id, run_id
            )
            state = rows[0][0] if rows else None
            if state in ("success", "failed"):
                return state
            time.sleep(3)
        raise AssertionError(f"{dag_id} {run_id} still {state} after {timeout}s; tasks: "
                             f"{self.task_runs(dag_id, run_id)}")  # fmt: skip

    def task_runs(self, dag_id: str, run_id: str) -> dict[str, TaskRun]:
        """Every task instance of the run, by task id."""
        rows = self._query(
            "SELECT task_id, state, start_date, end_date FROM task_instance "
            "WHERE dag_id = ? AND run_id = ?", dag_id, run_id,
        )  # fmt: skip

        def when(value: str | None) -> datetime | None:
            return datetime.fromisoformat(value) if value else None

        return {row[0]: TaskRun(row[0], row[1], when(row[2]), when(row[3])) for row in rows}

    def task_log(self, dag_id: str, run_id: str, task_id: str) -> str:
        """The end of a task's log file (for failure messages)."""
        found = sorted((self.home / "logs").glob(f"dag_id={dag_id}/run_id={run_id}/"
                                                 f"task_id={task_id}/*.log"))  # fmt: skip
        return found[-1].read_text(errors="replace")[-4000:] if found else "(no log)"

    def log(self, name: str) -> str:
        """The end of one service's log."""
        path = self.home / f"{name}.log"
        return path.read_text(errors="replace")[-4000:] if path.exists() else ""

    def stop(self) -> None:
        """SIGTERM each service's process group by PID (SIGKILL after 30 s)."""
        for process in self.processes.values():
            stop_server(process, signal.SIGTERM, grace=30)
        for log in self._logs:
            log.close()
