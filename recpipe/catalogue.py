"""JVM-free reads of the catalog stage's tables: item titles and attributes, user profiles.

A list is shown with the catalogue as it stood on its day: the newest committed ``items`` or
``users`` partition at or before that ``ds`` (catalogues are full snapshots per day). Without
a catalogue every lookup is empty, so callers show ids as before.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

import pyarrow.dataset as pads

from recpipe import storage
from recpipe.commit import current_record, current_version, producer_of
from recpipe.layout import ITEMS, USERS, manifest_path
from recpipe.parquet_files import verified_dataset
from recpipe.schema import ATTRIBUTES, DS, ITEM_ID, TITLE, USER_ID
from recpipe.storage import LocationLike

# The value an item counts under when the catalogue lacks it, or it lacks the attribute.
NOT_IN_CATALOGUE = "(not in catalogue)"
NO_VALUE = "(none)"


def snapshot_ds(root: LocationLike, table: str, ds: str) -> str | None:
    """The newest committed ``ds`` of ``table`` at or before ``ds``, or None."""
    folder = manifest_path(root, producer_of(table), ds).parent
    days = sorted(
        (path.name[len(DS) + 1 : -len(".json")] for path in storage.glob(folder, f"{DS}=*.json")),
        reverse=True,
    )
    for day in days:
        if day <= ds and current_record(root, table, {DS: day}) is not None:
            return day
    return None


def _rows(
    root: LocationLike, table: str, ds: str, key: str, ids: Iterable[str]
) -> dict[str, dict[str, Any]]:
    wanted = sorted(set(ids))
    day = snapshot_ds(root, table, ds)
    if day is None or not wanted:
        return {}
    dataset = verified_dataset(current_version(root, table, {DS: day}))
    columns = [c for c in (key, TITLE, ATTRIBUTES) if c in dataset.schema.names]
    found = dataset.to_table(columns=columns, filter=pads.field(key).isin(wanted))
    return {row[key]: row for row in found.to_pylist()}


def attributes_of(row: dict[str, Any]) -> dict[str, str]:
    """A catalogue row's attributes map as a dict (pyarrow gives a map as key/value pairs)."""
    return dict(row.get(ATTRIBUTES) or [])


def item_details(root: LocationLike, ds: str, item_ids: Iterable[str]) -> dict[str, dict[str, Any]]:
    """{item_id: {"title", "attributes"}} of the catalogue as of ``ds`` ({} without one)."""
    rows = _rows(root, ITEMS, ds, ITEM_ID, item_ids)
    return {
        item: {TITLE: row.get(TITLE), ATTRIBUTES: attributes_of(row)} for item, row in rows.items()
    }


def user_profiles(
    root: LocationLike, ds: str, user_ids: Iterable[str]
) -> dict[str, dict[str, str]]:
    """{user_id: profile attributes} of the profiles as of ``ds`` ({} without them)."""
    rows = _rows(root, USERS, ds, USER_ID, user_ids)
    return {user: attributes_of(row) for user, row in rows.items()}


def user_profile(root: LocationLike, ds: str, user_id: str) -> dict[str, str] | None:
    """The user's profile attributes as of ``ds`` (None without profiles or without the user)."""
    row = _rows(root, USERS, ds, USER_ID, [user_id]).get(user_id)
    return None if row is None else attributes_of(row)


def values_of(text: str | None) -> list[str]:
    """A multi-valued attribute's values: a JSON array's elements, else ``|``-separated text,
    else the one value ([] for none)."""
    if text is None or not text.strip():
        return []
    try:
        parsed = json.loads(text)
    except ValueError:
        parsed = None
    if isinstance(parsed, list):
        return [str(value) for value in parsed]
    return [part.strip() for part in text.split("|") if part.strip()]


def describe_profile(profile: dict[str, str] | None) -> str:
    """A profile in one short phrase: ``age 49, gender M, occupation writer``."""
    if not profile:
        return ""
    return ", ".join(f"{key} {value}" for key, value in sorted(profile.items()))
