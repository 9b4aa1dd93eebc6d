"""A self-contained HTML report: metric tables, metric-vs-K curves, popularity of recommended
items against the catalogue, per-stage row counts and timings. Plots are inline PNGs."""

from __future__ import annotations

import base64
import html
import io
from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from recpipe import storage
from recpipe.storage import Location, LocationLike, as_location

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; }
th, td { border: 1px solid #ccc; padding: 3px 8px; text-align: right; }
th:first-child, td:first-child { text-align: left; }
caption { text-align: left; font-weight: 600; padding: 4px 0; }
.protocol { color: #555; font-size: 0.9em; }
"""


def png_uri(figure: Any) -> str:
    """A matplotlib figure as an inline PNG data URI (the figure is closed)."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=90, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(figure)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4f}"
    if isinstance(value, int):
        return f"{value:,}"
    return html.escape("" if value is None else str(value))


def html_table(rows: Sequence[Mapping[str, Any]], caption: str = "") -> str:
    """Rows of dicts as an HTML table."""
    if not rows:
        return f"<p>{html.escape(caption)}: no rows</p>"
    columns = list(dict.fromkeys(key for row in rows for key in row))
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = "".join(
        "<tr>" + "".join(f"<td>{_cell(row.get(c))}</td>" for c in columns) + "</tr>" for row in rows
    )
    return f"<table><caption>{html.escape(caption)}</caption><tr>{head}</tr>{body}</table>"


def metric_curves(rows: Sequence[Mapping[str, Any]], metric: str, protocol: str) -> str:
    """PNG data URI: ``metric`` against K, one line per model (its interval as a band when
    the rows carry ``ci_low``/``ci_high``), for one protocol."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series: dict[str, list[tuple[int, float, float | None, float | None]]] = defaultdict(list)
    for row in rows:
        if row["metric"] == metric and row["protocol"] == protocol:
            point = (row["k"], row["value"], row.get("ci_low"), row.get("ci_high"))
            series[row["model"]].append(point)
    figure, axis = plt.subplots(figsize=(5, 3.2))
    for model, points in sorted(series.items()):
        points.sort()
        ks = [point[0] for point in points]
        (line,) = axis.plot(ks, [point[1] for point in points], marker="o", label=model)
        if all(point[2] is not None and point[3] is not None for point in points):
            # The paired bootstrap's 95 % interval as a band in the line's colour.
            low = np.array([point[2] for point in points], dtype=np.float64)
            high = np.array([point[3] for point in points], dtype=np.float64)
            axis.fill_between(ks, low, high, color=line.get_color(), alpha=0.15, linewidth=0)
    axis.set_xlabel("K")
    axis.set_ylabel(f"{metric}@K")
    axis.set_title(f"{metric}@K ({protocol})")
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8)
    return png_uri(figure)


def accuracy_vs_long_tail(rows: Sequence[Mapping[str, Any]], k: int, protocol: str) -> str:
    """PNG data URI: a point per model, NDCG@k (with its interval as an error bar) against
    the share of its top-k entries from the long tail: who buys accuracy with popularity."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    found: dict[str, dict[str, Mapping[str, Any]]] = defaultdict(dict)
    for row in rows:
        if row["protocol"] == protocol and row["k"] == k:
            found[row["model"]][row["metric"]] = row
    figure, axis = plt.subplots(figsize=(5, 3.2))
    for model, metrics in sorted(found.items()):
        if "ndcg" not in metrics or "long_tail_share" not in metrics:
            continue
        ndcg, tail = metrics["ndcg"], metrics["long_tail_share"]["value"]
        low, high = ndcg.get("ci_low"), ndcg.get("ci_high")
        error = None
        if low is not None and high is not None:
            error = [[ndcg["value"] - low], [high - ndcg["value"]]]
        axis.errorbar([tail], [ndcg["value"]], yerr=error, fmt="o", capsize=3, label=model)
    axis.set_xlabel(f"long-tail share of top-{k} entries")
    axis.set_ylabel(f"ndcg@{k}")
    axis.set_title(f"accuracy vs popularity bias ({protocol})")
    axis.grid(alpha=0.3)
    if axis.get_legend_handles_labels()[0]:
        axis.legend(fontsize=8)
    return png_uri(figure)


def quality_by_activity(groups: Mapping[str, Any], metric: str, k: int, protocol: str) -> str:
    """PNG data URI: ``metric@k`` per user-activity quartile, a bar per model in each
    quartile. ``groups`` maps model -> its :class:`~recpipe.evaluation.activity.ActivityGroups`
    (the quartiles are the same for every model of a protocol: they depend on the split only)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = sorted(groups)
    figure, axis = plt.subplots(figsize=(7, 3.2))
    width = 0.8 / max(1, len(models))
    first = groups[models[0]] if models else None
    quartiles = np.arange(len(first.groups) if first else 0)
    for offset, model in enumerate(models):
        values = [group.values.get((metric, k), np.nan) for group in groups[model].groups]
        axis.bar(quartiles + offset * width - 0.4 + width / 2, values, width, label=model)
    if first is not None:
        axis.set_xticks(quartiles, [first.label(i) for i in quartiles], fontsize=8)
    axis.set_xlabel("users by known-history length, least active first")
    axis.set_ylabel(f"{metric}@{k}")
    axis.set_title(f"{metric}@{k} by user activity quartile ({protocol})")
    axis.grid(alpha=0.3, axis="y")
    if axis.get_legend_handles_labels()[0]:
        axis.legend(fontsize=7, ncol=2)
    return png_uri(figure)


def training_curves(runs: Mapping[str, Sequence[Mapping[str, Any]]], protocol: str) -> str:
    """PNG data URI: training loss (left) and validation metric (right) per epoch, a line per
    deep model, for one protocol. ``runs`` maps model -> its per-epoch history entries."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (loss_axis, metric_axis) = plt.subplots(1, 2, figsize=(9, 3.2))
    for model, history in sorted(runs.items()):
        epochs = [entry["epoch"] for entry in history]
        # Losses differ in scale between models: plot each relative to its first epoch.
        first = history[0]["loss"] or 1.0
        loss_axis.plot(epochs, [entry["loss"] / first for entry in history], label=model)
        scored = [(entry["epoch"], entry["metric"]) for entry in history if "metric" in entry]
        if scored:
            metric_axis.plot(*zip(*scored, strict=True), marker=".", label=model)
    loss_axis.set_xlabel("epoch")
    loss_axis.set_ylabel("loss / first-epoch loss")
    loss_axis.set_title(f"training loss ({protocol})")
    metric_axis.set_xlabel("epoch")
    metric_axis.set_ylabel("valid metric")
    metric_axis.set_title(f"validation ({protocol}/valid)")
    if not metric_axis.lines:  # no model validated: say why instead of an empty plot
        why = (
            "refit on every interaction (nothing held out):\ntrained for the validated epochs"
            if protocol == "all"
            else "no valid split under this protocol:\nearly stopping was off"
        )
        metric_axis.text(
            0.5, 0.5, why, ha="center", va="center", transform=metric_axis.transAxes
        )  # fmt: skip
    for axis in (loss_axis, metric_axis):
        axis.grid(alpha=0.3)
        if axis.get_legend_handles_labels()[0]:
            axis.legend(fontsize=8)
    return png_uri(figure)


def loss_part_curves(runs: Mapping[str, Sequence[Mapping[str, Any]]], protocol: str) -> str | None:
    """PNG data URI: each named part of the training loss per epoch (e.g. IRGAN's two
    players), a panel per model that records parts; None when no model does."""
    with_parts = {m: h for m, h in sorted(runs.items()) if h and "parts" in h[0]}
    if not with_parts:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, len(with_parts), figsize=(4.5 * len(with_parts), 3.2))
    for axis, (model, history) in zip(np.atleast_1d(axes), with_parts.items(), strict=True):
        epochs = [entry["epoch"] for entry in history]
        for name in history[0]["parts"]:
            axis.plot(epochs, [entry["parts"][name] for entry in history], label=name)
        axis.set_xlabel("epoch")
        axis.set_ylabel("loss")
        axis.set_title(f"{model}: loss by part ({protocol})")
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
    return png_uri(figure)


def popularity_plot(
    catalogue_popularity: np.ndarray, top_counts: Mapping[str, np.ndarray], k: int
) -> str:
    """PNG data URI: popularity (train users per item) of recommended items vs the catalogue;
    ``top_counts`` maps a model to how often each item is in its top-``k`` lists."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6, 3.5))
    bins = np.logspace(0, np.log10(max(2.0, float(catalogue_popularity.max()) + 1)), 30).tolist()
    catalogue = catalogue_popularity[1:] + 1  # index 0 is padding
    # Shares, not densities: on log-spaced bins a density would shrink the popular end.
    axis.hist(
        catalogue,
        bins=bins,
        weights=np.full(catalogue.size, 1 / catalogue.size),
        alpha=0.35,
        label="catalogue",
        color="grey",
    )
    for model, counts in sorted(top_counts.items()):
        counts = np.asarray(counts, dtype=np.float64)[1:]
        axis.hist(
            catalogue,
            bins=bins,
            weights=counts / max(counts.sum(), 1.0),
            histtype="step",
            linewidth=1.5,
            label=model,
        )
    axis.set_xscale("log")
    axis.set_xlabel("train users per item + 1 (log)")
    axis.set_ylabel("share of items / of recommendations")
    axis.set_title(f"popularity of top-{k} recommended items vs catalogue")
    axis.legend(fontsize=8)
    return png_uri(figure)


def stage_timings_plot(stages: Sequence[Mapping[str, Any]]) -> str:
    """PNG data URI: seconds per stage."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6, 0.35 * len(stages) + 1))
    names = [s["stage"] for s in stages]
    axis.barh(names, [s.get("seconds") or 0 for s in stages], color="#4a7ab5")
    axis.invert_yaxis()
    axis.set_xlabel("seconds")
    axis.set_title("stage timings")
    return png_uri(figure)


def tuning_history(values: Sequence[float | None], metric: str) -> str:
    """PNG data URI: each trial's valid metric (dots) and the best so far (a step line)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(5, 3.2))
    scored = [(n, v) for n, v in enumerate(values) if v is not None]
    if scored:
        numbers, found = zip(*scored, strict=True)
        axis.plot(numbers, found, "o", label="trial")
        best = np.maximum.accumulate(np.asarray(found, dtype=np.float64))
        axis.step(numbers, best, where="post", label="best so far")
        axis.legend(fontsize=8)
    axis.set_xlabel("trial")
    axis.set_ylabel(f"valid {metric}")
    axis.set_title("tuning history")
    axis.grid(alpha=0.3)
    return png_uri(figure)


def write_report(
    path: LocationLike,
    *,
    title: str,
    sections: Sequence[tuple[str, str]],
) -> Location:
    """Write ``sections`` ((heading, html body) pairs) as one page at ``path`` (path or URI)."""
    parts = [f"<h1>{html.escape(title)}</h1>"]
    for heading, body in sections:
        parts.append(f"<h2>{html.escape(heading)}</h2>\n{body}")
    page = (
        "<!doctype html><html><head><meta charset='utf-8'>"
        f"<title>{html.escape(title)}</title><style>{_STYLE}</style></head><body>"
        + "\n".join(parts)
        + "</body></html>"
    )
    location = as_location(path)
    storage.write_text(location, page)  # atomic: a reader never sees half a page
    return location


def image(uri: str, alt: str) -> str:
    """An <img> tag for a data URI."""
    return f"<img src='{uri}' alt='{html.escape(alt)}'>"
