"""The selection gate: publish the candidate model only when it holds up against the baseline.

The decision compares the two models' ``gate.metric@gate.k`` in ``model_metrics`` (protocol
``score.protocol``, split ``evaluation.split``, the evaluation library's full ranking). The
candidate passes when its value is at least the baseline's minus ``gate.tolerance``. A failing
gate is a normal outcome: the baseline is published instead and the reason is recorded.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from recpipe.config import Config
from recpipe.errors import MissingInputError
from recpipe.manifest import StageRun
from recpipe.registry import is_deep

log = logging.getLogger(__name__)

GATE_STAGE = "gate"
GATE_METRIC = "gate_passed"


@dataclass(frozen=True)
class GateDecision:
    """What the gate compared and what it chose."""

    candidate: str
    baseline: str
    metric: str
    k: int
    protocol: str
    split: str
    candidate_value: float
    baseline_value: float
    tolerance: float
    passed: bool
    published: str
    reason: str

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready record (manifests, pointer files)."""
        return asdict(self)

    def metric_rows(self) -> list[dict[str, Any]]:
        """``model_metrics`` rows recording the decision, with the reason as ``detail``."""
        common = {"protocol": self.protocol, "split": self.split}
        return [
            {**common, "metric": GATE_METRIC, "k": None, "value": float(self.passed),
             "detail": self.reason},
            {**common, "metric": self.metric, "k": self.k, "value": self.candidate_value,
             "detail": f"candidate {self.candidate}"},
            {**common, "metric": self.metric, "k": self.k, "value": self.baseline_value,
             "detail": f"baseline {self.baseline}"},
        ]  # fmt: skip


def outcome(decision: Mapping[str, Any]) -> str:
    """The one-line verdict (``gate passed: ...`` / ``gate failed: ...``) of a decision record
    (a manifest's, or :meth:`GateDecision.to_dict`)."""
    return f"gate {'passed' if decision['passed'] else 'failed'}: {decision['reason']}"


def _values(config: Config, rows: list[dict[str, Any]]) -> dict[str, float]:
    """Each model's gate metric for the gate's protocol and split."""
    gate = config.gate
    return {
        row["model"]: float(row["value"])
        for row in rows
        if row["protocol"] == config.score.protocol
        and row["split"] == config.evaluation.split
        and row["metric"] == gate.metric
        and row["k"] == gate.k
        and row.get("detail") is None  # the gate's own copies carry a detail
    }


def _candidate(config: Config, values: dict[str, float]) -> str:
    if config.gate.candidate:
        return config.gate.candidate
    deep = {name: value for name, value in values.items() if is_deep(name)}
    if not deep:
        raise MissingInputError(
            "gate: no deep model has been evaluated for this ds (set gate.candidate or run "
            "`recpipe train`)"
        )
    # Best value first; the name breaks ties so the choice is stable.
    return min(deep, key=lambda name: (-deep[name], name))


def decide(config: Config, rows: list[dict[str, Any]]) -> GateDecision:
    """The gate's decision from ``model_metrics`` rows of one ``ds``."""
    gate = config.gate
    values = _values(config, rows)
    candidate = _candidate(config, values)
    metric = f"{gate.metric}@{gate.k}"
    where = f"protocol {config.score.protocol}, split {config.evaluation.split}"
    for name in (candidate, gate.baseline):
        if name not in values:
            raise MissingInputError(
                f"gate: no {metric} for model {name} ({where}) in model_metrics: run "
                f"`recpipe evaluate --model {name}`"
            )
    ours, theirs = values[candidate], values[gate.baseline]
    passed = ours >= theirs - gate.tolerance
    comparison = ">=" if passed else "<"
    reason = (
        f"candidate {candidate} {metric} {ours:.4f} {comparison} baseline {gate.baseline} "
        f"{theirs:.4f} - tolerance {gate.tolerance:g} ({where}, full ranking): "
        f"{'publishing the candidate' if passed else 'publishing the baseline'}"
    )
    return GateDecision(
        candidate=candidate,
        baseline=gate.baseline,
        metric=gate.metric,
        k=gate.k,
        protocol=config.score.protocol,
        split=config.evaluation.split,
        candidate_value=ours,
        baseline_value=theirs,
        tolerance=gate.tolerance,
        passed=passed,
        published=candidate if passed else gate.baseline,
        reason=reason,
    )


def run_gate(config: Config, ds: str) -> dict[str, Any]:
    """Decide for ``ds`` and record the decision in manifest ``gate``."""
    from recpipe.query import metric_rows

    with StageRun(config, GATE_STAGE, ds) as run:
        decision = decide(config, metric_rows(config, ds, None))
        log.info(outcome(decision.to_dict()))
        run.record.update(decision.to_dict(), rows_in=2, rows_out=1)
    return run.manifest
