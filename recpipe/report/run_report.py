"""The run report at ``<root>/reports/<ds>/index.html``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from recpipe.config import Config
from recpipe.evaluation.metrics import group_by_protocol, table_row
from recpipe.layout import report_path
from recpipe.report.html import (
    accuracy_vs_long_tail,
    html_table,
    image,
    loss_part_curves,
    metric_curves,
    popularity_plot,
    quality_by_activity,
    stage_timings_plot,
    training_curves,
    write_report,
)
from recpipe.report.mix import mix_section
from recpipe.storage import Location


def _metrics_section(evaluations: Sequence[Any], k: int) -> str:
    parts = []
    for protocol, group in group_by_protocol(evaluations).items():
        results = [evaluation.result for evaluation in group]
        rows = [table_row(result, k, with_users=True) for result in results]
        parts.append(f"<p class='protocol'>{protocol.describe(k)}; [low, high]: 95 % paired "
                     "bootstrap interval over users</p>")  # fmt: skip
        parts.append(html_table(rows, caption=f"{protocol.split_protocol}: metrics at K={k}"))
        all_rows = [row for result in results for row in result.rows()]
        for metric in ("ndcg", "recall"):
            uri = metric_curves(all_rows, metric, protocol.split_protocol)
            parts.append(image(uri, f"{metric} vs K, {protocol.split_protocol}"))
        uri = accuracy_vs_long_tail(all_rows, k, protocol.split_protocol)
        parts.append(image(uri, f"accuracy vs popularity bias, {protocol.split_protocol}"))
        parts.append(_activity_part(results, k, protocol.split_protocol))
        parts.append(_profile_part(results, k, protocol.split_protocol))
    return "\n".join(parts)


def label_order(label: str) -> tuple[int, float, str]:
    """Profile groups in reading order: bands by their lower edge (``<18`` first), then the
    other values alphabetically, ``(unknown)`` and ``(no profile)`` last."""
    if label.startswith("("):
        return 3, 0.0, label
    if label.startswith("<"):
        return 0, 0.0, label
    head = label.split("-")[0].rstrip("+")
    try:
        return 1, float(head), label
    except ValueError:
        return 2, 0.0, label


def _profile_part(results: Sequence[Any], k: int, protocol: str) -> str:
    """NDCG@k per profile group (gender, age band), one table per attribute: a column per
    group, its user count in the header (empty without profiles)."""
    parts = []
    attributes = {s.attribute for r in results for s in (r.segments or [])}
    for attribute in sorted(attributes):
        rows = []
        for result in sorted(results, key=lambda r: r.model):
            found = next((s for s in result.segments or [] if s.attribute == attribute), None)
            if found is None:
                continue
            row: dict[str, Any] = {"model": result.model}
            for label, group in sorted(found.groups.items(), key=lambda p: label_order(p[0])):
                row[f"{label} ({group.users:,})"] = group.values.get(("ndcg", k))
            rows.append(row)
        caption = f"{protocol}: ndcg@{k} by user {attribute} (users per group in brackets)"
        parts.append(html_table(rows, caption=caption))
    return "\n".join(parts)


def _activity_part(results: Sequence[Any], k: int, protocol: str) -> str:
    """NDCG@k per user-activity quartile: a table and a chart (empty when no result has
    groups, e.g. results from before they were measured)."""
    groups = {r.model: r.groups for r in results if r.groups is not None}
    if not groups:
        return ""
    first = next(iter(groups.values()))
    rows = [
        {
            "model": model,
            **{
                first.label(i): group.values.get(("ndcg", k))
                for i, group in enumerate(found.groups)
            },
        }
        for model, found in sorted(groups.items())
    ]
    caption = f"{protocol}: ndcg@{k} by user activity quartile (known-history length)"
    uri = quality_by_activity(groups, "ndcg", k, protocol)
    return html_table(rows, caption=caption) + image(uri, f"quality by activity, {protocol}")


def _popularity_section(evaluations: Sequence[Any], k: int) -> str:
    parts = []
    for protocol, group in group_by_protocol(evaluations).items():
        name = protocol.split_protocol
        counts = {e.result.model: e.top_counts[k] for e in group if k in e.top_counts}
        uri = popularity_plot(group[0].catalogue_popularity, counts, k)
        parts.append(f"<p class='protocol'>{name}: train popularity of recommended items</p>")
        parts.append(image(uri, f"popularity, {name}"))
    return "\n".join(parts)


def _stages_section(manifests: Sequence[dict[str, Any]]) -> str:
    rows = [
        {
            "stage": m["stage"],
            "status": m["status"],
            "rows_in": m.get("rows_in"),
            "rows_out": m.get("rows_out"),
            "quarantined": m.get("rows_quarantined"),
            "duplicates": m.get("rows_duplicate"),
            "seconds": m.get("seconds"),
        }
        for m in manifests
    ]
    return html_table(rows, caption="per-stage row counts and timings") + image(
        stage_timings_plot(rows), "stage timings"
    )


def _training_section(manifests: Sequence[dict[str, Any]]) -> str:
    """Per-protocol loss and validation curves of the deep models trained in this run."""
    runs: dict[str, dict[str, list[dict[str, Any]]]] = {}
    rows = []
    for manifest in manifests:
        for protocol, info in manifest.get("protocols", {}).items():
            if not isinstance(info, dict) or "history" not in info:
                continue
            runs.setdefault(protocol, {})[manifest["model"]] = info["history"]
            rows.append(
                {
                    "model": manifest["model"],
                    "protocol": protocol,
                    "launcher": f"{manifest.get('launcher')} x{info.get('world_size')}",
                    "epochs": info.get("epochs_run"),
                    "best epoch": info.get("best_epoch"),
                    "best valid": info.get("best_valid_metric"),
                    "rows/s": info.get("rows_per_second"),
                    "seconds": info.get("wall_seconds"),
                }
            )
    if not rows:
        return "<p>No deep models were trained in this run.</p>"
    parts = [html_table(rows, caption="deep model training (valid: ndcg@10 on the valid split)")]
    for protocol, histories in runs.items():
        parts.append(image(training_curves(histories, protocol), f"training curves, {protocol}"))
        by_part = loss_part_curves(histories, protocol)
        if by_part is not None:
            parts.append(image(by_part, f"training loss by part, {protocol}"))
    return "\n".join(parts)


def _difference_text(gate: dict[str, Any]) -> str:
    """Candidate - baseline with its paired bootstrap interval, or just the difference."""
    difference = f"{gate['candidate_value'] - gate['baseline_value']:+.4f}"
    low, high = gate.get("difference_low"), gate.get("difference_high")
    if low is None or high is None:
        return difference
    return f"{difference} [{low:+.4f}, {high:+.4f}]"


def _publishing_section(manifests: Sequence[dict[str, Any]]) -> str:
    """The gate's decision and, per scored model, how many users each source served."""
    parts = []
    for manifest in manifests:
        if manifest.get("stage") == "publish":
            gate = manifest["gate"]
            parts.append(
                html_table(
                    [
                        {
                            "candidate": gate["candidate"],
                            "baseline": gate["baseline"],
                            f"{gate['metric']}@{gate['k']}": f"{gate['candidate_value']:.4f} vs "
                            f"{gate['baseline_value']:.4f}",
                            "tolerance": gate["tolerance"],
                            "difference [95 % CI]": _difference_text(gate),
                            "significant": gate.get("significant"),
                            "passed": gate["passed"],
                            "published": manifest["published_model"],
                        }
                    ],
                    caption=f"selection gate ({gate['protocol']}, split {gate['split']}): "
                    f"{gate['reason']}",
                )
            )
    scored = [
        {
            "model": m["model"],
            "trained on": (m.get("trained_on") or {}).get("protocol"),
            "users": m.get("rows_in"),
            **{f"users from {source}": n for source, n in m.get("users_by_source", {}).items()},
            "rows": m.get("rows_out"),
            "seconds": m.get("seconds"),
        }
        for m in manifests
        if str(m.get("stage", "")).startswith("score-")
    ]
    if scored:
        parts.append(
            html_table(
                scored,
                caption="distributed scoring: users served by the model or, "
                "for cold-start users, the recent popular list",
            )
        )
    return "\n".join(parts) or "<p>Nothing was scored or published in this run.</p>"


def write_run_report(
    config: Config,
    ds: str,
    manifests: Sequence[dict[str, Any]],
    evaluations: Sequence[Any],
    example: Sequence[dict[str, Any]],
    k: int,
) -> Location:
    """Write the report for ``ds`` (under ``paths.root``, any location) and return where."""
    sections = [
        ("Metrics", _metrics_section(evaluations, k)),
        ("Popularity of recommendations vs the catalogue", _popularity_section(evaluations, k)),
        ("Deep model training", _training_section(manifests)),
        ("Model selection and scoring", _publishing_section(manifests)),
        ("Catalogue mix of recommendations vs histories", mix_section(manifests)),
        ("Example user", html_table(list(example), caption="published list next to history")),
        ("Stages", _stages_section(manifests)),
    ]
    path = report_path(config.root, ds)
    return write_report(path, title=f"recpipe run report, ds={ds}", sections=sections)
