"""Read raw event files (JSON lines, CSV, Parquet) into one normalised, all-string frame.

Every input record becomes exactly one output row, malformed or not, with columns
``raw`` (the record text), ``parse_error`` (a reason code or null), the known fields as
strings, ``extra`` (map of other fields) and ``source_file``.

What each format reads as (the rules the README's raw event contract states):

* Text is UTF-8. A record holding invalid UTF-8 bytes or a NUL character (Latin-1 or UTF-16
  text) gets ``bad_encoding``; its ``raw`` keeps every byte as the ISO-8859-1 character of
  the same code, so ``raw.encode("latin-1")`` gives the bytes back (CSV and Parquet: each
  field so, inside the row's JSON object).
* Numeric ids (JSON numbers, Parquet numeric columns) become plain decimal text without
  exponent, trailing fractional zeros or ``-0``: ``42``, ``42.0``, ``4.2e1`` are all ``42``;
  ``1.50`` is ``1.5``. JSON numbers in exponent form or beyond 38 digits are doubles first
  (Spark's JSON rule), so they keep their shortest round-trip digits. Ids written as text
  (JSON strings, every CSV field, Parquet strings) stay as written: ``"007"`` is not ``7``.
  A ``user_id``/``item_id`` that is an object, array or boolean gets ``bad_id_type``.
* CSV files are read each with its own header (columns by name); quoted fields may span
  lines. Parquet files are read by column name: a column missing from a file is null there.
  A Parquet ``ts`` of type timestamp (an instant) becomes its exact epoch seconds; one
  without a time zone (``TIMESTAMP_NTZ``) stays zone-less text, so it is ``bad_ts`` like
  ISO-8601 text without a zone.
* 0-byte JSON and CSV files contribute no rows. A 0-byte Parquet file, a corrupt or truncated
  compressed file, a Parquet file Spark cannot read or with duplicate columns, or a UTF-16
  CSV header is a :class:`RawInputError` naming the file, raised before anything is
  published.
"""

from __future__ import annotations

import codecs
import csv
import io
import re
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from recpipe.errors import RecpipeError, java_error_line
from recpipe.schema import (
    EXTRA,
    ITEM_ID,
    KNOWN_FIELDS,
    RAW,
    SESSION_ID,
    SOURCE_FILE,
    USER_ID,
    Reason,
)
from recpipe.storage import StorageError
from recpipe.storage.hadoop import HadoopFiles

PARSE_ERROR = "parse_error"
_CORRUPT = "_corrupt_record"
_FORMAT_BY_SUFFIX = {
    ".json": "json",
    ".jsonl": "json",
    ".ndjson": "json",
    ".csv": "csv",
    ".parquet": "parquet",
    ".pq": "parquet",
}
_COMPRESSION_SUFFIXES = {".gz", ".bz2", ".zst", ".snappy"}
_STRING_MAP = T.MapType(T.StringType(), T.StringType())


@dataclass(frozen=True)
class RawContract:
    """What one kind of raw input holds: the fields read into columns, and the config keys.

    ``ids`` get the numeric rendering; ``typed_ids`` must also be strings or numbers (else
    ``bad_id_type``). Every other field goes into the ``extra`` map.
    """

    key: str  # the config key naming the input (named in its errors)
    format_key: str  # the config key of its input format
    known: tuple[str, ...]
    ids: tuple[str, ...]
    typed_ids: tuple[str, ...]


EVENTS_CONTRACT = RawContract(
    key="paths.raw_events",
    format_key="clean.input_format",
    known=KNOWN_FIELDS,
    ids=(USER_ID, ITEM_ID, SESSION_ID),
    typed_ids=(USER_ID, ITEM_ID),
)
# Enough bytes for any sane CSV header line.
_HEADER_BYTES = 1 << 16
# Spark's message when a task cannot read one input file (gzip cut short, not gzip, ...).
_FAILED_READ = re.compile(
    r"FAILED_READ_FILE[\w.]*\] Encountered error while reading file (\S+?)\.?(?:\s|$)"
)
_CAUSED_BY = re.compile(r"Caused by: ([\w$.]+): (.*)")
_LATIN1 = "ISO-8859-1"
# Loggers that print a failed task's stack trace on the driver (local executors included).
_TASK_LOGGERS = (
    "org.apache.spark.util.Utils",
    "org.apache.spark.executor.Executor",
    "org.apache.spark.scheduler.TaskSetManager",
    "org.apache.spark.sql.execution.datasources.FileFormatWriter",
)
_NUL = "\u0000"


class RawInputError(RecpipeError, ValueError):
    """The raw input is missing, empty, of an unknown format, or a file cannot be read."""


def detect_format(name: str) -> str | None:
    """Input format from a file name or URI (``.jsonl.gz`` counts as JSON), or None."""
    suffixes = [f".{part.lower()}" for part in name.rsplit("/", 1)[-1].split(".")[1:]]
    while suffixes and suffixes[-1] in _COMPRESSION_SUFFIXES:
        suffixes.pop()
    return _FORMAT_BY_SUFFIX.get(suffixes[-1]) if suffixes else None


def list_input_files(spark: SparkSession, location: str, key: str) -> dict[str, int]:
    """Expand a file, folder (recursively) or glob at any Hadoop URI into {file URI: bytes}.

    Listed through the session's Hadoop ``FileSystem``, so the driver sees what executors
    read; a plain path is a local path. Hidden and ``_``-prefixed files are skipped.
    """
    try:
        files = dict(HadoopFiles(spark).list_file_sizes(location, key=key))
    except StorageError as exc:
        raise RawInputError(str(exc)) from None
    if not files:
        raise RawInputError(f"{key}: no input files at {location}")
    return files


def group_by_format(
    files: list[str], input_format: str, format_key: str = EVENTS_CONTRACT.format_key
) -> dict[str, list[str]]:
    """Assign each file its reader format; ``auto`` uses the extension and rejects unknown ones."""
    if input_format != "auto":
        return {input_format: files}
    groups: dict[str, list[str]] = defaultdict(list)
    unknown = []
    for path in files:
        fmt = detect_format(path)
        if fmt is None:
            unknown.append(path.rsplit("/", 1)[-1])
        else:
            groups[fmt].append(path)
    if unknown:
        raise RawInputError(
            f"{format_key}=auto cannot tell the format of {unknown[:5]}; "
            f"use .jsonl/.json/.csv/.parquet names or set {format_key}"
        )
    return dict(groups)


def _source_file() -> Column:
    return F.col("_metadata.file_path")


def _known_and_extra(fields: Column, contract: RawContract) -> list[Column]:
    """Split a map<string,string> of all fields into the known columns and ``extra``."""
    known = F.array(*(F.lit(k) for k in contract.known))
    return [
        *(fields.getItem(name).alias(name) for name in contract.known),
        F.map_filter(fields, lambda k, _: ~F.array_contains(known, k)).alias(EXTRA),
    ]


def _empty_frame(spark: SparkSession, contract: RawContract) -> DataFrame:
    """The normalised frame with no rows (an input of only 0-byte text files)."""
    schema = T.StructType(
        [
            T.StructField(RAW, T.StringType()),
            T.StructField(PARSE_ERROR, T.StringType()),
            *(T.StructField(name, T.StringType()) for name in contract.known),
            T.StructField(EXTRA, _STRING_MAP),
            T.StructField(SOURCE_FILE, T.StringType()),
        ]
    )
    return spark.createDataFrame([], schema)


def plain_number(text: Column) -> Column:
    """Spark's text of a number (``42``, ``1.500``, ``1.0E-7``) as plain decimal text.

    No exponent, no trailing fractional zeros, no ``-0``: ``1.0E-7`` -> ``0.0000001``,
    ``1.795E9`` -> ``1795000000``, ``1.500`` -> ``1.5``. ``NaN``/``Infinity`` are unchanged.
    """
    # Java writes doubles outside [1e-3, 1e7) as d.dddE[-]n: shift the point by hand, since
    # a decimal cast needs a fixed scale and would round tiny values away.
    sci = r"^(-?)([0-9])\.([0-9]+)E(-?[0-9]+)$"
    sign = F.regexp_extract(text, sci, 1)
    digits = F.concat(F.regexp_extract(text, sci, 2), F.regexp_extract(text, sci, 3))
    exponent = F.regexp_extract(text, sci, 4).try_cast(T.IntegerType())
    whole = exponent + 1  # digits before the point
    shifted = (
        F.when(exponent < 0, F.concat(F.lit("0."), F.repeat(F.lit("0"), -exponent - 1), digits))
        .when(
            F.length(digits) <= whole,
            F.concat(digits, F.repeat(F.lit("0"), whole - F.length(digits))),
        )
        .otherwise(
            F.concat(
                digits.substr(F.lit(1), whole), F.lit("."), digits.substr(whole + 1, F.lit(99))
            )
        )
    )
    plain = F.when(text.rlike(sci), F.concat(sign, shifted)).otherwise(text)
    stripped = F.regexp_replace(F.regexp_replace(plain, r"(\.[0-9]*[1-9])0+$", "$1"), r"\.0*$", "")
    return F.when(stripped == "-0", F.lit("0")).otherwise(stripped)


def _utf8_problem(text: Column) -> Column:
    """True where a string holds invalid UTF-8 bytes or a NUL (the mark of UTF-16 text)."""
    return ~F.is_valid_utf8(text) | F.contains(text, F.lit(_NUL))


def _as_latin1(text: Column) -> Column:
    """Each byte of ``text`` as the character of the same code: lossless and valid UTF-8."""
    return F.decode(text.cast(T.BinaryType()), _LATIN1)


def _from_latin1(text: Column) -> Column:
    """The bytes of a string read as ISO-8859-1, as the UTF-8 string they spell (unchecked)."""
    return F.encode(text, _LATIN1).cast(T.StringType())


def read_json_lines(spark: SparkSession, files: list[str], contract: RawContract) -> DataFrame:
    """JSON lines: one record per line; a line that is not a JSON object is kept with its reason."""
    # The text source keeps each line's bytes undecoded, so invalid UTF-8 is still visible.
    lines = spark.read.text(files).select(
        F.col("value"),
        _utf8_problem(F.col("value")).alias("_bad_encoding"),
        _source_file().alias(SOURCE_FILE),
    )
    # Each step is its own projection: the parsed map is used many times below, and Spark
    # does not collapse a projection that would repeat an expensive expression (measured:
    # one flat select re-parsed each line per use, 4x slower).
    text = lines.select("*", F.when(~F.col("_bad_encoding"), F.col("value")).alias("_text")).select(
        "*",
        # Variant values keep the JSON type of each field: number vs string vs object.
        F.from_json(F.col("_text"), "map<string,variant>").alias("_parsed"),
    )
    parsed = F.col("_parsed")
    typed = text.select(
        "*",
        F.transform_values(parsed, lambda _, v: v.cast(T.StringType())).alias("_fields"),
        *(
            F.schema_of_variant(parsed.getItem(name)).alias(f"_kind_{name}")
            for name in contract.ids
        ),
    )
    fields = F.col("_fields")

    def id_text(name: str) -> Column:
        kind = F.col(f"_kind_{name}")
        number = kind.isin("TINYINT", "SMALLINT", "INT", "BIGINT", "FLOAT", "DOUBLE")
        number = number | kind.startswith("DECIMAL")
        return F.when(number, plain_number(fields.getItem(name))).otherwise(fields.getItem(name))

    bad_id_type = F.lit(False)
    for name in contract.typed_ids:
        kind = F.col(f"_kind_{name}")
        bad_id_type = bad_id_type | (
            (kind == "BOOLEAN") | kind.startswith("OBJECT") | kind.startswith("ARRAY")
        )
    text_col = F.col("_text")
    parse_error = (
        F.when(F.col("_bad_encoding"), F.lit(Reason.BAD_ENCODING))
        .when(F.trim(text_col) == "", F.lit(Reason.EMPTY_RECORD))
        .when(
            parsed.isNull() & F.get_json_object(text_col, "$").isNotNull(),
            F.lit(Reason.NOT_AN_OBJECT),
        )
        .when(parsed.isNull(), F.lit(Reason.MALFORMED_RECORD))
        .when(bad_id_type, F.lit(Reason.BAD_ID_TYPE))
    )
    known = F.array(*(F.lit(k) for k in contract.known))
    return typed.select(
        F.coalesce(text_col, _as_latin1(F.col("value"))).alias(RAW),
        parse_error.alias(PARSE_ERROR),
        *(
            (id_text(name) if name in contract.ids else fields.getItem(name)).alias(name)
            for name in contract.known
        ),
        F.coalesce(
            F.map_filter(fields, lambda k, _: ~F.array_contains(known, k)),
            F.create_map().cast(_STRING_MAP),
        ).alias(EXTRA),
        F.col(SOURCE_FILE),
    )


def _csv_header(spark: SparkSession, path: str, key: str) -> tuple[str, ...] | None:
    """Column names of a CSV file's first record, or None for a file without any bytes."""
    try:
        head = HadoopFiles(spark).head(path, _HEADER_BYTES, key=key)
    except StorageError as exc:
        raise RawInputError(str(exc)) from None
    if not head.strip():
        return None
    if head.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)) or b"\x00" in head:
        raise RawInputError(
            f"{key}: {path} is UTF-16 (or binary) text; CSV input must be UTF-8 "
            "(convert it, e.g. iconv -f UTF-16 -t UTF-8)"
        )
    # Invalid bytes become lone surrogates, so the names can be checked after decoding.
    text = head.removeprefix(codecs.BOM_UTF8).decode("utf-8", errors="surrogateescape")
    names = next(csv.reader(io.StringIO(text, newline="")), [])
    if any("\udc80" <= ch <= "\udcff" for name in names for ch in name):
        raise RawInputError(f"{key}: the header of {path} is not UTF-8 text")
    names = [name or f"_c{i}" for i, name in enumerate(names)]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise RawInputError(f"{key}: {path} has duplicate CSV columns {duplicates}")
    return tuple(names)


def _read_csv_group(
    spark: SparkSession, header: tuple[str, ...], files: list[str], contract: RawContract
) -> DataFrame:
    """CSV files sharing one header; rows with more or fewer fields than it are malformed."""
    schema = T.StructType([T.StructField(name, T.StringType()) for name in [*header, _CORRUPT]])
    rows = (
        spark.read.option("header", True)
        # Header lines are skipped per file; names come from _csv_header, not by position.
        .option("enforceSchema", True)
        .option("multiLine", True)
        # Latin-1 maps every byte to one character, so invalid UTF-8 survives the reader
        # (a UTF-8 reader would turn it into U+FFFD and merge distinct ids).
        .option("encoding", _LATIN1)
        .option("mode", "PERMISSIVE")
        .option("columnNameOfCorruptRecord", _CORRUPT)
        .schema(schema)
        .csv(files)
    )
    latin = [F.col(f"`{name}`") for name in header]
    malformed = F.col(_CORRUPT).isNotNull()
    every_byte = F.concat_ws("\n", F.col(_CORRUPT), *latin)
    bad_encoding = _utf8_problem(_from_latin1(every_byte))
    fields = [_from_latin1(col) for col in latin]
    as_map = F.map_from_arrays(F.array(*(F.lit(name) for name in header)), F.array(*fields))
    raw = (
        F.when(bad_encoding, F.coalesce(F.col(_CORRUPT), F.to_json(F.struct(*latin))))
        .when(malformed, _from_latin1(F.col(_CORRUPT)))
        .otherwise(F.to_json(F.struct(*(f.alias(n) for f, n in zip(fields, header, strict=True)))))
    )
    return rows.select(
        raw.alias(RAW),
        F.when(bad_encoding, F.lit(Reason.BAD_ENCODING))
        .when(malformed, F.lit(Reason.MALFORMED_RECORD))
        .alias(PARSE_ERROR),
        *_known_and_extra(F.when(~bad_encoding, as_map), contract),
        _source_file().alias(SOURCE_FILE),
    )


def read_csv(spark: SparkSession, files: list[str], contract: RawContract) -> DataFrame:
    """CSV files, each mapped by its own header's names (files may order columns differently)."""
    groups: dict[tuple[str, ...], list[str]] = defaultdict(list)
    for path in files:
        header = _csv_header(spark, path, contract.key)
        if header is not None:
            groups[header].append(path)
    frames = [_read_csv_group(spark, header, paths, contract) for header, paths in groups.items()]
    return _union(frames) if frames else _empty_frame(spark, contract)


def _parquet_frames(spark: SparkSession, files: list[str], key: str) -> list[DataFrame]:
    """The files as frames read by column name: one if their schemas merge, else one per schema.

    Merging reads every footer in one job. When it fails, each file's schema is read on its
    own (slower, only then): an unreadable file is named; files whose types differ are read
    in groups, which reconciles them because every column becomes text anyway.
    """
    try:
        with _quiet_task_failures(spark):
            return [spark.read.option("mergeSchema", True).parquet(*files)]
    except Exception:  # the per-file pass below names the cause
        pass
    groups: dict[str, list[str]] = defaultdict(list)
    schemas: dict[str, T.StructType] = {}
    for path in files:
        try:
            with _quiet_task_failures(spark):
                schema = spark.read.parquet(path).schema
        except Exception as exc:  # py4j and analysis errors alike
            raise RawInputError(f"{key}: cannot read {path}: {_cause(exc)}") from None
        schemas[schema.json()] = schema
        groups[schema.json()].append(path)
    return [spark.read.schema(schemas[key]).parquet(*paths) for key, paths in groups.items()]


def _parquet_rows(rows: DataFrame, contract: RawContract) -> DataFrame:
    """One Parquet frame in the normalised shape (see the module docstring for the rules)."""
    numeric = T.ByteType | T.ShortType | T.IntegerType | T.LongType | T.FloatType | T.DoubleType
    text_types = T.StringType | T.BinaryType

    def as_string(name: str) -> Column:
        dtype = rows.schema[name].dataType
        col = F.col(f"`{name}`")
        if isinstance(dtype, T.ArrayType | T.MapType | T.StructType):
            return F.to_json(col)
        if name == "ts" and isinstance(dtype, T.TimestampType):
            # An instant: its exact epoch seconds, whatever the session time zone.
            micros = F.unix_micros(col).cast(T.DecimalType(20, 0))
            return plain_number((micros * F.lit(0.000001).cast(T.DecimalType(7, 6))).cast("string"))
        if name in contract.ids and isinstance(dtype, numeric | T.DecimalType):
            return plain_number(col.cast(T.StringType()))
        return col.try_cast(T.StringType())

    columns = rows.columns
    texts = [c for c in columns if isinstance(rows.schema[c].dataType, text_types)]
    bad_encoding = F.lit(False)
    for name in texts:
        bad_encoding = bad_encoding | F.coalesce(
            ~F.is_valid_utf8(F.col(f"`{name}`").cast(T.StringType())), F.lit(False)
        )
    bad_id_type = F.lit(False)
    for name in contract.typed_ids:
        if name in columns and not isinstance(
            rows.schema[name].dataType, text_types | numeric | T.DecimalType
        ):
            bad_id_type = bad_id_type | F.col(f"`{name}`").isNotNull()
    latin_row = F.struct(
        *(
            (_as_latin1(F.col(f"`{c}`")) if c in texts else F.col(f"`{c}`")).alias(c)
            for c in columns
        )
    )
    as_map = F.map_from_arrays(
        F.array(*(F.lit(c) for c in columns)), F.array(*(as_string(c) for c in columns))
    )
    return rows.select(
        F.when(bad_encoding, F.to_json(latin_row))
        .otherwise(F.to_json(F.struct(*(F.col(f"`{c}`") for c in columns))))
        .alias(RAW),
        F.when(bad_encoding, F.lit(Reason.BAD_ENCODING))
        .when(bad_id_type, F.lit(Reason.BAD_ID_TYPE))
        .alias(PARSE_ERROR),
        *_known_and_extra(as_map, contract),
        _source_file().alias(SOURCE_FILE),
    )


def read_parquet(spark: SparkSession, files: list[str], contract: RawContract) -> DataFrame:
    """Parquet by column name: values as strings (nested ones as JSON); raw is the row as JSON."""
    frames = _parquet_frames(spark, files, contract.key)
    return _union([_parquet_rows(rows, contract) for rows in frames])


def _union(frames: list[DataFrame]) -> DataFrame:
    result = frames[0]
    for frame in frames[1:]:
        result = result.unionByName(frame)
    return result


def _cause(exc: BaseException) -> str:
    """The innermost Java cause of a Spark failure (``EOFException: Unexpected end ...``)."""
    causes = _CAUSED_BY.findall(str(exc))
    if causes:
        name, message = causes[-1]
        return f"{name.rsplit('.', 1)[-1]}: {message.strip()}"[:300]
    return java_error_line(exc)


@contextmanager
def _quiet_task_failures(spark: SparkSession) -> Iterator[None]:
    """Silence the driver's loggers that print each failed task's Java stack trace.

    Under a local master the executors share the driver's JVM, so a cut ``.gz`` would print
    hundreds of trace lines before the one-line error. Nothing is lost: the failure itself
    is raised (as :class:`RawInputError`, or unchanged with its trace). Executors' own logs
    on a cluster are untouched.
    """
    jvm = spark.sparkContext._jvm
    if jvm is None:
        raise RuntimeError("the SparkContext has no JVM (stopped?)")
    log4j = jvm.org.apache.logging.log4j
    configurator = log4j.core.config.Configurator
    previous = {name: log4j.LogManager.getLogger(name).getLevel() for name in _TASK_LOGGERS}
    for name in _TASK_LOGGERS:
        configurator.setLevel(name, log4j.Level.OFF)
    try:
        yield
    finally:
        for name, level in previous.items():
            configurator.setLevel(name, level)


@contextmanager
def raw_read_errors(spark: SparkSession, key: str = EVENTS_CONTRACT.key) -> Iterator[None]:
    """Turn a Spark job's failure to read one raw file into a one-line :class:`RawInputError`.

    Wrap the first action over :func:`read_raw_events`' frame: a truncated or fake ``.gz``
    only fails when its bytes are read, inside a task.
    """
    try:
        with _quiet_task_failures(spark):
            yield
    except Exception as exc:
        match = _FAILED_READ.search(str(exc))
        if match is None:
            raise
        raise RawInputError(f"{key}: cannot read {match.group(1)}: {_cause(exc)}") from None


_READERS = {"json": read_json_lines, "csv": read_csv, "parquet": read_parquet}


def read_raw_events(
    spark: SparkSession,
    location: str | None,
    input_format: str,
    contract: RawContract = EVENTS_CONTRACT,
) -> DataFrame:
    """All raw records under ``location`` as one normalised frame (see module docstring).

    ``contract`` says which fields become columns (events by default; the catalogue inputs
    have their own).
    """
    key = contract.key
    if not location:
        raise RawInputError(f"{key} is not set: give a file, a folder or a glob")
    sizes = list_input_files(spark, location, key)
    frames = []
    for fmt, paths in group_by_format(list(sizes), input_format, contract.format_key).items():
        empty = [path for path in paths if sizes[path] == 0]
        if fmt == "parquet" and empty:
            raise RawInputError(f"{key}: {empty[0]} is a 0-byte file, not Parquet")
        # A 0-byte text file holds no records: it contributes none.
        paths = [path for path in paths if sizes[path] > 0]
        if paths:
            frames.append(_READERS[fmt](spark, paths, contract))
    return _union(frames) if frames else _empty_frame(spark, contract)
