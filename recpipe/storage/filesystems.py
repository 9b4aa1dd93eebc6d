"""Which ``pyarrow.fs`` file system serves a :class:`Location`, configured like Hadoop.

The JVM-free side (training ranks, ``recs``, ``metrics``, the report, and the driver's own
small writes: manifests, locks, pointers) reaches state through ``pyarrow.fs``. It reads the
same Hadoop settings Spark gets (``spark.hadoop.*`` in ``spark.conf``, or the running
session's), so a location means the same files to both sides:

- ``file://`` and plain paths: the local file system;
- ``viewfs://<table>/...``: resolved through ``fs.viewfs.mounttable.<table>.link.<dir>``
  (longest matching mount point; ``linkFallback`` for the rest), then served by the target's
  file system, as Hadoop's ``ViewFileSystem`` does;
- ``s3a://``/``s3://``: ``S3FileSystem`` with ``fs.s3a.endpoint``, ``fs.s3a.access.key``,
  ``fs.s3a.secret.key``, ``fs.s3a.endpoint.region`` (else the AWS default chain);
- ``gs://``: ``GcsFileSystem``; ``abfs://``/``abfss://``: ``AzureFileSystem``;
- ``hdfs://``: ``HadoopFileSystem`` (needs libhdfs and a Hadoop client on this machine).
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from typing import Any

import pyarrow.fs as pafs

from recpipe.errors import RecpipeError
from recpipe.storage.location import Location

SCHEMES = ("file", "hdfs", "viewfs", "s3a", "s3", "gs", "abfs", "abfss")
_MAX_VIEWFS_HOPS = 8

_lock = threading.Lock()
_hadoop_conf: dict[str, str] = {}
_cache: dict[tuple[str, str], pafs.FileSystem] = {}


class StorageError(RecpipeError, OSError):
    """A location cannot be reached: unknown scheme, missing connector, no such path."""


def configure(hadoop_conf: Mapping[str, str]) -> None:
    """Use these Hadoop settings (keys without the ``spark.hadoop.`` prefix) from now on.

    Settings are merged into what earlier calls gave; file systems built with settings that
    changed are rebuilt.
    """
    with _lock:
        changed = {k: str(v) for k, v in hadoop_conf.items() if _hadoop_conf.get(k) != str(v)}
        if changed:
            _hadoop_conf.update(changed)
            _cache.clear()


def hadoop_settings(spark_conf: Mapping[str, Any]) -> dict[str, str]:
    """The Hadoop settings inside Spark settings: ``spark.hadoop.x`` -> ``x``."""
    prefix = "spark.hadoop."
    return {k[len(prefix) :]: str(v) for k, v in spark_conf.items() if k.startswith(prefix)}


def setting(key: str) -> str | None:
    """One configured Hadoop setting, or None."""
    return _hadoop_conf.get(key)


def resolve(location: Location) -> tuple[pafs.FileSystem, str]:
    """The file system serving ``location`` and the path to pass it."""
    for _ in range(_MAX_VIEWFS_HOPS):
        if location.scheme != "viewfs":
            return _filesystem(location), _fs_path(location)
        location = _viewfs_target(location)
    raise StorageError(f"{location}: viewfs mount links nest deeper than {_MAX_VIEWFS_HOPS}")


def resolved_location(location: Location) -> Location:
    """``location`` with viewfs mounts replaced by their targets (others unchanged)."""
    for _ in range(_MAX_VIEWFS_HOPS):
        if location.scheme != "viewfs":
            return location
        location = _viewfs_target(location)
    raise StorageError(f"{location}: viewfs mount links nest deeper than {_MAX_VIEWFS_HOPS}")


def check_scheme(location: Location) -> None:
    """StorageError when recpipe does not know the scheme at all."""
    if location.scheme not in SCHEMES:
        raise StorageError(
            f"{location}: unknown scheme {location.scheme}:// (known: {', '.join(SCHEMES)})"
        )


def _fs_path(location: Location) -> str:
    if location.scheme in ("s3a", "s3", "gs"):
        return location.authority + location.path  # bucket/key
    if location.scheme in ("abfs", "abfss"):
        container = location.authority.split("@", 1)[0]
        return container + location.path
    return location.path


def _viewfs_target(location: Location) -> Location:
    table = location.authority or "default"
    prefix = f"fs.viewfs.mounttable.{table}."
    links = {
        key[len(prefix) + len("link.") :].rstrip("/") or "/": value
        for key, value in _hadoop_conf.items()
        if key.startswith(prefix + "link.")
    }
    best = None
    for mount in links:
        covers = location.path == mount or location.path.startswith(mount.rstrip("/") + "/")
        if covers and (best is None or len(mount) > len(best)):
            best = mount
    if best is not None:
        rest = location.path[len(best) :].lstrip("/")
        target = Location(links[best])
        return target.joinpath(rest) if rest else target
    fallback = _hadoop_conf.get(prefix + "linkFallback")
    if fallback:
        return Location(fallback).joinpath(location.path.lstrip("/"))
    raise StorageError(
        f"{location}: no viewfs mount covers it (set spark.hadoop.{prefix}link.<dir> in "
        "spark.conf, as the cluster's core-site.xml does)"
    )


def _filesystem(location: Location) -> pafs.FileSystem:
    check_scheme(location)
    key = (location.scheme, location.authority)
    with _lock:
        cached = _cache.get(key)
    if cached is not None:
        return cached
    try:
        built = _build(location)
    except StorageError:
        raise
    except Exception as exc:  # pyarrow raises OSError/ArrowException/ImportError per backend
        raise unreachable(location, exc) from None
    with _lock:
        _cache[key] = built
    return built


def _build(location: Location) -> pafs.FileSystem:
    scheme = location.scheme
    if scheme == "file":
        return pafs.LocalFileSystem()
    if scheme in ("s3a", "s3"):
        return _s3()
    if scheme == "gs":
        return pafs.GcsFileSystem()
    if scheme in ("abfs", "abfss"):
        account = location.authority.split("@", 1)[-1].split(".", 1)[0]
        return pafs.AzureFileSystem(account_name=account)
    if scheme == "hdfs":
        host, _, port = location.authority.partition(":")
        try:
            return pafs.HadoopFileSystem(host or "default", int(port or 0))
        except OSError as exc:
            raise StorageError(
                f"cannot reach {location} without a JVM: hdfs:// needs libhdfs and a Hadoop "
                f"client on this machine (HADOOP_HOME, ARROW_LIBHDFS_DIR): {_first_line(exc)}"
            ) from None
    raise StorageError(f"{location}: unknown scheme {scheme}://")


def _s3() -> pafs.FileSystem:
    conf = _hadoop_conf
    endpoint = conf.get("fs.s3a.endpoint")
    options: dict[str, Any] = {}
    if endpoint:
        scheme, sep, rest = endpoint.partition("://")
        options["endpoint_override"] = rest if sep else endpoint
        options["scheme"] = scheme if sep else "https"
    if conf.get("fs.s3a.access.key"):
        options["access_key"] = conf["fs.s3a.access.key"]
        options["secret_key"] = conf.get("fs.s3a.secret.key", "")
    region = conf.get("fs.s3a.endpoint.region") or conf.get("fs.s3a.region")
    if region:
        options["region"] = region
    if conf.get("fs.s3a.path.style.access", "").lower() == "true":
        options["force_virtual_addressing"] = False
    return pafs.S3FileSystem(**options)


def unreachable(location: Location, exc: BaseException) -> StorageError:
    """One line for a failed call on ``location``, naming the Hadoop setting that decides where
    an object store is (its endpoint), since a wrong endpoint is the usual cause."""
    where = ""
    if location.scheme in ("s3a", "s3"):
        endpoint = _hadoop_conf.get("fs.s3a.endpoint")
        where = (
            f" (spark.hadoop.fs.s3a.endpoint={endpoint})"
            if endpoint
            else " (spark.hadoop.fs.s3a.endpoint not set: AWS's default endpoint)"
        )
    return StorageError(f"cannot reach {location}{where}: {_first_line(exc)}")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
