"""What the served model is trained on: everything up to ``ds``, or one protocol's train split.

A protocol's train split holds data back (a user's last items, a random quarter, the newest
days), which is right for measuring a model and wrong for the lists users get. With
``score.train_on: all`` (the default) ``split`` writes one more partition, protocol ``all``,
whose train part is every interaction of ``sessions`` for ``ds`` (valid and test stay empty);
``export``, ``train`` and ``train-baseline`` treat it as one more protocol, after the split
protocols, so a deep model's refit can stop at the epoch its validation chose. ``evaluate``
and the gate never read it: nothing is held out there, so there is nothing to measure. The
gate still decides on ``score.protocol``'s held-out metric; ``score`` then scores the refit.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from recpipe.config import Config

ALL = "all"


def refits(config: Config) -> bool:
    """Whether the served models are refit on all interactions up to ``ds``."""
    return config.score.train_on == "all"


def written_protocols(config: Config) -> list[str]:
    """Protocols split, export and training write: ``split.protocols``, then ``all`` when the
    served models are refit (last, so validated runs come first)."""
    return [*config.split.protocols, *([ALL] if refits(config) else [])]


def serving_protocol(config: Config) -> str:
    """The protocol whose model ``score`` scores: ``all``, or ``score.protocol``."""
    return ALL if refits(config) else config.score.protocol


def refit_epochs(config: Config, trained: Mapping[str, Mapping[str, Any]]) -> tuple[str, int]:
    """(protocol, epochs) a deep model's refit trains for: the best epoch validation chose on
    ``score.protocol`` (else on the first split protocol), or the epochs that run trained when
    it had no valid rows. ``trained`` maps protocol -> that protocol's training record."""
    order = [config.score.protocol, *config.split.protocols]
    source = next((p for p in order if p in trained), None)
    if source is None:
        raise ValueError("refit: no validated run of the model precedes it in this stage")
    record = trained[source]
    best = record.get("best_epoch")
    epochs = int(best) if isinstance(best, int) and best > 0 else int(record["epochs_run"])
    return source, epochs
