"""The ``publish`` stage: the gate's choice becomes the served recommendations of ``ds``.

The chosen model's scored partition ``(ds, <model>)`` is copied into ``(ds, publish.name)``
through the warehouse's atomic publish, its pointer recording the model and the decision. The
decision (and why) also goes to ``model_metrics`` partition ``(ds, publish.name)`` and to the
manifest. A failing gate is a normal outcome: the baseline is published, the stage succeeds.
"""

from __future__ import annotations

import logging
from typing import Any

from pyspark.sql import SparkSession

from recpipe import storage
from recpipe.config import Config
from recpipe.manifest import StageRun, manifest_path
from recpipe.stages.gate import decide_for, outcome

log = logging.getLogger(__name__)

PUBLISH_STAGE = "publish"


def _scored(spark: SparkSession, config: Config, ds: str, model: str) -> dict[str, Any]:
    """The current pointer of the model's scored partition, scoring it first when missing."""
    from recpipe.stages.score import run_score
    from recpipe.warehouse import RECOMMENDATIONS, read_pointer

    pointer = read_pointer(config, RECOMMENDATIONS, ds, model)
    if pointer is None:
        log.info("publish: %s has no scored partition for ds=%s; scoring it now", model, ds)
        run_score(spark, config, ds, model)
        pointer = read_pointer(config, RECOMMENDATIONS, ds, model)
    assert pointer is not None  # run_score either published or raised
    return pointer


def _score_record(config: Config, ds: str, model: str) -> dict[str, Any]:
    try:
        return dict(storage.read_json(manifest_path(config.root, f"score-{model}", ds)))
    except FileNotFoundError:
        return {}


def run_publish(spark: SparkSession, config: Config, ds: str) -> dict[str, Any]:
    """Publish the gate's choice for ``ds`` under ``publish.name``."""
    from recpipe.warehouse import RECOMMENDATIONS, publish_copy, write_model_metrics

    name = config.publish.name
    with StageRun(config, PUBLISH_STAGE, ds) as run:
        decision = decide_for(config, ds)
        chosen = decision.published
        pointer = _scored(spark, config, ds, chosen)
        source = config.root / pointer["path"]
        # The scored partition's files, copied as they are (see publish_copy).
        location = publish_copy(
            spark, config, RECOMMENDATIONS, ds, chosen, name,
            pointer_extra={
                "source_model": chosen,
                "gate": decision.to_dict(),
                "trained_on": pointer.get("trained_on"),
            },
        )  # fmt: skip
        write_model_metrics(spark, config, decision.metric_rows(), ds, name)
        scored = _score_record(config, ds, chosen)
        log.info(outcome(decision.to_dict()))
        run.record.update(
            published_model=chosen,
            trained_on=pointer.get("trained_on"),
            partition=name,
            gate=decision.to_dict(),
            rows_in=pointer["rows"],
            rows_out=pointer["rows"],
            source_counts=scored.get("source_counts"),
            users_by_source=scored.get("users_by_source"),
            source_location=str(source),
            location=str(location),
        )
    return run.manifest
