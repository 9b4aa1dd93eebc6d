"""The selection gate: publish the candidate model only when it holds up against the baseline.

The decision compares the two models' ``gate.metric@gate.k`` in ``model_metrics`` (protocol
``score.protocol``, split ``evaluation.split``, the evaluation library's full ranking). The
candidate passes when its value is at least the baseline's minus ``gate.tolerance``. Both
models' bootstrap resamples (the same users, the same weights) give the paired interval of
their difference; the decision records whether it excludes 0 (significant), and with
``gate.require_significant`` the candidate must also have that interval above
``-gate.tolerance``. A failing gate is a normal outcome: the baseline is published instead
and the reason is recorded.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from recpipe.config import Config
from recpipe.errors import MissingInputError
from recpipe.evaluation.bootstrap import Interval, paired_difference
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
    # The paired bootstrap interval of candidate - baseline (None without resamples).
    difference_low: float | None = None
    difference_high: float | None = None
    significant: bool | None = None
    require_significant: bool = False

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


def _gate_rows(config: Config, rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Each model's row of the gate metric for the gate's protocol and split."""
    gate = config.gate
    return {
        row["model"]: row
        for row in rows
        if row["protocol"] == config.score.protocol
        and row["split"] == config.evaluation.split
        and row["metric"] == gate.metric
        and row["k"] == gate.k
        and row.get("detail") is None  # the gate's own copies carry a detail
    }


def _difference(
    config: Config, candidate: dict[str, Any], baseline: dict[str, Any]
) -> Interval | None:
    """The paired bootstrap interval of candidate - baseline, when both rows carry resamples
    of the same count (the same evaluation.bootstrap settings)."""
    ours, theirs = candidate.get("resamples"), baseline.get("resamples")
    if not ours or not theirs or len(ours) != len(theirs):
        return None
    confidence = config.evaluation.bootstrap.confidence
    return paired_difference(np.asarray(ours), np.asarray(theirs), confidence)


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
    """The gate's decision from ``model_metrics`` rows of one ``ds`` (with resamples)."""
    gate = config.gate
    found = _gate_rows(config, rows)
    candidate = _candidate(config, {name: float(row["value"]) for name, row in found.items()})
    metric = f"{gate.metric}@{gate.k}"
    where = f"protocol {config.score.protocol}, split {config.evaluation.split}"
    for name in (candidate, gate.baseline):
        if name not in found:
            raise MissingInputError(
                f"gate: no {metric} for model {name} ({where}) in model_metrics: run "
                f"`recpipe evaluate --model {name}`"
            )
    ours, theirs = float(found[candidate]["value"]), float(found[gate.baseline]["value"])
    difference = _difference(config, found[candidate], found[gate.baseline])
    if gate.require_significant and difference is None:
        raise MissingInputError(
            f"gate.require_significant: {candidate} and {gate.baseline} have no matching "
            f"bootstrap resamples for {metric}: evaluate both with evaluation.bootstrap."
            "resamples > 0 (and the same settings)"
        )
    passed = ours >= theirs - gate.tolerance
    comparison = ">=" if passed else "<"
    reason = (
        f"candidate {candidate} {metric} {ours:.4f} {comparison} baseline {gate.baseline} "
        f"{theirs:.4f} - tolerance {gate.tolerance:g} ({where}, full ranking)"
    )
    significant = None
    if difference is not None:
        significant = difference.excludes(0.0)
        level = f"{config.evaluation.bootstrap.confidence:.0%}"
        reason += (
            f"; difference {ours - theirs:+.4f}, {level} paired bootstrap interval "
            f"[{difference.low:+.4f}, {difference.high:+.4f}]: "
            f"{'significant' if significant else 'not significant'}"
        )
        if gate.require_significant and passed and not difference.low > -gate.tolerance:
            passed = False
            reason += f" and gate.require_significant needs it above {0.0 - gate.tolerance:g}"
    reason += f": {'publishing the candidate' if passed else 'publishing the baseline'}"
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
        difference_low=None if difference is None else difference.low,
        difference_high=None if difference is None else difference.high,
        significant=significant,
        require_significant=gate.require_significant,
    )


def decide_for(config: Config, ds: str) -> GateDecision:
    """The gate's decision from the published ``model_metrics`` of ``ds``."""
    from recpipe.query import metric_rows

    return decide(config, metric_rows(config, ds, None, resamples=True))


def run_gate(config: Config, ds: str) -> dict[str, Any]:
    """Decide for ``ds`` and record the decision in manifest ``gate``."""
    with StageRun(config, GATE_STAGE, ds) as run:
        decision = decide_for(config, ds)
        log.info(outcome(decision.to_dict()))
        run.record.update(decision.to_dict(), rows_in=2, rows_out=1)
    return run.manifest
