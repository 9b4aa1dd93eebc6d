"""Column names, reason codes and table schemas shared by every stage.

Raw event contract (one record per event; JSON lines, CSV with a header, or Parquet):
``user_id``, ``item_id``, ``event_type``, ``ts`` are required; ``value`` and
``session_id`` are optional; any other field is kept in the ``extra`` map.
``ts`` is epoch seconds, epoch milliseconds (|ts| >= 1e11) or ISO-8601 with a zone.
Numeric ids (JSON numbers, Parquet numeric columns) are rendered as plain decimal text:
``42``, ``42.0`` and ``4.2e1`` are all the id ``42``; ids written as text stay as written.
"""

from __future__ import annotations

# Raw / events columns.
USER_ID = "user_id"
ITEM_ID = "item_id"
EVENT_TYPE = "event_type"
TS = "ts"
VALUE = "value"
SESSION_ID = "session_id"
EXTRA = "extra"
# map<string,string>: the event's declared context fields (features.context), kept from
# ``extra`` by sessionize and carried by the splits.
CONTEXT = "context"
SOURCE_FILE = "source_file"
RAW = "raw"
REASON = "reason"
DS = "ds"

# Catalogue columns (the catalog stage's tables; see recpipe.etl.catalog).
TITLE = "title"
ATTRIBUTES = "attributes"  # map<string,string>: every field of a record the contract does not name
HEAD, RELATION, TAIL = "head", "relation", "tail"
ENTITY = "entity"
INPUT = "input"  # catalog_quarantine's partition: which reference input a row came from

# Indexed columns (vocab).
USER_IDX = "user_idx"
ITEM_IDX = "item_idx"
USER_VECTOR = "user_vector"  # a model's trained vector of the user, as a column (array<float>)
TRAINED = "trained"  # the user has train interactions (boolean column joined for scoring)
# A user's best item-kNN candidates (array<int>, array<double>, best first), as columns.
CANDIDATE_ITEMS = "candidate_items"
CANDIDATE_SCORES = "candidate_scores"

REQUIRED_FIELDS: tuple[str, ...] = (USER_ID, ITEM_ID, EVENT_TYPE, TS)
OPTIONAL_FIELDS: tuple[str, ...] = (VALUE, SESSION_ID)
KNOWN_FIELDS: tuple[str, ...] = REQUIRED_FIELDS + OPTIONAL_FIELDS

DEFAULT_EVENT_TYPES: tuple[str, ...] = ("view", "click", "cart", "purchase", "rating")

# The key that defines an exact duplicate event.
DUPLICATE_KEY: tuple[str, ...] = (USER_ID, ITEM_ID, EVENT_TYPE, TS, VALUE)

# Epoch values at or above this magnitude are milliseconds: 1e11 s is the year 5138,
# 1e11 ms is 1973, so no plausible timestamp is ambiguous.
EPOCH_MS_THRESHOLD = 100_000_000_000


class Reason:
    """Quarantine reason codes. Each rejected row carries exactly one: the first check it fails."""

    EMPTY_RECORD = "empty_record"  # blank line
    # Invalid UTF-8 bytes or NUL characters (Latin-1 or UTF-16 text): decoding would merge ids.
    BAD_ENCODING = "bad_encoding"
    MALFORMED_RECORD = "malformed_record"  # unparsable JSON (e.g. truncated) or bad CSV row
    NOT_AN_OBJECT = "not_an_object"  # valid JSON but an array, string, number or null
    BAD_ID_TYPE = "bad_id_type"  # user_id or item_id is an object, array or boolean
    MISSING_USER_ID = "missing_user_id"  # absent, null, or empty after trimming
    MISSING_ITEM_ID = "missing_item_id"
    MISSING_EVENT_TYPE = "missing_event_type"
    MISSING_TS = "missing_ts"
    ID_TOO_LONG = "id_too_long"  # user_id or item_id longer than clean.max_id_length
    UNKNOWN_EVENT_TYPE = "unknown_event_type"  # not in clean.event_types
    BAD_TS = "bad_ts"  # not epoch s/ms, not ISO-8601 with a zone
    TS_OUT_OF_WINDOW = "ts_out_of_window"  # outside [clean.ts_min, end of ds + N days)
    BAD_VALUE = "bad_value"  # value present but not a finite number
    MISSING_VALUE = "missing_value"  # value absent for an event type that requires one
    BOT_SUSPECT = "bot_suspect"  # user over clean.bot_max_events_per_day on that day
    # Catalogue inputs only (not in ALL, the events' reasons): the record's key has several
    # distinct versions in the input.
    CONFLICTING_RECORD = "conflicting_record"

    ALL: tuple[str, ...] = (
        EMPTY_RECORD,
        BAD_ENCODING,
        MALFORMED_RECORD,
        NOT_AN_OBJECT,
        BAD_ID_TYPE,
        MISSING_USER_ID,
        MISSING_ITEM_ID,
        MISSING_EVENT_TYPE,
        MISSING_TS,
        ID_TOO_LONG,
        UNKNOWN_EVENT_TYPE,
        BAD_TS,
        TS_OUT_OF_WINDOW,
        BAD_VALUE,
        MISSING_VALUE,
        BOT_SUSPECT,
    )


# Training samples written by the export stage (lake tables samples_<kind>, one partition per
# ds and protocol, a file count that is a multiple of the planned world size):
#   samples_pairwise:  user_idx int32, item_idx int32 (positive), negatives list<int32> [N]
#   samples_pointwise: user_idx int32, item_idx int32, label float32 (1 positive, 0 sampled)
#   samples_sequence:  user_idx int32, history list<int32> [L] (left-padded with 0, most recent
#                      last), history_ts list<int64> [L] (epoch s, 0 at padding),
#                      item_idx int32 (the target: the item after the history), ts timestamp
NEGATIVES = "negatives"
CONTEXT_IDX = "context_idx"  # array<int>: the sample's context indexes, features.context order
LABEL = "label"
HISTORY = "history"
HISTORY_TS = "history_ts"
SAMPLE_TABLES: dict[str, str] = {
    "pairwise": "samples_pairwise",
    "pointwise": "samples_pointwise",
    "sequence": "samples_sequence",
    "bag": "samples_bag",
}
# The same kinds restricted to the recent window a warm-started run trains on (train.warm_start):
# samples whose positive or target is at or after the window's start.
RECENT_SAMPLE_TABLES: dict[str, str] = {
    kind: f"{table}_recent" for kind, table in SAMPLE_TABLES.items()
}
