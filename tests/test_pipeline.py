"""The one pipeline table and the one model table, as the CLI, the jobs and the demo use them."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from recpipe.cli import build_parser, command_handlers
from recpipe.pipeline import ETL_STEPS, PIPELINE, StepContext, run_steps
from recpipe.registry import MODELS, kind_of, model_names

REPO = Path(__file__).resolve().parent.parent


def test_every_step_is_a_command_and_a_job() -> None:
    commands = build_parser()._subparsers._group_actions[0].choices  # type: ignore[union-attr]
    handlers = command_handlers()
    for step in PIPELINE:
        assert step.name in commands and step.name in handlers
        job = REPO / "jobs" / f"{step.name.replace('-', '_')}.py"
        assert job.is_file(), f"no spark-submit job for step {step.name}"
        assert f'run_job("{step.name}"' in job.read_text()
    # `recpipe etl` is the lake chain up to the splits, in pipeline order
    order = [step.name for step in PIPELINE]
    assert (
        list(ETL_STEPS)
        == order[: len(ETL_STEPS)]
        == ["clean", "catalog", "vocab", "features", "sessionize", "split"]
    )


@pytest.mark.parametrize("step", [s.name for s in PIPELINE])
def test_pipeline_steps_require_ds(step: str) -> None:
    """A job never silently processes the wall-clock day."""
    result = subprocess.run(
        [sys.executable, "-m", "recpipe", step], capture_output=True, text=True, check=False
    )
    assert result.returncode == 2
    assert "--ds" in result.stderr.splitlines()[-1]


def test_readers_default_to_the_newest_day() -> None:
    parser = build_parser()
    assert parser.parse_args(["metrics"]).ds is None
    assert parser.parse_args(["recs", "--user", "1"]).ds is None
    assert not hasattr(parser.parse_args(["generate", "--events", "3"]), "ds")


def test_unknown_step_is_refused(tmp_path: Path) -> None:
    from recpipe.config import load_config

    ctx = StepContext(load_config(None, [f"paths.root={tmp_path}"]), "2026-11-22")
    with pytest.raises(ValueError, match="unknown pipeline step 'cleen'"):
        run_steps(ctx, ["cleen"])


def test_model_table_matches_the_classes() -> None:
    """The lazy table and the classes it names agree: kind, class, and deep registrations."""
    from recpipe.baselines.base import Baseline
    from recpipe.models import registry
    from recpipe.models.base import RecModel

    for name, entry in MODELS.items():
        cls = entry.load_class()
        assert issubclass(cls, Baseline if entry.kind == "baseline" else RecModel), name
    assert set(model_names("deep")) == set(registry())
    from recpipe.model_settings import MODEL_SETTINGS

    assert list(MODEL_SETTINGS) == model_names("deep")  # the settings follow the same table
    assert {name: cls for name, cls in registry().items()} == {
        name: MODELS[name].load_class() for name in model_names("deep")
    }
    assert kind_of("als") == "baseline" and kind_of("sasrec") == "deep"
    with pytest.raises(ValueError, match="unknown model 'nope'; known: popularity"):
        kind_of("nope")


def test_no_library_module_imports_stages() -> None:
    """Only the entry layer (cli, commands, demo, pipeline) and stages import recpipe.stages."""
    entry = {"cli.py", "commands.py", "demo.py", "pipeline.py"}
    offenders = []
    for path in (REPO / "recpipe").rglob("*.py"):
        rel = path.relative_to(REPO / "recpipe")
        if rel.parts[0] == "stages" or str(rel) in entry:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            module = node.module if isinstance(node, ast.ImportFrom) else None
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if any((m or "").startswith("recpipe.stages") for m in [module, *names]):
                offenders.append(str(rel))
    assert offenders == []
