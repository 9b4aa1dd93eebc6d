"""The deep model zoo. Importing this package registers every built-in model."""

from __future__ import annotations

from recpipe.models import (  # noqa: F401  (importing registers)
    bpr_mf,
    cdae,
    cke,
    deepfm,
    din,
    gru4rec,
    hybrid_two_tower,
    irgan,
    mmoe,
    mult_vae,
    narm,
    neumf,
    nfm,
    recvae,
    rum,
    sasrec,
    stamp,
    svdpp,
    two_tower,
    wide_deep,
)
from recpipe.models.base import ModelConfig, ModelContext, RecModel, register, registry

__all__ = ["ModelConfig", "ModelContext", "RecModel", "model_class", "register", "registry"]


def model_class(name: str) -> type[RecModel]:
    """The registered model called ``name``, or an error listing the known ones."""
    models = registry()
    if name not in models:
        raise ValueError(f"unknown model '{name}'; registered: {', '.join(sorted(models))}")
    return models[name]
