"""``python -m recpipe.train.worker SPEC``: the per-rank entry point torchrun starts.

``SPEC`` is the launcher's local spec file, or (torchrun across nodes) the spec it wrote beside
the run's state, at any location :mod:`recpipe.storage` reads.
"""

from __future__ import annotations

import argparse
import logging

from recpipe import storage
from recpipe.train.loop import train_from_spec


def main(argv: list[str] | None = None) -> int:
    """Train the run described by the JSON spec file (written by the torchrun launcher)."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("spec", help="TrainSpec JSON written by the launcher (path or URI)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    train_from_spec(storage.read_text(args.spec))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
