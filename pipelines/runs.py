"""A lifecycle run: its spec, id, parameters and run folder (``$GOVML_RUNS_DIR/<spec>/<run>``)."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipelines.config import Settings, load_settings
from pipelines.errors import DataValidationError
from pipelines.spec import ModelSpec, load_spec

# Run parameters a user may pass when triggering a run (Airflow params / CLI flags).
PARAMS = {
    "data_path": "a Parquet or CSV file to use instead of the spec's data source",
    "n_rows": "rows to generate (generated sources only)",
    "seed": "generator seed (generated sources only)",
    "bias": "credit generator bias knob in [0, 1] (generated credit only)",
    "fraud_rate": "fraud generator target fraud rate (generated fraud only)",
    "tuning_trials": "LightGBM tuning budget (default: the spec's)",
    "author": "who developed this model change (four-eyes: may not approve it)",
    "reason": "why this run (recorded in the audit trail as the retrain trigger)",
}


def safe_run_id(run_id: str) -> str:
    """A folder-safe form of an Airflow run id (``manual__2026-01-01T00:00:00+00:00``)."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", run_id).strip("_") or "run"


@dataclass(frozen=True)
class RunContext:
    spec: ModelSpec
    spec_path: Path
    run_id: str
    run_dir: Path
    settings: Settings
    params: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def create(
        cls,
        spec_path: Path,
        run_id: str,
        params: Mapping[str, Any] | None = None,
        settings: Settings | None = None,
    ) -> RunContext:
        settings = settings or load_settings()
        spec = load_spec(spec_path)
        clean = {k: v for k, v in dict(params or {}).items() if v is not None and v != ""}
        unknown = sorted(set(clean) - set(PARAMS))
        if unknown:
            raise DataValidationError(
                f"unknown run parameter(s) {unknown}; known: {sorted(PARAMS)}"
            )
        run_dir = settings.runs_dir / spec.name / safe_run_id(run_id)
        run_dir.mkdir(parents=True, exist_ok=True)
        return cls(spec, Path(spec_path), run_id, run_dir, settings, clean)

    def stage_dir(self, stage: str) -> Path:
        """``<run>/<stage>/``, created; any stage may have one (a plain folder name)."""
        if not re.fullmatch(r"[a-z][a-z0-9_]*", stage):
            raise ValueError(f"unknown stage {stage!r}")
        path = self.run_dir / stage
        path.mkdir(parents=True, exist_ok=True)
        return path

    def generator_overrides(self) -> dict[str, Any]:
        keys = ("n_rows", "seed", "bias", "fraud_rate")
        return {k: self.params[k] for k in keys if k in self.params}


def resolve_source(run: RunContext) -> Path:
    """The data file for a run: ``data_path`` if given, else the spec's source materialised."""
    from pipelines.data.manifest import data_path, manifest_path_for
    from pipelines.datasets import materialise

    if "data_path" in run.params:
        path = Path(run.params["data_path"]).expanduser()
        if not path.is_file():
            raise DataValidationError(f"data_path {path}: no such file")
        return path
    out = run.settings.data_dir / run.spec.name
    overrides = run.generator_overrides()
    if overrides:
        out = out / ("custom-" + "-".join(f"{k}{v}" for k, v in sorted(overrides.items())))
    manifest = materialise(run.spec, out, overrides)
    return data_path(manifest_path_for(out, manifest.name), manifest)


def read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())
