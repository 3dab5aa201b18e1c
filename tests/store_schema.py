"""Governance-store helpers shared by the SQLite (tests/unit/test_store.py) and
PostgreSQL (tests/integration/test_store_postgres.py) tests: the schema as migrated, a
legacy database, racing migrations and the append-only statements, and the checks both
databases must pass (``assert_*``)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import (
    JSON,
    Column,
    DateTime,
    Integer,
    MetaData,
    String,
    Table,
    UniqueConstraint,
    create_engine,
    inspect,
    text,
)
from sqlalchemy.orm import Session

from registry.audit import append_event
from registry.databases import ensure_database, normalise_url
from registry.lineage import LineageEntry, lineage_for_run, record_lineage
from registry.store import (
    ApprovalDecision,
    ApprovalRequest,
    Base,
    Deployment,
    RoleChange,
    current_revision,
    engine_for,
    head_revision,
    upgrade,
)
from tests.racing import run_together

GOVERNANCE_TABLES = {
    "audit_events",
    "approval_requests",
    "approval_decisions",
    "role_changes",
    "deployments",
}
HEAD = "0003_keyed_chain"


def tables(url: str) -> set[str]:
    engine = create_engine(normalise_url(url))
    try:
        return set(inspect(engine).get_table_names())
    finally:
        engine.dispose()


def schema_diff(url: str) -> list:
    engine = engine_for(url)
    with engine.connect() as conn:
        return compare_metadata(MigrationContext.configure(conn), Base.metadata)


def assert_at_head(url: str) -> None:
    """The database is migrated to the head revision: every table, as the ORM declares it."""
    assert current_revision(url) == head_revision() == HEAD
    assert {"lineage", "alembic_version"} | GOVERNANCE_TABLES <= tables(url)
    assert schema_diff(url) == []


def create_legacy(url: str) -> None:
    """What the old ``Base.metadata.create_all`` made: only ``lineage``, no alembic_version."""
    metadata = MetaData()
    lineage = Table(
        "lineage",
        metadata,
        Column("id", Integer, primary_key=True, autoincrement=True),
        Column("spec_name", String(100), nullable=False, index=True),
        Column("run_id", String(250), nullable=False, index=True),
        Column("kind", String(40), nullable=False),
        Column("name", String(250), nullable=False),
        Column("sha256", String(64), nullable=True),
        Column("details", JSON, nullable=False),
        Column("recorded_at", DateTime(timezone=True), nullable=False),
        UniqueConstraint("run_id", "kind", "name", name="uq_lineage_run_kind_name"),
    )
    ensure_database(url)
    engine = create_engine(normalise_url(url))
    metadata.create_all(engine)
    with engine.begin() as conn:
        conn.execute(
            lineage.insert(),
            {
                "spec_name": "fraud",
                "run_id": "legacy-run",
                "kind": "parameters",
                "name": "run",
                "sha256": None,
                "details": {"seed": 7},
                "recorded_at": dt.datetime(2026, 1, 2, tzinfo=dt.UTC),
            },
        )
    engine.dispose()


UPGRADE_WORKER = """
import pathlib, sys, time
from registry.store import upgrade
url, ready, go = sys.argv[1], pathlib.Path(sys.argv[2]), pathlib.Path(sys.argv[3])
ready.touch()
while not go.exists():
    time.sleep(0.01)
print(upgrade(url))
"""


def upgrade_in_processes(url: str, tmp_path: Path, n: int = 4) -> list[str]:
    """``n`` processes call ``upgrade(url)`` at the same moment; their printed revisions."""
    return run_together(UPGRADE_WORKER, [[url]] * n, tmp_path)


def assert_legacy_upgraded(url: str) -> None:
    """A legacy database (:func:`create_legacy`) is stamped and migrated, its rows kept."""
    create_legacy(url)
    assert current_revision(url) is None
    assert upgrade(url) == HEAD
    assert tables(url) >= GOVERNANCE_TABLES
    stored = lineage_for_run(url, "legacy-run")
    assert stored == [LineageEntry("parameters", "run", None, {"seed": 7})]
    assert schema_diff(url) == []


def assert_processes_migrate_once(url: str, tmp_path: Path) -> None:
    """Four processes racing to migrate the database all end at the head, migrated once."""
    assert upgrade_in_processes(url, tmp_path) == [HEAD] * 4
    assert current_revision(url) == HEAD
    with engine_for(url).connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM alembic_version")).scalar() == 1
    assert schema_diff(url) == []


def index_rows(engine) -> int:  # noqa: ANN001
    """One row in each index table (written directly: the schema's own constraints)."""
    now = dt.datetime.now(dt.UTC)
    with Session(engine) as session, session.begin():
        request = ApprovalRequest(
            model_name="fraud",
            model_version="3",
            artifact_sha256="a" * 64,
            run_id="run-1",
            approver_roles=["model_risk"],
            required_approvers=2,
            risk_reasons=["first version"],
            respond_by=now + dt.timedelta(days=2),
            valid_for_seconds=86400,
        )
        session.add(request)
        session.flush()
        session.add(
            ApprovalDecision(
                request_id=request.id,
                user_name="ana",
                decision="approve",
                reason="metrics within appetite",
                channel="ui",
                artifact_sha256="a" * 64,
            )
        )
        session.add(
            Deployment(
                model_name="fraud",
                model_version="3",
                artifact_sha256="a" * 64,
                environment="prod",
                action="canary",
                traffic_percent=10.0,
                approval_request_id=request.id,
                actor="operator",
                details={"replicas": 1},
            )
        )
        session.add(RoleChange(user_name="ana", role="model_risk", action="grant", actor="admin"))
        return request.id


APPEND_ONLY = [
    ("approval_requests", "UPDATE approval_requests SET required_approvers = 0"),
    ("approval_requests", "DELETE FROM approval_requests"),
    ("approval_decisions", "UPDATE approval_decisions SET decision = 'approve'"),
    ("approval_decisions", "DELETE FROM approval_decisions"),
    ("role_changes", "UPDATE role_changes SET role = 'admin'"),
    ("role_changes", "DELETE FROM role_changes"),
    ("deployments", "UPDATE deployments SET action = 'promoted'"),
    ("deployments", "DELETE FROM deployments"),
    ("lineage", "UPDATE lineage SET sha256 = NULL"),
    ("lineage", "DELETE FROM lineage"),
    ("audit_events", "DELETE FROM audit_events"),
]


def refused_everywhere(engine, truncate: bool) -> None:  # noqa: ANN001
    for table, statement in APPEND_ONLY + (
        [(t, f"TRUNCATE {t} CASCADE") for t in sorted({t for t, _ in APPEND_ONLY})]
        if truncate
        else []
    ):
        refused = pytest.raises(Exception, match=f"{table} is append-only")  # noqa: PT011
        with refused, engine.begin() as conn:
            conn.execute(text(statement))


def assert_append_only_everywhere(url: str, truncate: bool) -> None:
    """With a row in every governance table (the index tables, lineage, the audit chain),
    the database refuses every UPDATE and DELETE (and TRUNCATE, with ``truncate``)."""
    engine = engine_for(url)
    index_rows(engine)
    record_lineage(url, "fraud", "run-1", [LineageEntry("code", "git", None, {"v": "abc"})])
    append_event(url, "drift_alarm", actor="monitor")
    refused_everywhere(engine, truncate=truncate)
