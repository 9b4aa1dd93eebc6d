"""The ``export`` stage: train splits -> Parquet training samples for the deep models.

For each protocol in ``split.protocols`` and each kind in ``export.kinds`` it writes lake table
``samples_<kind>`` partition ``ds=<ds>/protocol=<p>`` as exactly ``train.processes x
export.files_per_process`` files, reconciles the row count against what the train split
implies, and records every file's row count in the manifest (the loaders check against it).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
from pyspark import StorageLevel
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from recpipe.commit import current_record, current_version
from recpipe.config import Config
from recpipe.errors import MissingInputError, RecpipeError
from recpipe.etl.export import (
    SEQ_ITEMS,
    NegativeSampler,
    pairwise_samples,
    pointwise_samples,
    sequence_samples,
    user_sequences,
)
from recpipe.lake import Lake, StagedPartition
from recpipe.manifest import StageRun, read_manifest
from recpipe.parquet_files import footer_sha256
from recpipe.reconcile import check_rows
from recpipe.schema import DS, ITEM_IDX, SAMPLE_TABLES, USER_IDX
from recpipe.stages.split import PROTOCOL
from recpipe.tables import vocab_size

log = logging.getLogger(__name__)

STAGE = "export"


class ExportMismatchError(RecpipeError):
    """The written samples do not match what the train split implies."""


def planned_files(config: Config) -> int:
    """Files per sample table: a multiple of the planned world size."""
    return config.train.processes * config.export.files_per_process


def _item_counts(train: DataFrame, n_items: int) -> np.ndarray:
    counts = np.zeros(n_items + 1, dtype=np.int64)
    for row in train.groupBy(ITEM_IDX).count().collect():
        counts[int(row[ITEM_IDX])] = int(row["count"])
    return counts


def _expected_rows(sequences: DataFrame, negatives: int, stride: int) -> dict[str, int]:
    size = F.size(SEQ_ITEMS)
    totals = sequences.agg(
        F.sum(size).alias("interactions"),
        F.sum(F.when(size > 1, F.ceil((size - 1) / F.lit(stride))).otherwise(0)).alias("windows"),
        F.count(F.lit(1)).alias("users"),
    ).first()
    if totals is None:
        raise RuntimeError("export: the sequence totals aggregate returned no row")
    interactions = int(totals["interactions"] or 0)
    return {
        "pairwise": interactions,
        "pointwise": interactions * (1 + negatives),
        "sequence": int(totals["windows"] or 0),
        "users": int(totals["users"]),
        "interactions": interactions,
    }


def _file_rows(folder: Path) -> list[dict[str, Any]]:
    return [
        {"file": path.name, "rows": pq.ParquetFile(path).metadata.num_rows}
        for path in sorted(folder.glob("*.parquet"))
    ]


def _samples(
    kind: str, sequences: DataFrame, sampler: NegativeSampler, config: Config, stride: int
) -> DataFrame:
    settings = config.export
    if kind == "pairwise":
        return pairwise_samples(sequences, sampler, settings.negatives)
    if kind == "pointwise":
        return pointwise_samples(sequences, sampler, settings.negatives)
    return sequence_samples(sequences, settings.max_len, stride)


def run_export(spark: SparkSession, config: Config, ds: str) -> dict[str, Any]:
    """Write every configured sample kind for every protocol's train split of ``ds``."""
    settings = config.export
    stride = settings.stride or settings.max_len
    files = planned_files(config)
    lake = Lake(config.root)
    n_items = vocab_size(config.root, "vocab_items", ITEM_IDX, ds)
    n_users = vocab_size(config.root, "vocab_users", USER_IDX, ds)
    with StageRun(config, STAGE, ds) as run:
        run.record.update(
            settings=settings.model_dump(mode="json"),
            stride=stride,
            planned_world_size=config.train.processes,
            files_per_table=files,
            n_items=n_items,
            n_users=n_users,
            user_index_size=n_users + 1,  # user_idx runs 1..n_users; 0 is unused
            samples={},
        )
        staged: list[StagedPartition] = []
        rows_in = rows_out = 0
        try:
            for protocol in config.split.protocols:
                partition = {DS: ds, PROTOCOL: protocol}
                if not lake.exists("train", partition):
                    raise MissingInputError(
                        f"no train split for protocol={protocol} ds={ds}: run `recpipe split "
                        f"--ds {ds}`"
                    )
                train = lake.read(spark, "train", [partition])

                def train_rows(m: Mapping[str, Any], p: str = protocol) -> int:
                    return m["protocols"][p]["train"]["rows"]

                check_rows(
                    f"train protocol={protocol}", ds, train.count(), config.root, "split",
                    train_rows,
                )  # fmt: skip
                weights = (
                    _item_counts(train, n_items)
                    if settings.negative_sampling == "popularity"
                    else None
                )
                sampler = NegativeSampler(n_items, weights, settings.seed)
                sequences = user_sequences(train).persist(StorageLevel.MEMORY_AND_DISK)
                expected = _expected_rows(sequences, settings.negatives, stride)
                rows_in += expected["interactions"]
                record: dict[str, Any] = {
                    "users": expected["users"],
                    "interactions": expected["interactions"],
                }
                for kind in settings.kinds:
                    table = SAMPLE_TABLES[kind]
                    frame = _samples(kind, sequences, sampler, config, stride).repartition(files)
                    part = lake.stage(frame, table, partition, {"_config.yaml": config.to_yaml()})
                    staged.append(part)
                    written = _file_rows(part.path)
                    total = sum(f["rows"] for f in written)
                    if total != expected[kind]:
                        raise ExportMismatchError(
                            f"{table} {protocol}: wrote {total} rows, the train split implies "
                            f"{expected[kind]}"
                        )
                    if len(written) != files:
                        raise ExportMismatchError(
                            f"{table} {protocol}: {len(written)} files for {total} rows, planned "
                            f"{files} (train.processes x export.files_per_process); lower "
                            "export.files_per_process for data this small"
                        )
                    record[kind] = {"table": table, "rows": total, "files": written}
                    rows_out += total
                    log.info("export %s/%s: %d rows in %d files", protocol, kind, total, files)
                sequences.unpersist()
                run.record["samples"][protocol] = record
        except BaseException:
            for part in staged:
                part.discard()
            raise
        for part in staged:
            part.publish(run)
        run.record.update(rows_in=rows_in, rows_out=rows_out)
    return run.manifest


def export_shards(root: Path, ds: str, protocol: str, kind: str) -> list[tuple[str, int]]:
    """(file path, manifest row count) of every file of one exported sample table."""
    try:
        manifest = read_manifest(root, STAGE, ds)
    except MissingInputError:
        manifest = {}
    record = manifest.get("samples", {}).get(protocol, {}).get(kind)
    if manifest.get("status") != "ok" or record is None:
        raise MissingInputError(
            f"no exported {kind} samples for protocol={protocol} ds={ds}: run `recpipe export "
            f"--ds {ds}` (with {kind} in export.kinds)"
        )
    partition = {DS: ds, PROTOCOL: protocol}
    folder = current_version(root, record["table"], partition)
    committed = current_record(root, record["table"], partition) or {}
    digests = {f["file"]: f.get("footer_sha256") for f in committed.get("files", [])}
    for entry in record["files"]:
        path = folder / entry["file"]
        recorded = digests.get(entry["file"])
        found = footer_sha256(path) if path.is_file() else None
        if found is None or (recorded is not None and found != recorded):
            what = "is missing" if found is None else "is not the file export wrote"
            raise ExportMismatchError(
                f"{record['table']} protocol={protocol} ds={ds}: {path} {what}: re-run "
                f"`recpipe export --ds {ds}`"
            )
    return [(str(folder / f["file"]), int(f["rows"])) for f in record["files"]]
