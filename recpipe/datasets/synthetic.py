"""Deterministic synthetic raw interaction logs with the shape of real e-commerce logs.

Events are generated per chunk of users with numpy and streamed as JSON lines to
``part-NNNNN.jsonl`` files at any location (through :mod:`recpipe.storage`), so memory stays
bounded whatever ``n_events`` is.

Shape: lognormal (heavy-tailed) sessions per user; Zipf item popularity with a category per
item; sessions of views of mostly one category with a view -> click -> cart -> purchase
funnel (about 70/20/7/3 %); sessions separated by at least ``2 * session_gap_minutes``.
A share of the items (``late_item_fraction``) is released late in the window: before its
release a view that would pick such an item picks the next more popular item of its category
instead, so the item's first event falls after its release (item cold start).
Each session has a device (mostly the user's own); a share of sessions
(``device_category_share``) browses the device's own category instead of the user's usual
choice, so the event context (device) carries signal of its own.

Guarantees the tests and the clean stage rely on:

* per user, valid event timestamps are distinct whole seconds, strictly increasing in file
  order (files read as part-00000, part-00001, ...; line order within a file), so two distinct
  valid events never share the duplicate key;
* a duplicate line is a byte-identical copy of an earlier valid line;
* every malformed line fails exactly one check, the one its reason code names, given the
  checks run in the order of :class:`recpipe.schema.Reason`.
"""

from __future__ import annotations

import datetime as dt
import itertools
import json
import math
import sys
import time
from contextlib import ExitStack
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from recpipe import storage
from recpipe.datasets.synthetic_catalog import HiddenStructure, write_catalog
from recpipe.schema import EPOCH_MS_THRESHOLD, Reason
from recpipe.storage import Location, LocationLike, as_location

EVENT_TYPES: tuple[str, ...] = ("view", "click", "cart", "purchase")
DEVICES: tuple[str, ...] = ("web", "ios", "android")
SUMMARY_FILE = "_generation.json"

# Malformed kinds, in the consumer's check order; bot_suspect is the consumer's own decision.
MALFORMED_REASONS: tuple[str, ...] = tuple(r for r in Reason.ALL if r != Reason.BOT_SUSPECT)

_SECONDS_PER_DAY = 86_400
_EVENTS_PER_CHUNK = 250_000

# Funnel: P(click | view), P(cart | click), P(purchase | cart) give 70/20/7/3 %.
_P_CLICK = 2 / 7
_P_CART = 0.35
_P_PURCHASE = 3 / 7
_EVENTS_PER_VIEW = 1 + _P_CLICK * (1 + _P_CART * (1 + _P_PURCHASE))
_MEAN_VIEWS = 4.0
_MAX_VIEWS = 30
# Mean of min(Geometric(1 / _MEAN_VIEWS), _MAX_VIEWS) views, times events per view.
_EVENTS_PER_SESSION = _MEAN_VIEWS * (1 - (1 - 1 / _MEAN_VIEWS) ** _MAX_VIEWS) * _EVENTS_PER_VIEW
_P_FAVOURITE_CATEGORY = 0.6  # a session browses the user's favourite category
_P_SESSION_CATEGORY = 0.8  # a view stays in the session's category
_SESSIONS_SIGMA = 1.3  # lognormal spread of sessions per user
_SLOT_SIGMA = 1.5  # lognormal spread of idle time between sessions: bursts and long pauses

# Seconds between events of a session: 5 + exponential, at most 300.
_GAP_MIN_S = 5
_GAP_MAX_S = 300
_GAP_SCALE_S = 40.0

_DEVICE_P = (0.45, 0.30, 0.25)
_P_OTHER_DEVICE = 0.15
# ts formats of valid events: epoch s, epoch ms, ISO "Z", ISO with an offset.
_TS_FORMAT_P = (0.40, 0.25, 0.20, 0.15)
_OFFSETS_MIN = np.array([120, -300, 330, 540, -180, 60, -480], dtype=np.int64)

_BOT_P_VIEW = 0.9

# Late items are released uniformly within this share of the window (from its start).
_LATE_RELEASE = (0.5, 0.9)


@dataclass(frozen=True)
class SyntheticSpec:
    """What to generate; every output byte is a function of this spec."""

    n_events: int  # approximate total valid events incl. bot events (exact count in summary)
    n_users: int | None = None  # default: max(100, n_events // 40); bot users come on top
    n_items: int | None = None  # default: max(50, n_events // 200)
    n_categories: int = 50
    zipf_exponent: float = 1.1  # item popularity ~ rank^-a
    start: str = "2026-11-01"  # ISO date (UTC); valid events fall in [start, start + days)
    days: int = 21
    session_gap_minutes: float = 30.0  # sessions are separated by gaps >= 2x this
    malformed_fraction: float = 0.01  # extra malformed lines, spread evenly over every kind
    duplicate_fraction: float = 0.005  # extra exact duplicate lines of valid events
    session_id_user_fraction: float = 0.5  # users whose events carry an explicit session_id
    bot_users: int = 0  # users that each emit bot_events_per_day events within one UTC day
    bot_events_per_day: int = 5000  # capped at 86400 (one event per second)
    n_files: int = 4
    seed: int = 0
    catalog: bool = True  # also write items and profiles beside the events (catalog_dir)
    late_item_fraction: float = 0.05  # items released late in the window (cold start)
    device_category_share: float = 0.3  # sessions browsing their device's own category

    def __post_init__(self) -> None:
        checks = {
            "n_events >= 1": self.n_events >= 1,
            "n_users >= 1": self.n_users is None or self.n_users >= 1,
            "n_items >= 1": self.n_items is None or self.n_items >= 1,
            "n_categories >= 1": self.n_categories >= 1,
            "zipf_exponent > 0": self.zipf_exponent > 0,
            "days >= 1": self.days >= 1,
            "session_gap_minutes > 0": self.session_gap_minutes > 0,
            "0 <= malformed_fraction < 1": 0 <= self.malformed_fraction < 1,
            "0 <= duplicate_fraction < 1": 0 <= self.duplicate_fraction < 1,
            "0 <= session_id_user_fraction <= 1": 0 <= self.session_id_user_fraction <= 1,
            "bot_users >= 0": self.bot_users >= 0,
            "bot_events_per_day >= 1": self.bot_events_per_day >= 1,
            "n_files >= 1": self.n_files >= 1,
            "0 <= late_item_fraction < 1": 0 <= self.late_item_fraction < 1,
            "0 <= device_category_share <= 1": 0 <= self.device_category_share <= 1,
        }
        failed = [name for name, ok in checks.items() if not ok]
        if failed:
            raise ValueError(f"invalid SyntheticSpec: {', '.join(failed)}")
        dt.date.fromisoformat(self.start)
        # Sessions and the gaps between them must fit in the window with room to spare.
        if 2 * self.session_gap_minutes * 60 > self.days * _SECONDS_PER_DAY / 4:
            raise ValueError("invalid SyntheticSpec: session_gap_minutes too large for days")

    @property
    def users(self) -> int:
        return self.n_users if self.n_users is not None else max(100, self.n_events // 40)

    @property
    def items(self) -> int:
        return self.n_items if self.n_items is not None else max(50, self.n_events // 200)

    @property
    def bot_events_each(self) -> int:
        return min(self.bot_events_per_day, _SECONDS_PER_DAY)


def _scrambled_ids(prefix: str, n: int, rng: np.random.Generator) -> list[str]:
    """``n`` distinct random-looking ids: an affine bijection modulo a power of ten."""
    modulus = 10 ** (len(str(n)) + 1)
    multiplier = 7_368_787  # ends in 7: coprime with any power of ten
    offset = int(rng.integers(0, modulus))
    numbers = (np.arange(n, dtype=np.int64) * multiplier + offset) % modulus
    return [f"{prefix}{k}" for k in numbers.tolist()]


def _segment_starts(counts: np.ndarray) -> np.ndarray:
    """Index of the first element of each segment of a flat array split by ``counts``."""
    return np.cumsum(counts) - counts


def _within(counts: np.ndarray) -> np.ndarray:
    """Position of each element inside its segment (0, 1, ..., count - 1 per segment)."""
    total = int(counts.sum())
    return np.arange(total, dtype=np.int64) - np.repeat(_segment_starts(counts), counts)


def _cumsum_within(values: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Inclusive running sum of ``values`` restarting at every segment."""
    total = np.cumsum(values)
    base = np.concatenate((np.zeros(1, dtype=total.dtype), total))[_segment_starts(counts)]
    return total - np.repeat(base, counts)


def _put_digits(buf: np.ndarray, col: int, values: np.ndarray, width: int) -> None:
    for k in range(width):
        buf[:, col + width - 1 - k] = 48 + (values // 10**k) % 10


def _iso_strings(ts: np.ndarray, offset_min: np.ndarray | None) -> np.ndarray:
    """Quoted ISO-8601 strings (JSON-ready) of epoch seconds: "...Z" or "...+hh:mm" style."""
    n = len(ts)
    local = ts if offset_min is None else ts + offset_min * 60
    day = local // _SECONDS_PER_DAY
    second_of_day = local - day * _SECONDS_PER_DAY
    dates = day.astype("datetime64[D]")
    years = dates.astype("datetime64[Y]")
    months = dates.astype("datetime64[M]")
    template = b'"0000-00-00T00:00:00Z"' if offset_min is None else b'"0000-00-00T00:00:00+00:00"'
    buf = np.empty((n, len(template)), dtype=np.uint8)
    buf[:] = np.frombuffer(template, dtype=np.uint8)
    _put_digits(buf, 1, years.astype(np.int64) + 1970, 4)
    _put_digits(buf, 6, (months - years.astype("datetime64[M]")).astype(np.int64) + 1, 2)
    _put_digits(buf, 9, (dates - months.astype("datetime64[D]")).astype(np.int64) + 1, 2)
    _put_digits(buf, 12, second_of_day // 3600, 2)
    _put_digits(buf, 15, second_of_day // 60 % 60, 2)
    _put_digits(buf, 18, second_of_day % 60, 2)
    if offset_min is not None:
        buf[:, 20] = np.where(offset_min < 0, ord("-"), ord("+"))
        magnitude = np.abs(offset_min)
        _put_digits(buf, 21, magnitude // 60, 2)
        _put_digits(buf, 24, magnitude % 60, 2)
    return buf.view(f"S{len(template)}").ravel()


def _ts_strings(ts: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """JSON text of each timestamp in a random mix of the accepted formats."""
    fmt = np.searchsorted(np.cumsum(_TS_FORMAT_P), rng.random(len(ts)), side="right")
    out = np.zeros(len(ts), dtype="S27")
    for code in range(4):
        mask = fmt == code
        if not mask.any():
            continue
        sub = ts[mask]
        if code == 0:
            out[mask] = sub.astype("S20")
        elif code == 1:
            # Whole seconds in ms, so the same instant never has two distinct ms values.
            out[mask] = (sub * 1000).astype("S20")
        elif code == 2:
            out[mask] = _iso_strings(sub, None)
        else:
            offsets = _OFFSETS_MIN[rng.integers(0, len(_OFFSETS_MIN), len(sub))]
            out[mask] = _iso_strings(sub, offsets)
    return out


class _Catalog:
    """Items with Zipf popularity, a category each, a price, and their JSON fragments."""

    def __init__(self, spec: SyntheticSpec, rng: np.random.Generator) -> None:
        n = spec.items
        n_cat = min(spec.n_categories, n)  # every category holds at least one item
        self.n = n
        self.ids = _scrambled_ids("i", n, rng)
        # Item index == popularity rank; categories get a balanced mix of ranks.
        self.category = rng.permutation(n) % n_cat
        weight = np.arange(1, n + 1, dtype=np.float64) ** -spec.zipf_exponent
        self.by_category = np.argsort(self.category, kind="stable")
        self.cat_size = np.bincount(self.category, minlength=n_cat)
        self.cat_offset = _segment_starts(self.cat_size)
        self.cum = np.cumsum(weight[self.by_category])
        self.cat_start = np.concatenate(([0.0], self.cum))[self.cat_offset]
        self.cat_weight = np.bincount(self.category, weights=weight, minlength=n_cat)
        self.cat_cdf = np.cumsum(self.cat_weight) / self.cat_weight.sum()
        self.cat_cdf[-1] = 1.0
        cat_base = np.exp(rng.normal(3.0, 0.8, n_cat))
        price = cat_base[self.category] * np.exp(rng.normal(0.0, 0.35, n))
        self.price_cents = np.maximum(99, np.round(price * 100)).astype(np.int64)
        # One fragment per (item, event type): everything after the ts value.
        frags = []
        for item_id, cat, cents in zip(
            self.ids, self.category.tolist(), self.price_cents.tolist(), strict=True
        ):
            head = f',"item_id":"{item_id}","category":"c{cat}","event_type":"'
            frags.append(f'{head}view"}}\n')
            frags.append(f'{head}click"}}\n')
            frags.append(f'{head}cart"}}\n')
            frags.append(f'{head}purchase","value":{cents // 100}.{cents % 100:02d}}}\n')
        self.fragments = np.array([f.encode() for f in frags])

    def plan_releases(self, fraction: float, start_s: int, window_s: int, seed: int) -> None:
        """Release ``fraction`` of the items (never a category's most popular one) late in
        the window: ``release_s`` per item (``start_s`` for the others) and ``substitute``, the
        item a view picks instead before the release (the next more popular released-early
        item of the same category; itself for an item released at the start)."""
        rng = np.random.default_rng([seed, 3])  # its own stream: fraction 0 changes nothing
        rank = np.empty(self.n, dtype=np.int64)
        rank[self.by_category] = np.arange(self.n) - np.repeat(self.cat_offset, self.cat_size)
        eligible = np.flatnonzero(rank > 0)
        late = rng.choice(
            eligible, size=min(len(eligible), round(fraction * self.n)), replace=False
        )
        lo, hi = _LATE_RELEASE
        self.release_s = np.full(self.n, start_s, dtype=np.int64)
        self.release_s[late] = start_s + (window_s * rng.uniform(lo, hi, len(late))).astype(
            np.int64
        )
        self.substitute = np.arange(self.n, dtype=np.int64)
        is_late = self.release_s > start_s
        for pos, item in enumerate(self.by_category.tolist()):
            if is_late[item]:  # rank > 0: the one before it is of its category
                self.substitute[item] = self.substitute[self.by_category[pos - 1]]

    def draw_categories(self, rng: np.random.Generator, size: int) -> np.ndarray:
        return np.searchsorted(self.cat_cdf, rng.random(size), side="right")

    def draw_items(
        self, rng: np.random.Generator, category: np.ndarray, user_mask: np.ndarray
    ) -> np.ndarray:
        """Zipf item within each category; ``user_mask`` (0..3) shuffles a user's tail ranks."""
        target = self.cat_start[category] + rng.random(len(category)) * self.cat_weight[category]
        pos = np.searchsorted(self.cum, target, side="right")
        lo = self.cat_offset[category]
        rank = np.clip(pos, lo, lo + self.cat_size[category] - 1) - lo
        # XOR with 0..3 permutes aligned blocks of 4 ranks; the top block of every category
        # is left alone so the head of the global distribution stays Zipf.
        shuffled = np.where(rank >= 4, rank ^ user_mask, rank)
        rank = np.where(shuffled < self.cat_size[category], shuffled, rank)
        return self.by_category[lo + rank]


@dataclass
class _Chunk:
    """Valid events of one chunk, ordered by ts; ``head`` indexes ``heads`` (user/session)."""

    ts: np.ndarray
    head: np.ndarray
    item: np.ndarray
    etype: np.ndarray
    user: np.ndarray  # global user index
    heads: np.ndarray  # S: '{"user_id":..,["session_id":..,]"device":..,"ts":'
    n_sessions: int


class _Generator:
    def __init__(self, spec: SyntheticSpec) -> None:
        self.spec = spec
        rng = np.random.default_rng([spec.seed, 0])
        self.start_s = int(
            dt.datetime.combine(dt.date.fromisoformat(spec.start), dt.time(), dt.UTC).timestamp()
        )
        self.window_s = spec.days * _SECONDS_PER_DAY
        self.min_gap_s = math.ceil(2 * spec.session_gap_minutes * 60)
        self.catalog = _Catalog(spec, rng)
        self.catalog.plan_releases(spec.late_item_fraction, self.start_s, self.window_s, spec.seed)
        n_users = spec.users
        self.user_ids = _scrambled_ids("u", n_users + spec.bot_users, rng)
        self.has_sid = rng.random(n_users) < spec.session_id_user_fraction
        self.favourite = self.catalog.draw_categories(rng, n_users)
        self.device = np.searchsorted(np.cumsum(_DEVICE_P), rng.random(n_users), side="right")
        # Each device's own category (distinct ones, given three or more), from its own stream.
        shuffled = np.random.default_rng([spec.seed, 4]).permutation(
            max(spec.n_categories, len(DEVICES))
        )
        self.device_category = shuffled[: len(DEVICES)] % spec.n_categories
        self.mask = rng.integers(0, 4, n_users)
        self.sessions = self._sessions_per_user(rng, n_users)

    def _sessions_per_user(self, rng: np.random.Generator, n_users: int) -> np.ndarray:
        spec = self.spec
        target_events = max(0, spec.n_events - spec.bot_users * spec.bot_events_each)
        mean_duration = (_EVENTS_PER_SESSION - 1) * (_GAP_MIN_S + _GAP_SCALE_S)
        # The heaviest users fill at most about half of the window with sessions and gaps.
        cap = max(1, int(0.5 * self.window_s / (self.min_gap_s + mean_duration)))
        target_sessions = target_events / _EVENTS_PER_SESSION
        weight = rng.lognormal(0.0, _SESSIONS_SIGMA, n_users)
        lo, hi = 0.0, 1.0
        while np.minimum(weight * hi, cap).sum() < target_sessions and hi < 1e12:
            hi *= 2
        for _ in range(60):
            mid = (lo + hi) / 2
            if np.minimum(weight * mid, cap).sum() < target_sessions:
                lo = mid
            else:
                hi = mid
        expected = np.minimum(weight * hi, cap)
        # Stochastic rounding keeps the expected total; light users may get no session.
        return np.floor(expected + rng.random(n_users)).astype(np.int64)

    def chunk_bounds(self) -> list[tuple[int, int]]:
        expected = np.cumsum(self.sessions * _EVENTS_PER_SESSION)
        n_chunks = max(1, math.ceil(float(expected[-1]) / _EVENTS_PER_CHUNK))
        cuts = np.searchsorted(expected, np.arange(1, n_chunks) * _EVENTS_PER_CHUNK)
        edges = [0, *sorted(set(cuts.tolist()) - {0, len(self.sessions)}), len(self.sessions)]
        return list(itertools.pairwise(edges))

    def user_chunk(self, rng: np.random.Generator, u0: int, u1: int) -> _Chunk:
        """All events of users [u0, u1)."""
        n_sess_user = self.sessions[u0:u1]
        sess_user = np.repeat(np.arange(u0, u1), n_sess_user)
        n_sess = len(sess_user)
        views = np.minimum(rng.geometric(1 / _MEAN_VIEWS, n_sess), _MAX_VIEWS)
        view_sess = np.repeat(np.arange(n_sess), views)
        n_views = len(view_sess)

        # The session's device comes first: it may choose what the session browses.
        device = np.where(
            rng.random(n_sess) < _P_OTHER_DEVICE,
            rng.integers(0, len(DEVICES), n_sess),
            self.device[sess_user],
        )
        # Items: each view picks a category (mostly the session's) then a Zipf item in it.
        cat = self.catalog
        sess_cat = np.where(
            rng.random(n_sess) < _P_FAVOURITE_CATEGORY,
            self.favourite[sess_user],
            cat.draw_categories(rng, n_sess),
        )
        on_device = rng.random(n_sess) < self.spec.device_category_share
        sess_cat = np.where(on_device, self.device_category[device], sess_cat)
        view_cat = np.where(
            rng.random(n_views) < _P_SESSION_CATEGORY,
            sess_cat[view_sess],
            cat.draw_categories(rng, n_views),
        )
        view_item = cat.draw_items(rng, view_cat, self.mask[sess_user[view_sess]])

        clicked = rng.random(n_views) < _P_CLICK
        carted = clicked & (rng.random(n_views) < _P_CART)
        bought = carted & (rng.random(n_views) < _P_PURCHASE)
        stages = 1 + clicked.astype(np.int64) + carted + bought
        ev_view = np.repeat(np.arange(n_views), stages)
        etype = _within(stages)
        ev_sess = view_sess[ev_view]
        # Checkout: purchases move to the end of their session, the rest keeps its order.
        order = np.argsort(ev_sess * 2 + (etype == 3), kind="stable")
        item, etype = view_item[ev_view[order]], etype[order]
        ev_count = np.bincount(ev_sess, minlength=n_sess)

        gap = np.minimum(_GAP_MIN_S + rng.exponential(_GAP_SCALE_S, len(ev_sess)), _GAP_MAX_S)
        gap = gap.astype(np.int64)
        gap[_segment_starts(ev_count)] = 0
        offset_in_sess = _cumsum_within(gap, ev_count)
        duration = offset_in_sess[np.cumsum(ev_count) - 1]

        # A user's sessions that do not fit in the window are dropped (rare: only heavy users
        # in short windows reach the limit).
        span = _cumsum_within(duration + self.min_gap_s, n_sess_user) - self.min_gap_s
        keep = span <= self.window_s - 1
        if not keep.all():
            keep_ev = np.repeat(keep, ev_count)
            item, etype = item[keep_ev], etype[keep_ev]
            ev_sess = (np.cumsum(keep) - 1)[ev_sess[keep_ev]]
            offset_in_sess = offset_in_sess[keep_ev]
            sess_user, duration, device = sess_user[keep], duration[keep], device[keep]
            n_sess_user = np.bincount(sess_user - u0, minlength=u1 - u0)
            n_sess = len(sess_user)

        # Idle time: the window's slack split over the S + 1 slots around a user's sessions.
        local_user = sess_user - u0
        busy = np.bincount(local_user, weights=duration, minlength=u1 - u0).astype(np.int64)
        slack = self.window_s - 1 - busy - np.maximum(n_sess_user - 1, 0) * self.min_gap_s
        slot = rng.lognormal(0.0, _SLOT_SIGMA, n_sess)
        slot_total = np.bincount(local_user, weights=slot, minlength=u1 - u0).astype(np.float64)
        slot_total += rng.lognormal(0.0, _SLOT_SIGMA, u1 - u0)
        share = _cumsum_within(slot, n_sess_user) / slot_total[local_user]
        idle = np.floor(slack[local_user] * share).astype(np.int64)
        busy_before = _cumsum_within(duration, n_sess_user) - duration
        sess_start = self.start_s + idle + busy_before + _within(n_sess_user) * self.min_gap_s
        ts = sess_start[ev_sess] + offset_in_sess
        # Not yet released when the session starts: the view picks the substitute (the whole
        # session sees the same catalogue).
        early = cat.release_s[item] > sess_start[ev_sess]
        item = np.where(early, cat.substitute[item], item)

        heads = self._session_heads(sess_user, _within(n_sess_user), device)
        order = np.argsort(ts, kind="stable")
        return _Chunk(
            ts=ts[order],
            head=ev_sess[order],
            item=item[order],
            etype=etype[order],
            user=sess_user[ev_sess[order]],
            heads=heads,
            n_sessions=n_sess,
        )

    def _session_heads(
        self, sess_user: np.ndarray, sess_no: np.ndarray, device: np.ndarray
    ) -> np.ndarray:
        """'{"user_id":"u1",["session_id":"s-u1-3",]"device":"ios","ts":' per session."""
        u0, u1 = (int(sess_user[0]), int(sess_user[-1]) + 1) if len(sess_user) else (0, 0)
        user_heads = np.array(
            [
                (
                    f'{{"user_id":"{self.user_ids[u]}","session_id":"s-{self.user_ids[u]}-'
                    if self.has_sid[u]
                    else f'{{"user_id":"{self.user_ids[u]}",'
                ).encode()
                for u in range(u0, u1)
            ]
            or [b""]
        )
        sid_tail = np.where(
            self.has_sid[sess_user], np.strings.add(sess_no.astype("S20"), b'",'), b""
        )
        device_frag = np.array([f'"device":"{d}","ts":'.encode() for d in DEVICES])
        return np.strings.add(
            np.strings.add(user_heads[sess_user - u0], sid_tail), device_frag[device]
        )

    def bot_chunk(self, rng: np.random.Generator, b0: int, b1: int) -> _Chunk:
        """Bots b0..b1-1: each emits its events on distinct seconds of one UTC day."""
        spec = self.spec
        per_bot = spec.bot_events_each
        n_bots = b1 - b0
        ts_parts = []
        for _ in range(n_bots):
            day = int(rng.integers(0, spec.days))
            seconds = np.sort(rng.choice(_SECONDS_PER_DAY, per_bot, replace=False))
            ts_parts.append(self.start_s + day * _SECONDS_PER_DAY + seconds)
        ts = np.concatenate(ts_parts).astype(np.int64)
        head = np.repeat(np.arange(n_bots), per_bot)
        user = spec.users + b0 + head
        heads = np.array(
            [
                f'{{"user_id":"{self.user_ids[u]}","device":"web","ts":'.encode()
                for u in range(spec.users + b0, spec.users + b1)
            ]
        )
        etype = np.where(rng.random(len(ts)) < _BOT_P_VIEW, 0, 1)
        item = rng.integers(0, self.catalog.n, len(ts))
        item = np.where(self.catalog.release_s[item] > ts, self.catalog.substitute[item], item)
        order = np.argsort(ts, kind="stable")
        return _Chunk(ts[order], head[order], item[order], etype[order], user[order], heads, 0)

    def lines(self, chunk: _Chunk, rng: np.random.Generator) -> list[bytes]:
        """JSON lines (with newline) of a chunk's valid events."""
        text = np.strings.add(chunk.heads[chunk.head], _ts_strings(chunk.ts, rng))
        text = np.strings.add(text, self.catalog.fragments[chunk.item * 4 + chunk.etype])
        return text.tolist()


class _Malformed:
    """Builds one malformed line per call from a valid line, cycling through the kinds."""

    def __init__(self) -> None:
        self.counts = dict.fromkeys(MALFORMED_REASONS, 0)
        self.next_kind = 0

    def take_kinds(self, n: int) -> list[str]:
        kinds = [MALFORMED_REASONS[(self.next_kind + k) % len(MALFORMED_REASONS)] for k in range(n)]
        self.next_kind = (self.next_kind + n) % len(MALFORMED_REASONS)
        return kinds

    def build(self, reason: str, base_line: bytes, rng: np.random.Generator) -> bytes:
        """A line failing exactly the check ``reason``; other fields come from ``base_line``."""
        variant = self.counts[reason]
        self.counts[reason] += 1
        text = base_line.decode().rstrip("\n")
        if reason == Reason.EMPTY_RECORD:
            return (b"\n", b"   \n")[variant % 2]
        if reason == Reason.MALFORMED_RECORD:
            # Any proper prefix of a JSON object is unparsable.
            return text[: max(1, int(len(text) * rng.uniform(0.2, 0.95)))].encode() + b"\n"
        record: dict[str, Any] = json.loads(text)
        if reason == Reason.BAD_ENCODING:
            # The user id with a Latin-1 "é" (byte E9): invalid UTF-8, one line.
            record["user_id"] = f"{record['user_id']}\u00e9"
            line = json.dumps(record, separators=(",", ":"), ensure_ascii=False)
            return line.encode("utf-8").replace(b"\xc3\xa9", b"\xe9") + b"\n"
        if reason == Reason.BAD_ID_TYPE:
            key = ("user_id", "item_id")[variant % 2]
            record[key] = ({"id": record[key]}, [record[key]], True)[variant % 3]
        elif reason == Reason.NOT_AN_OBJECT:
            # No bare `null`: some readers cannot tell it from an unparsable line.
            options = (
                json.dumps([record["user_id"], record["item_id"]]),
                json.dumps(f"{record['user_id']} {record['event_type']} {record['item_id']}"),
                str(int(rng.integers(1, 10**6))),
            )
            return options[variant % len(options)].encode() + b"\n"
        if reason in (Reason.MISSING_USER_ID, Reason.MISSING_ITEM_ID):
            key = "user_id" if reason == Reason.MISSING_USER_ID else "item_id"
            if variant % 4 == 0:
                del record[key]
            else:
                record[key] = (None, "", "   ")[variant % 4 - 1]
        elif reason in (Reason.MISSING_EVENT_TYPE, Reason.MISSING_TS):
            key = "event_type" if reason == Reason.MISSING_EVENT_TYPE else "ts"
            if variant % 2 == 0:
                del record[key]
            else:
                record[key] = None
        elif reason == Reason.ID_TOO_LONG:
            key = ("user_id", "item_id")[variant % 2]
            record[key] = f"{record[key]}-".ljust(200, "x")
        elif reason == Reason.UNKNOWN_EVENT_TYPE:
            record.pop("value", None)
            record["event_type"] = ("hover", "scroll", "wishlist")[variant % 3]
        elif reason == Reason.BAD_TS:
            when = dt.datetime.fromtimestamp(_epoch_seconds(record["ts"]), dt.UTC)
            record["ts"] = ("yesterday", when.strftime("%Y-%m-%dT%H:%M:%S"))[variant % 2]
        elif reason == Reason.TS_OUT_OF_WINDOW:
            shift = int(rng.integers(0, 300 * _SECONDS_PER_DAY))
            old = 631_152_000 + shift  # 1990
            new = 4_102_444_800 + shift  # 2100
            iso = dt.datetime.fromtimestamp(new, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
            record["ts"] = (old, old * 1000, new, iso)[variant % 4]
        elif reason == Reason.BAD_VALUE:
            record["event_type"] = "purchase"
            record["value"] = ("abc", "n/a")[variant % 2]
        elif reason == Reason.MISSING_VALUE:
            record.pop("value", None)
            record["event_type"] = "rating"
        return json.dumps(record, separators=(",", ":")).encode() + b"\n"


def _epoch_seconds(value: int | str) -> int:
    if isinstance(value, int):
        return value // 1000 if value >= EPOCH_MS_THRESHOLD else value
    return int(dt.datetime.fromisoformat(value).timestamp())


class _Totals:
    """Running counts over the chunks written so far."""

    def __init__(self, n_items: int) -> None:
        self.valid = self.bot_events = self.duplicates = self.lines = 0
        self.sessions = self.users_active = self.max_user_day = 0
        self.ts_min: int | None = None
        self.ts_max: int | None = None
        self.type_counts = np.zeros(len(EVENT_TYPES), dtype=np.int64)
        self.items_seen = np.zeros(n_items, dtype=bool)

    def add(self, chunk: _Chunk, is_bot: bool, start_s: int, days: int) -> None:
        n = len(chunk.ts)
        self.valid += n
        self.sessions += chunk.n_sessions
        if not n:
            return
        self.type_counts += np.bincount(chunk.etype, minlength=len(EVENT_TYPES))
        self.items_seen[chunk.item] = True
        first, last = int(chunk.ts[0]), int(chunk.ts[-1])
        self.ts_min = first if self.ts_min is None else min(self.ts_min, first)
        self.ts_max = last if self.ts_max is None else max(self.ts_max, last)
        # A user's events all sit in one chunk, so per-chunk counts are per-user counts.
        users, user_index = np.unique(chunk.user, return_inverse=True)
        self.users_active += len(users)
        if is_bot:
            self.bot_events += n
        else:
            day = (chunk.ts - start_s) // _SECONDS_PER_DAY
            per_day = np.bincount(user_index * days + day)
            self.max_user_day = max(self.max_user_day, int(per_day.max()))


def _interleave(
    lines: list[bytes], n_dup: int, bad_lines: list[bytes], rng: np.random.Generator
) -> list[bytes]:
    """Valid lines in order, plus ``n_dup`` copies after their originals and the bad lines."""
    n = len(lines)
    source = rng.integers(0, max(n, 1), n_dup)
    # Valid line i sorts at 2i; an extra line placed before slot q sorts at 2q - 1,
    # so a copy of line i always lands after it (q > i).
    dup_slot = rng.integers(source + 1, n + 1)
    bad_slot = rng.integers(0, n + 1, len(bad_lines))
    keys = np.concatenate((2 * np.arange(n), 2 * dup_slot - 1, 2 * bad_slot - 1))
    pool = lines + [lines[i] for i in source.tolist()] + bad_lines
    return [pool[i] for i in np.argsort(keys, kind="stable").tolist()]


def catalog_dir(out: Location) -> Location:
    """Where the reference inputs of events written to ``out`` go: a sibling folder, since a
    folder is one input (``raw/synthetic`` -> ``raw/synthetic-catalog``)."""
    return out.parent / f"{out.name}-catalog"


def generate_events(spec: SyntheticSpec, out_dir: LocationLike, progress: bool = False) -> dict:
    """Write ``part-NNNNN.jsonl`` files of synthetic raw events into ``out_dir`` (path or URI).

    Existing part files there are removed first. Returns (and writes to ``_generation.json``,
    without ``elapsed_s``) a summary; ``lines_total == events_valid + duplicates +
    sum(malformed.values())``. With ``progress``, prints one line per chunk to stderr.
    """
    started = time.perf_counter()
    out = as_location(out_dir)
    storage.makedirs(out)
    for old in storage.glob(out, "part-*.jsonl"):
        storage.delete(old)
    gen = _Generator(spec)
    malformed = _Malformed()
    totals = _Totals(gen.catalog.n)
    jobs = [(False, a, b) for a, b in gen.chunk_bounds()]
    if spec.bot_users:
        per_chunk = max(1, _EVENTS_PER_CHUNK // spec.bot_events_each)
        jobs += [
            (True, b, min(b + per_chunk, spec.bot_users))
            for b in range(0, spec.bot_users, per_chunk)
        ]
    paths = [out / f"part-{k:05d}.jsonl" for k in range(spec.n_files)]
    with ExitStack() as stack:
        # Streams, not whole-file writes: the parts grow chunk by chunk past memory.
        # compression=None: pyarrow would otherwise pick a codec from the file name.
        files = []
        for path in paths:
            fs, fs_path = storage.arrow_path(path)
            files.append(stack.enter_context(fs.open_output_stream(fs_path, compression=None)))
        for index, (is_bot, a, b) in enumerate(jobs):
            rng = np.random.default_rng([spec.seed, 1, index])
            chunk = gen.bot_chunk(rng, a, b) if is_bot else gen.user_chunk(rng, a, b)
            lines = gen.lines(chunk, rng)
            totals.add(chunk, is_bot, gen.start_s, spec.days)

            # Extra lines follow the running totals, so the fractions hold over the whole run.
            n_dup = round(spec.duplicate_fraction * totals.valid) - totals.duplicates
            n_bad = round(spec.malformed_fraction * totals.valid) - sum(malformed.counts.values())
            bad_base = rng.integers(0, max(len(lines), 1), n_bad).tolist()
            bad_lines = [
                malformed.build(reason, lines[base], rng)
                for reason, base in zip(malformed.take_kinds(n_bad), bad_base, strict=True)
            ]
            ordered = _interleave(lines, n_dup, bad_lines, rng)
            totals.duplicates += n_dup
            totals.lines += len(ordered)

            # Contiguous slices keep each user's events in ts order across the files.
            edges = np.linspace(0, len(ordered), spec.n_files + 1).astype(int).tolist()
            for f, lo, hi in zip(files, edges[:-1], edges[1:], strict=True):
                f.write(b"".join(ordered[lo:hi]))
            if progress:
                rate = totals.valid / max(time.perf_counter() - started, 1e-9)
                print(
                    f"[synthetic] chunk {index + 1}/{len(jobs)}: {totals.valid:,} events, "
                    f"{rate:,.0f} events/s",
                    file=sys.stderr,
                    flush=True,
                )

    summary: dict[str, Any] = {
        "files": [str(p) for p in paths],
        "lines_total": totals.lines,
        "events_valid": totals.valid,
        "duplicates": totals.duplicates,
        "malformed": dict(malformed.counts),
        "bot_events": totals.bot_events,
        "bot_user_ids": gen.user_ids[spec.users :],
        "event_types": dict(zip(EVENT_TYPES, totals.type_counts.tolist(), strict=True)),
        "sessions": totals.sessions,
        "n_users_active": totals.users_active,
        "n_items_active": int(totals.items_seen.sum()),
        "max_events_per_user_day": totals.max_user_day,
        "ts_min": totals.ts_min,
        "ts_max": totals.ts_max,
        "window": [gen.start_s, gen.start_s + gen.window_s],
        "late_items": int((gen.catalog.release_s > gen.start_s).sum()),
        "device_categories": {
            device: f"c{int(category)}"
            for device, category in zip(DEVICES, gen.device_category, strict=False)
        },
        "spec": {**asdict(spec), "n_users": spec.users, "n_items": spec.items},
    }
    if spec.catalog:
        hidden = HiddenStructure(
            gen.catalog.ids, gen.catalog.category, gen.catalog.price_cents,
            gen.user_ids[: spec.users], gen.favourite, gen.catalog.release_s,
        )  # fmt: skip
        summary.update(write_catalog(hidden, spec.seed, catalog_dir(out)))
    storage.write_text(out / SUMMARY_FILE, json.dumps(summary, indent=2) + "\n")
    summary["elapsed_s"] = round(time.perf_counter() - started, 3)
    return summary
