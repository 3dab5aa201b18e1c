"""Compute backends of the lifecycle stages: the core computations, never the files' tails.

A stage (:mod:`pipelines.stages`) asks a :class:`Backend` for its heavy work: reading
the data in partitions, checks, aggregates, training, scoring. :mod:`pipelines.backends.local`
runs them in this process with pandas; :mod:`pipelines.backends.dask` runs them on a
Dask cluster (its modules ``dask_core``, ``dask_ingest``, ``dask_validation`` and
``dask_evaluation``). Both hand the stage's shared writers the same records, so a stage
writes the same files with the same keys whatever the backend; ``marker`` is what a
backend adds to the stage's ``result.json`` (nothing locally; ``backend`` and the
partition count on Dask).

:func:`resolve_compute` merges the spec's ``compute`` section with the environment, and
:func:`open_backend` is the one place a backend is chosen. This module imports neither
dask nor pandas, so the DAG tasks stay cheap to import.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from pydantic import ValidationError

from pipelines.config import Settings
from pipelines.errors import ConfigError
from pipelines.spec import Compute, ModelSpec

if TYPE_CHECKING:
    from pipelines.evaluation import ScoredTest
    from pipelines.features import FeatureResult
    from pipelines.ingest import IngestResult
    from pipelines.training import TrainedModels
    from validation.data_quality import DataValidationResult
    from validation.explain import ExplainResult

#: keys a backend may add to a stage's JSON files beside the stage's own (the local
#: backend adds none; Dask records itself, its partitions and workers, and in
#: ``training.json`` its validation history and the baseline's sample size)
BACKEND_KEYS: frozenset[str] = frozenset(
    {"backend", "partitions", "dask_workers", "validation_history", "baseline_rows"}
)


class Backend(Protocol):
    """The core computations of the stages that can run on a cluster."""

    name: str

    def ingest(self, spec: ModelSpec, source: Path, out_dir: Path) -> IngestResult: ...

    def validate_data(
        self,
        spec: ModelSpec,
        data: Path,
        out_dir: Path,
        reference_profile: Path | None = None,
        now: datetime | None = None,
        max_age: timedelta | None = None,
    ) -> DataValidationResult: ...

    def build_features(self, spec: ModelSpec, data: Path, out_dir: Path) -> FeatureResult: ...

    def train(
        self,
        spec: ModelSpec,
        features_dir: Path,
        tuning_trials: int | None = None,
    ) -> TrainedModels: ...

    def evaluate(
        self,
        spec: ModelSpec,
        features_dir: Path,
        train_dir: Path,
        champion_model: Path | None = None,
        recent_window: Path | None = None,
    ) -> ScoredTest: ...

    def explain(
        self,
        spec: ModelSpec,
        features_dir: Path,
        train_dir: Path,
        eval_dir: Path,
        out_dir: Path,
        champion_model: Path | None = None,
    ) -> ExplainResult: ...


def resolve_compute(spec: ModelSpec, settings: Settings) -> Compute:
    """The spec's compute settings with the environment overrides applied.

    ``GOVML_DASK_SCHEDULER`` (a scheduler address implies the ``dask`` backend) and
    ``GOVML_COMPUTE_BACKEND`` override ``spec.compute``.
    """
    merged: dict[str, Any] = spec.compute.model_dump()
    if settings.dask_scheduler:
        merged["scheduler"] = settings.dask_scheduler
        merged["backend"] = "dask"
    if settings.compute_backend:
        merged["backend"] = settings.compute_backend
    try:
        return Compute.model_validate(merged)
    except ValidationError as exc:
        problems = "; ".join(str(e["msg"]).removeprefix("Value error, ") for e in exc.errors())
        raise ConfigError(f"GOVML_DASK_SCHEDULER / GOVML_COMPUTE_BACKEND: {problems}") from None


@contextmanager
def open_backend(compute: Compute) -> Iterator[Backend]:
    """The backend ``compute`` names, with its cluster client open while in use."""
    if compute.backend == "dask":
        from pipelines.backends.dask import DaskBackend
        from pipelines.backends.dask_core import dask_client

        with dask_client(compute) as client:
            yield DaskBackend(client, compute.partition_rows)
        return
    from pipelines.backends.local import LocalBackend

    yield LocalBackend()
