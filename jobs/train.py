"""spark-submit entry point of `recpipe train`.

    spark-submit jobs/train.py --ds 2026-11-22 [--model M]... [--resume]
        [--conf FILE]... [--set key=value]...

With train.launcher=spark it trains through TorchDistributor on the submitted session.

Same arguments as `recpipe train`; the session comes from spark-submit when it made one.
"""

from __future__ import annotations

import sys

from recpipe.cli import run_job

if __name__ == "__main__":
    raise SystemExit(run_job("train", sys.argv[1:]))
