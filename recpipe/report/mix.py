"""The report's catalogue view: how each scored model's lists spread over one item attribute
(``catalog.mix_attribute``, e.g. genres) next to how the users' histories spread over it.

The counts come from the score manifests (``catalogue_mix``, counted in Spark); here they
become shares, a total-variation distance to the history mix, and one chart.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from recpipe.report.html import html_table, image, png_uri

# At most this many values get a bar of their own; the rest are summed as "(other)".
MAX_VALUES = 20


def shares(counts: Mapping[str, int]) -> dict[str, float]:
    """Counts as fractions of their total (empty for no counts)."""
    total = sum(counts.values())
    return {value: n / total for value, n in counts.items()} if total else {}


def total_variation(first: Mapping[str, float], second: Mapping[str, float]) -> float:
    """Half the L1 distance of two share vectors: 0 for the same mix, 1 for disjoint ones."""
    values = set(first) | set(second)
    return 0.5 * sum(abs(first.get(v, 0.0) - second.get(v, 0.0)) for v in values)


def scored_mixes(manifests: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """{model: catalogue_mix} of the score manifests that recorded one."""
    return {
        str(m["model"]): m["catalogue_mix"]
        for m in manifests
        if str(m.get("stage", "")).startswith("score-") and m.get("catalogue_mix")
    }


def mix_rows(mixes: Mapping[str, Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One row per model: values reached, share of the top value, distance to the history,
    intra-list diversity."""
    rows = []
    for model, mix in sorted(mixes.items()):
        recommended, history = shares(mix["recommended"]), shares(mix["history"])
        top = max(recommended.items(), key=lambda p: p[1], default=("", 0.0))
        rows.append(
            {
                "model": model,
                f"{mix['attribute']} recommended": len(recommended),
                f"{mix['attribute']} in histories": len(history),
                "largest share": f"{top[0]} {top[1]:.1%}",
                "distance to history mix (TV)": total_variation(recommended, history),
                f"intra-list diversity ({mix['attribute']})": mix.get("intra_list_diversity"),
            }
        )
    return rows


def mix_plot(mixes: Mapping[str, Mapping[str, Any]]) -> str:
    """PNG data URI: the history's share of each value, and each model's, as grouped bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    first = next(iter(mixes.values()))
    history = shares(first["history"])
    order = sorted(history, key=lambda v: -history[v])[:MAX_VALUES]
    series = {m: shares(mix["recommended"]) for m, mix in mixes.items()}
    figure, axis = plt.subplots(figsize=(10, 3.6))
    width = 0.85 / len(series)
    positions = np.arange(len(order))
    # The reference as an outline around each value's group of bars: no model colour is
    # mistaken for it.
    axis.bar(positions, [history.get(v, 0.0) for v in order], 0.9, fill=False,
             edgecolor="black", linewidth=1.2, label="histories")  # fmt: skip
    for offset, (label, share) in enumerate(series.items()):
        heights = [share.get(v, 0.0) for v in order]
        axis.bar(positions + offset * width - 0.425 + width / 2, heights, width, label=label)
    axis.set_xticks(positions, order, rotation=45, ha="right", fontsize=8)
    axis.set_ylabel("share of rows")
    axis.set_title(f"{first['attribute']}: recommended vs the users' histories")
    axis.grid(alpha=0.3, axis="y")
    axis.legend(fontsize=7, ncol=3)
    return png_uri(figure)


def mix_section(manifests: Sequence[Mapping[str, Any]]) -> str:
    """The report section, or a line saying why there is none."""
    mixes = scored_mixes(manifests)
    if not mixes:
        return "<p>No catalogue (or no catalog.mix_attribute) for the scored models.</p>"
    attribute = next(iter(mixes.values()))["attribute"]
    caption = (
        f"{attribute} mix of each model's published top-K rows against every history "
        "interaction of the users (a multi-valued attribute counts once per value; TV: total "
        "variation distance, 0 = the same mix; intra-list diversity: the mean over users of the "
        "mean pairwise Jaccard distance between the listed items' values, 0 = all alike)"
    )
    return html_table(mix_rows(mixes), caption=caption) + image(mix_plot(mixes), f"{attribute} mix")
