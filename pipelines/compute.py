"""Which engine runs the heavy stages: the spec's ``compute`` section, overridden by config.

``resolve_compute(spec, settings)`` merges ``spec.compute`` with ``GOVML_COMPUTE_BACKEND``
and ``GOVML_DASK_SCHEDULER`` (a scheduler address implies the ``dask`` backend).
``ingest_with``, ``validate_with``, ``build_features_with``, ``train_with``,
``evaluate_with`` and ``explain_with`` dispatch a lifecycle stage to the local (pandas)
functions or to their Dask versions (:mod:`pipelines.dask_ingest`,
:mod:`pipelines.dask_validation`, :mod:`pipelines.dask_backend`,
:mod:`pipelines.dask_evaluation`); this module imports neither dask nor pandas, so the
DAG tasks stay cheap to import.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from pipelines.config import Settings
from pipelines.errors import ConfigError
from pipelines.spec import Compute, ModelSpec

if TYPE_CHECKING:
    from datetime import datetime, timedelta

    from pipelines.evaluation import EvalResult
    from pipelines.features import FeatureResult
    from pipelines.ingest import IngestResult
    from pipelines.training import TrainResult
    from validation.data_quality import DataValidationResult
    from validation.explain import ExplainResult


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


def ingest_with(compute: Compute, spec: ModelSpec, source: Path, out_dir: Path) -> IngestResult:
    """The ingest stage on the chosen backend (same files; a folder of Parquet on dask)."""
    if compute.backend == "dask":
        from pipelines.dask_backend import dask_client
        from pipelines.dask_ingest import ingest_dask

        with dask_client(compute) as client:
            return ingest_dask(spec, source, out_dir, client, compute.partition_rows)
    from pipelines.ingest import ingest

    return ingest(spec, source, out_dir)


def validate_with(
    compute: Compute,
    spec: ModelSpec,
    data: Path,
    out_dir: Path,
    reference_profile: Path | None = None,
    now: datetime | None = None,
    max_age: timedelta | None = None,
) -> DataValidationResult:
    """Data validation (GX) on the chosen backend (same checks, outcomes and files)."""
    if compute.backend == "dask":
        from pipelines.dask_backend import dask_client
        from pipelines.dask_validation import validate_data_dask

        with dask_client(compute) as client:
            return validate_data_dask(
                spec,
                data,
                out_dir,
                client,
                compute.partition_rows,
                reference_profile,
                now=now,
                max_age=max_age,
            )
    from validation.data_quality import validate_data

    return validate_data(spec, data, out_dir, reference_profile, now=now, max_age=max_age)


def evaluate_with(
    compute: Compute,
    spec: ModelSpec,
    features_dir: Path,
    train_dir: Path,
    out_dir: Path,
    champion_model: Path | None = None,
    recent_window: Path | None = None,
) -> EvalResult:
    """The evaluation stage on the chosen backend (scoring on the cluster with dask)."""
    if compute.backend == "dask":
        from pipelines.dask_backend import dask_client
        from pipelines.dask_evaluation import evaluate_dask

        with dask_client(compute) as client:
            return evaluate_dask(
                spec,
                features_dir,
                train_dir,
                out_dir,
                client,
                compute.partition_rows,
                champion_model=champion_model,
                recent_window=recent_window,
            )
    from pipelines.evaluation import evaluate

    return evaluate(
        spec,
        features_dir,
        train_dir,
        out_dir,
        champion_model=champion_model,
        recent_window=recent_window,
    )


def explain_with(
    compute: Compute,
    spec: ModelSpec,
    features_dir: Path,
    train_dir: Path,
    eval_dir: Path,
    out_dir: Path,
    champion_model: Path | None = None,
) -> ExplainResult:
    """SHAP explanations on the chosen backend (the same sample and values with dask)."""
    if compute.backend == "dask":
        from pipelines.dask_backend import dask_client
        from pipelines.dask_evaluation import explain_dask

        with dask_client(compute) as client:
            return explain_dask(
                spec,
                features_dir,
                train_dir,
                eval_dir,
                out_dir,
                client,
                compute.partition_rows,
                champion_model=champion_model,
            )
    from validation.explain import explain

    return explain(spec, features_dir, train_dir, eval_dir, out_dir, champion_model=champion_model)
