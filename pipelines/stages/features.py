"""Stage ``features``: point-in-time aggregates, the split and the feature tables.

Input: ``data.parquet`` from ``ingest``. Output, in ``<run>/features/``:
``train.parquet``, ``validation.parquet``, ``test.parquet``, ``features.json`` and
``result.json`` (:class:`pipelines.features.FeatureResult`). Runs on the spec's compute
backend.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pipelines.backends import open_backend, resolve_compute
from pipelines.runs import RunContext
from pipelines.spec import Compute

NAME = "features"
OUTPUTS: tuple[str, ...] = (
    "train.parquet",
    "validation.parquet",
    "test.parquet",
    "features.json",
    "result.json",
)


@dataclass(frozen=True)
class FeaturesConfig:
    compute: Compute

    @classmethod
    def from_run(cls, run: RunContext) -> FeaturesConfig:
        return cls(resolve_compute(run.spec, run.settings))


def run(run: RunContext, data: str) -> str:
    """The feature tables from ``data``; the stage folder."""
    config = FeaturesConfig.from_run(run)
    folder = run.stage_dir(NAME)
    with open_backend(config.compute) as backend:
        backend.build_features(run.spec, Path(data), folder)
    return str(folder)
