"""A real S3-compatible server on loopback (moto's server mode), started and stopped by PID.

Spark here has no hadoop-aws (it is on Maven only), so only recpipe's JVM-free side reaches it:
``pyarrow.fs.S3FileSystem`` speaking the S3 REST protocol over HTTP, which is what the storage
module uses for ``s3a://`` state outside Spark.
"""

from __future__ import annotations

import contextlib
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from spark_cluster import free_port, stop_server

ACCESS_KEY = "recpipe-test"
SECRET_KEY = "recpipe-test-secret"


@dataclass
class S3Server:
    """``moto_server`` on ``127.0.0.1:<port>``; its log goes to ``work/moto.log``."""

    work: Path
    port: int = 0
    process: subprocess.Popen[bytes] | None = None
    _log: IO[bytes] | None = field(default=None, repr=False)

    @property
    def endpoint(self) -> str:
        """``http://127.0.0.1:<port>``, what ``fs.s3a.endpoint`` takes."""
        return f"http://127.0.0.1:{self.port}"

    def hadoop_settings(self) -> dict[str, str]:
        """The Spark settings a cluster would pass for this endpoint (``spark.hadoop.fs.s3a.*``)."""
        return {
            "spark.hadoop.fs.s3a.endpoint": self.endpoint,
            "spark.hadoop.fs.s3a.access.key": ACCESS_KEY,
            "spark.hadoop.fs.s3a.secret.key": SECRET_KEY,
            "spark.hadoop.fs.s3a.endpoint.region": "us-east-1",
            "spark.hadoop.fs.s3a.path.style.access": "true",
        }

    def start(self) -> S3Server:
        """Start the server and wait until it answers HTTP."""
        self.work.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self._log = open(self.work / "moto.log", "wb")  # noqa: SIM115 - closed in stop()
        server = Path(sys.executable).parent / "moto_server"
        self.process = subprocess.Popen(
            [str(server), "-H", "127.0.0.1", "-p", str(self.port)],
            stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"moto_server exited: {(self.work / 'moto.log').read_text()}")
            # A first answer can take longer than 2 s (moto imports its backends): retry.
            with contextlib.suppress(OSError):  # URLError, refused, timed out
                urllib.request.urlopen(self.endpoint, timeout=2).close()
                return self
            time.sleep(0.3)
        self.stop()
        raise RuntimeError("moto_server did not answer within 60 s")

    def stop(self) -> None:
        """Stop the server's process group by PID (SIGTERM, then SIGKILL)."""
        if self.process is not None:
            stop_server(self.process, signal.SIGTERM, grace=10)
        if self._log is not None:
            self._log.close()
            self._log = None
