"""Lineage rows in the governance store: recorded once per run, on SQLite and PostgreSQL."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from sqlalchemy import create_engine, func, select
from sqlalchemy.orm import Session

from registry.lineage import (
    LineageEntry,
    LineageRecord,
    capture_run_lineage,
    code_version,
    lineage_for_run,
    record_lineage,
)

ROOT = Path(__file__).resolve().parents[2]


def _fingerprint(tmp_path: Path) -> Path:
    path = tmp_path / "fingerprint.json"
    path.write_text(
        json.dumps(
            {
                "source": "/data/fraud.parquet",
                "sha256": "ab" * 32,
                "rows": 1234,
                "schema": [{"name": "amount", "dtype": "double"}],
            }
        )
    )
    return path


def _capture(url: str, tmp_path: Path, params: dict) -> Path:
    return capture_run_lineage(
        url,
        "fraud",
        ROOT / "specs" / "fraud.yaml",
        "manual__2026-11-28T00:00:00+00:00",
        _fingerprint(tmp_path),
        params,
        ROOT,
        tmp_path / "lineage",
    )


def _count(url: str) -> int:
    engine = create_engine(url)
    with Session(engine) as session:
        n = session.scalar(select(func.count()).select_from(LineageRecord))
    engine.dispose()
    return int(n or 0)


def test_code_version_is_the_git_commit() -> None:
    version = code_version(ROOT)
    assert len(version.split("+")[0]) == 40


def test_capture_records_data_code_spec_and_parameters(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'gov.db'}"
    path = _capture(url, tmp_path, {"n_rows": 5000})
    stored = {e.kind: e for e in lineage_for_run(url, "manual__2026-11-28T00:00:00+00:00")}
    assert stored["dataset"].sha256 == "ab" * 32
    assert stored["dataset"].details["rows"] == 1234
    assert stored["spec"].sha256 and len(stored["spec"].sha256) == 64
    assert stored["parameters"].details == {"n_rows": 5000}
    assert stored["code"].details["version"] == code_version(ROOT)
    written = json.loads(path.read_text())
    assert written["run_id"] == "manual__2026-11-28T00:00:00+00:00"
    assert len(written["entries"]) == 4


def test_rerun_updates_instead_of_duplicating(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'gov.db'}"
    _capture(url, tmp_path, {"n_rows": 5000})
    first = (tmp_path / "lineage" / "lineage.json").read_text()
    _capture(url, tmp_path, {"n_rows": 5000})
    assert _count(url) == 4
    assert (
        json.loads(first)["entries"]
        == json.loads((tmp_path / "lineage" / "lineage.json").read_text())["entries"]
    )


def test_entries_of_other_runs_are_separate(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'gov.db'}"
    record_lineage(url, "credit", "run-a", [LineageEntry("parameters", "run", None, {"a": 1})])
    record_lineage(url, "credit", "run-b", [LineageEntry("parameters", "run", None, {"b": 2})])
    assert lineage_for_run(url, "run-a")[0].details == {"a": 1}
    assert lineage_for_run(url, "run-b")[0].details == {"b": 2}


@pytest.mark.postgres
def test_lineage_on_postgresql(pg_database: str, tmp_path: Path) -> None:
    _capture(pg_database, tmp_path, {"seed": 3})
    _capture(pg_database, tmp_path, {"seed": 3})
    assert _count(pg_database) == 4
