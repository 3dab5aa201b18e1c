"""Verifying the audit chain: links, hashes, MACs, anchors, checkpoints and index rows.

:func:`verify_chain` (``govml audit verify``) walks every event in seq order and names
the first one that was deleted, inserted, reordered, changed, forged (no valid MAC) or
signed with a key the chain had retired; compares the chain with the newest signed
checkpoint of each sink (``registry.checkpoints``: events deleted from the end after a
checkpoint are named); and lists governance table rows that no audit event backs.

:func:`load_verified` is what governance decisions read: the same checks, raising
:class:`~registry.audit.AuditError` on the first problem, so that approval state is
only ever derived from an intact, authentic chain. :func:`anchor` writes a checkpoint.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from registry import audit_keys, checkpoints
from registry.audit import (
    GENESIS,
    KEY_ROTATED,
    AuditError,
    AuditRecord,
    append_event,
    first_signed,
    is_canonical_payload,
    keyring_for,
    mac_message,
    next_key_id,
    recomputed_hash,
    record_of,
)
from registry.store import AuditEvent, engine_for, read_only

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ChainReport:
    ok: bool
    events: int
    head_seq: int
    head_hash: str
    first_bad_seq: int | None = None
    problem: str | None = None
    anchor_ok: bool | None = None
    keyed_from: int | None = None
    checkpoints: tuple[str, ...] = ()
    unbacked: tuple[str, ...] = ()


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
    if before is not None and row.hash == recomputed_hash(row):
        return before.seq, (
            f"event seq {before.seq} was modified and re-hashed: event {row.seq} links to "
            f"{_short(row.prev_hash)} but event {before.seq} now hashes to {_short(before.hash)}"
        )
    return row.seq, (
        f"event at seq {row.seq} was inserted or reordered: prev_hash does not match "
        f"event {prev_seq} (an event before it may have been deleted)"
    )


def _find_problem(
    rows: list[AuditEvent], ring: audit_keys.Keyring | None
) -> tuple[int, str] | None:
    """The first bad event in seq order, or None when the chain is intact and authentic."""
    expected_seq, prev_hash, expected_key = 1, GENESIS, None
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
        if not is_canonical_payload(row.payload):
            return row.seq, (
                f"event seq {row.seq} was modified (its payload is no longer the canonical "
                f"JSON it was stored as)"
            )
        recomputed = recomputed_hash(row)
        if row.hash != recomputed:
            return row.seq, (
                f"event seq {row.seq} was modified (stored hash {_short(row.hash)} "
                f"!= recomputed {_short(recomputed)})"
            )
        wrong = _mac_problem(row, expected_key, ring)
        if wrong is not None:
            return row.seq, wrong
        expected_seq, prev_hash = row.seq + 1, row.hash
        expected_key = _next_expected(row, expected_key)
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
        end = rows[-1].seq if rows else 0
        if match is None and seq > end:
            return (
                False,
                end + 1,
                (
                    f"{_deleted(end + 1, seq)} deleted after the anchor of seq {seq} "
                    f"({_short(digest)}) was taken: the chain now ends at seq {end}"
                ),
            )
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


def _mac_problem(
    row: AuditEvent, expected: str | None, ring: audit_keys.Keyring | None
) -> str | None:
    """Why ``row``'s MAC does not authenticate it (None: it does, or it predates keying)."""
    if row.mac is None and expected is None:
        return None  # written before the chain was keyed; the first keyed event covers it
    if ring is None:
        return f"event seq {row.seq} is signed, but there is no audit keyring to check it"
    if row.mac is None or row.key_id is None:
        return (
            f"event seq {row.seq} is not authenticated: it carries no MAC (forged, or written "
            "without the audit key)"
        )
    if expected is not None and row.key_id != expected:
        return (
            f"event seq {row.seq} is signed with key {row.key_id}, but the chain's key at that "
            f"point is {expected} (forged with another or a retired key)"
        )
    wrong = ring.check(row.key_id, mac_message(row.hash), row.mac)
    if wrong is not None:
        return f"event seq {row.seq} is not authentic: {wrong} (forged or rewritten)"
    return None


def _next_expected(row: AuditEvent, expected: str | None) -> str | None:
    if row.key_id is None:
        return expected
    if row.kind == KEY_ROTATED:
        return str(_payload_field(row, "new_key_id") or row.key_id)
    return row.key_id


def _payload_field(row: AuditEvent, name: str) -> object:
    import json

    try:
        return json.loads(row.payload).get(name)
    except (ValueError, AttributeError):
        return None


def _deleted(first: int, last: int) -> str:
    return f"event seq {first} was" if first == last else f"events seq {first}..{last} were"


# --------------------------------------------------------------------------- checkpoints
def _checkpoint_problem(
    rows: list[AuditEvent], cp: checkpoints.Checkpoint, ring: audit_keys.Keyring | None
) -> tuple[int | None, str] | None:
    """How the chain contradicts an authentic checkpoint (None: it does not)."""
    where = f"the checkpoint of {cp.at} (seq {cp.seq}, {_short(cp.hash)})"
    if ring is None:
        return None, f"{where} cannot be checked: no audit keyring"
    wrong = checkpoints.check_mac(cp, ring)
    if wrong is not None:
        return None, f"{where} is not authentic: {wrong}"
    head = rows[-1].seq if rows else 0
    if cp.seq > head:
        return head + 1, (
            f"{_deleted(head + 1, cp.seq)} deleted: {where} vouches for "
            f"{'it' if cp.seq == head + 1 else 'them'}, but the chain now ends at seq {head} "
            "(truncated after a checkpoint)"
        )
    if rows and cp.chain_id != rows[0].hash:
        return 1, f"{where} belongs to another chain (its first event hashes differently)"
    stored = rows[cp.seq - 1] if cp.seq >= 1 else None
    if stored is not None and stored.seq == cp.seq and stored.hash != cp.hash:
        return cp.seq, f"event seq {cp.seq} was rewritten after {where}"
    return None


def _checkpoint_lines(
    url: str, rows: list[AuditEvent], ring: audit_keys.Keyring | None
) -> tuple[list[str], tuple[int | None, str] | None]:
    """One status line per sink, and the first problem a checkpoint reveals."""
    lines, first = [], None
    for name, cp, error in checkpoints.latest_each(checkpoints.sinks_for(url)):
        if error is not None:
            lines.append(f"{name}: UNREADABLE ({error})")
            first = first or (None, error)
            continue
        if cp is None:
            lines.append(f"{name}: no checkpoint yet")
            continue
        problem = _checkpoint_problem(rows, cp, ring)
        lines.append(f"{name}: seq {cp.seq} at {cp.at} " + ("ok" if problem is None else "FAILS"))
        if problem is not None and first is None:
            first = problem
    return lines, first


# --------------------------------------------------------------------------- entry points
def _rows(session: Session) -> list[AuditEvent]:
    rows = list(session.scalars(select(AuditEvent).order_by(AuditEvent.seq)))
    session.expunge_all()
    return rows


def _ring(url: str, rows: list[AuditEvent]) -> audit_keys.Keyring | None:
    path = audit_keys.default_key_file(url)
    ring = audit_keys.load(path)
    if ring is None and any(r.mac is not None for r in rows):
        raise AuditError(
            f"cannot verify the audit chain: its events are signed but the key file {path} "
            "is missing (GOVML_AUDIT_KEY_FILE)"
        )
    return ring


def _read(url: str) -> list[AuditEvent]:
    try:
        with Session(read_only(engine_for(url))) as session:
            return _rows(session)
    except SQLAlchemyError as exc:
        raise AuditError(
            f"cannot read the audit trail: {str(getattr(exc, 'orig', exc)).strip()}"
        ) from None


def verify_chain(
    url: str, anchor: str | None = None, *, with_checkpoints: bool = True, with_index: bool = True
) -> ChainReport:
    """Check every link, hash and MAC; the anchor and checkpoints; the index rows.

    ``anchor``: a head hash recorded earlier outside the database (or ``SEQ HASH``);
    it must still be part of the chain.
    """
    rows = _read(url)
    ring = _ring(url, rows)
    head_seq, head_hash = (rows[-1].seq, rows[-1].hash) if rows else (0, GENESIS)
    found = _find_problem(rows, ring)
    anchor_ok, anchor_bad, anchor_problem = (
        (None, None, None) if anchor is None else _check_anchor(rows, anchor)
    )
    lines, cp_problem = _checkpoint_lines(url, rows, ring) if with_checkpoints else ([], None)
    if found is not None:
        first_bad, problem = found
    elif anchor_problem is not None:
        first_bad, problem = anchor_bad, anchor_problem
    elif cp_problem is not None:
        first_bad, problem = cp_problem
    else:
        first_bad, problem = None, None
    unbacked: tuple[str, ...] = ()
    if with_index and found is None:
        from registry.row_backing import unbacked_rows

        with Session(read_only(engine_for(url))) as session:
            unbacked = tuple(unbacked_rows(session, [record_of(r) for r in rows]))
    ok = problem is None and not unbacked
    if not ok:
        log.warning("audit chain check failed: %s", problem or unbacked[0])
    return ChainReport(
        ok=ok,
        events=len(rows),
        head_seq=head_seq,
        head_hash=head_hash,
        first_bad_seq=first_bad,
        problem=problem,
        anchor_ok=anchor_ok,
        keyed_from=next((r.seq for r in rows if r.mac is not None), None),
        checkpoints=tuple(lines),
        unbacked=unbacked,
    )


def _links(session: Session) -> list[Any]:
    """Every event's ``(seq, prev_hash, hash, kind)`` row: what the fast check walks."""
    columns = (AuditEvent.seq, AuditEvent.prev_hash, AuditEvent.hash, AuditEvent.kind)
    return list(session.execute(select(*columns).order_by(AuditEvent.seq)))


def _fast_ok(
    links: list[Any],
    full: list[AuditEvent],
    ring: audit_keys.Keyring | None,
    first_key: tuple[int, str] | None,
) -> bool:
    """Links and sequence of every event; body, hash and MAC of the ``full`` ones.

    ``full`` holds every event that governance state is folded from, every key rotation
    and the newest event. An event outside it may only be changed undetected here if
    its stored hash is kept (it then changes no state: ``verify_chain`` still finds it);
    re-hashing it changes every later hash up to the newest event, whose MAC then fails.
    """
    expected_seq, prev_hash = 1, GENESIS
    for seq, prev, digest, _kind in links:
        if seq != expected_seq or prev != prev_hash:
            return False
        expected_seq, prev_hash = seq + 1, digest
    expected_key = first_key[1] if first_key else None
    for row in full:
        if not is_canonical_payload(row.payload) or row.hash != recomputed_hash(row):
            return False
        keyed_from = first_key[0] if first_key else None
        if row.mac is None and (keyed_from is None or row.seq < keyed_from):
            continue  # before the chain was keyed
        if _mac_problem(row, expected_key, ring) is not None:
            return False
        expected_key = _next_expected(row, expected_key)
    return True


def _checked(
    url: str, session: Session, kinds: frozenset[str] | None
) -> tuple[list[Any], list[AuditEvent], audit_keys.Keyring | None]:
    """Fast-check the chain; ``(links, full rows of kinds + rotations + head, keyring)``.

    Raises :class:`AuditError` naming the first problem (found by the full walk).
    """
    links = _links(session)
    query = select(AuditEvent).order_by(AuditEvent.seq)
    if kinds is not None and links:
        wanted = sorted(set(kinds) | {KEY_ROTATED})
        query = query.where(AuditEvent.kind.in_(wanted) | (AuditEvent.seq == links[-1].seq))
    full = list(session.scalars(query))
    ring = _ring(url, full)
    found = None
    if not _fast_ok(links, full, ring, first_signed(session)):
        everything = list(session.scalars(select(AuditEvent).order_by(AuditEvent.seq)))
        found = _find_problem(everything, ring)
    if found is None:
        _lines, found = _checkpoint_lines(url, links, ring)  # type: ignore[arg-type]
    if found is not None:
        seq, problem = found
        where = f" at seq {seq}" if seq is not None else ""
        raise AuditError(f"audit chain broken{where}: {problem}; governance actions are refused")
    return links, full, ring


def load_verified(
    url: str, session: Session | None = None, kinds: frozenset[str] | None = None
) -> list[AuditRecord]:
    """The events of ``kinds`` (default: all), after checking the chain and its checkpoints.

    Every event's link, sequence number and MAC are checked, and the full body and hash
    of each returned event and of the newest one; the newest checkpoint of each sink
    must agree. On any problem the whole chain is walked (:func:`verify_chain`'s
    checks) to name it, and :class:`AuditError` is raised: governance state is never
    derived from a broken or forged chain. With ``session`` the events are read in the
    caller's transaction (which should hold ``registry.audit.lock_chain``).
    """
    if session is None:
        with Session(read_only(engine_for(url))) as own:
            return load_verified(url, own, kinds)
    _links_, full, _ring_ = _checked(url, session, kinds)
    return [record_of(r) for r in full if kinds is None or r.kind in kinds]


def anchor(url: str, actor: str, reason: str = "") -> checkpoints.Checkpoint | None:
    """Write a signed checkpoint of the current head to every sink; None if nothing new.

    The chain is checked first (a broken chain is not anchored). The checkpoint is
    written, then an ``audit_checkpoint`` event records it (so that event is covered by
    the next checkpoint).
    """
    with Session(read_only(engine_for(url))) as session:
        links, _full, _ring_ = _checked(url, session, frozenset())
    if not links:
        return None
    ring = keyring_for(url)
    sinks = checkpoints.sinks_for(url)
    newest = [cp for _name, cp, _err in checkpoints.latest_each(sinks) if cp is not None]
    covered = max((cp.seq for cp in newest), default=0)
    if (
        all(r.kind == "audit_checkpoint" for r in links[covered:])
        and covered
        and len(newest) == len(sinks)
    ):
        return None
    head = links[-1]
    cp = checkpoints.sign(
        ring, checkpoints.store_id(url), links[0].hash, head.seq, head.hash, len(links)
    )
    written = checkpoints.write_all(cp, sinks)
    append_event(
        url,
        "audit_checkpoint",
        actor=actor,
        payload={"seq": cp.seq, "hash": cp.hash, "sinks": written, "reason": reason},
    )
    log.info("audit checkpoint at seq %d written to %s", cp.seq, ", ".join(written))
    return cp


def rotate_key(url: str, actor: str) -> tuple[str, str]:
    """Make a new key sign future events; ``(old key id, new key id)``.

    The chain must verify first. The new key is added to the keyring, an
    ``audit_key_rotated`` event signed with the old key names it, then it becomes the
    keyring's active key (the chain, not the file, decides which key signs next, so a
    crash between the two steps loses nothing). Old keys stay for verification.
    """
    load_verified(url)
    path = audit_keys.default_key_file(url)
    ring = keyring_for(url)
    rows = _read(url)
    old = (next_key_id(rows[-1]) if rows else None) or ring.active
    _ring, new = audit_keys.add_key(path)
    append_event(
        url,
        KEY_ROTATED,
        actor=actor,
        payload={"previous_key_id": old, "new_key_id": new},
    )
    audit_keys.activate(path, new)
    log.info("audit key rotated: %s -> %s (%s)", old, new, path)
    return old, new
