"""Hyper-parameter search spaces, declared on each model's settings class (``search_space``).

A space maps a settings field to a :class:`Param`; :func:`suggest` asks an Optuna trial for one
value per field, so the tuner never hard-codes a model's knobs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol


class Trial(Protocol):
    """The part of ``optuna.Trial`` a space needs (kept structural: optuna is optional)."""

    def suggest_float(self, name: str, low: float, high: float, *, log: bool = ...) -> float: ...

    def suggest_int(self, name: str, low: int, high: int, *, log: bool = ...) -> int: ...

    def suggest_categorical(self, name: str, choices: Sequence[Any]) -> Any: ...


@dataclass(frozen=True)
class Param:
    """One searched field: ``float`` or ``int`` in [low, high] (log-uniform when ``log``),
    or one of ``choices``."""

    kind: str
    low: float = 0.0
    high: float = 0.0
    log: bool = False
    choices: tuple[Any, ...] = ()

    def suggest(self, trial: Trial, name: str) -> Any:
        """This field's value for ``trial``."""
        if self.kind == "float":
            return trial.suggest_float(name, self.low, self.high, log=self.log)
        if self.kind == "int":
            return trial.suggest_int(name, int(self.low), int(self.high), log=self.log)
        return trial.suggest_categorical(name, list(self.choices))

    def describe(self) -> str:
        """``[1e-4, 0.01] log``, ``{32, 64}``: for --help texts and the tuning record."""
        if self.kind == "choice":
            return "{" + ", ".join(str(c) for c in self.choices) + "}"
        return f"[{self.low:g}, {self.high:g}]" + (" log" if self.log else "")


def uniform(low: float, high: float) -> Param:
    """A float drawn uniformly in [low, high]."""
    return Param("float", low, high)


def log_uniform(low: float, high: float) -> Param:
    """A positive float drawn uniformly in log space."""
    return Param("float", low, high, log=True)


def integer(low: int, high: int, log: bool = False) -> Param:
    """An integer in [low, high]."""
    return Param("int", low, high, log=log)


def choice(*options: Any) -> Param:
    """One of ``options``."""
    return Param("choice", choices=tuple(options))


def suggest(trial: Trial, space: Mapping[str, Param]) -> dict[str, Any]:
    """One value per field of ``space`` for ``trial``, in the space's order."""
    return {name: param.suggest(trial, name) for name, param in space.items()}
