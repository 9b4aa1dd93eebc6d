"""Classic baselines behind one contract (:class:`recpipe.baselines.base.Baseline`)."""

from __future__ import annotations

from recpipe.baselines.base import Baseline
from recpipe.registry import MODELS

# The baselines of the one model table (recpipe.registry), as ``module:Class`` by name.
REGISTRY: dict[str, str] = {n: e.target for n, e in MODELS.items() if e.kind == "baseline"}


def baseline_class(name: str) -> type[Baseline]:
    """The class registered as ``name`` (imported lazily: ALS and item-kNN pull in Spark ML)."""
    import importlib

    if name not in REGISTRY:
        raise KeyError(f"unknown baseline {name!r}; choose from {sorted(REGISTRY)}")
    module, _, attribute = REGISTRY[name].partition(":")
    return getattr(importlib.import_module(module), attribute)
