"""spark-submit entry point of the `split` stage.

    spark-submit jobs/split.py --ds 2026-11-22 [--conf FILE]... [--set key=value]...

Same arguments as `recpipe split`; the session comes from spark-submit when it made one.
"""

from __future__ import annotations

import sys

from recpipe.cli import run_job

if __name__ == "__main__":
    raise SystemExit(run_job("split", sys.argv[1:]))
