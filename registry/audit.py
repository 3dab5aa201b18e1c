"""The audit trail: an append-only, hash-chained and keyed log of every governance event.

Each event stores the SHA-256 of its predecessor (``prev_hash``) and its own
``hash = sha256(prev_hash + "\\n" + canonical_json(body))``, where ``body`` holds the
event's ``seq``, ``occurred_at`` (ISO-8601 UTC, microseconds), ``kind``, ``actor``,
``model_name``, ``model_version``, ``run_id`` and ``payload``; and
``mac = HMAC-SHA-256(key, hash)`` with a key the database does not hold
(:mod:`registry.audit_keys`). Changing, deleting, inserting or reordering any stored
event breaks the chain at that event; appending or rewriting events without the key
leaves them without a valid MAC; deleting the newest events is caught by the signed
checkpoints kept outside the database (:mod:`registry.checkpoints`).
:mod:`registry.audit_verify` names the first bad event.

Appends are serialised so the chain stays linear with any number of writers: on
PostgreSQL by ``pg_advisory_xact_lock``, on SQLite by a ``BEGIN IMMEDIATE``
transaction. The database refuses UPDATE and DELETE on ``audit_events`` (triggers
installed by the migrations).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import enum
import hashlib
import json
import logging
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from pathlib import PurePath
from typing import Any

from sqlalchemy import select, text
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.orm import Session

from pipelines.errors import RegistryError
from registry import audit_keys
from registry.store import AUDIT_LOCK_KEY, AuditEvent, engine_for, read_only

log = logging.getLogger(__name__)

GENESIS = "0" * 64
EVENT_KINDS: frozenset[str] = frozenset(
    {
        "data_validated",
        "gate_result",
        "model_registered",
        "approval_requested",
        "approval_granted",
        "approval_rejected",
        "approval_expired",
        "approval_refused",
        "approval_voided",
        "deployed",
        "traffic_shifted",
        "promoted",
        "rolled_back",
        "rollout_paused",
        "rollout_resumed",
        "rollout_awaiting_approval",
        "drift_alarm",
        "monitoring_alert",
        "retrain_triggered",
        "features_backfilled",
        "role_granted",
        "role_revoked",
        "evidence_exported",
        "abtest_started",
        "abtest_analysed",
        "abtest_stopped",
        "abtest_concluded",
        # issue 21: the registry, identities and the chain's own upkeep
        "alias_moved",
        "registry_drift",
        "run_triggered",
        "audit_checkpoint",
        "audit_key_rotated",
        "endpoint_reconciled",
        # issue 21: model-endpoint clients (govml serving token)
        "serving_token_issued",
        "serving_token_revoked",
    }
)
_APPEND_ATTEMPTS = 5
KEY_ROTATED = "audit_key_rotated"
MAC_CONTEXT = "govml-audit-v1\n"


def clock() -> dt.datetime:
    """The time an event occurs at (UTC). Tests replace it to move time on."""
    return dt.datetime.now(dt.UTC)


class AuditError(RegistryError):
    """The audit trail refused an event, or its chain is broken."""


@dataclass(frozen=True)
class AuditRecord:
    seq: int
    occurred_at: dt.datetime
    kind: str
    actor: str
    model_name: str | None
    model_version: str | None
    run_id: str | None
    payload: dict[str, Any]
    prev_hash: str
    hash: str
    key_id: str | None = None
    mac: str | None = None

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready: ``occurred_at`` as ISO-8601 UTC."""
        data = dataclasses.asdict(self)
        data["occurred_at"] = iso_utc(self.occurred_at)
        return data


# --------------------------------------------------------------------------- canonical form
def iso_utc(value: dt.datetime) -> str:
    """ISO-8601 in UTC with microseconds (``2026-11-28T09:30:00.000000Z``); naive means UTC."""
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.UTC)
    return value.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


_NOT_SCALAR = object()


def _plain_scalar(obj: Any) -> Any:
    """A scalar as its JSON value (NaN and infinities: None); ``_NOT_SCALAR`` otherwise."""
    if obj is None or isinstance(obj, bool | str):
        return obj
    if isinstance(obj, int):
        return int(obj)
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dt.datetime):
        return iso_utc(obj)
    if isinstance(obj, dt.date | dt.time):
        return obj.isoformat()
    if isinstance(obj, enum.Enum):
        return _NOT_SCALAR
    if isinstance(obj, Decimal | PurePath):
        return str(obj)
    return _NOT_SCALAR


def _plain(obj: Any, path: str) -> Any:
    """Reduce ``obj`` to JSON types; NaN and infinities become None."""
    scalar = _plain_scalar(obj)
    if scalar is not _NOT_SCALAR:
        return scalar
    if isinstance(obj, enum.Enum):
        return _plain(obj.value, path)
    if isinstance(obj, Mapping):
        return {str(k): _plain(v, f"{path}.{k}") for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_plain(v, f"{path}[{i}]") for i, v in enumerate(obj)]
    if isinstance(obj, set | frozenset):
        return sorted((_plain(v, path) for v in obj), key=lambda v: json.dumps(v, sort_keys=True))
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return _plain(dataclasses.asdict(obj), path)
    if hasattr(obj, "model_dump"):  # pydantic models
        return _plain(obj.model_dump(mode="json"), path)
    if hasattr(obj, "tolist") and callable(obj.tolist):  # numpy arrays and scalars
        return _plain(obj.tolist(), path)
    raise AuditError(f"cannot store {type(obj).__name__} at {path} in an audit event as JSON")


def canonical_json(obj: Any) -> str:
    """One byte-stable JSON text: sorted keys, no spaces, UTF-8 kept, UTC timestamps.

    NaN and infinities become ``null`` (JSON has no such numbers); a value that has
    no JSON form raises :class:`AuditError`.
    """
    return json.dumps(
        _plain(obj, "$"),
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
        allow_nan=False,
    )


BODY_FIELDS = ("seq", "occurred_at", "kind", "actor", "model_name", "model_version", "run_id")
"""What an event's hash covers, with its ``payload``."""


def _body(values: Mapping[str, Any], payload: dict[str, Any]) -> dict[str, Any]:
    """The hashed form of an event whose columns are ``values`` (``occurred_at``: ISO UTC)."""
    body = {name: values[name] for name in BODY_FIELDS}
    body["occurred_at"] = iso_utc(body["occurred_at"])
    body["payload"] = payload
    return body


def _columns(event: AuditEvent | AuditRecord) -> dict[str, Any]:
    """The stored columns of a row or record, by :class:`AuditRecord`'s field names."""
    return {f.name: getattr(event, f.name) for f in dataclasses.fields(AuditRecord)}


def event_hash(prev_hash: str, body: Mapping[str, Any]) -> str:
    """``sha256(prev_hash + "\\n" + canonical_json(body))`` as hex."""
    return hashlib.sha256((prev_hash + "\n" + canonical_json(body)).encode("utf-8")).hexdigest()


def record_of(row: AuditEvent) -> AuditRecord:
    occurred = row.occurred_at
    if occurred.tzinfo is None:  # SQLite returns naive datetimes; they are UTC
        occurred = occurred.replace(tzinfo=dt.UTC)
    values = _columns(row)
    values.update(occurred_at=occurred.astimezone(dt.UTC), payload=json.loads(row.payload))
    return AuditRecord(**values)


def mac_message(digest: str) -> str:
    """What an event's MAC authenticates: its chain hash, in a fixed context."""
    return MAC_CONTEXT + digest


def next_key_id(last: AuditEvent | None) -> str | None:
    """The key that must sign the event after ``last`` (None: the keyring's active key).

    The chain, not the key file, decides: the key of the newest event, or after an
    ``audit_key_rotated`` event the key it names.
    """
    if last is None or last.key_id is None:
        return None
    if last.kind == KEY_ROTATED:
        return str(json.loads(last.payload).get("new_key_id") or last.key_id)
    return last.key_id


def keyring_for(url: str, session: Session | None = None) -> audit_keys.Keyring:
    """The store's keyring; made on first use when no event was ever signed."""
    path = audit_keys.default_key_file(url)
    ring = audit_keys.load(path)
    if ring is not None:
        return ring
    signed = first_signed(session) if session is not None else _first_signed_in(url)
    if signed is not None:
        raise AuditError(
            f"the audit key file {path} is missing, but the chain holds events signed with "
            f"key {signed[1]} (from seq {signed[0]}): restore the keyring (GOVML_AUDIT_KEY_FILE)"
        )
    log.info("no audit key yet: creating %s", path)
    return audit_keys.create(path)


def first_signed(session: Session) -> tuple[int, str] | None:
    """``(seq, key id)`` of the chain's first signed event; None before the chain is keyed."""
    row = session.execute(
        select(AuditEvent.seq, AuditEvent.key_id)
        .where(AuditEvent.key_id.is_not(None))
        .order_by(AuditEvent.seq)
        .limit(1)
    ).first()
    return (int(row[0]), str(row[1])) if row else None


def _first_signed_in(url: str) -> tuple[int, str] | None:
    with Session(read_only(engine_for(url))) as session:
        return first_signed(session)


def is_canonical_payload(stored: str) -> bool:
    """The stored payload text is exactly the canonical JSON of a JSON object."""
    try:
        value = json.loads(stored)
    except ValueError:
        return False
    return isinstance(value, dict) and canonical_json(value) == stored


def recomputed_hash(row: AuditEvent) -> str:
    try:
        payload = json.loads(row.payload)
    except ValueError:
        return "unparseable payload"
    return event_hash(row.prev_hash, _body(_columns(row), payload))


# --------------------------------------------------------------------------- append
def lock_chain(session: Session) -> None:
    """Serialise appends: only one transaction at a time reads the head and appends."""
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": AUDIT_LOCK_KEY})
    elif dialect == "sqlite":
        # Own transactions already began IMMEDIATE; a caller's transaction may have
        # begun DEFERRED: a write that touches no row takes SQLite's write lock now.
        session.execute(text("UPDATE audit_events SET seq = seq WHERE 0 = 1"))


def _append(
    session: Session,
    kind: str,
    actor: str,
    payload: dict[str, Any],
    payload_text: str,
    model_name: str | None,
    model_version: str | None,
    run_id: str | None,
) -> AuditRecord:
    lock_chain(session)
    last = session.scalars(select(AuditEvent).order_by(AuditEvent.seq.desc()).limit(1)).first()
    seq, prev_hash = (last.seq + 1, last.hash) if last else (1, GENESIS)
    ring = keyring_for(session.get_bind().url.render_as_string(hide_password=False), session)
    kid = next_key_id(last) or ring.active
    if kid not in ring.keys:
        raise AuditError(
            f"the chain's next event must be signed with key {kid}, which is not in the "
            f"keyring {ring.path}: restore it (GOVML_AUDIT_KEY_FILE)"
        )
    values = {
        "seq": seq,
        "occurred_at": clock(),
        "kind": kind,
        "actor": actor,
        "model_name": model_name,
        "model_version": model_version,
        "run_id": run_id,
    }
    digest = event_hash(prev_hash, _body(values, payload))
    tag = audit_keys.mac(ring.keys[kid], mac_message(digest))
    record = AuditRecord(
        **values, payload=payload, prev_hash=prev_hash, hash=digest, key_id=kid, mac=tag
    )
    session.add(AuditEvent(**{**_columns(record), "payload": payload_text}))
    session.flush()
    return record


def append_event(
    url_or_session: str | Session,
    kind: str,
    *,
    actor: str,
    payload: Mapping[str, Any] | None = None,
    model_name: str | None = None,
    model_version: str | None = None,
    run_id: str | None = None,
) -> AuditRecord:
    """Append one event to the chain and return it as stored.

    ``url_or_session`` is a governance URL (the event commits in its own
    transaction) or an open :class:`Session` (the event joins the caller's
    transaction, so a state change and its audit event commit or roll back together).
    """
    if kind not in EVENT_KINDS:
        raise AuditError(
            f"unknown audit event kind {kind!r} (known: {', '.join(sorted(EVENT_KINDS))})"
        )
    if not isinstance(actor, str) or not actor.strip():
        raise AuditError(f"audit event {kind!r} needs an actor (who did it)")
    payload_text = canonical_json(dict(payload or {}))
    clean_payload: dict[str, Any] = json.loads(payload_text)
    args = (kind, actor, clean_payload, payload_text, model_name, model_version, run_id)

    if isinstance(url_or_session, Session):
        return _append(url_or_session, *args)

    engine = engine_for(url_or_session)
    for attempt in range(1, _APPEND_ATTEMPTS + 1):
        try:
            with Session(engine) as session, session.begin():
                record = _append(session, *args)
            log.debug("audit event %d %s by %s", record.seq, kind, actor)
            return record
        except (IntegrityError, OperationalError) as exc:
            # Only a writer that bypassed the lock could race us; try again on the new head.
            if attempt == _APPEND_ATTEMPTS:
                raise AuditError(
                    f"could not append audit event {kind!r} after {attempt} attempts: "
                    f"{str(getattr(exc, 'orig', exc)).strip().splitlines()[0]}"
                ) from None
            log.warning("audit append raced (%s); retrying", type(exc).__name__)
    raise AssertionError("unreachable")


# --------------------------------------------------------------------------- read
def head(url: str) -> tuple[int, str]:
    """``(seq, hash)`` of the newest event; ``(0, GENESIS)`` for an empty chain."""
    with Session(read_only(engine_for(url))) as session:
        last = session.execute(
            select(AuditEvent.seq, AuditEvent.hash).order_by(AuditEvent.seq.desc()).limit(1)
        ).first()
    return (int(last[0]), str(last[1])) if last else (0, GENESIS)


def events(
    url: str,
    *,
    model_name: str | None = None,
    model_version: str | None = None,
    run_id: str | None = None,
    kinds: Iterable[str] | None = None,
) -> list[AuditRecord]:
    """Events in chain order, optionally only one model, version, run or kinds."""
    query = select(AuditEvent).order_by(AuditEvent.seq)
    if model_name is not None:
        query = query.where(AuditEvent.model_name == model_name)
    if model_version is not None:
        query = query.where(AuditEvent.model_version == model_version)
    if run_id is not None:
        query = query.where(AuditEvent.run_id == run_id)
    if kinds is not None:
        query = query.where(AuditEvent.kind.in_(list(kinds)))
    with Session(read_only(engine_for(url))) as session:
        return [record_of(row) for row in session.scalars(query)]
