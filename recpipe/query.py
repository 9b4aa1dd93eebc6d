"""Serve published recommendations without a JVM, and run ad-hoc Spark SQL.

:func:`lookup_recs` finds the current version of a ``recommendations`` partition through its
``_CURRENT.json`` pointer and reads one user's rows with ``pyarrow.dataset``; the files are
sorted by ``(user_id, rank)``, so the filter skips every row group whose min/max excludes the
user. Nothing here imports pyspark at import time; :func:`run_sql` uses the session it is given.
"""

from __future__ import annotations

import datetime as dt
import decimal
import json
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.dataset as pads

from recpipe.catalogue import describe_profile, item_details, user_profile
from recpipe.config import Config
from recpipe.console import format_table
from recpipe.errors import MissingInputError, RecpipeError
from recpipe.parquet_files import verified_dataset
from recpipe.schema import ITEM_ID, TITLE, USER_ID
from recpipe.storage import Location
from recpipe.warehouse import (
    MODEL_METRICS,
    RECOMMENDATIONS,
    PointerError,
    partition_location,
    published_partitions,
    read_pointer,
    table_path,
)

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

FORMATS = ("table", "json")
_READ_COLUMNS = ["rank", ITEM_ID, "score", "source"]
_TABLE_COLUMNS = ("rank", ITEM_ID, TITLE, "score", "source")  # title: with a catalogue


class UnknownUserError(RecpipeError, LookupError):
    """The user has no recommendations in the chosen partition."""


def latest_ds(config: Config, model: str | None = None) -> str | None:
    """Newest ``ds`` with published recommendations (from ``model`` when given), or None."""
    days = [
        ds for ds, name in published_partitions(config, RECOMMENDATIONS) if model in (None, name)
    ]
    return max(days, default=None)


def list_models(config: Config, ds: str) -> list[str]:
    """Models with published recommendations for ``ds``, sorted."""
    return [name for day, name in published_partitions(config, RECOMMENDATIONS) if day == ds]


def _resolve_ds(config: Config, model: str | None) -> str:
    ds = latest_ds(config, model)
    if ds is None:
        which = f" from model '{model}'" if model else ""
        raise MissingInputError(
            f"no recommendations{which} published under {table_path(config, RECOMMENDATIONS)}"
        )
    return ds


def _resolve_model(config: Config, ds: str) -> str:
    models = list_models(config, ds)
    if config.publish.name in models:
        return config.publish.name  # the gate's choice, when one was published
    if len(models) == 1:
        return models[0]
    if not models:
        raise MissingInputError(f"no recommendations published for ds={ds}")
    raise RecpipeError(
        f"ds={ds} has recommendations from several models ({', '.join(models)}): choose one"
    )


def lookup_recs(
    config: Config,
    user_id: str,
    model: str | None = None,
    ds: str | None = None,
    k: int | None = None,
) -> list[dict[str, Any]]:
    """Current recommendations of ``user_id``, best first, at most ``k``.

    ``ds`` defaults to the newest one published (for ``model`` when given); ``model`` to the
    gate's published partition (``publish.name``) when there is one, else the only model of
    that ``ds``. Each row has ``rank``, ``item_id``, ``score``, ``model``, ``source`` (the model
    that produced the row, or ``popular`` for cold-start users), ``published_model`` (the gate's
    choice, on the published partition), ``trained_on`` (what the scored model learned from),
    ``title`` (from the item catalogue as of ``ds``; None without one) and ``profile`` (the
    user's profile attributes, None without profiles), plus ``user_id`` and ``ds`` saying what
    was looked up.
    Raises :class:`UnknownUserError` when the user has no rows in that partition.
    """
    if k is not None and k < 1:
        raise RecpipeError(f"k must be at least 1, got {k}")
    ds = ds or _resolve_ds(config, model)
    model = model or _resolve_model(config, ds)
    pointer = read_pointer(config, RECOMMENDATIONS, ds, model)
    location = partition_location(config, RECOMMENDATIONS, ds, model)  # checked against it
    if pointer is None or location is None:
        raise MissingInputError(f"no recommendations published for model '{model}' ds={ds}")
    found = _read_checked(
        location,
        f"recommendations ds={ds} model={model}",
        columns=_READ_COLUMNS,
        filter=pads.field(USER_ID) == user_id,
    ).sort_by("rank")
    if found.num_rows == 0:
        raise UnknownUserError(
            f"user '{user_id}' has no recommendations from model '{model}' for ds={ds}"
        )
    rows = found.slice(0, k).to_pylist() if k else found.to_pylist()
    details = item_details(config.root, ds, (row[ITEM_ID] for row in rows))
    profile = user_profile(config.root, ds, user_id)
    return [
        {
            "rank": row["rank"],
            ITEM_ID: row[ITEM_ID],
            TITLE: details.get(row[ITEM_ID], {}).get(TITLE),
            "score": row["score"],
            "model": model,
            "source": row["source"],
            # Set on the published partition: the model the gate chose.
            "published_model": pointer.get("source_model"),
            # What the scored model learned from (score.train_on), on partitions scored since.
            "trained_on": (pointer.get("trained_on") or {}).get("rule"),
            USER_ID: user_id,
            "profile": profile,
            "ds": ds,
        }
        for row in rows
    ]


def _read_checked(location: Location, label: str, **scan: Any) -> pa.Table:
    """Read a published version with page checksums verified; damage is one PointerError."""
    try:
        return verified_dataset(location).to_table(**scan)
    except OSError as exc:  # pyarrow's error for a failed page CRC or an unreadable file
        raise PointerError(
            f"{label}: {location} is damaged ({exc}); republish the partition"
        ) from None


def metric_rows(
    config: Config, ds: str | None, model: str | None, resamples: bool = False
) -> list[dict[str, Any]]:
    """Rows of ``model_metrics`` from the published Parquet (no JVM), filtered; the bootstrap
    ``resamples`` lists (a thousand numbers a row) only when asked for."""
    rows: list[dict[str, Any]] = []
    for part_ds, part_model in published_partitions(config, MODEL_METRICS):
        if (ds and part_ds != ds) or (model and part_model != model):
            continue
        location = partition_location(config, MODEL_METRICS, part_ds, part_model)
        if location is None:
            continue
        label = f"model_metrics ds={part_ds} model={part_model}"
        for row in _read_checked(location, label).to_pylist():
            if not resamples:
                row.pop("resamples", None)
            empty = {"detail": None, "ci_low": None, "ci_high": None}  # older partitions
            rows.append({"ds": part_ds, "model": part_model, **empty, **row})
    rows.sort(
        key=lambda r: (r["ds"], r["model"], r["protocol"], r["split"], r["metric"], r["k"] or 0)
    )
    return rows


def _title(rows: list[dict[str, Any]]) -> str:
    first = rows[0] if rows else {}
    user, model, ds = (first.get(key, "?") for key in (USER_ID, "model", "ds"))
    if first.get("profile"):
        user = f"{user} ({describe_profile(first['profile'])})"
    chosen = first.get("published_model")
    learned = f"; trained on {first['trained_on']}" if first.get("trained_on") else ""
    if chosen:
        sources = ", ".join(sorted({row["source"] for row in rows}))
        return (
            f"recommendations for user {user} (ds {ds}, partition '{model}': model {chosen} "
            f"chosen by the gate{learned}; this list from: {sources})"
        )
    return f"recommendations for user {user} (model {model}, ds {ds}{learned})"


def format_recs(rows: list[dict[str, Any]], fmt: str) -> str:
    """Render :func:`lookup_recs` rows as an aligned ``table`` or as a ``json`` list."""
    if fmt == "json":
        return json.dumps(rows, indent=2)
    if fmt == "table":
        columns = [c for c in _TABLE_COLUMNS if c != TITLE or any(row.get(TITLE) for row in rows)]
        body = [{col: row.get(col) for col in columns} for row in rows]
        return format_table(body, title=_title(rows))
    raise RecpipeError(f"unknown output format {fmt!r}: expected one of {', '.join(FORMATS)}")


def _jsonable(value: Any) -> Any:
    if isinstance(value, dt.datetime | dt.date | dt.time):
        return value.isoformat()
    if isinstance(value, decimal.Decimal):
        return float(value)
    if isinstance(value, dict):
        return {key: _jsonable(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(item) for item in value]
    return value


def run_sql(spark: SparkSession, query: str, admin: bool = False) -> list[dict[str, Any]]:
    """Run a read-only ``query`` with Spark SQL; rows as JSON-ready dicts (ISO-8601 times).

    Statements that write, change state, run code or read files by path are refused before
    any of them runs (:mod:`recpipe.sql_guard`), unless ``admin`` (``recpipe sql --admin``).

    Rows travel through Arrow, so ``timestamp`` values come back zone-aware in the session
    time zone whatever the Python process's own zone is.
    """
    from recpipe.sql_guard import read_only_frame

    frame = spark.sql(query) if admin else read_only_frame(spark, query)
    table = frame.toArrow()
    return [_jsonable(row) for row in table.to_pylist()]
