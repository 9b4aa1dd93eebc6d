"""File operations through the session's Hadoop ``FileSystem``: any URI the cluster can reach.

Spark reads and writes through Hadoop, so listing through the same layer means a location
means the same thing to the driver's listing and to the executors' reads: ``hdfs://``,
``viewfs://``, ``s3a://``, ``gs://``, ``abfs://`` or ``file://``. A plain path is a local
path (made absolute and given the ``file://`` scheme), never resolved against
``fs.defaultFS``, so the same config means the same files under ``local[*]`` and on YARN.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any

from pyspark.sql import SparkSession

from recpipe.errors import java_error_line
from recpipe.storage.filesystems import StorageError
from recpipe.storage.location import Location, scheme_of

_GLOB_CHARS = "*?[{"
# What a cluster needs on its classpath for the object stores Hadoop does not bundle.
_CONNECTORS = {
    "s3a": "hadoop-aws (org.apache.hadoop:hadoop-aws matching the cluster's Hadoop)",
    "s3": "hadoop-aws (use s3a://; plain s3:// needs an EMR-style S3 FileSystem)",
    "gs": "the GCS connector (com.google.cloud.bigdataoss:gcs-connector)",
    "abfs": "hadoop-azure (org.apache.hadoop:hadoop-azure)",
    "abfss": "hadoop-azure (org.apache.hadoop:hadoop-azure)",
}


def qualify(location: str) -> str:
    """A URI for ``location``: URIs unchanged, plain paths as absolute ``file://`` URIs."""
    return Location(location).uri if scheme_of(location) in (None, "file") else location


@dataclass(frozen=True)
class HadoopFiles:
    """Hadoop ``FileSystem`` calls on the JVM of ``spark`` (driver side only)."""

    spark: SparkSession

    def _jvm(self) -> Any:
        return self.spark.sparkContext._jvm

    def _filesystem(self, uri: str, key: str) -> tuple[Any, Any]:
        jvm = self._jvm()
        path = jvm.org.apache.hadoop.fs.Path(uri)
        conf = self.spark.sparkContext._jsc.hadoopConfiguration()
        try:
            return path.getFileSystem(conf), path
        except Exception as exc:  # py4j wraps the Java exception
            raise StorageError(_unreachable(key, uri, exc)) from None

    def list_files(self, location: str, key: str) -> list[str]:
        """Files under a file, a folder (recursively) or a glob, as sorted qualified URIs.

        Names starting with ``.`` or ``_`` (checksums, ``_SUCCESS``, staging) are skipped.
        ``key`` is the config key named in errors.
        """
        return [uri for uri, _ in self.list_file_sizes(location, key)]

    def list_file_sizes(self, location: str, key: str) -> list[tuple[str, int]]:
        """As :meth:`list_files`, with each file's length in bytes (from the same listing)."""
        uri = qualify(location)
        fs, path = self._filesystem(uri, key)
        try:
            if any(ch in uri.split("://", 1)[1] for ch in _GLOB_CHARS):
                statuses = list(fs.globStatus(path) or [])
            elif fs.exists(path):
                statuses = [fs.getFileStatus(path)]
            else:
                raise StorageError(f"{key}: {location} does not exist")
            files: list[tuple[str, int]] = []
            for status in statuses:
                if status.isDirectory():
                    found = fs.listFiles(status.getPath(), True)
                    while found.hasNext():
                        entry = found.next()
                        files.append((entry.getPath().toString(), int(entry.getLen())))
                else:
                    files.append((status.getPath().toString(), int(status.getLen())))
        except StorageError:
            raise
        except Exception as exc:
            raise StorageError(_unreachable(key, uri, exc)) from None
        return sorted(f for f in files if not f[0].rsplit("/", 1)[-1].startswith((".", "_")))

    def head(self, uri: str, size: int, key: str) -> bytes:
        """The first ``size`` bytes of a file, decompressed by the codec its suffix names.

        Hadoop's own codec factory picks the codec, so ``.gz``/``.bz2`` mean what they mean to
        the executors' reads. A corrupt compressed file raises :class:`StorageError`.
        """
        fs, path = self._filesystem(uri, key)
        jvm = self._jvm()
        conf = self.spark.sparkContext._jsc.hadoopConfiguration()
        stream = None
        try:
            stream = fs.open(path)
            codec = jvm.org.apache.hadoop.io.compress.CompressionCodecFactory(conf).getCodec(path)
            if codec is not None:
                stream = codec.createInputStream(stream)
            # readNBytes returns a byte[], which py4j hands over as one bytes object.
            return bytes(stream.readNBytes(size))
        except Exception as exc:
            raise StorageError(f"{key}: cannot read {uri}: {java_error_line(exc)}") from None
        finally:
            if stream is not None:
                with contextlib.suppress(Exception):  # a broken stream may fail to close too
                    stream.close()


def _unreachable(key: str, uri: str, exc: BaseException) -> str:
    scheme = scheme_of(uri) or "file"
    # Hadoop maps s3a/abfs to classes in jars it does not bundle: either message means that.
    if "No FileSystem for scheme" in str(exc) or "ClassNotFoundException" in str(exc):
        need = _CONNECTORS.get(scheme, f"a Hadoop FileSystem for {scheme}://")
        return f"{key}: cannot reach {uri}: {scheme}:// needs {need} on the Spark classpath"
    return f"{key}: cannot reach {uri}: {java_error_line(exc)}"
