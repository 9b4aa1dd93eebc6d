"""Classic baselines behind one contract (:class:`recpipe.baselines.base.Baseline`)."""

from __future__ import annotations

from recpipe.baselines.base import Baseline

REGISTRY: dict[str, str] = {
    "popularity": "recpipe.baselines.popularity:Popularity",
    "itemknn": "recpipe.baselines.itemknn:ItemKnn",
    "als": "recpipe.baselines.als:Als",
    "ease": "recpipe.baselines.ease:Ease",
}


def baseline_class(name: str) -> type[Baseline]:
    """The class registered as ``name`` (imported lazily: ALS and item-kNN pull in Spark ML)."""
    import importlib

    if name not in REGISTRY:
        raise KeyError(f"unknown baseline {name!r}; choose from {sorted(REGISTRY)}")
    module, _, attribute = REGISTRY[name].partition(":")
    return getattr(importlib.import_module(module), attribute)
