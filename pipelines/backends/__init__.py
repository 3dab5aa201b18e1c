"""Compute backends of the lifecycle stages: the core computations, never the files' tails.

A stage (:mod:`pipelines.stages`) asks a :class:`Backend` to run its heavy computation:
reading the data in partitions, checks, aggregates, training, scoring. Each computation
is one row of a small table (:class:`Computation`: :data:`INGEST`, :data:`VALIDATE_DATA`,
:data:`FEATURES`, :data:`TRAIN`, :data:`EVALUATE`, :data:`EXPLAIN`) naming the local
function (pandas, in this process) and its Dask twin (``dask_core``, ``dask_ingest``,
``dask_validation``, ``dask_training``, ``dask_evaluation``). Both take the stage's
inputs as one frozen dataclass (e.g. :class:`pipelines.evaluation.EvaluateInputs`) and
return the same record, from which the stage's one writer writes the same files with
the same keys whatever the backend; ``marker`` is what a backend adds to the stage's
``result.json`` (nothing locally; ``backend`` and the partition count on Dask).

:func:`resolve_compute` merges the spec's ``compute`` section with the environment, and
:func:`open_backend` is the one place a backend is chosen. This module imports neither
dask nor pandas, so the DAG tasks stay cheap to import.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, Protocol, TypeVar

from pydantic import ValidationError

from pipelines.config import Settings
from pipelines.errors import ConfigError
from pipelines.spec import Compute, ModelSpec

if TYPE_CHECKING:
    from pipelines.backends.dask_core import Cluster
    from pipelines.evaluation import EvaluateInputs, ScoredTest
    from pipelines.features import FeaturesInputs, FeatureTables
    from pipelines.ingest import IngestedData, IngestInputs
    from pipelines.training import TrainedModels, TrainInputs
    from validation.data_quality import CheckedData, ValidateInputs
    from validation.explain import ExplainInputs, Explanation

#: keys a backend may add to a stage's JSON files beside the stage's own (the local
#: backend adds none; Dask records itself, its partitions and workers, and in
#: ``training.json`` its validation history and the baseline's sample size)
BACKEND_KEYS: frozenset[str] = frozenset(
    {"backend", "partitions", "dask_workers", "validation_history", "baseline_rows"}
)

In = TypeVar("In")
Out = TypeVar("Out")


def _function(target: str) -> Callable[..., Any]:
    """The function a ``"module:name"`` target names (the module imported now)."""
    module, name = target.split(":")
    return getattr(importlib.import_module(module), name)


@dataclass(frozen=True)
class Computation(Generic[In, Out]):
    """One stage's core computation on each backend, as ``"module:function"`` targets
    imported when run: ``local(spec, inputs)`` and ``dask(spec, inputs, cluster)``, both
    returning the same record."""

    local: str
    dask: str


INGEST: Computation[IngestInputs, IngestedData] = Computation(
    "pipelines.ingest:ingest_source", "pipelines.backends.dask_ingest:ingest_dask"
)
VALIDATE_DATA: Computation[ValidateInputs, CheckedData] = Computation(
    "validation.data_quality:check_data", "pipelines.backends.dask_validation:validate_data_dask"
)
FEATURES: Computation[FeaturesInputs, FeatureTables] = Computation(
    "pipelines.features:feature_tables", "pipelines.backends.dask_core:build_features_dask"
)
TRAIN: Computation[TrainInputs, TrainedModels] = Computation(
    "pipelines.training:fit_models", "pipelines.backends.dask_training:train_dask"
)
EVALUATE: Computation[EvaluateInputs, ScoredTest] = Computation(
    "pipelines.evaluation:evaluate", "pipelines.backends.dask_evaluation:evaluate_dask"
)
EXPLAIN: Computation[ExplainInputs, Explanation] = Computation(
    "validation.explain:explain_candidate", "pipelines.backends.dask_evaluation:explain_dask"
)


class Backend(Protocol):
    """Runs the stages' core computations (:class:`Computation`)."""

    name: str

    def run(self, computation: Computation[In, Out], spec: ModelSpec, inputs: In) -> Out: ...


class LocalBackend:
    """:class:`Backend` on pandas, in this process."""

    name = "local"

    def run(self, computation: Computation[In, Out], spec: ModelSpec, inputs: In) -> Out:
        result: Out = _function(computation.local)(spec, inputs)
        return result


class DaskBackend:
    """:class:`Backend` on a Dask cluster (its client and partition size)."""

    name = "dask"

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster

    def run(self, computation: Computation[In, Out], spec: ModelSpec, inputs: In) -> Out:
        result: Out = _function(computation.dask)(spec, inputs, self.cluster)
        return result


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
        from pipelines.backends.dask_core import Cluster, dask_client

        with dask_client(compute) as client:
            yield DaskBackend(Cluster(client, compute.partition_rows))
        return
    yield LocalBackend()
