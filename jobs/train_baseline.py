"""spark-submit entry point of `recpipe train-baseline`.

    spark-submit jobs/train_baseline.py --ds 2026-11-22 --model als [--conf FILE]... [--set k=v]

Same arguments as `recpipe train-baseline`; the session comes from spark-submit when it made one.
"""

from __future__ import annotations

import sys

from recpipe.cli import run_job

if __name__ == "__main__":
    raise SystemExit(run_job("train-baseline", sys.argv[1:]))
