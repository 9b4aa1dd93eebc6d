"""``recpipe sql`` is read-only: a statement is checked before Spark runs any of it.

Spark runs commands (``DROP``, ``INSERT``, ``SET``, ``ADD JAR``, ``CREATE FUNCTION``) eagerly
inside ``spark.sql``, so the check happens on the *parsed* plan first: only queries and a short
list of catalog inspections (``SHOW``, ``DESCRIBE``) pass. A query is then analysed (which
executes nothing) and refused when any part of it could run code or read outside the catalog:
``TRANSFORM ... USING`` (a shell command per row), ``reflect``/``java_method`` (any Java static
method), or a relation read by path (``SELECT * FROM text.`/etc/hostname```; the check also runs
with ``spark.sql.runSQLOnFiles=false``, so such a name is an unknown table). ``EXPLAIN`` passes
when the statement it explains would.
"""

from __future__ import annotations

from typing import Any

from pyspark.sql import DataFrame, SparkSession

from recpipe.errors import RecpipeError, java_error_line

# Parsed root plans that only read the catalog.
INSPECTIONS = frozenset(
    {
        "ShowTables",
        "ShowTablesExtended",
        "ShowViews",
        "ShowNamespaces",
        "ShowPartitions",
        "ShowColumns",
        "ShowCreateTable",
        "ShowTableProperties",
        "DescribeRelation",
        "DescribeColumn",
        "DescribeNamespace",
    }
)
EXPLAIN = "ExplainCommand"  # allowed when the plan it explains passes the same check
RUN_SQL_ON_FILES = "spark.sql.runSQLOnFiles"
# Plan nodes and expressions that execute something outside SQL.
CODE_RUNNING = {
    "ScriptTransformation": "TRANSFORM ... USING runs a shell command",
    "CallMethodViaReflection": "reflect/java_method call Java methods",
}
_LOGICAL = "org.apache.spark.sql.catalyst.plans.logical."
# Every statement that writes or changes state parses to one of these (checked on Spark 4.3:
# DROP/SET/ADD JAR/CREATE FUNCTION/CACHE/DELETE/MERGE/USE/REFRESH are Commands, INSERT INTO a
# ParsedStatement, INSERT OVERWRITE DIRECTORY an InsertIntoDir).
_STATE_CHANGING = (_LOGICAL + "Command", _LOGICAL + "ParsedStatement", _LOGICAL + "InsertIntoDir")


class QueryError(RecpipeError):
    """A statement Spark cannot parse or analyse (unknown table, column, syntax)."""


BY_PATH = "reading files by path is not allowed; query catalog tables"
# Spark reads `<format>`.`<path>` as files when spark.sql.runSQLOnFiles is on.
FILE_FORMATS = frozenset({"parquet", "orc", "json", "csv", "text", "avro", "binaryfile", "xml"})


def _names_a_path(parts: list[Any]) -> bool:
    names = [str(part) for part in parts]
    return len(names) >= 2 and (names[0].lower() in FILE_FORMATS or "/" in names[-1])


class ReadOnlyError(QueryError, PermissionError):
    """A statement that would change state, run code or read files by path."""


def _seq(scala_seq: Any) -> list[Any]:
    iterator = scala_seq.iterator()
    items = []
    while iterator.hasNext():
        items.append(iterator.next())
    return items


class _PlanCheck:
    """Walks a Catalyst plan (nodes, expressions, subqueries) collecting reasons to refuse."""

    def __init__(self, spark: SparkSession) -> None:
        jvm = spark.sparkContext._jvm
        if jvm is None:
            raise RuntimeError("the SparkContext has no JVM (stopped?)")
        loader = spark._jsparkSession.getClass().getClassLoader()
        self.state_changing = [
            jvm.java.lang.Class.forName(name, False, loader) for name in _STATE_CHANGING
        ]
        self.found: list[str] = []

    def plan(self, node: Any, root: bool = False) -> None:
        name = str(node.getClass().getSimpleName())
        if name in CODE_RUNNING:
            self.found.append(CODE_RUNNING[name])
        inspection = root and name in INSPECTIONS
        if not inspection and any(c.isInstance(node) for c in self.state_changing):
            self.found.append(f"{name} is not a query")
        if name == "LogicalRelation" and node.catalogTable().isEmpty():
            self.found.append(BY_PATH)
        if name == "UnresolvedRelation" and _names_a_path(_seq(node.multipartIdentifier())):
            self.found.append(BY_PATH)
        if name == "UnresolvedWith":  # CTE definitions are not children of the parsed node
            for definition in _seq(node.cteRelations()):
                self.plan(definition._2())
        for subquery in _seq(node.subqueries()):
            self.plan(subquery)
        for expression in _seq(node.expressions()):
            self.expression(expression)
        for child in _seq(node.children()):
            self.plan(child)

    def expression(self, node: Any) -> None:
        name = str(node.getClass().getSimpleName())
        if name in CODE_RUNNING:
            self.found.append(CODE_RUNNING[name])
        for child in _seq(node.children()):
            self.expression(child)


def read_only_frame(spark: SparkSession, statement: str) -> DataFrame:
    """The DataFrame of ``statement`` if it only reads catalog tables; else :class:`ReadOnlyError`.

    Nothing of a refused statement runs: commands are refused from the parsed plan, before
    Spark would execute them; queries are analysed (not executed) and then checked again,
    since only analysis shows path-based relations and resolved functions.
    """
    session = spark._jsparkSession
    try:
        parsed = session.sessionState().sqlParser().parsePlan(statement)
    except Exception as exc:  # py4j wraps Spark's ParseException
        raise QueryError(f"cannot parse the statement: {java_error_line(exc)}") from None
    check = _PlanCheck(spark)
    root = str(parsed.getClass().getSimpleName())
    explained = parsed.logicalPlan() if root == EXPLAIN else None
    check.plan(parsed if explained is None else explained, root=True)
    if check.found:
        raise ReadOnlyError(f"read-only: {check.found[0]}")
    previous = spark.conf.get(RUN_SQL_ON_FILES, "true")
    if previous is None:  # never with a default; RuntimeConfig.get is typed Optional
        raise RuntimeError(f"{RUN_SQL_ON_FILES} reads as null")
    spark.conf.set(RUN_SQL_ON_FILES, "false")  # `fmt`.`path` names no table while we analyse
    try:
        # A query is only analysed here; SHOW/DESCRIBE/EXPLAIN read the catalog and plan only.
        frame = spark.sql(statement)
        if root not in INSPECTIONS and explained is None:
            check.plan(frame._jdf.queryExecution().analyzed())
    except Exception as exc:  # AnalysisException: unknown table or column, bad types
        raise QueryError(java_error_line(exc)) from None
    finally:
        spark.conf.set(RUN_SQL_ON_FILES, previous)
    if check.found:
        raise ReadOnlyError(f"read-only: {check.found[0]}")
    return frame
