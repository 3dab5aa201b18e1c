"""The governance store on PostgreSQL: migrations from fresh and legacy databases,
migrations racing in several processes, append-only tables."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import text

from registry.audit import append_event
from registry.lineage import LineageEntry, lineage_for_run, record_lineage
from registry.store import (
    current_revision,
    engine_for,
    head_revision,
    upgrade,
)
from tests.store_schema import (
    GOVERNANCE_TABLES,
    HEAD,
    create_legacy,
    index_rows,
    refused_everywhere,
    schema_diff,
    tables,
    upgrade_in_processes,
)

pytestmark = [pytest.mark.postgres, pytest.mark.usefixtures("fresh_engines")]


def test_every_governance_table_is_append_only_on_postgres(pg_database: str) -> None:
    engine = engine_for(pg_database)
    index_rows(engine)
    record_lineage(pg_database, "fraud", "run-1", [LineageEntry("code", "git", None, {"v": "a"})])
    append_event(pg_database, "drift_alarm", actor="monitor")
    refused_everywhere(engine, truncate=True)


def test_postgres_fresh_upgrade_and_metadata_agree(pg_database: str) -> None:
    plain = pg_database.replace("postgresql+psycopg://", "postgresql://")
    assert engine_for(plain) is engine_for(pg_database)  # one engine per normalised URL
    assert current_revision(pg_database) == head_revision()
    assert {"lineage", "alembic_version"} | GOVERNANCE_TABLES <= tables(pg_database)
    assert schema_diff(pg_database) == []


def test_postgres_legacy_database_is_stamped_and_upgraded(pg_database: str) -> None:
    create_legacy(pg_database)
    assert current_revision(pg_database) is None
    assert upgrade(pg_database) == HEAD
    assert lineage_for_run(pg_database, "legacy-run")[0].details == {"seed": 7}
    assert schema_diff(pg_database) == []


@pytest.mark.timeout(180)
def test_postgres_processes_starting_at_once_create_and_migrate_once(
    pg_database: str, tmp_path: Path
) -> None:
    # The database does not exist yet: the processes race on CREATE DATABASE too.
    assert upgrade_in_processes(pg_database, tmp_path) == [HEAD] * 4
    engine = engine_for(pg_database)
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM alembic_version")).scalar() == 1
    assert schema_diff(pg_database) == []
