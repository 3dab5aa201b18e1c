"""The governance store: Alembic migrations, legacy stamping, engines, schema constraints."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from alembic import command
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

import registry.store as store
from registry.lineage import lineage_for_run
from registry.store import (
    ApprovalDecision,
    ApprovalRequest,
    alembic_config,
    current_revision,
    dispose_engines,
    engine_for,
    head_revision,
    upgrade,
)
from tests.store_schema import (
    GOVERNANCE_TABLES,
    HEAD,
    assert_append_only_everywhere,
    assert_at_head,
    assert_legacy_upgraded,
    assert_processes_migrate_once,
    create_legacy,
    index_rows,
    schema_diff,
    tables,
)

pytestmark = pytest.mark.usefixtures("fresh_engines")


def _sqlite(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'governance.db'}"


# --------------------------------------------------------------------------- SQLite
def test_fresh_database_is_migrated_to_head(tmp_path: Path) -> None:
    url = _sqlite(tmp_path)
    assert current_revision(url) is None  # an empty file: nothing applied, nothing created
    engine_for(url)
    assert_at_head(url)


def test_orm_metadata_matches_the_migrated_sqlite_database(tmp_path: Path) -> None:
    assert schema_diff(_sqlite(tmp_path)) == []


def test_legacy_create_all_database_is_stamped_and_upgraded(tmp_path: Path) -> None:
    assert_legacy_upgraded(_sqlite(tmp_path))


def test_migrations_downgrade_and_upgrade_again(tmp_path: Path) -> None:
    url = _sqlite(tmp_path)
    create_legacy(url)
    upgrade(url, "0002_governance")
    command.downgrade(alembic_config(url=url), "0001_lineage")
    assert current_revision(url) == "0001_lineage"
    assert not GOVERNANCE_TABLES & tables(url)
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


@pytest.mark.timeout(180)
def test_processes_starting_at_once_migrate_sqlite_safely(tmp_path: Path) -> None:
    assert_processes_migrate_once(_sqlite(tmp_path), tmp_path)


def test_replayed_decision_and_unknown_request_fail_in_the_database(tmp_path: Path) -> None:
    url = _sqlite(tmp_path)
    engine = engine_for(url)
    request_id = index_rows(engine)
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


def test_every_governance_table_is_append_only_on_sqlite(tmp_path: Path) -> None:
    assert_append_only_everywhere(_sqlite(tmp_path), truncate=False)


def test_sqlite_uses_wal_and_a_long_busy_timeout(tmp_path: Path) -> None:
    with engine_for(_sqlite(tmp_path)).connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() >= 30000
