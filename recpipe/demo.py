"""``recpipe demo``: the whole chain on MovieLens 100K with tables, an example and a report."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from recpipe.config import PROJECT_ROOT, Config, default_conf_files, load_config
from recpipe.console import format_table
from recpipe.registry import model_names
from recpipe.storage import Location

log = logging.getLogger(__name__)

# The demo trains the models that keep it within 10 minutes on 2 cores, each on both
# protocols and refit on all data (bench/quality.py trains them all): every baseline but
# item2vec (~2 min: MLlib Word2Vec) and one deep model of each family but NeuMF (~3.7 min:
# 2.4M pointwise rows and two pre-training runs).
SLOW_MODELS = ("item2vec", "neumf")
DEMO_MODELS = tuple(name for name in model_names("baseline") if name not in SLOW_MODELS)
MOVIELENS_FEATURES = PROJECT_ROOT / "conf" / "features" / "movielens-100k.yaml"
DEEP_MODELS = ("bpr_mf", "two_tower", "gru4rec", "sasrec", "mult_vae")
# The demo caps deep training so the whole run stays well under 15 minutes on 2 cores;
# bench/quality.py trains with the models' own epochs and early stopping.
DEMO_MAX_EPOCHS = 12
DEMO_PROTOCOLS = "[leave_last_out,random_by_user]"
EXAMPLE_USER = "196"
REPORT_K = 10


def demo_config(conf: Sequence[str] | None, overrides: Sequence[str]) -> tuple[Config, dict]:
    """Fetch MovieLens 100K, then the config the demo runs with (user overrides win)."""
    from recpipe.datasets.movielens import REFERENCE_KEYS, fetch_movielens_100k

    # The embedded default plus MovieLens's feature specs (a --conf list replaces both).
    environment = [str(path) for path in default_conf_files()]
    files = list(conf or [*environment, str(MOVIELENS_FEATURES)])
    first = load_config(files, overrides)
    summary = fetch_movielens_100k(first.datasets.movielens, first.root, first.local_root)
    defaults = [
        f"paths.raw_events={summary['raw_events']}",
        *(f"paths.{key}={summary[key]}" for key in REFERENCE_KEYS if key in summary),
        f"split.protocols={DEMO_PROTOCOLS}",
        f"train.max_epochs={DEMO_MAX_EPOCHS}",
        f"baselines.models=[{','.join(DEMO_MODELS)}]",
        f"train.models=[{','.join(DEEP_MODELS)}]",
    ]
    return load_config(files, [*defaults, *overrides]), summary


def example_rows(config: Config, ds: str, user_id: str, model: str) -> list[dict[str, Any]]:
    """The user's published list (``model`` partition) next to their recent train items."""
    import pyarrow.dataset as pads

    from recpipe import storage
    from recpipe.catalogue import item_details
    from recpipe.query import lookup_recs
    from recpipe.serving import serving_protocol
    from recpipe.tables import split_path

    recs = lookup_recs(config, user_id, model=model, ds=ds, k=REPORT_K)
    label = recs[0].get("published_model") or model if recs else model
    # The history the served model learned from (every interaction with score.train_on=all).
    fs, folder = storage.arrow_path(split_path(config.root, "train", ds, serving_protocol(config)))
    train = (
        pads.dataset(folder, filesystem=fs, format="parquet")
        .to_table(filter=pads.field("user_id") == user_id, columns=["item_id", "ts", "value"])
        .sort_by([("ts", "descending")])
        .to_pylist()
    )
    # With a catalogue, items read as "title (id)", as a person looks for them.
    titles = {r["item_id"]: r.get("title") for r in recs}
    recent = [row["item_id"] for row in train[:REPORT_K]]
    titles |= {item: d["title"] for item, d in item_details(config.root, ds, recent).items()}

    def named(item: str | None) -> str | None:
        return f"{titles[item]} ({item})" if item and titles.get(item) else item

    rows = []
    for position in range(max(len(recs), min(len(train), REPORT_K))):
        rec = recs[position] if position < len(recs) else {}
        seen = train[position] if position < len(train) else {}
        rows.append(
            {
                "rank": rec.get("rank"),
                f"recommended ({label})": named(rec.get("item_id")),
                "score": rec.get("score"),
                "source": rec.get("source"),
                "recent train item": named(seen.get("item_id")),
                "rating": seen.get("value"),
                "rated at": seen["ts"].date().isoformat() if seen else None,
            }
        )
    return rows


def run_demo(conf: Sequence[str] | None, overrides: Sequence[str], ds: str) -> Location:
    """Run every pipeline step, print the tables, write the HTML report; returns where."""
    from recpipe.catalogue import describe_profile, user_profile
    from recpipe.commands import print_metric_tables, print_stage_report
    from recpipe.pipeline import PIPELINE, StepContext
    from recpipe.stages.gate import GATE_STAGE, outcome

    config, summary = demo_config(conf, overrides)
    print(
        f"MovieLens 100K: {summary['events']:,} ratings, {summary['users']} users, "
        f"{summary['items']} items -> {summary['raw_events']}"
    )
    ctx = StepContext(config, ds)
    manifests: list[dict[str, Any]] = []
    evaluations: list[Any] = []
    gate: dict[str, Any] = {}
    published: dict[str, Any] = {}
    for step in PIPELINE:
        # Deep models are evaluated by their train step; every model is scored for the report.
        ctx.models = {
            "evaluate": list(DEMO_MODELS),
            "score": [*DEMO_MODELS, *config.train.models],
        }.get(step.name)
        ctx.options = {"evaluate": True, "gate": False}
        result = step.run(ctx)
        manifests += result.manifests
        evaluations += result.evaluations
        for manifest in result.manifests:
            if manifest["stage"] == GATE_STAGE:
                gate = manifest
            if step.name == "publish":
                published = manifest

    print()
    print_stage_report(manifests)
    print(
        f"deep models: at most train.max_epochs={config.train.max_epochs} epochs each in the "
        "demo (early stopping on the valid split where the protocol has one); "
        "bench/quality.py trains them fully"
    )
    print_metric_tables(evaluations, REPORT_K)
    print(outcome(gate))
    chosen = published["published_model"]
    learned = (published.get("trained_on") or {}).get("rule", "score.protocol's train split")
    print(
        f"published {chosen} (trained on {learned}) as recommendations model="
        f"{published['partition']} ds={ds} ({published['rows_out']:,} rows; by source: "
        f"{published['source_counts']})"
    )
    print()
    example = example_rows(config, ds, EXAMPLE_USER, config.publish.name)
    profile = describe_profile(user_profile(config.root, ds, EXAMPLE_USER))
    who = f"user {EXAMPLE_USER}" + (f" ({profile})" if profile else "")
    print(format_table(example, title=f"{who}: published top-{REPORT_K} ({chosen}) vs history"))
    print()

    from recpipe.report.run_report import write_run_report

    path = write_run_report(config, ds, manifests, evaluations, example, REPORT_K)
    print(f"report: {path}")
    print(f"try: recpipe recs --user {EXAMPLE_USER} --ds {ds}   (the gate's published list)")
    return path
