"""The storage module: one set of file operations for local paths, viewfs mounts and S3.

S3 is a real S3-compatible server (moto's server mode) on loopback; what recpipe wrote there is
checked with boto3, an independent client, and what boto3 wrote is read back by recpipe.
"""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import boto3
import pytest
from s3_server import ACCESS_KEY, SECRET_KEY, S3Server
from spark_cluster import free_port

from recpipe import storage
from recpipe.config import ConfigError, load_config
from recpipe.locks import StageLock, StageLockedError
from recpipe.storage import Location, StorageError


def test_location_algebra() -> None:
    root = Location("hdfs://nn:8020/data/recpipe/")
    lake = root / "lake" / "events" / "ds=2026-11-20"
    assert str(lake) == lake.uri == "hdfs://nn:8020/data/recpipe/lake/events/ds=2026-11-20"
    assert (lake.name, lake.parent.name, lake.relative_to(root)) == (
        "ds=2026-11-20", "events", "lake/events/ds=2026-11-20"
    )  # fmt: skip
    assert Location("file:///tmp/x/") == Location("/tmp/x") == Location("/tmp/./y/../x")
    assert Location("/tmp/x").uri == "file:///tmp/x" and str(Location("/tmp/x")) == "/tmp/x"
    assert Location("relative").path == str(Path("relative").resolve())
    assert not lake.is_relative_to(Location("hdfs://other:8020/data/recpipe"))
    for bad in ("/abs", "s3a://b/k"):
        with pytest.raises(ValueError, match="cannot append absolute"):
            root.joinpath(bad)
    with pytest.raises(ValueError, match="not below"):
        root.relative_to(lake)
    with pytest.raises(ValueError, match="not a local path"):
        root.local_path()


def _exercise(base: Location) -> None:
    """Every operation the pipeline uses, on one base location (any file system)."""
    manifest = base / "manifests" / "clean" / "ds=2026-11-20.json"
    assert not storage.exists(manifest)
    with pytest.raises(FileNotFoundError):
        storage.read_text(manifest)
    storage.write_json(manifest, {"status": "ok", "rows": 3})
    storage.write_json(manifest, {"status": "ok", "rows": 4})  # replaced whole
    assert storage.read_json(manifest) == {"rows": 4, "status": "ok"}
    assert storage.is_file(manifest) and storage.is_dir(manifest.parent)
    storage.write_bytes(base / "lake" / "t" / "v=1" / "part-0.parquet", b"x" * 10)
    storage.write_bytes(base / "lake" / "t" / "v=2" / "part-0.parquet", b"y" * 20)
    assert [e.name for e in storage.list_dir(base / "lake" / "t")] == ["v=1", "v=2"]
    sizes = {e.location.relative_to(base): e.size
             for e in storage.list_dir(base / "lake", recursive=True) if not e.is_dir}  # fmt: skip
    assert sizes == {"lake/t/v=1/part-0.parquet": 10, "lake/t/v=2/part-0.parquet": 20}
    assert storage.glob(base / "lake" / "t", "v=2") == [base / "lake" / "t" / "v=2"]
    storage.remove_tree(base / "lake" / "t" / "v=1")
    assert [e.name for e in storage.list_dir(base / "lake" / "t")] == ["v=2"]
    lock = base / "manifests" / "clean" / "ds=2026-11-20.lock"
    assert storage.create_exclusive(lock, b"first")
    assert not storage.create_exclusive(lock, b"second")
    assert storage.read_bytes(lock) == b"first"
    storage.delete(lock)
    storage.delete(lock)  # missing is fine
    assert not storage.exists(lock)
    with storage.open_input(base / "lake" / "t" / "v=2" / "part-0.parquet") as handle:
        handle.seek(15)
        assert handle.read() == b"y" * 5
    copied = base / "lake" / "t" / "v=3" / "part-0.parquet"
    storage.copy_file(base / "lake" / "t" / "v=2" / "part-0.parquet", copied)
    assert storage.read_bytes(copied) == b"y" * 20
    assert storage.read_bytes(base / "lake" / "t" / "v=2" / "part-0.parquet") == b"y" * 20
    with pytest.raises(FileNotFoundError):
        storage.copy_file(base / "lake" / "t" / "v=1" / "part-0.parquet", copied)
    storage.remove_tree(copied.parent)
    _exercise_streamed_writes(base / "models" / "last.pt")


def _exercise_streamed_writes(target: Location) -> None:
    """A streamed write lands whole; one whose writer fails part-way leaves the old file."""
    chunks = [bytes([n]) * (1 << 16) for n in range(5)]

    def write_all(handle: BinaryIO) -> None:
        for chunk in chunks:
            handle.write(chunk)

    def fail_midway(handle: BinaryIO) -> None:
        handle.write(b"half of a new checkpoint")
        raise RuntimeError("serialisation failed")

    storage.write_streamed(target, write_all)
    assert storage.read_bytes(target) == b"".join(chunks)
    with pytest.raises(RuntimeError, match="serialisation failed"):
        storage.write_streamed(target, fail_midway)
    assert storage.read_bytes(target) == b"".join(chunks)
    assert [e.name for e in storage.list_dir(target.parent)] == [target.name]


def test_local_operations_leave_no_temp_files(tmp_path: Path) -> None:
    _exercise(Location(tmp_path))
    names = [p.name for p in tmp_path.rglob("*")]
    assert not [n for n in names if n.endswith(".tmp")], names  # atomic writes cleaned up


def test_viewfs_resolves_through_the_mount_table(tmp_path: Path) -> None:
    table = f"vt{uuid.uuid4().hex[:8]}"
    storage.configure({
        f"fs.viewfs.mounttable.{table}.link./state": f"file://{tmp_path}/a",
        f"fs.viewfs.mounttable.{table}.link./state/big": f"file://{tmp_path}/b",
    })  # fmt: skip
    root = Location(f"viewfs://{table}/state")
    _exercise(root)
    storage.write_text(root / "big" / "x.txt", "longest mount wins")
    assert (tmp_path / "b" / "x.txt").read_text() == "longest mount wins"
    storage.copy_file(root / "big" / "x.txt", root / "x-copy.txt")  # from one mount to another
    assert (tmp_path / "a" / "x-copy.txt").read_text() == "longest mount wins"
    assert (tmp_path / "a" / "manifests" / "clean" / "ds=2026-11-20.json").is_file()
    with pytest.raises(StorageError, match=rf"viewfs://{table}/elsewhere: no viewfs mount"):
        storage.exists(Location(f"viewfs://{table}/elsewhere"))
    storage.configure({f"fs.viewfs.mounttable.{table}.linkFallback": f"file://{tmp_path}/fb"})
    storage.write_text(Location(f"viewfs://{table}/elsewhere/y"), "fallback")
    assert (tmp_path / "fb" / "elsewhere" / "y").read_text() == "fallback"


def test_unknown_scheme_is_one_clear_error() -> None:
    with pytest.raises(StorageError, match=r"unknown scheme ftp:// \(known: file, hdfs"):
        storage.read_text("ftp://host/x")


def test_an_s3_endpoint_that_refuses_is_one_line_naming_the_key(tmp_path: Path) -> None:
    """``recpipe recs`` at an s3a:// root whose endpoint nobody listens on: one error line that
    names the endpoint setting, exit 1, no stack trace."""
    endpoint = f"http://127.0.0.1:{free_port()}"
    hadoop = {
        "spark.hadoop.fs.s3a.endpoint": endpoint,
        "spark.hadoop.fs.s3a.access.key": "k",
        "spark.hadoop.fs.s3a.secret.key": "s",
        "spark.hadoop.fs.s3a.endpoint.region": "x",
    }
    settings = ["paths.root=s3a://bucket/recpipe", f"paths.local={tmp_path / 'local'}",
                f"spark.conf={json.dumps(hadoop)}"]  # fmt: skip
    done = subprocess.run(
        [sys.executable, "-m", "recpipe", "recs", "--user", "u1",
         *(arg for s in settings for arg in ("--set", s))],
        capture_output=True, text=True, timeout=120, check=False, cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 1, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr
    assert f"spark.hadoop.fs.s3a.endpoint={endpoint}" in lines[0]
    assert lines[0].startswith("recpipe recs: ") and "s3a://bucket/recpipe" in lines[0]
    assert not any(tmp_path.glob("s3a*"))  # nothing written for a local path made of the URI


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    server = S3Server(tmp_path_factory.mktemp("s3"))
    try:
        yield server.start()
    finally:
        server.stop()


@pytest.fixture
def bucket(s3: S3Server) -> str:
    """A fresh bucket, created by an independent client (boto3)."""
    name = f"recpipe-{uuid.uuid4().hex[:10]}"
    _client(s3).create_bucket(Bucket=name)
    storage.configure({k.removeprefix("spark.hadoop."): v for k, v in s3.hadoop_settings().items()})
    return name


def _client(s3: S3Server):  # type: ignore[no-untyped-def]
    return boto3.client("s3", endpoint_url=s3.endpoint, aws_access_key_id=ACCESS_KEY,
                        aws_secret_access_key=SECRET_KEY, region_name="us-east-1")  # fmt: skip


def test_s3_operations_against_a_real_server(s3: S3Server, bucket: str, tmp_path: Path) -> None:
    root = Location(f"s3a://{bucket}/recpipe")
    _exercise(root)
    keys = {o["Key"] for o in _client(s3).list_objects_v2(Bucket=bucket)["Contents"]}
    assert "recpipe/manifests/clean/ds=2026-11-20.json" in keys
    assert "recpipe/lake/t/v=2/part-0.parquet" in keys
    assert not any(k.startswith("recpipe/lake/t/v=1/") for k in keys)
    body = _client(s3).get_object(Bucket=bucket, Key="recpipe/manifests/clean/ds=2026-11-20.json")
    assert json.loads(body["Body"].read()) == {"rows": 4, "status": "ok"}
    _client(s3).put_object(Bucket=bucket, Key="recpipe/from-boto3.txt", Body=b"hello")
    assert storage.read_text(root / "from-boto3.txt") == "hello"
    # Between two file systems (a local file into the bucket) the bytes are streamed over.
    local = tmp_path / "local.bin"
    local.write_bytes(bytes(range(256)) * 1000)
    storage.copy_file(Location(local), root / "copied.bin")
    body = _client(s3).get_object(Bucket=bucket, Key="recpipe/copied.bin")["Body"].read()
    assert body == local.read_bytes()


def test_stage_lock_on_s3(s3: S3Server, bucket: str) -> None:
    path = Location(f"s3a://{bucket}/recpipe/manifests/clean/ds=2026-11-20.lock")
    with StageLock(path, "clean", "2026-11-20", "run-a"):
        assert storage.exists(path)
        with pytest.raises(StageLockedError, match="clean ds=2026-11-20 is already running"):
            StageLock(path, "clean", "2026-11-20", "run-b").acquire()
    assert not storage.exists(path)


def test_config_takes_s3_state_and_its_hadoop_settings(s3: S3Server, bucket: str,
                                                       tmp_path: Path) -> None:  # fmt: skip
    conf = json.dumps(s3.hadoop_settings())
    config = load_config(None, [f"paths.root=s3a://{bucket}/state", f"paths.local={tmp_path}",
                                f"spark.conf={conf}"])  # fmt: skip
    assert config.root.uri == f"s3a://{bucket}/state" and config.local_root == tmp_path
    storage.write_text(config.root / "probe.txt", "ok")
    assert _client(s3).get_object(Bucket=bucket, Key="state/probe.txt")["Body"].read() == b"ok"
    with pytest.raises(ConfigError, match=r"'paths\.local'"):
        load_config(None, [f"paths.root=s3a://{bucket}/state"])


def test_torchrun_ranks_read_shards_from_s3_and_checkpoint_there(
    s3: S3Server, bucket: str, tmp_path: Path
) -> None:
    """The JVM-free side on an object store: 2 torchrun ranks (fresh processes, configured
    only by the spec's Hadoop settings) read their shards from s3:// and write checkpoints,
    the model and the result there; boto3 sees the objects and the model loads back."""
    from helpers import train_at_location

    from recpipe.storage import Location
    from recpipe.train.checkpoint import load_model

    hadoop = {k.removeprefix("spark.hadoop."): v for k, v in s3.hadoop_settings().items()}
    spec, result = train_at_location(Location(f"s3a://{bucket}/recpipe"), hadoop, tmp_path)
    assert result["world_size"] == 2 and result["epochs_run"] == 1
    listed = _client(s3).list_objects_v2(Bucket=bucket, Prefix="recpipe/models/bpr_mf/")
    keys = {item["Key"].removeprefix("recpipe/models/bpr_mf/") for item in listed["Contents"]}
    assert {"model.pt", "result.json", "checkpoints/last.pt", "item_counts.npy"} <= keys
    assert load_model(spec.model_file).name == "bpr_mf"
    assert json.loads(storage.read_text(spec.result_file))["steps"] == result["steps"]
