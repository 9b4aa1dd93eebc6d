"""The gate's significance rule on bootstrap resamples built here from per-user values."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from helpers import build_config

from recpipe.errors import MissingInputError
from recpipe.evaluation.bootstrap import resample_means
from recpipe.stages.gate import decide

USERS = np.arange(400)


def _rows(per_user: dict[str, np.ndarray], resamples: int = 500) -> list[dict]:
    """model_metrics rows of ndcg@10 (random_by_user/test) with the paired resamples."""
    means = resample_means(USERS, per_user, resamples, seed=0)
    return [
        {"model": model, "protocol": "random_by_user", "split": "test", "metric": "ndcg",
         "k": 10, "value": float(values.mean()), "detail": None,
         "resamples": means[model].tolist()}
        for model, values in per_user.items()
    ]  # fmt: skip


def _config(tmp_path: Path, *overrides: str):
    return build_config(tmp_path, "gate.candidate=bpr_mf", "gate.baseline=als", *overrides)


def test_a_consistent_gain_is_significant_and_passes_when_required(tmp_path) -> None:
    base = np.random.default_rng(0).random(USERS.size)
    rows = _rows({"bpr_mf": base + 0.02, "als": base})
    decision = decide(_config(tmp_path, "gate.require_significant=true"), rows)
    assert decision.passed and decision.significant and decision.published == "bpr_mf"
    assert decision.difference_low == pytest.approx(0.02)
    assert decision.difference_high == pytest.approx(0.02)
    assert "95% paired bootstrap interval [+0.0200, +0.0200]: significant" in decision.reason


def test_a_noisy_gain_is_not_significant_and_fails_only_when_required(tmp_path) -> None:
    """The candidate is ahead on average by 0.005, but by +-0.3 user to user: the paired
    interval (computed here from the same resamples) straddles 0."""
    rng = np.random.default_rng(1)
    base = rng.random(USERS.size)
    noisy = base + 0.005 + rng.choice([-0.3, 0.3], USERS.size)
    noisy += 0.005 + base.mean() - noisy.mean()  # exactly 0.005 ahead on average
    rows = _rows({"bpr_mf": noisy, "als": base})
    by_model = {row["model"]: np.asarray(row["resamples"]) for row in rows}
    low, high = np.quantile(by_model["bpr_mf"] - by_model["als"], [0.025, 0.975])
    assert low < 0 < high

    plain = decide(_config(tmp_path), rows)
    assert plain.passed and plain.significant is False and plain.published == "bpr_mf"
    assert (plain.difference_low, plain.difference_high) == pytest.approx((low, high))
    assert "not significant: publishing the candidate" in plain.reason

    strict = decide(_config(tmp_path, "gate.require_significant=true"), rows)
    assert not strict.passed and strict.published == "als"
    assert "gate.require_significant needs it above 0" in strict.reason
    # Non-inferiority: a tolerance wider than the interval's lower tail lets it through.
    margin = f"gate.tolerance={-low + 0.001}"
    assert decide(_config(tmp_path, "gate.require_significant=true", margin), rows).passed


def test_required_significance_without_resamples_names_the_key(tmp_path) -> None:
    base = np.random.default_rng(2).random(USERS.size)
    rows = _rows({"bpr_mf": base + 0.02, "als": base})
    for row in rows:
        row["resamples"] = None
    assert decide(_config(tmp_path), rows).significant is None  # recorded as unknown
    with pytest.raises(MissingInputError, match=r"evaluation\.bootstrap\.resamples > 0"):
        decide(_config(tmp_path, "gate.require_significant=true"), rows)
