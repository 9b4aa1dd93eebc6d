"""The whole chain with every piece of state behind a non-local scheme: ``viewfs://``.

``paths.root`` is ``viewfs://<table>/recpipe``, a Hadoop mount table (passed as
``spark.hadoop.fs.viewfs.mounttable.*``, as a cluster's core-site.xml would) onto a temp folder.
Spark resolves it through Hadoop's ViewFileSystem, recpipe's JVM-free side through the storage
module. Any local-file call on a state path would create a ``viewfs:`` folder in the working
directory (``Path("viewfs://t/x")`` is the relative path ``viewfs:/t/x``): the commands run in
an empty folder that must stay empty, and no ``viewfs:`` name may appear anywhere.
Expected figures come from the input and from reading the target folder with pyarrow directly.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import uuid
from pathlib import Path

import pyarrow.dataset as pads
import pytest

BIN = Path(sys.executable).parent
DS = "2026-11-21"
USERS = 24
K = 5

pytestmark = pytest.mark.slow


def _events() -> list[dict[str, str]]:
    rng = random.Random(11)
    rows = []
    for user in range(USERS):
        for step in range(rng.randint(6, 12)):
            item = (user % 4) * 10 + rng.randrange(10)
            rows.append({"user_id": f"u{user}", "item_id": f"i{item}", "event_type": "view",
                         "ts": f"{DS}T{step:02d}:{rng.randrange(60):02d}:00Z"})  # fmt: skip
    rows.append({"user_id": "u1", "item_id": "", "event_type": "view", "ts": f"{DS}T03:00:00Z"})
    return rows


@pytest.fixture(scope="module")
def chain(tmp_path_factory: pytest.TempPathFactory) -> dict:
    work = tmp_path_factory.mktemp("viewfs")
    target, local, cwd = work / "target", work / "local", work / "cwd"
    for folder in (target, local, cwd):
        folder.mkdir()
    raw = work / "landing" / "events.jsonl"
    raw.parent.mkdir()
    events = _events()
    raw.write_text("".join(json.dumps(e) + "\n" for e in events))
    table = f"chain{uuid.uuid4().hex[:8]}"
    mount = {f"spark.hadoop.fs.viewfs.mounttable.{table}.link./recpipe": f"file://{target}"}
    settings = [
        f"paths.root=viewfs://{table}/recpipe", f"paths.local={local}",
        f"paths.raw_events={raw}", f"spark.conf={json.dumps(mount)}",
        "spark.master=local[2]", "spark.shuffle_partitions=2",
        "split.protocols=[random_by_user]", "baselines.models=[popularity,als]",
        "baselines.als.rank=8", "baselines.als.max_iter=5", "export.kinds=[pairwise]",
        "export.negatives=2", f"score.k={K}", "train.max_epochs=1", "train.processes=1",
        "gate.candidate=als", "gate.baseline=popularity", "gate.tolerance=1.0",
    ]  # fmt: skip
    args = [arg for s in settings for arg in ("--set", s)]
    outputs = {}
    commands = {
        "etl": ["etl", "--ds", DS], "baselines": ["train-baseline", "--ds", DS],
        "export": ["export", "--ds", DS], "train": ["train", "--ds", DS, "--model", "bpr_mf"],
        "evaluate": ["evaluate", "--ds", DS], "score": ["score", "--ds", DS, "--model", "als"],
        "publish": ["publish", "--ds", DS],
        "recs": ["recs", "--user", "u3", "--format", "json"],
        "sql": ["sql", "--format", "json",
                f"SELECT count(*) AS n FROM recpipe.events WHERE ds='{DS}'"],
        "sweep": ["sweep"],
    }  # fmt: skip
    env = {**os.environ, "TZ": "UTC", "PYSPARK_PYTHON": sys.executable}
    for name, command in commands.items():
        done = subprocess.run([str(BIN / "recpipe"), *command, *args], cwd=cwd, env=env,
                              capture_output=True, text=True, timeout=900, check=False)  # fmt: skip
        assert done.returncode == 0, f"{name} failed:\n{done.stderr[-4000:]}"
        assert "Traceback" not in done.stderr, done.stderr[-4000:]
        outputs[name] = done.stdout
    return {"work": work, "target": target, "local": local, "cwd": cwd, "events": events,
            "outputs": outputs}  # fmt: skip


def _manifest(target: Path, stage: str) -> dict:
    return json.loads((target / "manifests" / stage / f"ds={DS}.json").read_text())


def test_nothing_touched_a_local_path_made_of_the_uri(chain: dict) -> None:
    assert list(chain["cwd"].iterdir()) == []
    strays = [p for p in chain["work"].rglob("*") if "viewfs" in p.name]
    assert strays == []
    # State went through the mount; only the metastore and scratch are local.
    assert {p.name for p in chain["target"].iterdir()} >= {"lake", "manifests", "models",
                                                           "warehouse"}  # fmt: skip
    assert (chain["local"] / "metastore" / "derby.log").is_file()
    assert not (chain["local"] / "lake").exists()
    # The committed training run removed its launcher files (spec, logs, child temp).
    assert list((chain["local"] / "tmp" / "runs").glob("*")) == []


def test_every_stage_committed_with_the_expected_counts(chain: dict) -> None:
    target = chain["target"]
    clean = _manifest(target, "clean")
    assert clean["status"] == "ok"
    assert (clean["rows_in"], clean["rows_quarantined"]) == (len(chain["events"]), 1)
    for stage in ("vocab", "sessionize", "split", "export", "train-als", "train-popularity",
                  "train-bpr_mf", "evaluate-als", "gate", "score-als", "publish"):  # fmt: skip
        assert _manifest(target, stage)["status"] == "ok", stage
    # Lake versions are where the manifests say, read without recpipe.
    record = clean["outputs"]["events"][f"ds={DS}"]
    events = pads.dataset(target / record["path"], format="parquet").to_table()
    assert events.num_rows == record["rows"] == len(chain["events"]) - 1
    published = _manifest(target, "publish")
    assert published["published_model"] == "als" and published["rows_out"] == USERS * K


def test_jvm_free_readers_and_sql_see_the_committed_state(chain: dict) -> None:
    target = chain["target"]
    recs = json.loads(chain["outputs"]["recs"])
    pointers = list((target / "warehouse").rglob("recommendations/*/model=als/_CURRENT.json"))
    assert len(pointers) == 1
    pointer = json.loads(pointers[0].read_text())
    stored = pads.dataset(target / pointer["path"], format="parquet").to_table().to_pylist()
    expected = sorted((r["rank"], r["item_id"]) for r in stored if r["user_id"] == "u3")
    assert [(r["rank"], r["item_id"]) for r in recs] == expected and len(expected) == K
    counted = json.loads(chain["outputs"]["sql"])
    assert counted == [{"n": len(chain["events"]) - 1}]


def test_recs_answer_from_a_copy_of_the_root_on_s3(
    chain: dict, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """The published state copied into a bucket of a real S3-compatible server (with boto3,
    not recpipe): `recpipe recs` at the s3a:// root, JVM-free, gives the same answer."""
    import boto3
    from s3_server import ACCESS_KEY, SECRET_KEY, S3Server

    server = S3Server(tmp_path_factory.mktemp("s3")).start()
    try:
        client = boto3.client(
            "s3", endpoint_url=server.endpoint, aws_access_key_id=ACCESS_KEY,
            aws_secret_access_key=SECRET_KEY, region_name="us-east-1",
        )  # fmt: skip
        client.create_bucket(Bucket="published")
        for path in chain["target"].rglob("*"):
            if path.is_file():
                key = f"recpipe/{path.relative_to(chain['target'])}"
                client.put_object(Bucket="published", Key=key, Body=path.read_bytes())
        settings = [
            "paths.root=s3a://published/recpipe", f"paths.local={tmp_path_factory.mktemp('l')}",
            f"spark.conf={json.dumps(server.hadoop_settings())}",
        ]  # fmt: skip
        command = [str(BIN / "recpipe"), "recs", "--user", "u3", "--format", "json",
                   *(a for s in settings for a in ("--set", s))]  # fmt: skip
        done = subprocess.run(command, cwd=chain["cwd"], capture_output=True, text=True,
                              timeout=300, check=False)  # fmt: skip
    finally:
        server.stop()
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads(done.stdout) == json.loads(chain["outputs"]["recs"])
