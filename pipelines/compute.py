"""Which engine runs the heavy stages: the spec's ``compute`` section, overridden by config.

``resolve_compute(spec, settings)`` merges ``spec.compute`` with ``GOVML_COMPUTE_BACKEND``
and ``GOVML_DASK_SCHEDULER`` (a scheduler address implies the ``dask`` backend).
``build_features_with`` and ``train_with`` dispatch a lifecycle stage to the local
(pandas) functions or to :mod:`pipelines.dask_backend`; this module imports neither
dask nor pandas, so the DAG tasks stay cheap to import.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from pipelines.config import Settings
from pipelines.errors import ConfigError
from pipelines.spec import Compute, ModelSpec

if TYPE_CHECKING:
    from pipelines.features import FeatureResult
    from pipelines.training import TrainResult


def resolve_compute(spec: ModelSpec, settings: Settings) -> Compute:
    """The spec's compute settings with the environment overrides applied."""
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


def build_features_with(
    compute: Compute, spec: ModelSpec, data: Path, out_dir: Path
) -> FeatureResult:
    """The features stage on the chosen backend (same files, same values)."""
    if compute.backend == "dask":
        from pipelines.dask_backend import build_features_dask, dask_client

        with dask_client(compute) as client:
            return build_features_dask(spec, data, out_dir, client, compute.partition_rows)
    from pipelines.features import build_features

    return build_features(spec, data, out_dir)


def train_with(
    compute: Compute,
    spec: ModelSpec,
    features_dir: Path,
    out_dir: Path,
    tuning_trials: int | None = None,
) -> TrainResult:
    """The training stage on the chosen backend (``lightgbm.dask`` with ``dask``)."""
    if compute.backend == "dask":
        from pipelines.dask_backend import dask_client, train_dask

        with dask_client(compute) as client:
            return train_dask(
                spec, features_dir, out_dir, client, compute.partition_rows, tuning_trials
            )
    from pipelines.training import train

    return train(spec, features_dir, out_dir, tuning_trials=tuning_trials)
