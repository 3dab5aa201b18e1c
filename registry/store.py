"""The governance store: ORM models, engines and Alembic migrations.

One database (``GOVML_GOVERNANCE_URL``: SQLite by default, PostgreSQL supported)
holds lineage, the hash-chained audit trail, approval requests and decisions, role
grants and deployments. Its schema is owned by the Alembic migrations shipped in
``registry/migrations``; :func:`engine_for` brings a database to the newest revision
the first time a process uses it.

Several processes may start at once (Airflow workers, the CLI, the UI), so the
upgrade runs inside one transaction that serialises them: on PostgreSQL it takes a
transaction-scoped advisory lock, on SQLite every transaction of these engines
starts with ``BEGIN IMMEDIATE`` (one writer at a time, others wait up to 30 s).

A database made by the old ``create_all`` (table ``lineage``, no ``alembic_version``)
is stamped at the baseline revision, then upgraded.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import threading
import time
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import (
    JSON,
    DateTime,
    Float,
    ForeignKey,
    Integer,
    String,
    Text,
    UniqueConstraint,
    create_engine,
    event,
    inspect,
    text,
)
from sqlalchemy.engine import Connection, Engine, make_url
from sqlalchemy.exc import ArgumentError, OperationalError, SQLAlchemyError
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from pipelines.errors import ConfigError, RegistryError
from registry.databases import ensure_database, normalise_url

log = logging.getLogger(__name__)

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
BASELINE_REVISION = "0001_lineage"
VERSION_TABLE = "alembic_version"
# pg_advisory(_xact)_lock keys: one for schema upgrades, one for audit appends.
MIGRATION_LOCK_KEY = 0x676F766D6C_01  # "govml" + 1
AUDIT_LOCK_KEY = 0x676F766D6C_02  # "govml" + 2
SQLITE_BUSY_TIMEOUT_S = 30.0
# Execution option naming how a SQLite transaction begins: IMMEDIATE (default,
# takes the write lock at once) or DEFERRED (read-only work).
SQLITE_BEGIN_OPTION = "govml_sqlite_begin"

DECISIONS = ("approve", "reject")
DECISION_CHANNELS = ("ui", "cli")
DEPLOYMENT_ACTIONS = ("deployed", "shadow", "canary", "promoted", "rolled_back", "retired")
ROLE_ACTIONS = ("grant", "revoke")


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class Base(DeclarativeBase):
    """Declarative base of the governance store."""


class LineageRecord(Base):
    """Which data, code, spec and parameters made a lifecycle run (revision 0001)."""

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


class AuditEvent(Base):
    """One link of the append-only audit chain (written only by ``registry.audit``)."""

    __tablename__ = "audit_events"
    __table_args__ = (
        UniqueConstraint("seq", name="uq_audit_events_seq"),
        UniqueConstraint("hash", name="uq_audit_events_hash"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    seq: Mapped[int] = mapped_column(Integer)
    occurred_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True))
    kind: Mapped[str] = mapped_column(String(60))
    actor: Mapped[str] = mapped_column(String(120))
    model_name: Mapped[str | None] = mapped_column(String(200), nullable=True, index=True)
    model_version: Mapped[str | None] = mapped_column(String(40), nullable=True)
    run_id: Mapped[str | None] = mapped_column(String(250), nullable=True, index=True)
    payload: Mapped[str] = mapped_column(Text)  # canonical JSON, never re-normalised
    prev_hash: Mapped[str] = mapped_column(String(64))
    hash: Mapped[str] = mapped_column(String(64))
    # HMAC-SHA-256 of ``hash`` with the audit key ``key_id`` (revision 0003; None before)
    key_id: Mapped[str | None] = mapped_column(String(16), nullable=True)
    mac: Mapped[str | None] = mapped_column(String(64), nullable=True)


class ApprovalRequest(Base):
    """A request for human approval of one model version of one lifecycle run.

    An immutable index row of its ``approval_requested`` event (``audit_seq``); the
    request's status is derived from the audit chain (``registry.approval_state``).
    """

    __tablename__ = "approval_requests"
    __table_args__ = (
        UniqueConstraint(
            "model_name", "model_version", "run_id", name="uq_approval_requests_model_version_run"
        ),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    model_name: Mapped[str] = mapped_column(String(200))
    model_version: Mapped[str] = mapped_column(String(40))
    artifact_sha256: Mapped[str] = mapped_column(String(64))
    run_id: Mapped[str] = mapped_column(String(250))
    dag_id: Mapped[str | None] = mapped_column(String(250), nullable=True)
    triggered_by: Mapped[str | None] = mapped_column(String(120), nullable=True)
    author: Mapped[str | None] = mapped_column(String(120), nullable=True)
    approver_roles: Mapped[list[str]] = mapped_column(JSON, default=list)
    required_approvers: Mapped[int] = mapped_column(Integer)
    risk_reasons: Mapped[list[str]] = mapped_column(JSON, default=list)
    requested_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    respond_by: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True))
    valid_for_seconds: Mapped[int] = mapped_column(Integer)
    audit_seq: Mapped[int | None] = mapped_column(Integer, nullable=True)

    decisions: Mapped[list[ApprovalDecision]] = relationship(
        back_populates="request", order_by="ApprovalDecision.id"
    )


class ApprovalDecision(Base):
    """One approver's decision on a request; a user decides a request at most once.

    An immutable index row of its ``approval_granted``/``approval_rejected`` event.
    """

    __tablename__ = "approval_decisions"
    __table_args__ = (
        UniqueConstraint("request_id", "user_name", name="uq_approval_decisions_request_user"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    request_id: Mapped[int] = mapped_column(
        Integer,
        ForeignKey("approval_requests.id", name="fk_approval_decisions_request_id"),
        index=True,
    )
    user_name: Mapped[str] = mapped_column(String(120))
    decision: Mapped[str] = mapped_column(String(10))  # DECISIONS
    reason: Mapped[str] = mapped_column(Text)
    channel: Mapped[str] = mapped_column(String(20))  # DECISION_CHANNELS
    artifact_sha256: Mapped[str] = mapped_column(String(64))
    decided_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    audit_seq: Mapped[int | None] = mapped_column(Integer, nullable=True)

    request: Mapped[ApprovalRequest] = relationship(back_populates="decisions")


class RoleChange(Base):
    """One grant or revocation of a governance role (revision 0003; was ``role_grants``).

    An immutable index row of its ``role_granted``/``role_revoked`` event; who holds
    which role is derived from the audit chain.
    """

    __tablename__ = "role_changes"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    user_name: Mapped[str] = mapped_column(String(120), index=True)
    role: Mapped[str] = mapped_column(String(80))
    action: Mapped[str] = mapped_column(String(10))  # ROLE_ACTIONS
    actor: Mapped[str] = mapped_column(String(120))
    occurred_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    audit_seq: Mapped[int | None] = mapped_column(Integer, nullable=True)


class Deployment(Base):
    """One deployment action on a model version in an environment (an index row of its
    audit event)."""

    __tablename__ = "deployments"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    model_name: Mapped[str] = mapped_column(String(200), index=True)
    model_version: Mapped[str] = mapped_column(String(40))
    artifact_sha256: Mapped[str] = mapped_column(String(64))
    environment: Mapped[str] = mapped_column(String(80))
    action: Mapped[str] = mapped_column(String(30))  # DEPLOYMENT_ACTIONS
    traffic_percent: Mapped[float | None] = mapped_column(Float, nullable=True)
    approval_request_id: Mapped[int | None] = mapped_column(
        Integer,
        ForeignKey("approval_requests.id", name="fk_deployments_approval_request_id"),
        nullable=True,
    )
    actor: Mapped[str] = mapped_column(String(120))
    occurred_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    details: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    audit_seq: Mapped[int | None] = mapped_column(Integer, nullable=True)


# --------------------------------------------------------------------------- engines
_ENGINES: dict[str, tuple[Engine, int]] = {}
_ENGINES_LOCK = threading.Lock()


def _sqlite_listeners(engine: Engine, in_memory: bool) -> None:
    """WAL, a 30 s busy timeout, foreign keys, and explicit BEGIN [IMMEDIATE|DEFERRED]."""

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Let SQLAlchemy's "begin" event emit BEGIN itself (pysqlite's own implicit
        # BEGIN is deferred and only starts at the first write).
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute(f"PRAGMA busy_timeout = {int(SQLITE_BUSY_TIMEOUT_S * 1000)}")
            if not in_memory:
                cursor.execute("PRAGMA journal_mode = WAL")
            cursor.execute("PRAGMA foreign_keys = ON")
        finally:
            cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        mode = conn.get_execution_options().get(SQLITE_BEGIN_OPTION, "IMMEDIATE")
        if mode not in ("IMMEDIATE", "DEFERRED", "EXCLUSIVE"):
            raise ValueError(f"{SQLITE_BEGIN_OPTION}={mode!r}")
        conn.exec_driver_sql(f"BEGIN {mode}")


def _new_engine(url: str) -> Engine:
    """An engine for a normalised URL, without touching the schema."""
    try:
        parsed = make_url(url)
    except ArgumentError as exc:
        raise ConfigError(f"invalid governance database URL {url!r}: {exc}") from None
    if parsed.get_backend_name() == "sqlite":
        engine = create_engine(
            url, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_S}, pool_pre_ping=True
        )
        _sqlite_listeners(engine, in_memory=parsed.database in (None, "", ":memory:"))
        return engine
    return create_engine(url, pool_pre_ping=True)


def read_only(engine: Engine) -> Engine:
    """The same engine for read-only work: on SQLite its transactions begin DEFERRED."""
    if engine.dialect.name == "sqlite":
        return engine.execution_options(**{SQLITE_BEGIN_OPTION: "DEFERRED"})
    return engine


def _ensure_database(url: str) -> None:
    """``ensure_database`` that tolerates another process creating it at the same moment."""
    try:
        ensure_database(url)
    except ConfigError:
        time.sleep(0.5)
        ensure_database(url)  # a concurrent CREATE DATABASE won: now it exists


def _describe(url: str) -> str:
    return make_url(url).render_as_string(hide_password=True)


def _reason(exc: SQLAlchemyError) -> str:
    orig = getattr(exc, "orig", None)
    return (str(orig) if orig is not None else str(exc)).strip().splitlines()[0]


def engine_for(url: str) -> Engine:
    """One engine per governance URL; the database is created and migrated to head once."""
    url = normalise_url(url)
    with _ENGINES_LOCK:
        cached = _ENGINES.get(url)
        if cached is not None:
            engine, pid = cached
            if pid != os.getpid():  # forked child: never share the parent's connections
                engine.dispose(close=False)
                _ENGINES[url] = (engine, os.getpid())
            return engine
        _ensure_database(url)
        engine = _new_engine(url)
        try:
            _migrate(engine)
        except BaseException:
            engine.dispose()
            raise
        _ENGINES[url] = (engine, os.getpid())
        return engine


def dispose_engines() -> None:
    """Close every cached engine (tests; before a database is dropped)."""
    with _ENGINES_LOCK:
        for engine, _pid in _ENGINES.values():
            engine.dispose()
        _ENGINES.clear()


# --------------------------------------------------------------------------- migrations
def alembic_config(connection: Connection | None = None, url: str | None = None) -> Config:
    """Alembic configuration for the shipped migrations (no alembic.ini needed).

    With ``connection`` the migrations run on it, inside its transaction; otherwise
    ``env.py`` opens its own connection to ``url``.
    """
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.set_main_option("version_table", VERSION_TABLE)
    if url is not None:
        config.set_main_option("sqlalchemy.url", normalise_url(url).replace("%", "%%"))
    config.attributes["connection"] = connection
    return config


def head_revision() -> str:
    """The newest revision shipped with the code."""
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    if head is None:
        raise RegistryError(f"no migrations found in {MIGRATIONS_DIR}")
    return head


def _migrate(engine: Engine, revision: str = "head") -> str | None:
    """Upgrade in one serialised transaction (stamping a legacy database first)."""
    for attempt in range(1, 4):
        try:
            return _migrate_once(engine, revision)
        except OperationalError as exc:
            locked = "database is locked" in str(exc) or "deadlock" in str(exc)
            if not locked or attempt == 3:
                raise RegistryError(
                    f"cannot migrate the governance store at {_describe(str(engine.url))}: "
                    f"{_reason(exc)}"
                ) from None
            log.warning("governance store busy, retrying the migration (%d/3)", attempt)
            time.sleep(attempt)
        except SQLAlchemyError as exc:
            raise RegistryError(
                f"cannot migrate the governance store at {_describe(str(engine.url))}: "
                f"{_reason(exc)}"
            ) from None
    raise AssertionError("unreachable")


def _migrate_once(engine: Engine, revision: str) -> str | None:
    # SQLite: this transaction begins IMMEDIATE, so concurrent migrators queue here.
    with engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK_KEY})
        config = alembic_config(connection=conn)
        inspector = inspect(conn)
        if not inspector.has_table(VERSION_TABLE) and inspector.has_table("lineage"):
            log.info(
                "legacy governance store (no %s): stamping %s", VERSION_TABLE, BASELINE_REVISION
            )
            command.stamp(config, BASELINE_REVISION)
        opts = {"version_table": VERSION_TABLE}
        before = MigrationContext.configure(conn, opts=opts).get_current_revision()
        command.upgrade(config, revision)
        after = MigrationContext.configure(conn, opts=opts).get_current_revision()
        if before != after:
            log.info(
                "governance store %s migrated %s -> %s",
                _describe(str(engine.url)),
                before or "empty",
                after,
            )
        return after


def upgrade(url: str, revision: str = "head") -> str:
    """Create the database if missing and migrate it to ``revision``; returns the revision."""
    url = normalise_url(url)
    _ensure_database(url)
    with _ENGINES_LOCK:
        cached = _ENGINES.get(url)
    engine = cached[0] if cached else _new_engine(url)
    try:
        result = _migrate(engine, revision)
    finally:
        if not cached:
            engine.dispose()
    return result or "base"


def current_revision(url: str) -> str | None:
    """The database's revision (None for an empty or legacy database); never migrates."""
    url = normalise_url(url)
    with _ENGINES_LOCK:
        cached = _ENGINES.get(url)
    engine = cached[0] if cached else _new_engine(url)
    try:
        with read_only(engine).connect() as conn:
            context = MigrationContext.configure(conn, opts={"version_table": VERSION_TABLE})
            return context.get_current_revision()
    except SQLAlchemyError as exc:
        raise RegistryError(
            f"cannot read the governance store at {_describe(url)}: {_reason(exc)}"
        ) from None
    finally:
        if not cached:
            engine.dispose()
