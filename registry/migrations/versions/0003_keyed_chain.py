"""A keyed audit chain; governance tables become append-only indexes of it.

* ``audit_events`` gains ``key_id`` and ``mac`` (HMAC-SHA-256 of the event's hash with a
  key the database does not hold, ``registry.audit_keys``). Events written before this
  revision keep no MAC; the first keyed event vouches for them (its hash covers theirs).
* ``approval_requests`` loses its mutable columns (``status``, ``decided_at``,
  ``valid_until``, ``consumed_at``): a request's state is derived from the chain.
* ``role_grants`` (one mutable row per holder) becomes ``role_changes``, one row per
  grant or revocation.
* Each index row names the audit event that backs it (``audit_seq``), filled in here for
  existing rows where the chain holds the matching event; a row without one is
  reported by ``govml audit verify``.
* Every governance table refuses UPDATE and DELETE (and TRUNCATE on PostgreSQL).

Revision ID: 0003_keyed_chain
Revises: 0002_governance
Create Date: 2026-12-07
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op

revision: str = "0003_keyed_chain"
down_revision: str | None = "0002_governance"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# audit_events already has its triggers (0002); these tables get theirs here
INDEX_TABLES = ("approval_requests", "approval_decisions", "role_changes", "deployments", "lineage")
DEPLOYMENT_KINDS = ("deployed", "traffic_shifted", "promoted", "rolled_back")


def _sqlite_triggers(table: str) -> list[str]:
    message = f"{table} is append-only"
    return [
        f"CREATE TRIGGER {table}_no_update BEFORE UPDATE ON {table} "
        f"BEGIN SELECT RAISE(ABORT, '{message}'); END",
        f"CREATE TRIGGER {table}_no_delete BEFORE DELETE ON {table} "
        f"BEGIN SELECT RAISE(ABORT, '{message}'); END",
    ]


POSTGRES_FUNCTION = """CREATE FUNCTION governance_append_only() RETURNS trigger
    LANGUAGE plpgsql AS $$
    BEGIN
        RAISE EXCEPTION '% is append-only (% refused)', TG_TABLE_NAME, TG_OP;
    END
    $$"""


def _postgres_triggers(table: str) -> list[str]:
    return [
        f"CREATE TRIGGER {table}_no_update_delete BEFORE UPDATE OR DELETE ON {table} "
        "FOR EACH ROW EXECUTE FUNCTION governance_append_only()",
        f"CREATE TRIGGER {table}_no_truncate BEFORE TRUNCATE ON {table} "
        "FOR EACH STATEMENT EXECUTE FUNCTION governance_append_only()",
    ]


def _events(conn: sa.Connection, kinds: Sequence[str]) -> list[dict[str, Any]]:
    rows = conn.execute(
        sa.text(
            "SELECT seq, kind, actor, model_name, model_version, payload FROM audit_events "
            "WHERE kind IN :kinds ORDER BY seq"
        ).bindparams(sa.bindparam("kinds", expanding=True)),
        {"kinds": list(kinds)},
    ).mappings()
    out = []
    for row in rows:
        try:
            payload = json.loads(row["payload"])
        except ValueError:
            continue
        out.append({**row, "payload": payload if isinstance(payload, dict) else {}})
    return out


def _set_seq(conn: sa.Connection, table: str, row_id: int, seq: int) -> None:
    conn.execute(
        sa.text(f"UPDATE {table} SET audit_seq = :seq WHERE id = :id"), {"seq": seq, "id": row_id}
    )


def _backfill_requests(conn: sa.Connection) -> None:
    by_request = {
        e["payload"].get("request_id"): e["seq"] for e in _events(conn, ["approval_requested"])
    }
    for (row_id,) in conn.execute(sa.text("SELECT id FROM approval_requests")):
        if row_id in by_request:
            _set_seq(conn, "approval_requests", row_id, by_request[row_id])


def _backfill_decisions(conn: sa.Connection) -> None:
    by_key = {}
    for e in _events(conn, ["approval_granted", "approval_rejected"]):
        by_key.setdefault((e["payload"].get("request_id"), e["actor"]), e["seq"])
    rows = conn.execute(sa.text("SELECT id, request_id, user_name FROM approval_decisions"))
    for row_id, request_id, user in rows.all():
        if (request_id, user) in by_key:
            _set_seq(conn, "approval_decisions", row_id, by_key[(request_id, user)])


def _backfill_deployments(conn: sa.Connection) -> None:
    unmatched = _events(conn, DEPLOYMENT_KINDS)
    rows = conn.execute(
        sa.text(
            "SELECT id, model_name, model_version, action, approval_request_id "
            "FROM deployments ORDER BY id"
        )
    ).all()
    for row_id, model, version, action, request_id in rows:
        for event in unmatched:
            p = event["payload"]
            if (
                event["model_name"] == model
                and event["model_version"] == version
                and p.get("action") == action
                and p.get("approval_request_id") == request_id
            ):
                _set_seq(conn, "deployments", row_id, event["seq"])
                unmatched.remove(event)
                break


def _copy_role_grants(conn: sa.Connection) -> None:
    """Each current holder becomes a ``grant`` row backed by its ``role_granted`` event."""
    granted = {}
    for e in _events(conn, ["role_granted"]):
        granted[(e["payload"].get("user"), e["payload"].get("role"))] = e["seq"]
    rows = conn.execute(
        sa.text("SELECT user_name, role, granted_by, granted_at FROM role_grants ORDER BY id")
    ).all()
    for user, role, by, at in rows:
        conn.execute(
            sa.text(
                "INSERT INTO role_changes (user_name, role, action, actor, occurred_at, audit_seq) "
                "VALUES (:user, :role, 'grant', :by, :at, :seq)"
            ),
            {"user": user, "role": role, "by": by, "at": at, "seq": granted.get((user, role))},
        )


def upgrade() -> None:
    conn = op.get_bind()
    dialect = conn.dialect.name
    op.add_column("audit_events", sa.Column("key_id", sa.String(16), nullable=True))
    op.add_column("audit_events", sa.Column("mac", sa.String(64), nullable=True))

    for table in ("approval_requests", "approval_decisions", "deployments"):
        op.add_column(table, sa.Column("audit_seq", sa.Integer(), nullable=True))
    for column in ("status", "decided_at", "valid_until", "consumed_at"):
        op.execute(f"ALTER TABLE approval_requests DROP COLUMN {column}")

    op.create_table(
        "role_changes",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("user_name", sa.String(120), nullable=False),
        sa.Column("role", sa.String(80), nullable=False),
        sa.Column("action", sa.String(10), nullable=False),
        sa.Column("actor", sa.String(120), nullable=False),
        sa.Column("occurred_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("audit_seq", sa.Integer(), nullable=True),
    )
    op.create_index("ix_role_changes_user_name", "role_changes", ["user_name"])
    _copy_role_grants(conn)
    op.drop_table("role_grants")

    _backfill_requests(conn)
    _backfill_decisions(conn)
    _backfill_deployments(conn)

    if dialect == "sqlite":
        for table in INDEX_TABLES:
            for statement in _sqlite_triggers(table):
                op.execute(statement)
    elif dialect == "postgresql":
        op.execute(POSTGRES_FUNCTION)
        for table in INDEX_TABLES:
            for statement in _postgres_triggers(table):
                op.execute(statement)


def downgrade() -> None:
    raise NotImplementedError(
        "0003_keyed_chain cannot be downgraded: approval state now lives in the keyed "
        "audit chain; restore a backup taken before the upgrade instead"
    )
