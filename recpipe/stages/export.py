"""The ``export`` stage: train splits -> Parquet training samples for the deep models.

For each protocol split wrote (``split.protocols``, and ``all`` when served models are refit:
recpipe.serving) and each kind in ``export.kinds`` it writes lake table
``samples_<kind>`` partition ``ds=<ds>/protocol=<p>`` as ``train.processes x n`` files of
near-equal row counts, ``n`` being ``export.files_per_process`` or, for a larger table, what
keeps files at about ``export.rows_per_file`` rows (so every rank reads the same number of
files and rows, give or take a few). It reconciles the row count against what the train split
implies and records every file's row count in the manifest (the loaders check against it).
"""

from __future__ import annotations

import datetime as dt
import logging
from typing import Any

import numpy as np
import pyarrow.parquet as pq
from pyspark import StorageLevel
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from recpipe import storage
from recpipe.commit import current_record, current_version
from recpipe.config import Config, ExportConfig
from recpipe.errors import MissingInputError, RecpipeError
from recpipe.etl.context import with_context_indexes
from recpipe.etl.export import (
    SEQ_CONTEXT,
    SEQ_ITEMS,
    SEQ_TS,
    NegativeSampler,
    pairwise_samples,
    pointwise_samples,
    sequence_samples,
    user_sequences,
)
from recpipe.lake import Transaction, transaction
from recpipe.layout import FEATURE_VOCAB, LAST_CONTEXT, VOCAB_ITEMS, VOCAB_USERS
from recpipe.manifest import ExportManifest, ExportSamples, ExportTable, ShardRows
from recpipe.parquet_files import footer_sha256
from recpipe.reconcile import check_rows
from recpipe.schema import (
    CONTEXT_IDX,
    DS,
    ITEM_IDX,
    RECENT_SAMPLE_TABLES,
    SAMPLE_TABLES,
    USER_IDX,
)
from recpipe.serving import written_protocols
from recpipe.spark import one_row
from recpipe.stages.split import PROTOCOL
from recpipe.storage import Location, LocationLike
from recpipe.tables import vocab_size
from recpipe.task_memory import check_shuffle_fits

log = logging.getLogger(__name__)

STAGE = "export"


class ExportMismatchError(RecpipeError):
    """The written samples do not match what the train split implies."""


def planned_files(config: Config, rows: int = 0) -> int:
    """Files for a sample table of ``rows`` rows: a multiple of the planned world size, at
    least ``export.files_per_process`` per process, at most about ``export.rows_per_file``
    rows each."""
    processes = config.train.processes
    per_process = -(-rows // (config.export.rows_per_file * processes))  # ceiling
    return processes * max(config.export.files_per_process, per_process)


def _item_counts(train: DataFrame, n_items: int) -> np.ndarray:
    counts = np.zeros(n_items + 1, dtype=np.int64)
    for row in train.groupBy(ITEM_IDX).count().collect():
        counts[int(row[ITEM_IDX])] = int(row["count"])
    return counts


def window_strides(settings: ExportConfig) -> dict[str, int]:
    """Positions between consecutive windows of a user, per windowed kind (sequence, bag)."""
    return {"sequence": settings.stride or settings.max_len, "bag": settings.bag_max_len}


def window_lengths(settings: ExportConfig) -> dict[str, int]:
    """History positions in one window, per windowed kind: a bag holds a user's whole recent
    history (``bag_max_len``), a sequence the last ``max_len`` items."""
    return {"sequence": settings.max_len, "bag": settings.bag_max_len}


def _expected_rows(
    sequences: DataFrame, negatives: int, strides: dict[str, int], since: int | None = None
) -> dict[str, int]:
    """Rows each sample kind must have, computed in Spark from the sequences' sizes.

    With ``since`` (epoch seconds), for the interactions at or after it: sequences are in time
    order, so they are the last ``recent`` of a user's ``size``, and the windows kept are those
    ending at a position >= ``size - recent`` (window ends step down by the kind's stride from
    the last position to 1).
    """
    size = F.size(SEQ_ITEMS)
    in_window = F.filter(F.col(SEQ_TS), lambda t: t >= F.lit(since))
    recent = size if since is None else F.size(in_window)
    lowest_end = F.greatest(size - recent, F.lit(1))
    windows = [
        F.sum(
            F.when(
                size - 1 >= lowest_end, F.floor((size - 1 - lowest_end) / F.lit(stride)) + 1
            ).otherwise(0)
        ).alias(kind)
        for kind, stride in strides.items()
    ]
    totals = one_row(
        sequences.agg(
            F.sum(recent).alias("interactions"),
            *windows,
            F.count(F.when(recent > 0, F.lit(1))).alias("users"),
        ),
        "export sequence totals",
    )
    interactions = int(totals["interactions"] or 0)
    return {
        "pairwise": interactions,
        "pointwise": interactions * (1 + negatives),
        **{kind: int(totals[kind] or 0) for kind in strides},
        "users": int(totals["users"]),
        "interactions": interactions,
    }


def recent_since(ds: str, window_days: int) -> dt.datetime:
    """First instant (UTC midnight) of the ``window_days`` days that end with ``ds``."""
    start = dt.date.fromisoformat(ds) - dt.timedelta(days=window_days - 1)
    return dt.datetime.combine(start, dt.time(), dt.UTC)


def _parquet_rows(path: Location) -> int:
    """Rows of one Parquet file, from its footer."""
    with storage.open_input(path) as handle:
        return int(pq.ParquetFile(handle).metadata.num_rows)


def _file_rows(folder: Location) -> list[ShardRows]:
    return [
        ShardRows(file=path.name, rows=_parquet_rows(path))
        for path in storage.glob(folder, "*.parquet")
    ]


def _samples(
    kind: str,
    sequences: DataFrame,
    sampler: NegativeSampler,
    config: Config,
    since: int | None = None,
) -> DataFrame:
    settings = config.export
    width = len(config.features.context)
    if kind == "pairwise":
        return pairwise_samples(sequences, sampler, settings.negatives, since, width)
    if kind == "pointwise":
        return pointwise_samples(sequences, sampler, settings.negatives, since, width)
    length, stride = window_lengths(settings)[kind], window_strides(settings)[kind]
    return sequence_samples(sequences, length, stride, since, width)


def run_export(spark: SparkSession, config: Config, ds: str) -> dict[str, Any]:
    """Write every configured sample kind for every protocol's train split of ``ds``."""
    settings = config.export
    n_items = vocab_size(config.root, VOCAB_ITEMS, ITEM_IDX, ds)
    n_users = vocab_size(config.root, VOCAB_USERS, USER_IDX, ds)
    record = ExportManifest(
        settings=settings.model_dump(mode="json"),
        stride=window_strides(settings)["sequence"],
        planned_world_size=config.train.processes,
        files_per_table=planned_files(config),
        n_items=n_items,
        n_users=n_users,
        user_index_size=n_users + 1,  # user_idx runs 1..n_users; 0 is unused
        context=list(config.features.context) or None,
    )
    samples: dict[str, ExportSamples] = {}
    record.samples = samples
    with transaction(config, STAGE, ds, record) as tx:
        for protocol in written_protocols(config):
            samples[protocol] = export_protocol(spark, tx, protocol)
        record.rows_in = sum(s.interactions for s in samples.values())
        record.rows_out = sum(
            table.rows for s in samples.values() for kind in settings.kinds
            if (table := s.kind(kind)) is not None
        )  # fmt: skip
    return tx.manifest


def read_train(spark: SparkSession, tx: Transaction[ExportManifest], protocol: str) -> DataFrame:
    """The train split of ``protocol``, reconciled with what ``split`` published."""
    partition = {DS: tx.ds, PROTOCOL: protocol}
    if not tx.lake.exists("train", partition):
        raise MissingInputError(
            f"no train split for protocol={protocol} ds={tx.ds}: run `recpipe split --ds {tx.ds}`"
        )
    train = tx.lake.read(spark, "train", [partition])
    rows = train.count()
    check_rows(
        f"train protocol={protocol}", tx.ds, rows, tx.config.root, "split",
        lambda m: m.protocols[protocol].train.rows,
    )  # fmt: skip
    check_shuffle_fits(spark, "export", rows)
    return train


def export_protocol(
    spark: SparkSession, tx: Transaction[ExportManifest], protocol: str
) -> ExportSamples:
    """Stage every sample kind of ``protocol``'s train split; each reconciled as staged."""
    settings = tx.config.export
    strides = window_strides(settings)
    n_items = tx.record.n_items or 0
    train = read_train(spark, tx, protocol)
    if tx.config.features.context:
        train = with_context_indexes(train, tx.config.features.context, context_vocab(spark, tx))
    counts = _item_counts(train, n_items)
    weights = counts if settings.negative_sampling == "popularity" else None
    sampler = NegativeSampler(n_items, weights, settings.seed, trained=counts > 0)
    sequences = user_sequences(train).persist(StorageLevel.MEMORY_AND_DISK)
    expected = _expected_rows(sequences, settings.negatives, strides)
    record = ExportSamples(users=expected["users"], interactions=expected["interactions"])
    for kind in settings.kinds:
        frame = _samples(kind, sequences, sampler, tx.config)
        setattr(record, kind, stage_samples(tx, frame, kind, protocol, expected[kind]))
    if tx.config.features.context:
        record.last_context_users = stage_last_context(
            spark, tx, sequences, protocol, expected["users"]
        )
    warm = tx.config.train.warm_start
    if warm.enabled:
        record.since, record.recent = export_recent(tx, sequences, sampler, protocol)
    sequences.unpersist()
    return record


def context_vocab(spark: SparkSession, tx: Transaction[ExportManifest]) -> DataFrame | None:
    """``feature_vocab`` of ``ds``, which features.context's categorical values index into."""
    categorical = [
        name for name, spec in tx.config.features.context.items() if spec.kind == "categorical"
    ]
    if categorical and not tx.lake.exists(FEATURE_VOCAB, {DS: tx.ds}):
        raise MissingInputError(
            f"features.context declares {', '.join(categorical)} but there is no feature_vocab "
            f"for ds={tx.ds}: run `recpipe features --ds {tx.ds}` first"
        )
    if not categorical:
        return None
    return tx.lake.read(spark, FEATURE_VOCAB, [{DS: tx.ds}])


def stage_last_context(
    spark: SparkSession,
    tx: Transaction[ExportManifest],
    sequences: DataFrame,
    protocol: str,
    expected: int,
) -> int:
    """Stage ``last_context`` of ``protocol``: (user_idx, context_idx) of each user's last
    train event, reconciled with the users the sequences hold. Returns its rows."""
    last = sequences.select(USER_IDX, F.element_at(SEQ_CONTEXT, -1).alias(CONTEXT_IDX))
    part = tx.stage(last.coalesce(1), LAST_CONTEXT, {DS: tx.ds, PROTOCOL: protocol})
    written = part.read(spark).count()
    tx.reconcile(
        None if written == expected else
        f"{LAST_CONTEXT} {protocol}: {written} rows for {expected} users with train events",
        ExportMismatchError,
    )  # fmt: skip
    return written


def export_recent(
    tx: Transaction[ExportManifest],
    sequences: DataFrame,
    sampler: NegativeSampler,
    protocol: str,
) -> tuple[str, ExportSamples]:
    """Stage the recent window's samples of every kind (``train.warm_start.window_days``)."""
    config = tx.config
    since = recent_since(tx.ds, config.train.warm_start.window_days)
    seconds = int(since.timestamp())
    expected = _expected_rows(sequences, config.export.negatives, window_strides(config.export),
                              seconds)  # fmt: skip
    recent = ExportSamples(users=expected["users"], interactions=expected["interactions"])
    for kind in config.export.kinds:
        frame = _samples(kind, sequences, sampler, config, seconds)
        table = stage_samples(tx, frame, kind, protocol, expected[kind], recent=True)
        setattr(recent, kind, table)
    return since.isoformat(), recent


def stage_samples(
    tx: Transaction[ExportManifest],
    frame: DataFrame,
    kind: str,
    protocol: str,
    expected: int,
    recent: bool = False,
) -> ExportTable:
    """Stage one sample table as exactly :func:`planned_files` files of ``expected`` rows in
    all (round-robin repartitioning: the files' row counts differ by a few rows at most).

    A ``recent`` table with fewer rows than planned files has fewer files (Spark writes none
    for an empty partition); training then falls back to a full retrain.
    """
    files = planned_files(tx.config, expected)
    table = (RECENT_SAMPLE_TABLES if recent else SAMPLE_TABLES)[kind]
    part = tx.stage(frame.repartition(files), table, {DS: tx.ds, PROTOCOL: protocol})
    written = _file_rows(part.path)
    total = sum(f.rows for f in written)
    tx.reconcile(
        None if total == expected else
        f"{table} {protocol}: wrote {total} rows, the train split implies {expected}",
        ExportMismatchError,
    )  # fmt: skip
    tx.reconcile(
        None if len(written) == files or (recent and total < files) else
        f"{table} {protocol}: {len(written)} files for {total} rows, planned {files} "
        "(train.processes x export.files_per_process); lower export.files_per_process for "
        "data this small",
        ExportMismatchError,
    )  # fmt: skip
    log.info("export %s/%s: %d rows in %d files", protocol, kind, total, files)
    return ExportTable(table=table, rows=total, files=written)


def export_shards(
    root: LocationLike, ds: str, protocol: str, kind: str, recent: bool = False
) -> list[tuple[str, int]]:
    """(file, manifest row count) of every file of one exported sample table (with ``recent``,
    of its recent window's table).

    Each file is given as text, ``str`` of its :class:`Location` (a path, or a URI under a
    remote root), because the training spec carries the shards to the ranks as JSON.
    """
    try:
        manifest = ExportManifest.read(root, ds)
    except MissingInputError:
        manifest = ExportManifest()
    samples = (manifest.samples or {}).get(protocol)
    if recent and samples is not None:
        samples = samples.recent
    record = samples.kind(kind) if samples is not None else None
    if not manifest.ok or record is None:
        which = "recent-window " if recent else ""
        hint = " and train.warm_start.enabled=true" if recent else ""
        raise MissingInputError(
            f"no exported {which}{kind} samples for protocol={protocol} ds={ds}: run `recpipe "
            f"export --ds {ds}` (with {kind} in export.kinds{hint})"
        )
    partition = {DS: ds, PROTOCOL: protocol}
    folder = current_version(root, record.table, partition)
    committed = current_record(root, record.table, partition) or {}
    digests = {f["file"]: f.get("footer_sha256") for f in committed.get("files", [])}
    for entry in record.files:
        path = folder / entry.file
        recorded = digests.get(entry.file)
        found = footer_sha256(path) if storage.is_file(path) else None
        if found is None or (recorded is not None and found != recorded):
            what = "is missing" if found is None else "is not the file export wrote"
            raise ExportMismatchError(
                f"{record.table} protocol={protocol} ds={ds}: {path} {what}: re-run "
                f"`recpipe export --ds {ds}`"
            )
    return [(str(folder / f.file), int(f.rows)) for f in record.files]
