"""The governance store: Alembic migrations, legacy stamping, engines, schema constraints."""

from __future__ import annotations

import datetime as dt
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from alembic import command
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
    select,
    text,
)
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

import registry.store as store
from registry.audit import append_event
from registry.databases import ensure_database, normalise_url
from registry.lineage import LineageEntry, lineage_for_run, record_lineage
from registry.store import (
    ApprovalDecision,
    ApprovalRequest,
    Base,
    Deployment,
    RoleChange,
    alembic_config,
    current_revision,
    dispose_engines,
    engine_for,
    head_revision,
    upgrade,
)

ROOT = Path(__file__).resolve().parents[2]
GOVERNANCE_TABLES = {
    "audit_events",
    "approval_requests",
    "approval_decisions",
    "role_changes",
    "deployments",
}
HEAD = "0003_keyed_chain"


@pytest.fixture(autouse=True)
def _fresh_engines() -> Iterator[None]:
    yield
    dispose_engines()


def _sqlite(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'governance.db'}"


def _tables(url: str) -> set[str]:
    engine = create_engine(normalise_url(url))
    try:
        return set(inspect(engine).get_table_names())
    finally:
        engine.dispose()


def _schema_diff(url: str) -> list:
    engine = engine_for(url)
    with engine.connect() as conn:
        return compare_metadata(MigrationContext.configure(conn), Base.metadata)


def _create_legacy(url: str) -> None:
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


# --------------------------------------------------------------------------- SQLite
def test_fresh_database_is_migrated_to_head(tmp_path: Path) -> None:
    url = _sqlite(tmp_path)
    assert current_revision(url) is None  # an empty file: nothing applied, nothing created
    engine_for(url)
    assert head_revision() == HEAD
    assert current_revision(url) == head_revision()
    assert {"lineage", "alembic_version"} | GOVERNANCE_TABLES <= _tables(url)


def test_orm_metadata_matches_the_migrated_sqlite_database(tmp_path: Path) -> None:
    assert _schema_diff(_sqlite(tmp_path)) == []


def test_legacy_create_all_database_is_stamped_and_upgraded(tmp_path: Path) -> None:
    url = _sqlite(tmp_path)
    _create_legacy(url)
    assert current_revision(url) is None
    assert upgrade(url) == HEAD
    assert _tables(url) >= GOVERNANCE_TABLES
    stored = lineage_for_run(url, "legacy-run")
    assert stored == [LineageEntry("parameters", "run", None, {"seed": 7})]
    assert _schema_diff(url) == []


def test_migrations_downgrade_and_upgrade_again(tmp_path: Path) -> None:
    url = _sqlite(tmp_path)
    _create_legacy(url)
    upgrade(url, "0002_governance")
    command.downgrade(alembic_config(url=url), "0001_lineage")
    assert current_revision(url) == "0001_lineage"
    assert not GOVERNANCE_TABLES & _tables(url)
    assert upgrade(url) == head_revision()
    assert lineage_for_run(url, "legacy-run")[0].details == {"seed": 7}


def test_the_keyed_chain_revision_refuses_a_downgrade(tmp_path: Path) -> None:
    url = _sqlite(tmp_path)
    engine_for(url)
    dispose_engines()
    with pytest.raises(NotImplementedError, match="cannot be downgraded"):
        command.downgrade(alembic_config(url=url), "0002_governance")
    assert current_revision(url) == HEAD


def test_engine_is_cached_and_migrates_once_under_concurrency(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = _sqlite(tmp_path)
    calls: list[str] = []
    real = store._migrate

    def counting(engine, revision="head"):  # noqa: ANN001, ANN202
        calls.append(str(engine.url))
        return real(engine, revision)

    monkeypatch.setattr(store, "_migrate", counting)
    engines: list[object] = []
    barrier = threading.Barrier(8)

    def worker() -> None:
        barrier.wait()
        engines.append(engine_for(url))

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(engines) == 8 and all(e is engines[0] for e in engines)
    assert len(calls) == 1


_UPGRADE_WORKER = """
import pathlib, sys, time
from registry.store import upgrade
url, ready, go = sys.argv[1], pathlib.Path(sys.argv[2]), pathlib.Path(sys.argv[3])
ready.touch()
while not go.exists():
    time.sleep(0.01)
print(upgrade(url))
"""


def _upgrade_in_processes(url: str, tmp_path: Path, n: int = 4) -> list[str]:
    """``n`` processes call ``upgrade(url)`` at the same moment; their printed revisions."""
    go = tmp_path / "go"
    ready = [tmp_path / f"ready-{i}" for i in range(n)]
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _UPGRADE_WORKER, url, str(r), str(go)],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for r in ready
    ]
    deadline = time.monotonic() + 90
    while not all(r.exists() for r in ready) and time.monotonic() < deadline:
        time.sleep(0.05)
    go.touch()
    outputs = []
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
        outputs.append(out.strip())
    return outputs


@pytest.mark.timeout(180)
def test_processes_starting_at_once_migrate_sqlite_safely(tmp_path: Path) -> None:
    url = _sqlite(tmp_path)
    assert _upgrade_in_processes(url, tmp_path) == [HEAD] * 4
    assert current_revision(url) == HEAD
    assert _schema_diff(url) == []


def _index_rows(engine) -> int:  # noqa: ANN001
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


def test_replayed_decision_and_unknown_request_fail_in_the_database(tmp_path: Path) -> None:
    url = _sqlite(tmp_path)
    engine = engine_for(url)
    request_id = _index_rows(engine)
    with Session(engine) as session:
        stored = session.get(ApprovalRequest, request_id)
        assert stored is not None and stored.approver_roles == ["model_risk"]
        assert [d.user_name for d in stored.decisions] == ["ana"]

    replay = ApprovalDecision(
        request_id=request_id,
        user_name="ana",
        decision="approve",
        reason="again",
        channel="cli",
        artifact_sha256="a" * 64,
    )
    with pytest.raises(IntegrityError), Session(engine) as session, session.begin():
        session.add(replay)
    with pytest.raises(IntegrityError), Session(engine) as session, session.begin():
        session.add(  # no such request: foreign keys are enforced on SQLite too
            ApprovalDecision(
                request_id=999,
                user_name="bo",
                decision="reject",
                reason="x",
                channel="ui",
                artifact_sha256="a" * 64,
            )
        )
    with Session(engine) as session:
        assert session.scalars(select(ApprovalDecision.user_name)).all() == ["ana"]


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


def _refused_everywhere(engine, truncate: bool) -> None:  # noqa: ANN001
    for table, statement in APPEND_ONLY + (
        [(t, f"TRUNCATE {t} CASCADE") for t in sorted({t for t, _ in APPEND_ONLY})]
        if truncate
        else []
    ):
        refused = pytest.raises(Exception, match=f"{table} is append-only")  # noqa: PT011
        with refused, engine.begin() as conn:
            conn.execute(text(statement))


def test_every_governance_table_is_append_only_on_sqlite(tmp_path: Path) -> None:
    url = _sqlite(tmp_path)
    engine = engine_for(url)
    _index_rows(engine)
    record_lineage(url, "fraud", "run-1", [LineageEntry("code", "git", None, {"v": "abc"})])
    append_event(url, "drift_alarm", actor="monitor")
    _refused_everywhere(engine, truncate=False)


@pytest.mark.postgres
def test_every_governance_table_is_append_only_on_postgres(pg_database: str) -> None:
    engine = engine_for(pg_database)
    _index_rows(engine)
    record_lineage(pg_database, "fraud", "run-1", [LineageEntry("code", "git", None, {"v": "a"})])
    append_event(pg_database, "drift_alarm", actor="monitor")
    _refused_everywhere(engine, truncate=True)


def test_sqlite_uses_wal_and_a_long_busy_timeout(tmp_path: Path) -> None:
    with engine_for(_sqlite(tmp_path)).connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() >= 30000


# --------------------------------------------------------------------------- PostgreSQL
@pytest.mark.postgres
def test_postgres_fresh_upgrade_and_metadata_agree(pg_database: str) -> None:
    plain = pg_database.replace("postgresql+psycopg://", "postgresql://")
    assert engine_for(plain) is engine_for(pg_database)  # one engine per normalised URL
    assert current_revision(pg_database) == head_revision()
    assert {"lineage", "alembic_version"} | GOVERNANCE_TABLES <= _tables(pg_database)
    assert _schema_diff(pg_database) == []


@pytest.mark.postgres
def test_postgres_legacy_database_is_stamped_and_upgraded(pg_database: str) -> None:
    _create_legacy(pg_database)
    assert current_revision(pg_database) is None
    assert upgrade(pg_database) == HEAD
    assert lineage_for_run(pg_database, "legacy-run")[0].details == {"seed": 7}
    assert _schema_diff(pg_database) == []


@pytest.mark.postgres
@pytest.mark.timeout(180)
def test_postgres_processes_starting_at_once_create_and_migrate_once(
    pg_database: str, tmp_path: Path
) -> None:
    # The database does not exist yet: the processes race on CREATE DATABASE too.
    assert _upgrade_in_processes(pg_database, tmp_path) == [HEAD] * 4
    engine = engine_for(pg_database)
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM alembic_version")).scalar() == 1
    assert _schema_diff(pg_database) == []
