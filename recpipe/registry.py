"""Every model recpipe can train, baselines and deep models, in one table.

The table names each model's kind and class without importing it, so the CLI, the config
checks and the pipeline know every model without loading Spark ML or torch; the class is
imported only when a model is trained or loaded. Deep model classes also carry
``@register(name)`` (recpipe.models.base); a test holds the two in step.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, Literal

Kind = Literal["baseline", "deep"]


@dataclass(frozen=True)
class ModelEntry:
    """A registered model: its kind and ``module:Class``."""

    kind: Kind
    target: str

    def load_class(self) -> Any:
        """The model's class (imports its module)."""
        module, _, attribute = self.target.partition(":")
        return getattr(importlib.import_module(module), attribute)


MODELS: dict[str, ModelEntry] = {
    "popularity": ModelEntry("baseline", "recpipe.baselines.popularity:Popularity"),
    "itemknn": ModelEntry("baseline", "recpipe.baselines.itemknn:ItemKnn"),
    "als": ModelEntry("baseline", "recpipe.baselines.als:Als"),
    "ease": ModelEntry("baseline", "recpipe.baselines.ease:Ease"),
    "nmf": ModelEntry("baseline", "recpipe.baselines.als:Nmf"),
    "item2vec": ModelEntry("baseline", "recpipe.baselines.item2vec:Item2Vec"),
    "bpr_mf": ModelEntry("deep", "recpipe.models.bpr_mf:BprMf"),
    "cke": ModelEntry("deep", "recpipe.models.cke:Cke"),
    "neumf": ModelEntry("deep", "recpipe.models.neumf:NeuMf"),
    "two_tower": ModelEntry("deep", "recpipe.models.two_tower:TwoTower"),
    "hybrid_two_tower": ModelEntry("deep", "recpipe.models.hybrid_two_tower:HybridTwoTower"),
    "deepfm": ModelEntry("deep", "recpipe.models.deepfm:DeepFm"),
    "wide_deep": ModelEntry("deep", "recpipe.models.wide_deep:WideDeep"),
    "din": ModelEntry("deep", "recpipe.models.din:Din"),
    "nfm": ModelEntry("deep", "recpipe.models.nfm:Nfm"),
    "mmoe": ModelEntry("deep", "recpipe.models.mmoe:Mmoe"),
    "gru4rec": ModelEntry("deep", "recpipe.models.gru4rec:Gru4Rec"),
    "sasrec": ModelEntry("deep", "recpipe.models.sasrec:SasRec"),
    "narm": ModelEntry("deep", "recpipe.models.narm:Narm"),
    "stamp": ModelEntry("deep", "recpipe.models.stamp:Stamp"),
    "svdpp": ModelEntry("deep", "recpipe.models.svdpp:SvdPp"),
    "mult_vae": ModelEntry("deep", "recpipe.models.mult_vae:MultVae"),
    "cdae": ModelEntry("deep", "recpipe.models.cdae:Cdae"),
    "recvae": ModelEntry("deep", "recpipe.models.recvae:RecVae"),
    "irgan": ModelEntry("deep", "recpipe.models.irgan:Irgan"),
    "rum": ModelEntry("deep", "recpipe.models.rum:Rum"),
}


# What ``baselines.models`` trains when not told: NMF and item2vec are there to compare
# against and to initialise from, so they run when asked for.
DEFAULT_BASELINES: tuple[str, ...] = ("popularity", "itemknn", "als", "ease")


def model_names(kind: Kind | None = None) -> list[str]:
    """Registered model names (of one kind, or all), in table order."""
    return [name for name, entry in MODELS.items() if kind is None or entry.kind == kind]


def kind_of(name: str) -> Kind:
    """``baseline`` or ``deep``; ValueError naming the known models for anything else."""
    try:
        return MODELS[name].kind
    except KeyError:
        raise ValueError(f"unknown model {name!r}; known: {', '.join(MODELS)}") from None


def is_deep(name: str) -> bool:
    """Whether ``name`` is a registered deep (PyTorch) model."""
    return name in MODELS and MODELS[name].kind == "deep"


def is_baseline(name: str) -> bool:
    """Whether ``name`` is a registered baseline."""
    return name in MODELS and MODELS[name].kind == "baseline"
