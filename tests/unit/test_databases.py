"""ensure_database: SQLite folders, PostgreSQL databases created when missing."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from pipelines.errors import ConfigError
from registry.databases import ensure_database, normalise_url


def test_sqlite_creates_the_folder(tmp_path: Path) -> None:
    target = tmp_path / "a" / "b" / "gov.db"
    assert ensure_database(f"sqlite:///{target}") is False
    assert target.parent.is_dir()


def test_plain_postgresql_urls_use_psycopg3() -> None:
    assert normalise_url("postgresql://u@h/db") == "postgresql+psycopg://u@h/db"


def test_bad_urls_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="invalid database URL"):
        ensure_database("not a url")
    with pytest.raises(ConfigError, match="unsupported database backend"):
        ensure_database("mysql+pymysql://root@127.0.0.1/test")


def test_unreachable_postgres_is_a_clear_error() -> None:
    with pytest.raises(ConfigError, match="cannot reach or create database 'gov'"):
        ensure_database("postgresql+psycopg://nobody@127.0.0.1:1/gov?connect_timeout=2")


@pytest.mark.postgres
def test_postgres_database_is_created_once(pg_database: str) -> None:
    assert ensure_database(pg_database) is True
    assert ensure_database(pg_database) is False
    engine = create_engine(pg_database)
    with engine.connect() as conn:
        assert (
            conn.execute(text("SELECT current_database()")).scalar()
            == pg_database.rsplit("/", 1)[1]
        )
    engine.dispose()
