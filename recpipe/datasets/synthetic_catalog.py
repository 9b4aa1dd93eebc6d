"""The reference inputs of a synthetic log: an item catalogue and user profiles whose fields
carry the generator's hidden structure, so feature-aware models have signal to find.

Planted effects (each drawn from its own random stream, so the events stay byte-identical):

* an item's ``category`` is the one its events carry, its ``brand`` belongs to that category
  (four brands per category), its ``price`` is the purchase price of its events, and three of
  its four ``tokens`` come from its category's own five-word vocabulary;
* a user's ``region`` is their favourite category modulo the number of regions for
  ``P_REGION_FROM_TASTE`` of the users (random otherwise), so region predicts taste;
  ``age_band`` is uniform (no effect: a control);
* an item's ``available_from`` (ISO time, UTC) is its release: the window's start, or for a
  late item the time before which no event of it exists.

Items and users are written as JSON lines under ``<out>/items/`` and ``<out>/users/``.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from recpipe import storage
from recpipe.storage import Location

N_REGIONS = 8
P_REGION_FROM_TASTE = 0.8
AGE_BANDS: tuple[str, ...] = ("18-24", "25-34", "35-44", "45-54", "55+")
BRANDS_PER_CATEGORY = 4
WORDS_PER_CATEGORY = 5
GENERAL_WORDS: tuple[str, ...] = ("new", "classic", "plus", "mini", "pro", "eco", "max", "lite")


@dataclass(frozen=True)
class HiddenStructure:
    """What the generator drew that the catalogue reveals: per item its id, category and
    price; per (non-bot) user their id and favourite category."""

    item_ids: Sequence[str]
    category: np.ndarray
    price_cents: np.ndarray
    user_ids: Sequence[str]
    favourite: np.ndarray
    release_s: np.ndarray  # epoch seconds per item: no event of the item before it


def item_records(hidden: HiddenStructure, rng: np.random.Generator) -> list[dict[str, Any]]:
    """One catalogue record per item (see the module docstring)."""
    n = len(hidden.item_ids)
    brand = hidden.category * BRANDS_PER_CATEGORY + rng.integers(0, BRANDS_PER_CATEGORY, n)
    own = rng.integers(0, WORDS_PER_CATEGORY, (n, 3))
    general = rng.integers(0, len(GENERAL_WORDS), n)
    records = []
    for i, item_id in enumerate(hidden.item_ids):
        category = int(hidden.category[i])
        cents = int(hidden.price_cents[i])
        tokens = [f"c{category}w{int(w)}" for w in own[i]] + [GENERAL_WORDS[int(general[i])]]
        records.append(
            {
                "item_id": item_id,
                "title": f"{GENERAL_WORDS[int(general[i])].title()} item {item_id}",
                "category": f"c{category}",
                "brand": f"b{int(brand[i])}",
                "price": f"{cents // 100}.{cents % 100:02d}",
                "tokens": tokens,
                "available_from": dt.datetime.fromtimestamp(
                    int(hidden.release_s[i]), dt.UTC
                ).strftime("%Y-%m-%dT%H:%M:%SZ"),
            }
        )
    return records


def user_records(hidden: HiddenStructure, rng: np.random.Generator) -> list[dict[str, Any]]:
    """One profile per (non-bot) user (see the module docstring)."""
    n = len(hidden.favourite)
    from_taste = rng.random(n) < P_REGION_FROM_TASTE
    region = np.where(from_taste, hidden.favourite % N_REGIONS, rng.integers(0, N_REGIONS, n))
    age = rng.integers(0, len(AGE_BANDS), n)
    return [
        {"user_id": hidden.user_ids[u], "age_band": AGE_BANDS[int(age[u])],
         "region": f"r{int(region[u])}"}
        for u in range(n)
    ]  # fmt: skip


def _write_lines(path: Location, records: list[dict[str, Any]]) -> None:
    storage.write_text(path, "".join(json.dumps(record) + "\n" for record in records))


def write_catalog(hidden: HiddenStructure, seed: int, out: Location) -> dict[str, Any]:
    """Write items and users under ``out``; returns {raw_items, raw_users, catalog_items,
    profiles}."""
    rng = np.random.default_rng([seed, 2])  # its own stream: the events are unaffected
    items = item_records(hidden, rng)
    users = user_records(hidden, rng)
    _write_lines(out / "items" / "items.jsonl", items)
    _write_lines(out / "users" / "users.jsonl", users)
    return {
        "raw_items": str(out / "items"),
        "raw_users": str(out / "users"),
        "catalog_items": len(items),
        "profiles": len(users),
    }
