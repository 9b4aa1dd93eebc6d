"""spark-submit entry point of `recpipe evaluate`.

    spark-submit jobs/evaluate.py --ds 2026-11-22 [--model M] [--conf FILE]... [--set key=value]...

Same arguments as `recpipe evaluate`; the session comes from spark-submit when it made one.
"""

from __future__ import annotations

import sys

from recpipe.cli import run_job

if __name__ == "__main__":
    raise SystemExit(run_job("evaluate", sys.argv[1:]))
