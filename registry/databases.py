"""Database URLs for the three stores: make sure each database exists."""

from __future__ import annotations

import logging
from pathlib import Path

from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, SQLAlchemyError

from pipelines.errors import ConfigError

log = logging.getLogger(__name__)


def normalise_url(url: str) -> str:
    """Use the psycopg (v3) driver for plain ``postgresql://`` URLs."""
    if url.startswith("postgresql://"):
        return "postgresql+psycopg://" + url[len("postgresql://") :]
    return url


def ensure_database(url: str, maintenance_db: str = "postgres") -> bool:
    """Create the database a URL points to if it is missing; True when created.

    SQLite: creates the file's folder (the file appears on first connect).
    PostgreSQL: connects to ``maintenance_db`` on the same server with the same
    credentials and runs ``CREATE DATABASE`` when the name is not there yet.
    """
    try:
        parsed = make_url(normalise_url(url))
    except ArgumentError as exc:
        raise ConfigError(f"invalid database URL {url!r}: {exc}") from None
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).expanduser().parent.mkdir(parents=True, exist_ok=True)
        return False
    if parsed.get_backend_name() != "postgresql":
        raise ConfigError(f"unsupported database backend in {url!r} (use sqlite or postgresql)")
    name = parsed.database
    if not name:
        raise ConfigError(f"database URL {url!r} names no database")
    admin = create_engine(
        parsed.set(database=maintenance_db), isolation_level="AUTOCOMMIT", pool_pre_ping=True
    )
    try:
        with admin.connect() as conn:
            exists = conn.execute(
                text("SELECT 1 FROM pg_database WHERE datname = :n"), {"n": name}
            ).scalar()
            if exists:
                return False
            quoted = conn.dialect.identifier_preparer.quote(name)
            conn.execute(text(f"CREATE DATABASE {quoted}"))
            log.info("created database %s on %s", name, parsed.host)
            return True
    except SQLAlchemyError as exc:
        reason = str(exc.orig) if getattr(exc, "orig", None) else str(exc)
        raise ConfigError(
            f"cannot reach or create database {name!r} at "
            f"{parsed.render_as_string(hide_password=True)}: {reason.strip()}"
        ) from None
    finally:
        admin.dispose()
