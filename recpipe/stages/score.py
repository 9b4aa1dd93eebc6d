"""The ``score`` stage: top-K per user for a trained baseline, published to the warehouse."""

from __future__ import annotations

import datetime as dt
import shutil
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq
from pyspark.sql import SparkSession

from recpipe.baselines.base import load_split
from recpipe.config import Config
from recpipe.evaluation.ranking import PAD_ITEM, csr_from_pairs, top_k
from recpipe.lake import file_uri
from recpipe.manifest import StageRun
from recpipe.schema import DS, ITEM_ID, ITEM_IDX, USER_ID, USER_IDX
from recpipe.stages.evaluate import load_model

SOURCE_MODEL = "model"


def id_lookup(root: Path, table: str, id_col: str, idx_col: str, ds: str) -> np.ndarray:
    """Array mapping index -> original id for a vocabulary snapshot (index 0 is empty)."""
    folder = Path(root) / "lake" / table / f"{DS}={ds}"
    vocab = pads.dataset(folder, format="parquet").to_table(columns=[id_col, idx_col])
    idx = vocab.column(idx_col).to_numpy()
    ids = np.empty(int(idx.max()) + 1 if len(idx) else 1, dtype=object)
    ids[idx] = vocab.column(id_col).to_pylist()
    return ids


def recommendation_table(
    users: np.ndarray, items: np.ndarray, scores: np.ndarray, config: Config, ds: str
) -> pa.Table:
    """Top-K arrays -> rows in original ids with rank, score, generated_at and source."""
    user_ids = id_lookup(config.root, "vocab_users", USER_ID, USER_IDX, ds)
    item_ids = id_lookup(config.root, "vocab_items", ITEM_ID, ITEM_IDX, ds)
    keep = items != PAD_ITEM
    rows, ranks = np.nonzero(keep)
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    return pa.table(
        {
            "user_id": pa.array(user_ids[users[rows]].tolist(), pa.string()),
            "item_id": pa.array(item_ids[items[keep]].tolist(), pa.string()),
            "rank": pa.array(ranks + 1, pa.int32()),
            "score": pa.array(scores[keep], pa.float64()),
            "generated_at": pa.array([now] * len(rows), pa.timestamp("us", tz="UTC")),
            "source": pa.array([SOURCE_MODEL] * len(rows), pa.string()),
        }
    )


def run_score(spark: SparkSession, config: Config, ds: str, model: str) -> dict[str, Any]:
    """Score every user with train history under ``score.protocol`` and publish top-K."""
    from recpipe.warehouse import RECOMMENDATIONS, publish_partition

    protocol = config.score.protocol
    with StageRun(config, f"score-{model}", ds) as run:
        train = load_split(config.root, ds, protocol, "train")
        fitted = load_model(config, ds, protocol, model, train)
        users = np.unique(train.users)
        seen = csr_from_pairs(train.users, train.items, train.n_users)
        items, scores = top_k(
            fitted.score, users, config.score.k, train.n_items, seen, config.evaluation.user_batch
        )
        table = recommendation_table(users, items, scores, config, ds)
        scratch = config.root / "tmp" / f"score-{model}-{uuid.uuid4().hex}"
        scratch.mkdir(parents=True)
        try:
            pq.write_table(table, scratch / "part-0.parquet")
            frame = spark.read.parquet(file_uri(scratch))
            location = publish_partition(
                spark, config, RECOMMENDATIONS, frame, ds, model, expected_rows=table.num_rows
            )
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        run.record.update(
            model=model,
            protocol=protocol,
            k=config.score.k,
            rows_in=len(users),
            rows_out=table.num_rows,
            users_scored=len(users),
            source_counts={SOURCE_MODEL: table.num_rows},
            location=str(location),
            seen_items_rule="each user's train items excluded",
        )
    return run.manifest
