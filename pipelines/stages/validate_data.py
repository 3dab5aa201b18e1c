"""Stage ``validate_data``: the data checks (Great Expectations) on the ingested data.

Inputs: ``data.parquet`` from ``ingest``, the champion's data profile (drift reference).
Output, in ``<run>/validate_data/``: the Data Docs (rendered by the computation,
:func:`validation.data_quality.check_data` or its Dask twin), ``validation.json``,
``profile.json`` and ``result.json`` (:class:`DataValidationResult`), written by
:func:`write_validation` from the computation's records
(:class:`validation.data_quality.CheckedData`). Governance record: ``data_validated``,
written whether the checks pass or stop the run. Runs on the spec's compute backend;
:func:`validate_data` is the local computation and the files in one call.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipelines.artifacts import write_json
from pipelines.backends import VALIDATE_DATA, open_backend, resolve_compute
from pipelines.runs import RunContext
from pipelines.spec import ModelSpec

if TYPE_CHECKING:
    from validation.data_quality import CheckedData

log = logging.getLogger(__name__)

NAME = "validate_data"
VALIDATION_FILE = "validation.json"
PROFILE_FILE = "profile.json"
RESULT_FILE = "result.json"
OUTPUTS: tuple[str, ...] = (VALIDATION_FILE, PROFILE_FILE, RESULT_FILE, "data_docs")


@dataclass(frozen=True)
class DataValidationResult:
    """Outcome of the data checks (also written to ``result.json``)."""

    spec: str
    data: str
    data_sha256: str
    suite: str
    passed: bool
    rows: int
    label_rate: float | None
    expectations: int
    failed: list[str]
    warnings: list[str]
    validation: str
    profile: str
    data_docs: str
    reference_profile: str | None = None
    checks: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _validation_record(
    spec: ModelSpec, checked: CheckedData, failed: list[str], warnings: list[str]
) -> dict[str, Any]:
    """``validation.json``."""
    records, reference_profile = checked.records, checked.reference_profile
    return {
        "data": str(checked.data),
        "data_sha256": checked.data_sha256,
        "expectations": records,
        "reference_profile": None if reference_profile is None else str(reference_profile),
        "rows": int(checked.profile["rows"]),
        "spec": spec.name,
        "statistics": {
            "evaluated": len(records),
            "failed_blocking": len(failed),
            "successful": sum(1 for r in records if r["success"]),
            "warnings": len(warnings),
        },
        "success": not failed,
        "suite": checked.suite_name,
    }


def write_validation(spec: ModelSpec, out_dir: Path, checked: CheckedData) -> DataValidationResult:
    """The stage's files beside the Data Docs, once whatever the backend:
    ``validation.json``, ``profile.json`` and ``result.json``; then raise
    DataValidationError listing every failed blocking check."""
    from pipelines.errors import DataValidationError
    from validation.data_quality import DATA_DOCS_DIR

    records, profile, data = checked.records, checked.profile, checked.data
    failed, warnings = checked.failed, checked.warnings
    validation = _validation_record(spec, checked, failed, warnings)
    validation_path = out_dir / VALIDATION_FILE
    profile_path = out_dir / PROFILE_FILE
    write_json(validation_path, validation)
    write_json(profile_path, profile)
    reference_profile = checked.reference_profile
    outcome = DataValidationResult(
        spec=spec.name,
        data=str(data),
        data_sha256=checked.data_sha256,
        suite=checked.suite_name,
        passed=not failed,
        rows=int(profile["rows"]),
        label_rate=profile["label_rate"],
        expectations=len(records),
        failed=failed,
        warnings=warnings,
        validation=str(validation_path),
        profile=str(profile_path),
        data_docs=str(out_dir / DATA_DOCS_DIR / "index.html"),
        reference_profile=None if reference_profile is None else str(reference_profile),
        checks=validation["statistics"],
    )
    backend = checked.backend
    write_json(
        out_dir / RESULT_FILE,
        outcome.to_dict() if backend is None else {**outcome.to_dict(), "backend": backend},
    )
    for text in warnings:
        log.warning("%s: data check warning: %s", data, text)
    if failed:
        n = len(failed)
        raise DataValidationError(
            f"{n} data check{'s' if n > 1 else ''} failed for {data}: " + "; ".join(failed)
        )
    log.info(
        "validated %s: %d expectations passed (%d warnings); Data Docs %s",
        data,
        len(records) - len(warnings),
        len(warnings),
        outcome.data_docs,
    )
    return outcome


def validate_data(
    spec: ModelSpec,
    data: Path,
    out_dir: Path,
    reference_profile: Path | None = None,
    now: datetime | None = None,
    max_age: timedelta | None = None,
) -> DataValidationResult:
    """Validate ingested data locally against the spec (and a reference profile) and
    write the stage's files in ``out_dir`` (:mod:`validation.data_quality`); raises
    DataValidationError listing every failed blocking check if there is any."""
    from validation.data_quality import ValidateInputs, check_data

    folder, profile = Path(out_dir), None if reference_profile is None else Path(reference_profile)
    checked = check_data(spec, ValidateInputs(Path(data), folder, profile, now, max_age))
    return write_validation(spec, folder, checked)


def record(run: RunContext, folder: Path) -> None:
    """The stage's governance record (``data_validated``)."""
    from registry.governance import record_data_validation

    record_data_validation(run.settings.governance_url, run.spec, run.run_id, folder)


def run(run: RunContext, data: str, champ: dict[str, str]) -> str:
    """Validate ``data`` (drift against the champion's data profile, if any); the stage
    folder. Raises DataValidationError on failed checks."""
    from validation.data_quality import ValidateInputs

    folder = run.stage_dir(NAME)
    try:
        profile = Path(champ["profile"]) if champ.get("profile") else None
        inputs = ValidateInputs(Path(data), folder, profile)
        with open_backend(resolve_compute(run.spec, run.settings)) as backend:
            checked = backend.run(VALIDATE_DATA, run.spec, inputs)
        write_validation(run.spec, folder, checked)
    finally:
        record(run, folder)
    return str(folder)
