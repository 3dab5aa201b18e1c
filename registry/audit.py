"""The audit trail: an append-only, hash-chained log of every governance event.

Each event stores the SHA-256 of its predecessor (``prev_hash``) and its own
``hash = sha256(prev_hash + "\\n" + canonical_json(body))``, where ``body`` holds the
event's ``seq``, ``occurred_at`` (ISO-8601 UTC, microseconds), ``kind``, ``actor``,
``model_name``, ``model_version``, ``run_id`` and ``payload``. Changing, deleting,
inserting or reordering any stored event therefore breaks the chain at that event,
and :func:`verify_chain` names it. Rewriting the whole tail consistently is caught
by comparing against an anchored head hash kept elsewhere (``anchor``).

Appends are serialised so the chain stays linear with any number of writers: on
PostgreSQL by ``pg_advisory_xact_lock``, on SQLite by a ``BEGIN IMMEDIATE``
transaction. The database refuses UPDATE and DELETE on ``audit_events`` (triggers
installed by the migration).
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
from sqlalchemy.exc import IntegrityError, OperationalError, SQLAlchemyError
from sqlalchemy.orm import Session

from pipelines.errors import RegistryError
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
    }
)
_APPEND_ATTEMPTS = 5


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

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready: ``occurred_at`` as ISO-8601 UTC."""
        data = dataclasses.asdict(self)
        data["occurred_at"] = iso_utc(self.occurred_at)
        return data


@dataclass(frozen=True)
class ChainReport:
    ok: bool
    events: int
    head_seq: int
    head_hash: str
    first_bad_seq: int | None = None
    problem: str | None = None
    anchor_ok: bool | None = None


# --------------------------------------------------------------------------- canonical form
def iso_utc(value: dt.datetime) -> str:
    """ISO-8601 in UTC with microseconds (``2026-11-28T09:30:00.000000Z``); naive means UTC."""
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.UTC)
    return value.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _plain(obj: Any, path: str) -> Any:
    """Reduce ``obj`` to JSON types; NaN and infinities become None."""
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
        return _plain(obj.value, path)
    if isinstance(obj, Decimal):
        return str(obj)
    if isinstance(obj, PurePath):
        return str(obj)
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


def _body(
    seq: int,
    occurred_at: dt.datetime,
    kind: str,
    actor: str,
    model_name: str | None,
    model_version: str | None,
    run_id: str | None,
    payload: dict[str, Any],
) -> dict[str, Any]:
    return {
        "seq": seq,
        "occurred_at": iso_utc(occurred_at),
        "kind": kind,
        "actor": actor,
        "model_name": model_name,
        "model_version": model_version,
        "run_id": run_id,
        "payload": payload,
    }


def event_hash(prev_hash: str, body: Mapping[str, Any]) -> str:
    """``sha256(prev_hash + "\\n" + canonical_json(body))`` as hex."""
    return hashlib.sha256((prev_hash + "\n" + canonical_json(body)).encode("utf-8")).hexdigest()


def _record(row: AuditEvent) -> AuditRecord:
    occurred = row.occurred_at
    if occurred.tzinfo is None:  # SQLite returns naive datetimes; they are UTC
        occurred = occurred.replace(tzinfo=dt.UTC)
    return AuditRecord(
        seq=row.seq,
        occurred_at=occurred.astimezone(dt.UTC),
        kind=row.kind,
        actor=row.actor,
        model_name=row.model_name,
        model_version=row.model_version,
        run_id=row.run_id,
        payload=json.loads(row.payload),
        prev_hash=row.prev_hash,
        hash=row.hash,
    )


def _canonical_payload(stored: str) -> bool:
    """The stored payload text is exactly the canonical JSON of a JSON object."""
    try:
        value = json.loads(stored)
    except ValueError:
        return False
    return isinstance(value, dict) and canonical_json(value) == stored


def _recomputed_hash(row: AuditEvent) -> str:
    try:
        payload = json.loads(row.payload)
    except ValueError:
        return "unparseable payload"
    body = _body(
        row.seq,
        row.occurred_at,
        row.kind,
        row.actor,
        row.model_name,
        row.model_version,
        row.run_id,
        payload,
    )
    return event_hash(row.prev_hash, body)


# --------------------------------------------------------------------------- append
def _lock_chain(session: Session) -> None:
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
    _lock_chain(session)
    last = session.execute(
        select(AuditEvent.seq, AuditEvent.hash).order_by(AuditEvent.seq.desc()).limit(1)
    ).first()
    seq, prev_hash = (last[0] + 1, last[1]) if last else (1, GENESIS)
    occurred_at = dt.datetime.now(dt.UTC)
    body = _body(seq, occurred_at, kind, actor, model_name, model_version, run_id, payload)
    digest = event_hash(prev_hash, body)
    session.add(
        AuditEvent(
            seq=seq,
            occurred_at=occurred_at,
            kind=kind,
            actor=actor,
            model_name=model_name,
            model_version=model_version,
            run_id=run_id,
            payload=payload_text,
            prev_hash=prev_hash,
            hash=digest,
        )
    )
    session.flush()
    return AuditRecord(
        seq, occurred_at, kind, actor, model_name, model_version, run_id, payload, prev_hash, digest
    )


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
        return [_record(row) for row in session.scalars(query)]


# --------------------------------------------------------------------------- verify
def _short(digest: str) -> str:
    return digest[:16] + "..." if len(digest) > 16 else digest


def _link_problem(rows: list[AuditEvent], index: int) -> tuple[int, str]:
    """Explain why ``rows[index]`` does not link to its predecessor: (bad seq, sentence)."""
    row, before = rows[index], rows[index - 1] if index else None
    expected = before.hash if before else GENESIS
    prev_seq = before.seq if before else 0
    earlier_links = {r.prev_hash: r.seq for r in rows[:index]}
    if row.prev_hash in earlier_links:
        intruder = earlier_links[row.prev_hash]
        return intruder, (
            f"event at seq {intruder} was inserted: it and event seq {row.seq} both link "
            f"to event {intruder - 1}"
        )
    known = {r.hash: r.seq for r in rows}
    if row.prev_hash in known:
        return row.seq, (
            f"event at seq {row.seq} was inserted or reordered: prev_hash does not match "
            f"event {prev_seq} but event {known[row.prev_hash]}"
        )
    if any(r.prev_hash == expected for r in rows[index + 1 :]):
        return row.seq, (
            f"event at seq {row.seq} was inserted: prev_hash does not match event {prev_seq}, "
            f"which a later event links to"
        )
    if before is not None and row.hash == _recomputed_hash(row):
        return before.seq, (
            f"event seq {before.seq} was modified and re-hashed: event {row.seq} links to "
            f"{_short(row.prev_hash)} but event {before.seq} now hashes to {_short(before.hash)}"
        )
    return row.seq, (
        f"event at seq {row.seq} was inserted or reordered: prev_hash does not match "
        f"event {prev_seq} (an event before it may have been deleted)"
    )


def _find_problem(rows: list[AuditEvent]) -> tuple[int, str] | None:
    """The first bad event in seq order, or None when the chain is intact."""
    expected_seq, prev_hash = 1, GENESIS
    for index, row in enumerate(rows):
        if row.seq != expected_seq:
            if row.seq > expected_seq:
                follows = f"seq {expected_seq - 1}" if expected_seq > 1 else "the start"
                what = (
                    f"event seq {expected_seq} is"
                    if row.seq == expected_seq + 1
                    else f"events seq {expected_seq}..{row.seq - 1} are"
                )
                return expected_seq, (
                    f"{what} missing (deleted): {follows} is followed by seq {row.seq}"
                )
            return row.seq, (
                f"event seq {row.seq} is out of sequence (expected seq {expected_seq} next)"
            )
        if row.prev_hash != prev_hash:
            return _link_problem(rows, index)
        if not _canonical_payload(row.payload):
            return row.seq, (
                f"event seq {row.seq} was modified (its payload is no longer the canonical "
                f"JSON it was stored as)"
            )
        recomputed = _recomputed_hash(row)
        if row.hash != recomputed:
            return row.seq, (
                f"event seq {row.seq} was modified (stored hash {_short(row.hash)} "
                f"!= recomputed {_short(recomputed)})"
            )
        expected_seq, prev_hash = row.seq + 1, row.hash
    return None


def _check_anchor(rows: list[AuditEvent], anchor: str) -> tuple[bool, int | None, str | None]:
    """(anchor ok, bad seq, problem); an anchor is ``HASH`` or ``SEQ HASH`` (``audit head``)."""
    parts = anchor.replace(":", " ").split()
    digest = parts[-1].lower() if parts else ""
    if (
        len(parts) not in (1, 2)
        or len(digest) != 64
        or any(c not in "0123456789abcdef" for c in digest)
        or (len(parts) == 2 and not parts[0].isdigit())
    ):
        raise AuditError(f"anchor {anchor!r} is not a 64-hex hash or 'SEQ HASH'")
    if len(parts) == 2:
        seq = int(parts[0])
        match = next((r for r in rows if r.seq == seq), None)
        if match is None and seq > 0:
            return (
                False,
                seq,
                (
                    f"the anchored event seq {seq} ({_short(digest)}) is no longer stored: "
                    f"events were removed after it was anchored"
                ),
            )
        stored = match.hash if match else GENESIS
        if stored != digest:
            return (
                False,
                seq,
                (
                    f"event seq {seq} was rewritten after it was anchored: it hashes to "
                    f"{_short(stored)}, the anchor says {_short(digest)}"
                ),
            )
        return True, None, None
    if digest == GENESIS or any(r.hash == digest for r in rows):
        return True, None, None
    return (
        False,
        None,
        (
            f"the anchored head hash {_short(digest)} does not appear in the chain: events "
            f"were removed or rewritten after it was anchored"
        ),
    )


def verify_chain(url: str, anchor: str | None = None) -> ChainReport:
    """Walk the chain in seq order; name the first deleted, inserted, reordered or changed event.

    ``anchor``: a head hash recorded earlier outside the database (or ``SEQ HASH``);
    it must still be part of the chain, which catches a consistently rewritten tail.
    """
    try:
        with Session(read_only(engine_for(url))) as session:
            rows = list(session.scalars(select(AuditEvent).order_by(AuditEvent.seq)))
            session.expunge_all()
    except SQLAlchemyError as exc:
        raise AuditError(
            f"cannot read the audit trail: {str(getattr(exc, 'orig', exc)).strip()}"
        ) from None
    head_seq, head_hash = (rows[-1].seq, rows[-1].hash) if rows else (0, GENESIS)
    found = _find_problem(rows)
    anchor_ok, anchor_bad, anchor_problem = (
        (None, None, None) if anchor is None else _check_anchor(rows, anchor)
    )
    first_bad, problem = found if found else (anchor_bad, anchor_problem)
    ok = found is None and anchor_ok is not False
    if not ok:
        log.warning("audit chain broken: %s", problem)
    return ChainReport(
        ok=ok,
        events=len(rows),
        head_seq=head_seq,
        head_hash=head_hash,
        first_bad_seq=first_bad,
        problem=problem,
        anchor_ok=anchor_ok,
    )
