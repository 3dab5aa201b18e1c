"""Lineage rows in the governance store: which data, code, spec and parameters made a run.

One row per (lifecycle run, kind, name): the input data set's hashes, the code
version (git SHA), the spec hash and the run's parameters. Recording is idempotent:
a rerun of the lineage task updates the same rows instead of adding new ones.

The table lives in the governance database (``GOVML_GOVERNANCE_URL``: SQLite by
default, PostgreSQL supported).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import (
    JSON,
    DateTime,
    Integer,
    String,
    UniqueConstraint,
    create_engine,
    select,
)
from sqlalchemy.engine import Engine
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from registry.databases import ensure_database, normalise_url

log = logging.getLogger(__name__)


class Base(DeclarativeBase):
    """Declarative base of the governance store."""


class LineageRecord(Base):
    __tablename__ = "lineage"
    __table_args__ = (UniqueConstraint("run_id", "kind", "name", name="uq_lineage_run_kind_name"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    spec_name: Mapped[str] = mapped_column(String(100), index=True)
    run_id: Mapped[str] = mapped_column(String(250), index=True)
    kind: Mapped[str] = mapped_column(String(40))  # dataset | code | spec | parameters | model
    name: Mapped[str] = mapped_column(String(250))
    sha256: Mapped[str | None] = mapped_column(String(64), nullable=True)
    details: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    recorded_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True))


_ENGINES: dict[str, Engine] = {}


def engine_for(url: str) -> Engine:
    """One engine per governance URL; the database and tables are created if missing."""
    url = normalise_url(url)
    if url not in _ENGINES:
        ensure_database(url)
        engine = create_engine(url, pool_pre_ping=True)
        Base.metadata.create_all(engine)
        _ENGINES[url] = engine
    return _ENGINES[url]


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
    engine = engine_for(url)
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
