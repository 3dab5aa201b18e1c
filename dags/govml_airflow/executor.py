"""The embedded stack's executor: Airflow's LocalExecutor, with the libraries the
lifecycle's tasks use already imported in every task process.

The LocalExecutor forks its workers from the scheduler, and each worker forks one
process per task. Every task process used to import pandas, scikit-learn, LightGBM,
MLflow, Great Expectations, SHAP and fairlearn afresh: about 8 s of CPU for the set, so
most of a lifecycle run's CPU went to imports. This executor imports them once, in the
scheduler, before the workers are forked; each task process inherits them. Measured on
a German Credit run to its approval request by ``benchmarks/bench_stack_run.py``
(BENCHMARKS.md, "stack_run").

Only imports happen before the fork: no thread pool, connection or file is opened here.
A library that fails to import is logged and left to the task that needs it, which
then fails with the library's own error.
"""

from __future__ import annotations

import importlib
import logging
import time

from airflow.executors.local_executor import LocalExecutor

log = logging.getLogger(__name__)

# What a lifecycle task imports (lazily, inside the stage functions): the heavy third-
# party modules only. The project's own modules are cheap to import.
PRELOADED_MODULES = (
    "numpy",
    "pandas",
    "pyarrow.parquet",
    "pyarrow.compute",
    "scipy.stats",
    "sklearn.ensemble",
    "sklearn.linear_model",
    "sklearn.metrics",
    "sklearn.model_selection",
    "lightgbm",
    "matplotlib.figure",
    "matplotlib.backends.backend_agg",
    "shap",
    "fairlearn.metrics",
    "great_expectations",
    "mlflow",
    "mlflow.lightgbm",
    "mlflow.models",
)


def preload(modules: tuple[str, ...] = PRELOADED_MODULES) -> list[str]:
    """Import ``modules`` into this process; the names that failed to import."""
    started = time.monotonic()
    failed = []
    for name in modules:
        try:
            importlib.import_module(name)
        except Exception as exc:  # noqa: BLE001 - a task importing it reports it
            failed.append(name)
            log.warning("not preloaded for the task processes: %s (%s)", name, exc)
    log.info(
        "preloaded %d module(s) for the task processes in %.1f s",
        len(modules) - len(failed),
        time.monotonic() - started,
    )
    return failed


class PreloadingLocalExecutor(LocalExecutor):
    """A LocalExecutor whose forked workers (and so task processes) start with
    :data:`PRELOADED_MODULES` imported."""

    def start(self) -> None:
        preload()
        super().start()
