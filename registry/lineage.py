"""Lineage rows in the governance store: which data, code, spec and parameters made a run.

One row per (lifecycle run, kind, name): the input data set's hashes, the code
version (git SHA), the spec hash and the run's parameters. Recording is idempotent:
a rerun of the lineage task updates the same rows instead of adding new ones.

The table lives in the governance database (``GOVML_GOVERNANCE_URL``: SQLite by
default, PostgreSQL supported); its model and schema migrations are in
``registry.store``.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from registry.store import Base, LineageRecord, engine_for, read_only

__all__ = [
    "Base",
    "LineageEntry",
    "LineageRecord",
    "capture_run_lineage",
    "code_version",
    "engine_for",
    "lineage_for_run",
    "record_lineage",
]

log = logging.getLogger(__name__)


def code_version(repo: Path) -> str:
    """The git commit of the code (with ``+dirty`` when the tree has changes)."""
    try:
        sha = subprocess.run(
            ["git", "-C", str(repo), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return f"{sha}+dirty" if dirty else sha


@dataclass(frozen=True)
class LineageEntry:
    kind: str
    name: str
    sha256: str | None
    details: dict[str, Any]


def record_lineage(
    url: str, spec_name: str, run_id: str, entries: list[LineageEntry]
) -> list[LineageEntry]:
    """Insert or update the run's lineage rows; returns what is stored."""
    engine = engine_for(url)
    now = dt.datetime.now(dt.UTC)
    with Session(engine) as session, session.begin():
        for entry in entries:
            row = session.scalar(
                select(LineageRecord).where(
                    LineageRecord.run_id == run_id,
                    LineageRecord.kind == entry.kind,
                    LineageRecord.name == entry.name,
                )
            )
            if row is None:
                row = LineageRecord(
                    spec_name=spec_name, run_id=run_id, kind=entry.kind, name=entry.name
                )
                session.add(row)
            row.sha256 = entry.sha256
            row.details = json.loads(json.dumps(entry.details, default=str))
            row.recorded_at = now
    return lineage_for_run(url, run_id)


def lineage_for_run(url: str, run_id: str) -> list[LineageEntry]:
    engine = read_only(engine_for(url))
    with Session(engine) as session:
        rows = session.scalars(
            select(LineageRecord)
            .where(LineageRecord.run_id == run_id)
            .order_by(LineageRecord.kind, LineageRecord.name)
        ).all()
        return [LineageEntry(r.kind, r.name, r.sha256, dict(r.details)) for r in rows]


def capture_run_lineage(
    url: str,
    spec_name: str,
    spec_path: Path,
    run_id: str,
    fingerprint_path: Path,
    params: dict[str, Any],
    repo: Path,
    out_dir: Path,
) -> Path:
    """The lifecycle's lineage stage: record data, code, spec and parameters; write lineage.json."""
    from pipelines.spec import spec_hash

    fingerprint = json.loads(fingerprint_path.read_text())
    entries = [
        LineageEntry(
            "dataset",
            str(fingerprint.get("source", "input")),
            fingerprint["sha256"],
            {"rows": fingerprint.get("rows"), "schema": fingerprint.get("schema")},
        ),
        LineageEntry("code", "git", None, {"version": code_version(repo)}),
        LineageEntry("spec", str(spec_path.name), spec_hash(spec_path), {"path": str(spec_path)}),
        LineageEntry("parameters", "run", None, dict(params)),
    ]
    stored = record_lineage(url, spec_name, run_id, entries)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "lineage.json"
    payload = {
        "spec": spec_name,
        "run_id": run_id,
        "entries": [e.__dict__ for e in stored],
    }
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(payload, indent=2, sort_keys=True, default=str))
    tmp.replace(path)
    return path
