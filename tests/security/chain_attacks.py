"""What an attacker with write access to the governance database (but not the audit key)
can do to it, written out once for the security tests: drop the append-only triggers,
write index rows, append or rewrite audit events with correct SHA-256 hashes, delete
the newest events. Nothing here uses ``registry.audit``'s writer: the forgeries follow
the documented formulas, as an outsider would.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import json
from collections.abc import Mapping
from typing import Any

from sqlalchemy import text
from sqlalchemy.engine import Connection

GOVERNANCE_TABLES = (
    "audit_events",
    "approval_requests",
    "approval_decisions",
    "role_changes",
    "deployments",
    "lineage",
)


def drop_append_only(conn: Connection) -> None:
    """What a DBA with full rights can do: switch off every append-only trigger."""
    if conn.dialect.name == "sqlite":
        names = conn.execute(text("SELECT name FROM sqlite_master WHERE type = 'trigger'"))
        for (name,) in names.all():
            conn.execute(text(f"DROP TRIGGER {name}"))
    else:
        for table in GOVERNANCE_TABLES:
            conn.execute(text(f"ALTER TABLE {table} DISABLE TRIGGER USER"))


def canonical(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def event_hash(prev_hash: str, body: dict[str, Any]) -> str:
    return hashlib.sha256((prev_hash + "\n" + canonical(body)).encode()).hexdigest()


SUBJECT_COLUMNS = ("seq", "kind", "actor", "model_name", "model_version", "run_id")


def iso(at: dt.datetime | str) -> str:
    """A stored time as the hashed form writes it: ISO-8601 UTC, microseconds (naive: UTC)."""
    if isinstance(at, str):  # SQLite hands timestamps back as text
        at = dt.datetime.fromisoformat(at)
    if at.tzinfo is None:
        at = at.replace(tzinfo=dt.UTC)
    return at.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def documented_body(row: Mapping[str, Any], occurred_at: str, payload: Any) -> dict[str, Any]:
    """What an event's hash covers, as the docs define it: ``SUBJECT_COLUMNS`` of ``row``,
    ``occurred_at`` (ISO-8601 UTC) and the payload."""
    return {**{c: row[c] for c in SUBJECT_COLUMNS}, "occurred_at": occurred_at, "payload": payload}


def head(conn: Connection) -> tuple[int, str]:
    row = conn.execute(text("SELECT seq, hash FROM audit_events ORDER BY seq DESC LIMIT 1")).first()
    return (int(row[0]), str(row[1])) if row else (0, "0" * 64)


def append_forged(
    conn: Connection,
    kind: str,
    actor: str,
    payload: dict[str, Any],
    *,
    model_name: str | None = None,
    model_version: str | None = None,
    run_id: str | None = None,
    key: bytes | None = None,
    key_id: str | None = None,
) -> int:
    """Append an event with a correct prev_hash and hash (and a MAC with ``key``, if given)."""
    seq, prev = head(conn)
    at = dt.datetime.now(dt.UTC)
    row = {
        "seq": seq + 1,
        "kind": kind,
        "actor": actor,
        "model_name": model_name,
        "model_version": model_version,
        "run_id": run_id,
    }
    digest = event_hash(prev, documented_body(row, iso(at), payload))
    mac = None
    if key is not None:
        mac = hmac.new(key, ("govml-audit-v1\n" + digest).encode(), hashlib.sha256).hexdigest()
    keyed = ", key_id, mac" if key is not None else ""  # (a store before 0003 has neither)
    conn.execute(
        text(
            "INSERT INTO audit_events (seq, occurred_at, kind, actor, model_name, model_version,"
            f" run_id, payload, prev_hash, hash{keyed}) VALUES (:seq, :at, :kind, :actor,"
            " :model_name, :model_version, :run_id, :payload, :prev, :hash"
            f"{', :kid, :mac' if keyed else ''})"
        ),
        {
            **row,
            "at": at if conn.dialect.name == "postgresql" else at.strftime("%Y-%m-%d %H:%M:%S.%f"),
            "payload": canonical(payload),
            "prev": prev,
            "hash": digest,
            "kid": key_id,
            "mac": mac,
        },
    )
    return row["seq"]


def rewrite_from(conn: Connection, first: int, change: dict[str, Any]) -> int:
    """Change event ``first``'s payload and re-hash it and every later event consistently.

    The stored MACs are left as they were (the attacker has no key); returns ``first``.
    """
    rows = (
        conn.execute(text("SELECT * FROM audit_events WHERE seq >= :s ORDER BY seq"), {"s": first})
        .mappings()
        .all()
    )
    prev = (
        conn.execute(
            text("SELECT hash FROM audit_events WHERE seq = :s"), {"s": first - 1}
        ).scalar()
        or "0" * 64
    )
    for row in rows:
        payload = json.loads(row["payload"])
        if row["seq"] == first:
            payload.update(change)
        body = documented_body(row, iso(row["occurred_at"]), payload)
        digest = event_hash(prev, body)
        conn.execute(
            text(
                "UPDATE audit_events SET payload = :p, prev_hash = :prev, hash = :h WHERE seq = :s"
            ),
            {"p": canonical(payload), "prev": prev, "h": digest, "s": row["seq"]},
        )
        prev = digest
    return first


def delete_from(conn: Connection, first: int) -> None:
    conn.execute(text("DELETE FROM audit_events WHERE seq >= :s"), {"s": first})
