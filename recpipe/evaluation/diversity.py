"""Intra-list diversity by a catalogue attribute (genres), for both evaluation engines.

``ild@k`` of a user is the mean, over the pairs of items in their top k, of the Jaccard
distance between the items' value sets of ``catalog.mix_attribute`` (1 - |a & b| / |a | b|): 0
when every listed item has the same genres, 1 when no two share one. The metric is the mean
over evaluated users with at least one pair. An item without the attribute has the value
``(none)``, one missing from the catalogue ``(not in catalogue)``, as in the score stage's mix.

Two implementations of the same definition: numpy over bit masks of the value sets here (the
local engine), and Spark set functions over the recommendation rows
(:func:`recpipe.catalogue_mix.intra_list_diversity`) for the executors.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from recpipe.catalogue import NO_VALUE, NOT_IN_CATALOGUE, item_details, snapshot_ds, values_of
from recpipe.commit import current_version
from recpipe.config import Config
from recpipe.evaluation.ranking import PAD_ITEM
from recpipe.layout import ITEMS, VOCAB_ITEMS
from recpipe.parquet_files import verified_dataset
from recpipe.schema import DS, ITEM_ID, ITEM_IDX

ILD = "ild"
# Users ranked per numpy pass: bounds the [users, k, k, words] pair arrays.
_USERS_PER_PASS = 4096


def item_value_masks(config: Config, ds: str) -> np.ndarray | None:
    """``uint64 [n_items + 1, words]``: bit v of item i set when item i has value v of
    ``catalog.mix_attribute`` (row 0, padding, empty); None without a catalogue or attribute.

    Item-sized: read with pyarrow from ``vocab_items`` and the catalogue snapshot of ``ds``.
    """
    attribute = config.catalog.mix_attribute
    if not attribute or snapshot_ds(config.root, ITEMS, ds) is None:
        return None
    vocab = verified_dataset(current_version(config.root, VOCAB_ITEMS, {DS: ds}))
    table = vocab.to_table(columns=[ITEM_ID, ITEM_IDX])
    ids = table.column(ITEM_ID).to_pylist()
    indexes = table.column(ITEM_IDX).to_pylist()
    details = item_details(config.root, ds, ids)
    sets: list[list[str]] = []
    for item in ids:
        if item not in details:
            sets.append([NOT_IN_CATALOGUE])
        else:
            sets.append(values_of(details[item]["attributes"].get(attribute)) or [NO_VALUE])
    codes = {value: code for code, value in enumerate(sorted({v for s in sets for v in s}))}
    masks = np.zeros((max(indexes, default=0) + 1, max(1, -(-len(codes) // 64))), np.uint64)
    for index, values in zip(indexes, sets, strict=True):
        for value in values:
            code = codes[value]
            masks[index, code // 64] |= np.uint64(1) << np.uint64(code % 64)
    return masks


def local_intra_list_diversity(
    items: np.ndarray, masks: np.ndarray, ks: Sequence[int]
) -> dict[int, float]:
    """``k -> ild@k`` of the top-k lists ``items`` (``[users, >= max k]`` item indexes,
    best first, ``PAD_ITEM`` where a list is shorter); NaN when no user has a pair."""
    sums = {k: 0.0 for k in ks}
    users = {k: 0 for k in ks}
    for start in range(0, len(items), _USERS_PER_PASS):
        block = items[start : start + _USERS_PER_PASS]
        for k in ks:
            top = block[:, :k]
            valid = (top != PAD_ITEM) & (top < len(masks))
            bits = masks[np.where(valid, top, 0)]  # [users, k, words]
            shared = np.bitwise_count(bits[:, :, None, :] & bits[:, None, :, :]).sum(-1)
            either = np.bitwise_count(bits[:, :, None, :] | bits[:, None, :, :]).sum(-1)
            upper = np.triu(np.ones((top.shape[1], top.shape[1]), bool), 1)
            pairs = valid[:, :, None] & valid[:, None, :] & upper
            distance = 1.0 - shared / np.maximum(either, 1)
            n_pairs = pairs.sum(axis=(1, 2))
            with_pairs = n_pairs > 0
            per_user = (distance * pairs).sum(axis=(1, 2))[with_pairs] / n_pairs[with_pairs]
            sums[k] += float(per_user.sum())
            users[k] += int(with_pairs.sum())
    return {k: sums[k] / users[k] if users[k] else float("nan") for k in ks}
