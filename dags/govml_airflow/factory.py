"""The Airflow side of the lifecycle: one task per stage row, fail-fast, timed.

:func:`stage_tasks` turns the rows of a stage table (:data:`pipelines.stages.LIFECYCLE`)
into TaskFlow tasks wired by their ``inputs`` and ``after``; :func:`no_retry` makes a
project error fail the task without retries and records the stage's own time;
:func:`run_context` resolves the run inside a task; :func:`dags_per_spec` builds one DAG
per spec file and :func:`dag_arguments` holds what every DAG of a spec shares. Imports
of the heavy pieces happen inside the tasks.
"""

from __future__ import annotations

import datetime as dt
import inspect
import json
import logging
import time
import typing
from collections.abc import Callable, Iterable
from functools import wraps
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from pipelines.config import load_settings
from pipelines.errors import GovMLError
from pipelines.spec import ModelSpec, load_spec

if TYPE_CHECKING:
    from pipelines.runs import RunContext
    from pipelines.stages import Stage

log = logging.getLogger(__name__)
T = TypeVar("T")


def no_retry(task_id: str) -> Callable[[Callable[..., T]], Callable[..., T]]:
    """A project error is a decision, not a glitch: fail the task without retries.

    Also records the stage's own time in ``<run folder>/timings/<task_id>.json``, so the
    orchestration overhead (run time outside the stage functions) can be measured.
    """

    def decorate(func: Callable[..., T]) -> Callable[..., T]:
        @wraps(func)
        def wrapper(*args: Any, **kwargs: Any) -> T:
            from airflow.sdk.exceptions import AirflowFailException

            started = time.perf_counter()
            try:
                result = func(*args, **kwargs)
            except GovMLError as exc:
                raise AirflowFailException(f"{type(exc).__name__}: {exc}") from exc
            record_timing(task_id, time.perf_counter() - started)
            return result

        return wrapper

    return decorate


def record_timing(task_id: str, seconds: float) -> None:
    """Write ``{"task", "seconds"}`` to the current run's ``timings/<task_id>.json``."""
    from airflow.sdk import get_current_context

    from pipelines.runs import safe_run_id

    context = get_current_context()
    spec_name = context["dag"].dag_id.removesuffix("_lifecycle")
    folder = load_settings().runs_dir / spec_name / safe_run_id(context["run_id"]) / "timings"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{task_id}.json").write_text(json.dumps({"task": task_id, "seconds": seconds}))


def run_context(spec_path: Path) -> RunContext:
    """The current task's run: spec, run id, parameters, run folder."""
    from airflow.sdk import get_current_context

    from pipelines.runs import RunContext

    context = get_current_context()
    return RunContext.create(spec_path, context["run_id"], dict(context["params"]))


def stage_task(row: Stage, spec_path: Path) -> Any:
    """The TaskFlow task of one stage row: resolves the run and calls ``row.run``.

    The task's parameters are the row's input names (Airflow passes no context to it).
    """
    from airflow.sdk import task

    def call(**inputs: Any) -> Any:
        return row.run(run_context(spec_path), **inputs)

    call.__name__ = call.__qualname__ = row.task_id
    # the stage's return type: a dict is pushed key by key too (multiple outputs)
    call.__annotations__ = {"return": typing.get_type_hints(row.run).get("return", Any)}
    call.__doc__ = row.doc or inspect.getdoc(row.run)
    wrapped = no_retry(row.task_id)(call)
    wrapped.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
        [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY) for name, _ in row.inputs],
        return_annotation=call.__annotations__["return"],
    )
    del wrapped.__wrapped__  # type: ignore[attr-defined]
    return task(task_id=row.task_id)(wrapped)


def stage_tasks(table: Iterable[Stage], spec_path: Path) -> dict[str, Any]:
    """One task per row, wired by the rows' ``inputs`` and ``after``; by task id."""
    out: dict[str, Any] = {}
    for row in table:
        made = stage_task(row, spec_path)(**{name: out[src] for name, src in row.inputs})
        for name in row.after:
            out[name] >> made
        out[row.task_id] = made
    return out


def dag_arguments(spec: ModelSpec, kind: str, **default_args: Any) -> dict[str, Any]:
    """The ``@dag`` arguments every DAG of a spec shares: its id ``<model>_<kind>``, the
    start date, no catch-up, one run at a time, the tags, and the spec's owner with
    ``default_args`` (retries) for its tasks."""
    return {
        "dag_id": f"{spec.name}_{kind}",
        "start_date": dt.datetime(2026, 1, 1, tzinfo=dt.UTC),
        "catchup": False,
        "max_active_runs": 1,
        "tags": ["govml", kind, spec.use_case],
        "default_args": {"owner": spec.owner, **default_args},
    }


def dags_per_spec(
    paths: dict[str, Path],
    kind: str,
    build: Callable[[ModelSpec, Path], Any],
    log: logging.Logger,
    label: str | None = None,
) -> dict[str, Any]:
    """One DAG per spec, ``<model>_<kind>``, built by ``build`` (None: that spec has
    none). A bad spec must not hide the other models' DAGs (``govml spec validate`` and
    the test suite report it): it is logged (``skipping <label> DAG``, the label
    defaulting to the kind) and skipped; of two specs of one model name, the first wins
    (the specs folder's)."""
    dags: dict[str, Any] = {}
    for name, path in paths.items():
        try:
            spec = load_spec(path)
        except GovMLError as exc:
            log.error("skipping %s DAG for %s: %s", label or kind, name, exc)
            continue
        dag_id = f"{spec.name}_{kind}"
        if dag_id in dags:
            continue
        built = build(spec, path)
        if built is not None:
            dags[dag_id] = built
    return dags
