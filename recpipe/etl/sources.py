"""Read raw event files (JSON lines, CSV, Parquet) into one normalised, all-string frame.

Every input record becomes exactly one output row, malformed or not, with columns
``raw`` (the record text), ``parse_error`` (a reason code or null), the known fields as
strings, ``extra`` (map of other fields) and ``source_file``.
"""

from __future__ import annotations

from collections import defaultdict

from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from recpipe.errors import RecpipeError
from recpipe.schema import EXTRA, KNOWN_FIELDS, RAW, SOURCE_FILE, Reason
from recpipe.storage import HadoopFiles, StorageError

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


class RawInputError(RecpipeError, ValueError):
    """The raw input location is missing, empty or of an unknown format."""


def detect_format(name: str) -> str | None:
    """Input format from a file name or URI (``.jsonl.gz`` counts as JSON), or None."""
    suffixes = [f".{part.lower()}" for part in name.rsplit("/", 1)[-1].split(".")[1:]]
    while suffixes and suffixes[-1] in _COMPRESSION_SUFFIXES:
        suffixes.pop()
    return _FORMAT_BY_SUFFIX.get(suffixes[-1]) if suffixes else None


def list_input_files(spark: SparkSession, location: str) -> list[str]:
    """Expand a file, folder (recursively) or glob at any Hadoop URI into qualified file URIs.

    Listed through the session's Hadoop ``FileSystem``, so the driver sees what executors
    read; a plain path is a local path. Hidden and ``_``-prefixed files are skipped.
    """
    try:
        files = HadoopFiles(spark).list_files(location, key="paths.raw_events")
    except StorageError as exc:
        raise RawInputError(str(exc)) from None
    if not files:
        raise RawInputError(f"paths.raw_events: no input files at {location}")
    return files


def group_by_format(files: list[str], input_format: str) -> dict[str, list[str]]:
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
            f"clean.input_format=auto cannot tell the format of {unknown[:5]}; "
            "use .jsonl/.json/.csv/.parquet names or set clean.input_format"
        )
    return dict(groups)


def _source_file() -> Column:
    return F.col("_metadata.file_path")


def _known_and_extra(fields: Column) -> list[Column]:
    """Split a map<string,string> of all fields into the known columns and ``extra``."""
    known = F.array(*(F.lit(k) for k in KNOWN_FIELDS))
    return [
        *(fields.getItem(name).alias(name) for name in KNOWN_FIELDS),
        F.map_filter(fields, lambda k, _: ~F.array_contains(known, k)).alias(EXTRA),
    ]


def read_json_lines(spark: SparkSession, files: list[str]) -> DataFrame:
    """JSON lines: one record per line; a line that is not a JSON object is kept with its reason."""
    lines = spark.read.text(files).select(
        F.col("value").alias(RAW), _source_file().alias(SOURCE_FILE)
    )
    fields = F.from_json(F.col(RAW), _STRING_MAP)
    parse_error = (
        F.when(F.trim(F.col(RAW)) == "", F.lit(Reason.EMPTY_RECORD))
        .when(fields.isNotNull(), F.lit(None))
        # get_json_object parses any JSON value: valid JSON that is not an object lands here.
        .when(F.get_json_object(F.col(RAW), "$").isNotNull(), F.lit(Reason.NOT_AN_OBJECT))
        .otherwise(F.lit(Reason.MALFORMED_RECORD))
    )
    return lines.select(
        F.col(RAW),
        parse_error.alias(PARSE_ERROR),
        *_known_and_extra(F.coalesce(fields, F.create_map().cast(_STRING_MAP))),
        F.col(SOURCE_FILE),
    )


def read_csv(spark: SparkSession, files: list[str]) -> DataFrame:
    """CSV with a header; rows with more or fewer fields than the header are malformed."""
    paths = list(files)
    header = spark.read.option("header", True).csv(paths).columns
    schema = T.StructType([T.StructField(name, T.StringType()) for name in [*header, _CORRUPT]])
    rows = (
        spark.read.option("header", True)
        .option("mode", "PERMISSIVE")
        .option("columnNameOfCorruptRecord", _CORRUPT)
        .schema(schema)
        .csv(paths)
    )
    malformed = F.col(_CORRUPT).isNotNull()
    as_map = F.map_from_arrays(
        F.array(*(F.lit(c) for c in header)), F.array(*(F.col(f"`{c}`") for c in header))
    )
    as_text = F.to_json(F.struct(*(F.col(f"`{c}`") for c in header)))
    return rows.select(
        F.coalesce(F.col(_CORRUPT), as_text).alias(RAW),
        F.when(malformed, F.lit(Reason.MALFORMED_RECORD)).alias(PARSE_ERROR),
        *_known_and_extra(as_map),
        _source_file().alias(SOURCE_FILE),
    )


def read_parquet(spark: SparkSession, files: list[str]) -> DataFrame:
    """Parquet: columns cast to strings (nested ones as JSON); the raw text is the row as JSON."""
    rows = spark.read.parquet(*files)
    columns = rows.columns

    def as_string(name: str) -> Column:
        dtype = rows.schema[name].dataType
        col = F.col(f"`{name}`")
        if isinstance(dtype, T.ArrayType | T.MapType | T.StructType):
            return F.to_json(col)
        return col.try_cast(T.StringType())

    as_map = F.map_from_arrays(
        F.array(*(F.lit(c) for c in columns)), F.array(*(as_string(c) for c in columns))
    )
    return rows.select(
        F.to_json(F.struct(*(F.col(f"`{c}`") for c in columns))).alias(RAW),
        F.lit(None).cast(T.StringType()).alias(PARSE_ERROR),
        *_known_and_extra(as_map),
        _source_file().alias(SOURCE_FILE),
    )


_READERS = {"json": read_json_lines, "csv": read_csv, "parquet": read_parquet}


def read_raw_events(spark: SparkSession, location: str | None, input_format: str) -> DataFrame:
    """All raw records under ``location`` as one normalised frame (see module docstring)."""
    if not location:
        raise RawInputError("paths.raw_events is not set: give a file, a folder or a glob")
    files = list_input_files(spark, location)
    frames = [
        _READERS[fmt](spark, paths) for fmt, paths in group_by_format(files, input_format).items()
    ]
    result = frames[0]
    for frame in frames[1:]:
        result = result.unionByName(frame)
    return result
