"""Stage ``features``: point-in-time aggregates, the split and the feature tables.

Input: ``data.parquet`` from ``ingest``. Output, in ``<run>/features/``:
``train.parquet``, ``validation.parquet``, ``test.parquet`` (written by the computation,
:func:`pipelines.features.feature_tables` or its Dask twin), ``features.json`` and
``result.json`` (:class:`FeatureResult`), written by :func:`write_features` from the
computation's record (:class:`pipelines.features.FeatureTables`). Runs on the spec's
compute backend; :func:`build_features` is the local computation and the files in one
call.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipelines.artifacts import write_json
from pipelines.backends import FEATURES, open_backend, resolve_compute
from pipelines.runs import RunContext
from pipelines.spec import ModelSpec

if TYPE_CHECKING:
    from pipelines.features import FeatureTables

NAME = "features"
OUTPUTS: tuple[str, ...] = (
    "train.parquet",
    "validation.parquet",
    "test.parquet",
    "features.json",
    "result.json",
)


@dataclass(frozen=True)
class FeatureResult:
    """What the features stage wrote."""

    out_dir: Path
    paths: dict[str, Path]
    features_json: Path
    features: list[str]
    categorical: list[str]
    passthrough: list[str]
    rows: dict[str, int]
    label_rate: dict[str, float | None]
    split_method: str
    boundaries: dict[str, Any] = field(default_factory=dict)
    sha256: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "stage": "features",
            "out_dir": str(self.out_dir),
            "paths": {k: str(v) for k, v in self.paths.items()},
            "features_json": str(self.features_json),
            "features": list(self.features),
            "categorical": list(self.categorical),
            "passthrough": list(self.passthrough),
            "rows": dict(self.rows),
            "label_rate": dict(self.label_rate),
            "split": {"method": self.split_method, "boundaries": dict(self.boundaries)},
            "sha256": dict(self.sha256),
        }


def write_features(spec: ModelSpec, tables: FeatureTables) -> FeatureResult:
    """The stage's record, once whatever the backend: ``features.json`` and
    ``result.json`` beside the split tables."""
    from pipelines.features import (
        FEATURES_JSON,
        RESULT_JSON,
        categorical_features,
        passthrough_columns,
    )

    out_dir = tables.out_dir
    result = FeatureResult(
        out_dir=out_dir,
        paths=tables.paths,
        features_json=out_dir / FEATURES_JSON,
        features=spec.features.names,
        categorical=categorical_features(spec),
        passthrough=passthrough_columns(spec),
        rows=tables.rows,
        label_rate=tables.label_rate,
        split_method=spec.data.split.method.value,
        boundaries=tables.boundaries,
        sha256=tables.sha256,
    )
    write_json(
        result.features_json,
        {
            "features": result.features,
            "categorical": result.categorical,
            "passthrough": result.passthrough,
            "rows": tables.rows,
            "label_rate": tables.label_rate,
            "split": {"method": result.split_method, "boundaries": tables.boundaries},
            "sha256": tables.sha256,
            **tables.marker,
        },
    )
    write_json(out_dir / RESULT_JSON, {**result.to_dict(), **tables.marker})
    return result


def build_features(spec: ModelSpec, data: Path, out_dir: Path) -> FeatureResult:
    """Aggregates, split and feature tables for ``spec`` from the ingest ``data.parquet``,
    computed locally (:func:`pipelines.features.feature_tables`), and the stage's files in
    ``out_dir``."""
    from pipelines.features import FeaturesInputs, feature_tables

    return write_features(spec, feature_tables(spec, FeaturesInputs(Path(data), Path(out_dir))))


def run(run: RunContext, data: str) -> str:
    """The feature tables from ``data``; the stage folder."""
    from pipelines.features import FeaturesInputs

    folder = run.stage_dir(NAME)
    with open_backend(resolve_compute(run.spec, run.settings)) as backend:
        tables = backend.run(FEATURES, run.spec, FeaturesInputs(Path(data), folder))
    write_features(run.spec, tables)
    return str(folder)
