"""The local backend: every stage's computation in this process, with pandas."""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

from pipelines.spec import ModelSpec

if TYPE_CHECKING:
    from pipelines.evaluation import ScoredTest
    from pipelines.features import FeatureResult
    from pipelines.ingest import IngestResult
    from pipelines.training import TrainedModels
    from validation.data_quality import DataValidationResult
    from validation.explain import ExplainResult


class LocalBackend:
    """:class:`pipelines.backends.Backend` on pandas, in this process."""

    name = "local"

    def ingest(self, spec: ModelSpec, source: Path, out_dir: Path) -> IngestResult:
        from pipelines.ingest import ingest

        return ingest(spec, source, out_dir)

    def validate_data(
        self,
        spec: ModelSpec,
        data: Path,
        out_dir: Path,
        reference_profile: Path | None = None,
        now: datetime | None = None,
        max_age: timedelta | None = None,
    ) -> DataValidationResult:
        from validation.data_quality import validate_data

        return validate_data(spec, data, out_dir, reference_profile, now=now, max_age=max_age)

    def build_features(self, spec: ModelSpec, data: Path, out_dir: Path) -> FeatureResult:
        from pipelines.features import build_features

        return build_features(spec, data, out_dir)

    def train(
        self,
        spec: ModelSpec,
        features_dir: Path,
        tuning_trials: int | None = None,
    ) -> TrainedModels:
        from pipelines.training import fit_models

        return fit_models(spec, features_dir, tuning_trials=tuning_trials)

    def evaluate(
        self,
        spec: ModelSpec,
        features_dir: Path,
        train_dir: Path,
        champion_model: Path | None = None,
        recent_window: Path | None = None,
    ) -> ScoredTest:
        from pipelines.evaluation import evaluate

        return evaluate(
            spec,
            features_dir,
            train_dir,
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
        from validation.explain import explain

        return explain(
            spec, features_dir, train_dir, eval_dir, out_dir, champion_model=champion_model
        )
