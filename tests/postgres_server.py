"""A real PostgreSQL server on loopback for the shared Hive metastore, started and stopped by PID.

Debian's ``postgresql`` (``initdb``/``postgres`` under ``/usr/lib/postgresql/<v>/bin``) and
``libpostgresql-jdbc-java`` (``/usr/share/java/postgresql.jar``, the JDBC driver the Hive
metastore client loads) are installed by ``make test``. PostgreSQL refuses to run as root, so
as root the server runs as the ``postgres`` user (``Popen(user=...)``: no intermediate process,
the PID is the postmaster's).
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import pytest
from ci import in_ci
from spark_cluster import free_port, stop_server

JDBC_JAR = Path("/usr/share/java/postgresql.jar")
USER = "recpipe"
PASSWORD = "recpipe-metastore"
DATABASE = "metastore"


def postgres_bin() -> Path | None:
    """The folder of Debian's PostgreSQL server programs (newest version), if installed."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/postgres"))
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


def missing() -> str | None:
    """What is missing to run the server and the metastore client, or None."""
    if postgres_bin() is None:
        return "PostgreSQL server (Debian package postgresql)"
    if not JDBC_JAR.is_file():
        return f"PostgreSQL JDBC driver {JDBC_JAR} (Debian package libpostgresql-jdbc-java)"
    return None


@dataclass
class PostgresServer:
    """``postgres`` on ``127.0.0.1:<port>`` with database ``metastore`` owned by ``recpipe``."""

    work: Path
    port: int = 0
    process: subprocess.Popen[bytes] | None = None
    _log: IO[bytes] | None = field(default=None, repr=False)
    _home: Path | None = field(default=None, repr=False)

    @property
    def jdbc_url(self) -> str:
        """The metastore database's JDBC URL."""
        return f"jdbc:postgresql://127.0.0.1:{self.port}/{DATABASE}"

    def metastore_settings(self) -> dict[str, str]:
        """The Spark settings a cluster's metastore client takes (``javax.jdo.option.*``)."""
        return {
            "spark.hadoop.javax.jdo.option.ConnectionURL": self.jdbc_url,
            "spark.hadoop.javax.jdo.option.ConnectionDriverName": "org.postgresql.Driver",
            "spark.hadoop.javax.jdo.option.ConnectionUserName": USER,
            "spark.hadoop.javax.jdo.option.ConnectionPassword": PASSWORD,
            # A fresh database: DataNucleus creates the metastore tables on first use. Not their
            # foreign keys: adding one (ALTER TABLE) mid-session waits forever on a lock the
            # metastore's own open transaction holds on PostgreSQL. Clusters create the schema
            # once with Hive's schematool instead.
            "spark.hadoop.datanucleus.schema.autoCreateTables": "true",
            "spark.hadoop.datanucleus.schema.autoCreateColumns": "true",
            "spark.hadoop.datanucleus.schema.autoCreateConstraints": "false",
            "spark.hadoop.hive.metastore.schema.verification": "false",
        }

    def _as_server_user(self) -> dict[str, str]:
        return {"user": "postgres", "group": "postgres"} if os.geteuid() == 0 else {}

    def _run(self, *command: str) -> None:
        done = subprocess.run(
            list(command), capture_output=True, text=True, check=False, **self._as_server_user()
        )  # fmt: skip
        if done.returncode != 0:
            raise RuntimeError(f"{command[0]} failed: {done.stdout}{done.stderr}")

    def start(self) -> PostgresServer:
        """initdb a fresh cluster, start the server, create the metastore role and database."""
        binaries = postgres_bin()
        assert binaries is not None, missing()
        self.work.mkdir(parents=True, exist_ok=True)
        # The server user must reach its folders: pytest's temp tree is private to root.
        self._home = Path(tempfile.mkdtemp(prefix="recpipe-postgres-"))
        data, sockets = self._home / "data", self._home / "sockets"
        sockets.mkdir()
        if os.geteuid() == 0:
            for folder in (self._home, sockets):
                shutil.chown(folder, "postgres", "postgres")
        self._run(str(binaries / "initdb"), "-D", str(data), "-U", "postgres",
                  "--auth=trust", "--no-sync", "-E", "UTF8")  # fmt: skip
        self.port = free_port()
        self._log = open(self.work / "postgres.log", "wb")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(
            [str(binaries / "postgres"), "-D", str(data), "-p", str(self.port),
             "-h", "127.0.0.1", "-k", str(sockets), "-c", "fsync=off"],
            stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True,
            **self._as_server_user(),
        )  # fmt: skip
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"postgres exited: {self.log()}")
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.port), timeout=1),
            ):
                break
            time.sleep(0.2)
        else:
            self.stop()
            raise RuntimeError(f"postgres did not listen within 60 s: {self.log()}")
        psql = shutil.which("psql") or str(binaries / "psql")
        for sql in (f"CREATE ROLE {USER} LOGIN PASSWORD '{PASSWORD}'",
                    f"CREATE DATABASE {DATABASE} OWNER {USER}"):  # fmt: skip
            self._run(psql, "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres",
                      "-d", "postgres", "-v", "ON_ERROR_STOP=1", "-c", sql)  # fmt: skip
        return self

    def log(self) -> str:
        """The server's log."""
        path = self.work / "postgres.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self) -> None:
        """Stop the postmaster by PID (SIGINT: fast shutdown; SIGKILL after 20 s)."""
        if self.process is not None:
            stop_server(self.process, signal.SIGINT, grace=20, group=False)
        if self._log is not None:
            self._log.close()
            self._log = None
        if self._home is not None:
            shutil.rmtree(self._home, ignore_errors=True)
            self._home = None


def postgres_query(server: PostgresServer, sql: str) -> list[str]:
    """Rows of ``sql`` on the metastore database, one ``a|b`` line each (psql, not recpipe)."""
    bin_dir = postgres_bin()
    psql = shutil.which("psql") or str(bin_dir / "psql" if bin_dir else "psql")
    done = subprocess.run(
        [psql, "-h", "127.0.0.1", "-p", str(server.port), "-U", USER, "-d", DATABASE,
         "-At", "-c", sql],
        capture_output=True, text=True, check=True,
        env={"PGPASSWORD": PASSWORD, "PATH": os.environ.get("PATH", "/usr/bin:/bin")},
    )  # fmt: skip
    return done.stdout.splitlines()


def running_postgres(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PostgresServer]:
    """Body of a fixture: a started server, stopped by PID afterwards; a skip naming what is
    missing outside CI, a failure in CI (``make test`` installs the packages)."""
    absent = missing()
    if absent:
        if in_ci():
            pytest.fail(f"{absent} is missing: make test installs it")
        pytest.skip(f"{absent} is missing (make test installs it)")
    server = PostgresServer(tmp_path_factory.mktemp("postgres"))
    try:
        yield server.start()
    finally:
        server.stop()
