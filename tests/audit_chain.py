"""Audit-chain helpers shared by the SQLite (tests/unit/test_audit.py) and PostgreSQL
(tests/integration/test_audit_postgres.py) tests: a chain to build, ways to tamper with
it, and concurrent writers whose appends must keep one chain."""

from __future__ import annotations

import datetime as dt
import json
import threading
from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError

from registry.audit import append_event, events
from registry.audit_verify import verify_chain
from registry.store import engine_for
from tests.racing import run_threads, run_together
from tests.security.chain_attacks import documented_body, iso
from tests.security.chain_attacks import event_hash as spec_hash


def build_chain(url: str, n: int = 10) -> list[str]:
    """``n`` events with payload ``{"i": seq}``; returns their hashes (index 0 = seq 1)."""
    hashes = []
    for i in range(1, n + 1):
        record = append_event(
            url,
            "gate_result",
            actor="pipeline",
            payload={"i": i},
            model_name="fraud",
            model_version=str(1 + i % 2),
            run_id=f"run-{i % 3}",
        )
        hashes.append(record.hash)
    return hashes


def disable_append_only(conn: Connection) -> None:
    """What a DBA with full rights can do: switch off the append-only triggers."""
    if conn.dialect.name == "sqlite":
        conn.execute(text("DROP TRIGGER IF EXISTS audit_events_no_update"))
        conn.execute(text("DROP TRIGGER IF EXISTS audit_events_no_delete"))
    else:
        conn.execute(text("ALTER TABLE audit_events DISABLE TRIGGER USER"))


def _shift(conn: Connection, where: str, delta: int) -> None:
    """``seq = seq + delta`` for the rows ``where`` without tripping UNIQUE(seq) midway."""
    conn.execute(text(f"UPDATE audit_events SET seq = -(seq + :d) WHERE {where}"), {"d": delta})
    conn.execute(text("UPDATE audit_events SET seq = -seq WHERE seq < 0"))


def _hash_of(conn: Connection, seq: int) -> str:
    return conn.execute(text("SELECT hash FROM audit_events WHERE seq = :s"), {"s": seq}).scalar()


def _forge(conn: Connection, seq: int, prev_hash: str, digest: str | None) -> None:
    occurred = dt.datetime(2026, 11, 28, 12, 0, tzinfo=dt.UTC)
    forged = {
        "seq": seq,
        "kind": "approval_granted",
        "actor": "mallory",
        "model_name": "fraud",
        "model_version": "9",
        "run_id": None,
    }
    digest = digest or spec_hash(
        prev_hash, documented_body(forged, iso(occurred), {"forged": True})
    )
    conn.execute(
        text(
            "INSERT INTO audit_events (seq, occurred_at, kind, actor, model_name, model_version,"
            " run_id, payload, prev_hash, hash) VALUES (:seq, :at, :kind, :actor, :model_name,"
            " :model_version, :run_id, :payload, :prev, :hash)"
        ),
        {
            **forged,
            "at": occurred if conn.dialect.name == "postgresql" else "2026-11-28 12:00:00.000000",
            "payload": '{"forged":true}',
            "prev": prev_hash,
            "hash": digest,
        },
    )


def modify_payload(conn: Connection) -> int:
    conn.execute(text("UPDATE audit_events SET payload = :p WHERE seq = 5"), {"p": '{"i":999}'})
    return 5


def reformat_payload(conn: Connection) -> int:
    conn.execute(text("UPDATE audit_events SET payload = :p WHERE seq = 5"), {"p": '{"i": 5}'})
    return 5


def modify_and_rehash(conn: Connection) -> int:
    """Change seq 5's actor and recompute its own hash: seq 6 still links to the old one."""
    row = conn.execute(text("SELECT * FROM audit_events WHERE seq = 5")).mappings().one()
    body = documented_body(
        {**row, "actor": "mallory"}, iso(row["occurred_at"]), json.loads(row["payload"])
    )
    conn.execute(
        text("UPDATE audit_events SET actor = 'mallory', hash = :h WHERE seq = 5"),
        {"h": spec_hash(row["prev_hash"], body)},
    )
    return 5


def _delete(conn: Connection, seq: int) -> int:
    conn.execute(text("DELETE FROM audit_events WHERE seq = :s"), {"s": seq})
    return seq


def delete_middle(conn: Connection) -> int:
    return _delete(conn, 5)


def delete_first(conn: Connection) -> int:
    return _delete(conn, 1)


def delete_and_renumber(conn: Connection) -> int:
    _delete(conn, 5)
    _shift(conn, "seq > 5", -1)
    return 5


def insert_forged(conn: Connection) -> int:
    """A competent forger: correct prev_hash and own hash at seq 5, later seqs renumbered."""
    prev = _hash_of(conn, 4)
    _shift(conn, "seq >= 5", 1)
    _forge(conn, 5, prev, None)
    return 5


def insert_forged_garbage(conn: Connection) -> int:
    _shift(conn, "seq >= 5", 1)
    _forge(conn, 5, "f" * 64, "e" * 64)
    return 5


def _swap(conn: Connection, a: int, b: int) -> int:
    """Events ``a`` and ``b`` change places (seq -1 in between); returns ``a``."""
    for old, new in ((a, -1), (b, a), (-1, b)):
        conn.execute(
            text("UPDATE audit_events SET seq = :new WHERE seq = :old"), {"new": new, "old": old}
        )
    return a


def swap_seqs(conn: Connection) -> int:
    return _swap(conn, 3, 7)


def swap_adjacent(conn: Connection) -> int:
    return _swap(conn, 5, 6)


def change_last(conn: Connection) -> int:
    conn.execute(text("UPDATE audit_events SET actor = 'mallory' WHERE seq = 10"))
    return 10


def change_timestamp(conn: Connection) -> int:
    conn.execute(text("UPDATE audit_events SET occurred_at = '2020-01-01 00:00:00' WHERE seq = 8"))
    return 8


def truncate_tail(seq: int) -> Callable[[Connection], int]:
    """Delete every event from ``seq`` on: a clean cut that leaves a valid, shorter chain."""

    def cut(conn: Connection) -> int:
        conn.execute(text("DELETE FROM audit_events WHERE seq >= :s"), {"s": seq})
        return seq

    return cut


TAMPERS: dict[str, Callable[[Connection], int]] = {
    f.__name__: f
    for f in (
        modify_payload,
        reformat_payload,
        modify_and_rehash,
        delete_middle,
        delete_first,
        delete_and_renumber,
        insert_forged,
        insert_forged_garbage,
        swap_seqs,
        swap_adjacent,
        change_last,
        change_timestamp,
    )
}


def tamper(url: str, how: Callable[[Connection], int]) -> int:
    with engine_for(url).begin() as conn:
        disable_append_only(conn)
        return how(conn)


def assert_refused(url: str, clear: str) -> None:
    """An update, a delete and ``clear`` (emptying the table) each fail: append-only."""
    engine = engine_for(url)
    for statement in (
        "UPDATE audit_events SET actor = 'mallory' WHERE seq = 2",
        "DELETE FROM audit_events WHERE seq = 3",
        clear,
    ):
        with pytest.raises(DBAPIError, match="audit_events is append-only"), engine.begin() as c:
            c.execute(text(statement))


def assert_tamper_found(url: str, how: str) -> str:
    """A 10-event chain, tampered with by ``TAMPERS[how]``: verification names the event
    the tamperer touched. Returns the problem the report gives."""
    build_chain(url, 10)
    assert verify_chain(url).ok
    bad_seq = tamper(url, TAMPERS[how])
    report = verify_chain(url)
    assert not report.ok
    assert report.first_bad_seq == bad_seq, report.problem
    assert report.problem and f"seq {bad_seq}" in report.problem
    return report.problem


# --------------------------------------------------------------------------- concurrency
def race_writers(
    url: str,
    caplog: pytest.LogCaptureFixture,
    count: int,
    write: Callable[[int, threading.Barrier], object],
    join_timeout: float,
) -> None:
    """``count`` threads each run ``write(i, barrier)``, which waits on the barrier and
    appends ``{"i": i}``; none may fail, and they must leave one valid chain."""
    engine_for(url)
    barrier = threading.Barrier(count)
    errors: list[BaseException] = []

    def writer(i: int) -> None:
        try:
            write(i, barrier)
        except BaseException as exc:  # noqa: BLE001 (reported below)
            errors.append(exc)

    run_threads(count, writer, join_timeout=join_timeout)
    assert errors == []
    assert_raced_chain(url, caplog, count)


def assert_raced_chain(url: str, caplog: pytest.LogCaptureFixture, count: int) -> None:
    """``count`` racing writers, each appending ``{"i": i}``, left one valid chain."""
    assert not [r for r in caplog.records if "raced" in r.getMessage()]  # the lock held
    report = verify_chain(url)
    assert report.ok, report.problem
    stored = events(url)
    assert [e.seq for e in stored] == list(range(1, count + 1))
    assert len({e.hash for e in stored}) == count
    assert sorted(e.payload["i"] for e in stored) == list(range(count))


_APPEND_WORKER = """
import pathlib, sys, time
from registry.audit import append_event
from registry.store import engine_for
url, worker = sys.argv[1], sys.argv[2]
ready, go = pathlib.Path(sys.argv[3]), pathlib.Path(sys.argv[4])
engine_for(url)
ready.touch()
while not go.exists():
    time.sleep(0.005)
for i in range(10):
    append_event(url, "gate_result", actor="worker-" + worker, payload={"w": worker, "i": i})
"""


def assert_processes_keep_one_chain(url: str, tmp_path: Path, processes: int = 4) -> None:
    """``processes`` processes start together (racing on the migration), then append 10
    each: one valid chain holds every event, each writer's in its own order."""
    run_together(_APPEND_WORKER, [[url, str(w)] for w in range(processes)], tmp_path)
    report = verify_chain(url)
    assert report.ok, report.problem
    stored = events(url)
    assert [e.seq for e in stored] == list(range(1, 10 * processes + 1))
    assert len({e.hash for e in stored}) == 10 * processes
    for w in range(processes):  # each writer's events are in its own order
        mine = [e.payload["i"] for e in stored if e.payload["w"] == str(w)]
        assert mine == list(range(10))
