"""The Dask backend: every stage's computation on a cluster (``compute.backend: dask``).

The computations live in ``dask_core`` (reading partitions, aggregates, the split,
training, batch scoring), ``dask_ingest``, ``dask_validation`` and ``dask_evaluation``;
each hands the stage's shared writer the same records the local computation does.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

from pipelines.spec import ModelSpec

if TYPE_CHECKING:
    from distributed import Client

    from pipelines.evaluation import ScoredTest
    from pipelines.features import FeatureResult
    from pipelines.ingest import IngestResult
    from pipelines.training import TrainedModels
    from validation.data_quality import DataValidationResult
    from validation.explain import ExplainResult


class DaskBackend:
    """:class:`pipelines.backends.Backend` on ``client``'s cluster, in partitions of
    ``partition_rows`` rows."""

    name = "dask"

    def __init__(self, client: Client, partition_rows: int) -> None:
        self.client = client
        self.partition_rows = partition_rows

    def ingest(self, spec: ModelSpec, source: Path, out_dir: Path) -> IngestResult:
        from pipelines.backends.dask_ingest import ingest_dask

        return ingest_dask(spec, source, out_dir, self.client, self.partition_rows)

    def validate_data(
        self,
        spec: ModelSpec,
        data: Path,
        out_dir: Path,
        reference_profile: Path | None = None,
        now: datetime | None = None,
        max_age: timedelta | None = None,
    ) -> DataValidationResult:
        from pipelines.backends.dask_validation import validate_data_dask

        return validate_data_dask(
            spec,
            data,
            out_dir,
            self.client,
            self.partition_rows,
            reference_profile,
            now=now,
            max_age=max_age,
        )

    def build_features(self, spec: ModelSpec, data: Path, out_dir: Path) -> FeatureResult:
        from pipelines.backends.dask_core import build_features_dask

        return build_features_dask(spec, data, out_dir, self.client, self.partition_rows)

    def train(
        self,
        spec: ModelSpec,
        features_dir: Path,
        tuning_trials: int | None = None,
    ) -> TrainedModels:
        from pipelines.backends.dask_training import train_dask

        return train_dask(spec, features_dir, self.client, self.partition_rows, tuning_trials)

    def evaluate(
        self,
        spec: ModelSpec,
        features_dir: Path,
        train_dir: Path,
        champion_model: Path | None = None,
        recent_window: Path | None = None,
    ) -> ScoredTest:
        from pipelines.backends.dask_evaluation import evaluate_dask

        return evaluate_dask(
            spec,
            features_dir,
            train_dir,
            self.client,
            self.partition_rows,
            champion_model=champion_model,
            recent_window=recent_window,
        )

    def explain(
        self,
        spec: ModelSpec,
        features_dir: Path,
        train_dir: Path,
        eval_dir: Path,
        out_dir: Path,
        champion_model: Path | None = None,
    ) -> ExplainResult:
        from pipelines.backends.dask_evaluation import ExplainRun, explain_dask

        cluster = ExplainRun(self.client, self.partition_rows, champion_model)
        return explain_dask(spec, features_dir, train_dir, eval_dir, out_dir, cluster)
