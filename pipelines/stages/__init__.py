"""The lifecycle's stages: one module per stage, and the lifecycle as a table of them.

A stage module owns its inputs (paths from earlier stages and settings of the run, as
one frozen dataclass such as :class:`pipelines.evaluation.EvaluateInputs`), its output
files (``OUTPUTS``, in ``<run>/<stage>/``), its result and its governance record; its
``run(run, **inputs)`` takes a :class:`pipelines.runs.RunContext` and the earlier
stages' values (paths and ids, never DataFrames) and returns its own. The heavy
computations stay in :mod:`pipelines` (layer 1) and :mod:`validation` (checks); where a
stage can run on Dask it hands its inputs to a backend
(``backend.run(computation, spec, inputs)``, :mod:`pipelines.backends`).

:data:`LIFECYCLE` is the automated part of the lifecycle, in order: one :class:`Stage`
row per stage. ``dags/lifecycle.py`` turns every row into one Airflow task; adding a
stage is one module and one row. Modules here import nothing heavy at import time (the
DAG file imports this table while Airflow parses it).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from pipelines.stages import (
    champion,
    evaluate,
    explain,
    fairness,
    features,
    gates,
    ingest,
    lineage,
    register,
    train,
    validate_data,
)


@dataclass(frozen=True)
class Stage:
    """One row of the lifecycle table.

    ``run(run_context, **inputs)`` is the stage; ``inputs`` maps each of its parameters
    to the earlier stage whose returned value it takes; ``after`` names earlier stages it
    waits for without taking their value; ``done`` is the file (in the run folder) whose
    appearance means the stage finished, for progress displays (empty: none).
    :meth:`of` builds the row of a stage module.
    """

    task_id: str
    run: Callable[..., Any]
    inputs: tuple[tuple[str, str], ...] = ()
    after: tuple[str, ...] = ()
    doc: str = ""
    done: str = ""

    @classmethod
    def of(
        cls,
        module: ModuleType,
        inputs: tuple[tuple[str, str], ...] = (),
        after: tuple[str, ...] = (),
        doc: str = "",
        done: str | None = "result.json",
    ) -> Stage:
        """The row of a stage module: its ``NAME`` is the task id, its ``run`` the stage,
        and ``done`` a file in its folder (None: no such file)."""
        finished = "" if done is None else f"{module.NAME}/{done}"
        return cls(module.NAME, module.run, inputs, after, doc, finished)

    @property
    def upstream(self) -> tuple[str, ...]:
        """Every earlier stage this one depends on (inputs first, then ``after``)."""
        names = [source for _, source in self.inputs] + list(self.after)
        return tuple(dict.fromkeys(names))


LIFECYCLE: tuple[Stage, ...] = (
    Stage.of(ingest, doc="read, check and type the source"),
    Stage.of(champion, doc="fetch the serving champion, if any", done=None),
    Stage.of(
        validate_data,
        inputs=(("data", "ingest"), ("champ", "champion")),
        doc="data checks and drift against the champion's profile",
    ),
    Stage.of(
        lineage, inputs=(("data", "ingest"),), doc="record data and code", done="lineage.json"
    ),
    Stage.of(
        features,
        inputs=(("data", "ingest"),),
        after=("validate_data",),
        doc="aggregates, split, feature tables",
    ),
    Stage.of(train, inputs=(("features_dir", "features"),), doc="candidate, baseline"),
    Stage.of(
        evaluate,
        inputs=(("features_dir", "features"), ("train_dir", "train"), ("champ", "champion")),
        doc="metrics against baseline and champion",
    ),
    Stage.of(
        fairness,
        inputs=(("features_dir", "features"), ("eval_dir", "evaluate")),
        doc="group metrics",
    ),
    Stage.of(
        explain,
        inputs=(
            ("features_dir", "features"),
            ("train_dir", "train"),
            ("eval_dir", "evaluate"),
            ("champ", "champion"),
        ),
        doc="SHAP importance and reason codes",
    ),
    Stage.of(
        gates,
        inputs=(("eval_dir", "evaluate"), ("fairness_dir", "fairness"), ("explain_dir", "explain")),
        after=("lineage", "validate_data"),
        doc="every automatic gate",
    ),
    Stage.of(
        register, after=("gates",), doc="MLflow version, alias candidate", done="register.json"
    ),
)


def check_table(table: tuple[Stage, ...]) -> None:
    """Raise ValueError unless every row's task id is new and its upstream rows come first."""
    seen: set[str] = set()
    for row in table:
        if row.task_id in seen:
            raise ValueError(f"stage {row.task_id!r} appears twice in the lifecycle table")
        missing = [name for name in row.upstream if name not in seen]
        if missing:
            raise ValueError(f"stage {row.task_id!r} depends on later or unknown {missing}")
        seen.add(row.task_id)


check_table(LIFECYCLE)
