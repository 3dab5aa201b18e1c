"""Lineage rows in the governance store: which data, code, spec and parameters made a run.

One row per (lifecycle run, kind, name): the input data set's hashes, the code
version (git SHA), the spec hash and the run's parameters. The table is append-only
(the database refuses UPDATE and DELETE): a rerun of the lineage task that finds the
same lineage adds nothing, and a rerun that finds different inputs for the same run is
refused, since a run's lineage is fixed when it is first captured.

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

from pipelines.errors import RegistryError
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
    """Insert the run's lineage rows (once); returns what is stored.

    A row already stored for the same (run, kind, name) must be identical, else
    :class:`~pipelines.errors.RegistryError` names the difference.
    """
    engine = engine_for(url)
    now = dt.datetime.now(dt.UTC)
    with Session(engine) as session, session.begin():
        for entry in entries:
            details = json.loads(json.dumps(entry.details, default=str))
            row = session.scalar(
                select(LineageRecord).where(
                    LineageRecord.run_id == run_id,
                    LineageRecord.kind == entry.kind,
                    LineageRecord.name == entry.name,
                )
            )
            if row is None:
                session.add(
                    LineageRecord(
                        spec_name=spec_name,
                        run_id=run_id,
                        kind=entry.kind,
                        name=entry.name,
                        sha256=entry.sha256,
                        details=details,
                        recorded_at=now,
                    )
                )
            elif (row.sha256, row.details) != (entry.sha256, details):
                raise RegistryError(
                    f"run {run_id}: its {entry.kind} lineage {entry.name!r} was recorded as "
                    f"sha256 {row.sha256} {row.details} and is now sha256 {entry.sha256} "
                    f"{details}: a run's lineage is fixed when first captured (start a new run)"
                )
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
