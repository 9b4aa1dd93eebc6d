"""Profile groups for quality by gender and age band: the Python rule and its Spark twin."""

from __future__ import annotations

import numpy as np
import pytest
from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from recpipe.evaluation.segments import (
    NO_PROFILE,
    UNKNOWN,
    band_names,
    local_segments,
    segment_label,
)
from recpipe.evaluation.spark_segments import label_column

EDGES = [18.0, 25.0, 35.0, 45.0, 56.0]


def test_band_names_and_labels() -> None:
    assert band_names(EDGES) == ["<18", "18-24", "25-34", "35-44", "45-55", "56+"]
    assert band_names([0.5, 1.5]) == ["<0.5", "0.5-1.5", "1.5+"]
    cases = {"7": "<18", "18": "18-24", "24.9": "18-24", "25": "25-34", "55": "45-55",
             "56": "56+", " 73 ": "56+", "abc": UNKNOWN, "": UNKNOWN, None: UNKNOWN,
             "NaN": UNKNOWN}  # fmt: skip
    for text, label in cases.items():
        assert segment_label(text, EDGES) == label, text
    assert segment_label(" F ", None) == "F" and segment_label("  ", None) == UNKNOWN


def test_spark_labels_equal_the_python_rule(spark: SparkSession) -> None:
    texts = ["7", "18", "24.9", "25", "55", "56", " 73 ", "abc", "", None, "NaN", "-1", "1e2"]
    frame = spark.createDataFrame([(t,) for t in texts], "text string")
    banded = [r[0] for r in frame.select(label_column(F.col("text"), EDGES)).collect()]
    plain = [r[0] for r in frame.select(label_column(F.col("text"), None)).collect()]
    assert banded == [segment_label(t, EDGES) for t in texts]
    assert plain == [segment_label(t, None) for t in texts]


def test_local_segments_average_each_group() -> None:
    labels = {"gender": ["F", "M", "F", NO_PROFILE]}
    per_user = {("ndcg", 10): np.array([0.2, 0.5, 0.4, 1.0])}
    (segments,) = local_segments(labels, per_user)
    assert segments.attribute == "gender"
    assert {k: (g.users, g.values[("ndcg", 10)]) for k, g in segments.groups.items()} == {
        "F": (2, pytest.approx(0.3)), "M": (1, 0.5), NO_PROFILE: (1, 1.0),
    }  # fmt: skip
    assert segments.to_dict()["F"] == {"users": 2, "metrics": {"ndcg@10": pytest.approx(0.3)}}


def test_report_orders_profile_groups_as_read() -> None:
    from recpipe.report.run_report import label_order

    labels = ["56+", "(unknown)", "F", "<18", "35-44", "18-24", "(no profile)", "M"]
    assert sorted(labels, key=label_order) == [
        "<18", "18-24", "35-44", "56+", "F", "M", "(no profile)", "(unknown)",
    ]  # fmt: skip
