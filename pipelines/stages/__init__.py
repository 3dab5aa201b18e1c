"""The lifecycle's stages: one module per stage, and the lifecycle as a table of them.

A stage module owns its inputs (paths from earlier stages and a typed config built from
the run), its output files (``OUTPUTS``, in ``<run>/<stage>/``), its result and its
governance record; its ``run(run, **inputs)`` takes a :class:`pipelines.runs.RunContext`
and the earlier stages' values (paths and ids, never DataFrames) and returns its own.
The heavy computations stay in :mod:`pipelines` (layer 1) and :mod:`validation` (checks);
where a stage can run on Dask it asks :mod:`pipelines.backends` for them.

:data:`LIFECYCLE` is the automated part of the lifecycle, in order: one :class:`Stage`
row per stage. ``dags/lifecycle.py`` turns every row into one Airflow task; adding a
stage is one module and one row. Modules here import nothing heavy at import time (the
DAG file imports this table while Airflow parses it).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
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
    """

    task_id: str
    run: Callable[..., Any]
    inputs: tuple[tuple[str, str], ...] = ()
    after: tuple[str, ...] = ()
    doc: str = ""
    done: str = ""

    @property
    def upstream(self) -> tuple[str, ...]:
        """Every earlier stage this one depends on (inputs first, then ``after``)."""
        names = [source for _, source in self.inputs] + list(self.after)
        return tuple(dict.fromkeys(names))


LIFECYCLE: tuple[Stage, ...] = (
    Stage("ingest", ingest.run, doc="read, check and type the source", done="ingest/result.json"),
    Stage("champion", champion.run, doc="fetch the serving champion, if any"),
    Stage(
        "validate_data",
        validate_data.run,
        inputs=(("data", "ingest"), ("champ", "champion")),
        doc="data checks and drift against the champion's profile",
        done="validate_data/result.json",
    ),
    Stage(
        "lineage",
        lineage.run,
        inputs=(("data", "ingest"),),
        doc="record data and code",
        done="lineage/lineage.json",
    ),
    Stage(
        "features",
        features.run,
        inputs=(("data", "ingest"),),
        after=("validate_data",),
        doc="aggregates, split, feature tables",
        done="features/result.json",
    ),
    Stage(
        "train",
        train.run,
        inputs=(("features_dir", "features"),),
        doc="candidate, baseline",
        done="train/result.json",
    ),
    Stage(
        "evaluate",
        evaluate.run,
        inputs=(("features_dir", "features"), ("train_dir", "train"), ("champ", "champion")),
        doc="metrics against baseline and champion",
        done="evaluate/result.json",
    ),
    Stage(
        "fairness",
        fairness.run,
        inputs=(("features_dir", "features"), ("eval_dir", "evaluate")),
        doc="group metrics",
        done="fairness/result.json",
    ),
    Stage(
        "explain",
        explain.run,
        inputs=(
            ("features_dir", "features"),
            ("train_dir", "train"),
            ("eval_dir", "evaluate"),
            ("champ", "champion"),
        ),
        doc="SHAP importance and reason codes",
        done="explain/result.json",
    ),
    Stage(
        "gates",
        gates.run,
        inputs=(("eval_dir", "evaluate"), ("fairness_dir", "fairness"), ("explain_dir", "explain")),
        after=("lineage", "validate_data"),
        doc="every automatic gate",
        done="gates/result.json",
    ),
    Stage(
        "register",
        register.run,
        after=("gates",),
        doc="MLflow version, alias candidate",
        done="register/register.json",
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
