"""spark-submit entry point of `recpipe score`.

    spark-submit jobs/score.py --ds 2026-11-22 [--model M] [--conf FILE]... [--set key=value]...

Same arguments as `recpipe score`; the session comes from spark-submit when it made one.
"""

from __future__ import annotations

import sys

from recpipe.cli import run_job

if __name__ == "__main__":
    raise SystemExit(run_job("score", sys.argv[1:]))
