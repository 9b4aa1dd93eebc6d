"""spark-submit entry point of the `clean` stage.

    spark-submit jobs/clean.py --ds 2026-11-22 [--conf FILE]... [--set key=value]...

Same arguments as `recpipe clean`; the session comes from spark-submit when it made one.
"""

from __future__ import annotations

import sys

from recpipe.cli import run_job

if __name__ == "__main__":
    raise SystemExit(run_job("clean", sys.argv[1:]))
