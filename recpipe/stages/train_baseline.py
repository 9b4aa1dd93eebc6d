"""The ``train-baseline`` stage (``train-als`` is its ALS shortcut): one model per protocol."""

from __future__ import annotations

import logging
import time
from typing import Any

from pyspark.sql import SparkSession

from recpipe.artifacts import SHA256, file_digests, model_dir
from recpipe.baselines import baseline_class
from recpipe.baselines.base import BASELINE_FILES
from recpipe.config import Config
from recpipe.lake import Lake
from recpipe.layout import scratch_root
from recpipe.manifest import StageRun
from recpipe.schema import DS
from recpipe.stages.split import PROTOCOL
from recpipe.tables import load_split

log = logging.getLogger(__name__)

SPARK_TRAINED = {"als", "itemknn"}


def run_train_baseline(spark: SparkSession, config: Config, ds: str, model: str) -> dict[str, Any]:
    """Train ``model`` on the train split of every protocol in ``split.protocols``."""
    cls = baseline_class(model)
    settings = getattr(config.baselines, model)
    lake = Lake(config.root)
    with StageRun(config, f"train-{model}", ds) as run:
        run.record.update(model=model, settings=settings.model_dump(mode="json"), protocols={})
        for protocol in config.split.protocols:
            started = time.perf_counter()
            data = load_split(config.root, ds, protocol, "train")
            context: dict[str, Any] = {}
            if model in SPARK_TRAINED:
                context["train_df"] = lake.read(spark, "train", [{DS: ds, PROTOCOL: protocol}])
                context["checkpoint_dir"] = scratch_root(config.root) / "checkpoints"
            fitted = cls.fit(data, settings, **context)
            folder = model_dir(config.root, model, ds, protocol)
            fitted.save(folder)
            seconds = round(time.perf_counter() - started, 3)
            log.info(
                "train %s on %s/train: %d rows in %.1fs", model, protocol, len(data.users), seconds
            )
            run.record["protocols"][protocol] = {
                "rows": len(data.users),
                "users": data.n_users - 1,
                "items": data.n_items,
                "seconds": seconds,
                "path": str(folder),
                SHA256: file_digests(folder, BASELINE_FILES),
                **({"blas": fitted.meta["blas"]} if "blas" in fitted.meta else {}),
            }
        run.record["rows_in"] = sum(p["rows"] for p in run.record["protocols"].values())
        run.record["rows_out"] = len(run.record["protocols"])
    return run.manifest
