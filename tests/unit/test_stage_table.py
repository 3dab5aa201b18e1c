"""The lifecycle is a table of stages: a new stage is one module and one table row.

The example stage below stands for a new module in ``pipelines/stages/``; appending its
row to the table is all it takes for the DAG factory to generate its task, wired to the
stages it reads from, and for that task to run the stage.
"""

from __future__ import annotations

import datetime as dt
import inspect
import json
from pathlib import Path

import pytest

from pipelines.runs import RunContext
from pipelines.stages import LIFECYCLE, Stage, check_table

ROOT = Path(__file__).resolve().parents[2]
SPEC = ROOT / "specs" / "fraud.yaml"


# ------------------------------------------------------------- the example stage (a module)


def example_run(run: RunContext, features_dir: str) -> str:
    """Count the training rows the features stage wrote (writes ``example/example.json``)."""
    meta = json.loads((Path(features_dir) / "features.json").read_text())
    folder = run.run_dir / "example"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "example.json").write_text(json.dumps({"train_rows": meta["rows"]["train"]}))
    return str(folder)


EXAMPLE = Stage("example", example_run, inputs=(("features_dir", "features"),))


# ------------------------------------------------------------------------------- the table


def test_the_table_lists_the_automated_lifecycle_in_order() -> None:
    assert [row.task_id for row in LIFECYCLE] == [
        "ingest",
        "champion",
        "validate_data",
        "lineage",
        "features",
        "train",
        "evaluate",
        "fairness",
        "explain",
        "gates",
        "register",
    ]
    check_table(LIFECYCLE)


def test_every_row_takes_the_run_and_its_inputs() -> None:
    for row in LIFECYCLE:
        params = list(inspect.signature(row.run).parameters)
        assert params == ["run", *(name for name, _ in row.inputs)], row.task_id


def test_a_row_may_only_depend_on_earlier_rows() -> None:
    with pytest.raises(ValueError, match="later or unknown"):
        check_table((EXAMPLE, *LIFECYCLE))
    with pytest.raises(ValueError, match="twice"):
        check_table((*LIFECYCLE, LIFECYCLE[0]))


# ------------------------------------------------------------------ one row, one more task


def _dag(table: tuple[Stage, ...]):  # noqa: ANN202
    from airflow.sdk import dag

    from dags.govml_airflow.factory import stage_tasks

    @dag(dag_id="example_lifecycle", start_date=dt.datetime(2026, 1, 1, tzinfo=dt.UTC))
    def lifecycle() -> None:
        stage_tasks(table, SPEC)

    return lifecycle()


def test_a_new_row_generates_a_task_that_runs_the_stage(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from dags.govml_airflow import factory
    from pipelines.config import load_settings

    table = (*LIFECYCLE, EXAMPLE)
    check_table(table)
    built = _dag(table)
    assert set(built.task_ids) == {row.task_id for row in table}
    task = built.get_task("example")
    assert task.upstream_task_ids == {"features"}
    assert built.get_task("gates").upstream_task_ids == {
        "evaluate",
        "fairness",
        "explain",
        "lineage",
        "validate_data",
    }

    settings = load_settings({"GOVML_VAR_DIR": str(tmp_path / "var")})
    run = RunContext.create(SPEC, "manual__example", {}, settings)
    features = run.run_dir / "features"
    features.mkdir()
    (features / "features.json").write_text(json.dumps({"rows": {"train": 42}}))
    timings: list[str] = []
    monkeypatch.setattr(factory, "run_context", lambda spec_path: run)
    monkeypatch.setattr(factory, "record_timing", lambda task_id, s: timings.append(task_id))

    out = task.python_callable(features_dir=str(features))
    assert json.loads((Path(out) / "example.json").read_text()) == {"train_rows": 42}
    assert timings == ["example"]


def test_a_project_error_fails_the_task_without_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    from airflow.sdk.exceptions import AirflowFailException

    from dags.govml_airflow import factory
    from pipelines.errors import DataValidationError

    def broken_run(run: RunContext) -> str:
        raise DataValidationError("no rows")

    monkeypatch.setattr(factory, "run_context", lambda spec_path: None)
    built = _dag((Stage("broken", broken_run),))
    with pytest.raises(AirflowFailException, match="DataValidationError: no rows"):
        built.get_task("broken").python_callable()
