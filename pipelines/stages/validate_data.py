"""Stage ``validate_data``: the data checks (Great Expectations) on the ingested data.

Inputs: ``data.parquet`` from ``ingest``, the champion's data profile (drift reference).
Output, in ``<run>/validate_data/``: ``validation.json``, ``profile.json``,
``result.json`` (:class:`validation.data_quality.DataValidationResult`) and the Data
Docs. Governance record: ``data_validated``, written whether the checks pass or stop the
run. Runs on the spec's compute backend.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pipelines.backends import open_backend, resolve_compute
from pipelines.runs import RunContext
from pipelines.spec import Compute

NAME = "validate_data"
OUTPUTS: tuple[str, ...] = ("validation.json", "profile.json", "result.json", "data_docs")


@dataclass(frozen=True)
class ValidateDataConfig:
    """The drift reference and the engine."""

    reference_profile: Path | None
    compute: Compute

    @classmethod
    def from_run(cls, run: RunContext, champ: dict[str, str]) -> ValidateDataConfig:
        profile = Path(champ["profile"]) if champ.get("profile") else None
        return cls(profile, resolve_compute(run.spec, run.settings))


def record(run: RunContext, folder: Path) -> None:
    """The stage's governance record (``data_validated``)."""
    from registry.governance import record_data_validation

    record_data_validation(run.settings.governance_url, run.spec, run.run_id, folder)


def run(run: RunContext, data: str, champ: dict[str, str]) -> str:
    """Validate ``data``; the stage folder. Raises DataValidationError on failed checks."""
    folder = run.stage_dir(NAME)
    try:
        config = ValidateDataConfig.from_run(run, champ)
        with open_backend(config.compute) as backend:
            backend.validate_data(run.spec, Path(data), folder, config.reference_profile)
    finally:
        record(run, folder)
    return str(folder)
