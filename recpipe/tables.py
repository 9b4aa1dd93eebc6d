"""JVM-free reads of committed lake tables: splits and vocabulary sizes, as numpy.

Every read resolves the partition through its producing stage's manifest (recpipe.commit) and
checks the files against their recorded footer digests (recpipe.parquet_files).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow.compute as pc
import pyarrow.dataset as pads
from scipy import sparse

from recpipe.commit import current_version
from recpipe.errors import DriverLimitError, MissingInputError
from recpipe.layout import VOCAB_ITEMS, VOCAB_USERS
from recpipe.parquet_files import verified_dataset
from recpipe.schema import DS, EVENT_TYPE, ITEM_IDX, TS, USER_IDX, VALUE
from recpipe.storage import Location, LocationLike


@dataclass
class TrainData:
    """One split of interactions as numpy arrays, plus the vocabulary sizes."""

    users: np.ndarray  # int64 user_idx
    items: np.ndarray  # int64 item_idx
    event_types: np.ndarray  # str
    values: np.ndarray  # float64, NaN where absent
    ts: np.ndarray  # int64 epoch seconds
    n_users: int  # user_idx < n_users
    n_items: int  # item_idx in 1..n_items

    def matrix(self, weights: np.ndarray | None = None) -> sparse.csr_matrix:
        """Users x (n_items + 1) CSR of summed weights (1 per interaction by default)."""
        data = np.ones(len(self.users)) if weights is None else weights
        shape = (self.n_users, self.n_items + 1)
        matrix = sparse.csr_matrix((data, (self.users, self.items)), shape=shape)
        matrix.sum_duplicates()
        return matrix

    def plus(self, other: TrainData) -> TrainData:
        """These interactions followed by ``other``'s (same vocabularies)."""

        def joined(name: str) -> np.ndarray:
            return np.concatenate([getattr(self, name), getattr(other, name)])

        return TrainData(
            users=joined("users"),
            items=joined("items"),
            event_types=joined("event_types"),
            values=joined("values"),
            ts=joined("ts"),
            n_users=max(self.n_users, other.n_users),
            n_items=max(self.n_items, other.n_items),
        )


def split_path(root: LocationLike, table: str, ds: str, protocol: str) -> Location:
    """Folder of the current version of one split partition; MissingInputError if none."""
    return current_version(root, table, {DS: ds, "protocol": protocol})


def vocab_size(root: LocationLike, table: str, idx_col: str, ds: str) -> int:
    """Largest index in a vocabulary snapshot (read with pyarrow, no JVM)."""
    return column_max(verified_dataset(current_version(root, table, {DS: ds})), idx_col)


def column_max(dataset: pads.Dataset, column: str) -> int:
    """Largest value of integer ``column`` (0 when empty): from the Parquet footers' row-group
    statistics, so no row is read; a file without them is streamed batch by batch (the
    driver never holds the column, which grows with users)."""
    best = 0
    for fragment in dataset.get_fragments():
        assert isinstance(fragment, pads.ParquetFileFragment)
        groups = fragment.row_groups
        stats = [group.statistics.get(column) for group in groups]
        if all(s and s.get("max") is not None for s in stats):
            best = max([best, *(int(s["max"]) for s in stats if s)])
            continue
        for batch in fragment.to_batches(columns=[column]):
            top = pc.max(batch.column(0)).as_py()
            best = max(best, int(top) if top is not None else 0)
    return best


def _split_dataset(root: LocationLike, ds: str, protocol: str, part: str) -> pads.Dataset:
    try:
        folder = split_path(root, part, ds, protocol)
    except MissingInputError:
        raise MissingInputError(
            f"no {part} split for protocol={protocol} ds={ds}: run `recpipe split --ds {ds} "
            f"--set split.protocols=[{protocol}]`"
        ) from None
    return verified_dataset(folder)


def check_whole_read(rows: int, max_rows: int, what: str, instead: str = "") -> None:
    """DriverLimitError naming ``driver.max_split_rows`` when ``rows`` exceed ``max_rows``;
    ``instead`` (e.g. ``use evaluation.engine=spark``) leads the suggested ways out."""
    if rows > max_rows:
        ways = f"{instead}, or raise" if instead else "raise"
        raise DriverLimitError(
            f"{what} has {rows:,} rows, more than driver.max_split_rows={max_rows:,} one "
            f"process may read whole: {ways} driver.max_split_rows if this process has the "
            "memory (~100 bytes a row)"
        )


def split_presence(
    root: LocationLike, ds: str, protocol: str, part: str
) -> tuple[np.ndarray, np.ndarray]:
    """(users bool [n_users], items bool [n_items + 1]): which users and items have a row in
    ``part``, streamed batch by batch (memory: the two masks, never the split)."""
    users = np.zeros(vocab_size(root, VOCAB_USERS, USER_IDX, ds) + 1, dtype=bool)
    items = np.zeros(vocab_size(root, VOCAB_ITEMS, ITEM_IDX, ds) + 1, dtype=bool)
    dataset = _split_dataset(root, ds, protocol, part)
    for batch in dataset.to_batches(columns=[USER_IDX, ITEM_IDX]):
        users[batch.column(0).to_numpy(zero_copy_only=False)] = True
        items[batch.column(1).to_numpy(zero_copy_only=False)] = True
    items[0] = False  # padding
    return users, items


def split_users(root: LocationLike, ds: str, protocol: str, part: str) -> np.ndarray:
    """Sorted distinct users with a row in ``part``, streamed (memory: one mask over users)."""
    dataset = _split_dataset(root, ds, protocol, part)
    present = np.zeros(vocab_size(root, VOCAB_USERS, USER_IDX, ds) + 1, dtype=bool)
    for batch in dataset.to_batches(columns=[USER_IDX]):
        present[batch.column(0).to_numpy(zero_copy_only=False)] = True
    return np.flatnonzero(present)


def split_user_mask(
    root: LocationLike, ds: str, protocol: str, part: str, n_users: int
) -> np.ndarray:
    """Bool [n_users]: which users have a row in ``part`` (users indexed after ``n_users``,
    beyond a model's vocabulary, are left out)."""
    users = split_users(root, ds, protocol, part)
    mask = np.zeros(n_users, dtype=bool)
    mask[users[users < n_users]] = True
    return mask


def split_rows_of_users(
    root: LocationLike, ds: str, protocol: str, part: str, users: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(users, items, ts seconds) int64 of the rows of ``part`` whose user is in the sorted
    ``users``, streamed batch by batch: memory follows the rows kept, not the split."""
    users = np.asarray(users, dtype=np.int64)
    kept: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    dataset = _split_dataset(root, ds, protocol, part)
    for batch in dataset.to_batches(columns=[USER_IDX, ITEM_IDX, TS]):
        batch_users = batch.column(0).to_numpy(zero_copy_only=False).astype(np.int64)
        at = np.minimum(np.searchsorted(users, batch_users), max(len(users) - 1, 0))
        keep = users[at] == batch_users if len(users) else np.zeros(len(batch_users), bool)
        if keep.any():
            items = batch.column(1).to_numpy(zero_copy_only=False).astype(np.int64)
            ts = batch.column(2).cast("int64").to_numpy(zero_copy_only=False) // 1_000_000
            kept.append((batch_users[keep], items[keep], ts[keep]))
    if not kept:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty, empty
    return tuple(np.concatenate(parts) for parts in zip(*kept, strict=True))  # type: ignore[return-value]


def split_item_counts(
    root: LocationLike, ds: str, protocol: str, part: str, n_items: int
) -> np.ndarray:
    """Interactions per item [n_items + 1] in one split part, streamed batch by batch over the
    item column (memory: the counts, never the column)."""
    counts = np.zeros(n_items + 1, dtype=np.int64)
    for batch in _split_dataset(root, ds, protocol, part).to_batches(columns=[ITEM_IDX]):
        items = batch.column(0).to_numpy(zero_copy_only=False).astype(np.int64)
        grown = np.bincount(items, minlength=n_items + 1)
        if len(grown) > n_items + 1:
            raise ValueError(
                f"{part} split ds={ds} protocol={protocol} has item_idx {len(grown) - 1}, "
                f"beyond the {n_items} items of its vocabulary"
            )
        counts += grown
    return counts


def split_rows(root: LocationLike, ds: str, protocol: str, part: str) -> int:
    """Rows of one split part, from the Parquet footers (nothing else is read)."""
    return int(_split_dataset(root, ds, protocol, part).count_rows())


def load_split(
    root: LocationLike,
    ds: str,
    protocol: str,
    part: str,
    max_rows: int | None = None,
    instead: str = "",
) -> TrainData:
    """Read ``part`` (train/valid/test) of ``protocol`` for ``ds`` into numpy arrays.

    ``max_rows`` (``driver.max_split_rows``): a larger part is refused with
    :class:`DriverLimitError`, counted from the footers before any row is read; ``instead``
    names the alternative in its message.
    """
    dataset = _split_dataset(root, ds, protocol, part)
    if max_rows is not None:
        what = f"{part} split {protocol} ds={ds}"
        check_whole_read(dataset.count_rows(), max_rows, what, instead)
    table = dataset.to_table(columns=[USER_IDX, ITEM_IDX, EVENT_TYPE, VALUE, TS])
    ts = table.column(TS).cast("int64").to_numpy() // 1_000_000  # micros -> seconds
    values = table.column(VALUE).to_numpy().astype(np.float64)  # pyarrow 12 and 26 alike
    return TrainData(
        users=table.column(USER_IDX).to_numpy().astype(np.int64),
        items=table.column(ITEM_IDX).to_numpy().astype(np.int64),
        event_types=np.asarray(table.column(EVENT_TYPE).to_pylist(), dtype=object),
        values=values,
        ts=ts,
        n_users=vocab_size(root, VOCAB_USERS, USER_IDX, ds) + 1,
        n_items=vocab_size(root, VOCAB_ITEMS, ITEM_IDX, ds),
    )
