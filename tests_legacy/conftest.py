"""Tests that run inside the Horovod environment (.venv-legacy: pyarrow 12, numpy 1.26).

The main suite's conftest starts Spark, which this environment does not have; these tests use
only pyarrow, Petastorm, Horovod and torch.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

# recpipe comes from the checkout this suite belongs to (the environment's .pth may point at
# another one).
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def pytest_configure(config: pytest.Config) -> None:
    """Petastorm 0.13.1 warns on every row group about pyarrow APIs it still uses; the loader
    silences these at import, but pytest resets warning filters per test."""
    config.addinivalue_line("filterwarnings", "ignore::FutureWarning:petastorm")
    config.addinivalue_line("filterwarnings", "ignore:schema_fields behavior:UserWarning:petastorm")
