"""``python -m recpipe.train.worker SPEC_FILE``: the per-rank entry point torchrun starts."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from recpipe.train.loop import train_from_spec


def main(argv: list[str] | None = None) -> int:
    """Train the run described by the JSON spec file (written by the torchrun launcher)."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("spec_file", type=Path, help="TrainSpec JSON written by the launcher")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    train_from_spec(args.spec_file.read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
