"""spark-submit entry point of the `features` stage.

    spark-submit jobs/features.py --ds 2026-11-22 [--conf FILE]... [--set key=value]...

Same arguments as `recpipe features`; the session comes from spark-submit when it made one.
"""

from __future__ import annotations

import sys

from recpipe.cli import run_job

if __name__ == "__main__":
    raise SystemExit(run_job("features", sys.argv[1:]))
