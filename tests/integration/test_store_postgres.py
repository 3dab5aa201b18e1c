"""The governance store on PostgreSQL: migrations from fresh and legacy databases,
migrations racing in several processes, append-only tables."""

from __future__ import annotations

from pathlib import Path

import pytest

from registry.store import engine_for
from tests.store_schema import (
    assert_append_only_everywhere,
    assert_at_head,
    assert_legacy_upgraded,
    assert_processes_migrate_once,
)

pytestmark = [pytest.mark.postgres, pytest.mark.usefixtures("fresh_engines")]


def test_every_governance_table_is_append_only_on_postgres(pg_database: str) -> None:
    assert_append_only_everywhere(pg_database, truncate=True)


def test_postgres_fresh_upgrade_and_metadata_agree(pg_database: str) -> None:
    plain = pg_database.replace("postgresql+psycopg://", "postgresql://")
    assert engine_for(plain) is engine_for(pg_database)  # one engine per normalised URL
    assert_at_head(pg_database)


def test_postgres_legacy_database_is_stamped_and_upgraded(pg_database: str) -> None:
    assert_legacy_upgraded(pg_database)


@pytest.mark.timeout(180)
def test_postgres_processes_starting_at_once_create_and_migrate_once(
    pg_database: str, tmp_path: Path
) -> None:
    # The database does not exist yet: the processes race on CREATE DATABASE too.
    assert_processes_migrate_once(pg_database, tmp_path)
