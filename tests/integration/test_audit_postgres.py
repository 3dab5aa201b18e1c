"""The audit chain on PostgreSQL: concurrent writers, append-only triggers, tamper detection."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session

from registry.audit import append_event, events, head
from registry.audit_verify import verify_chain
from registry.databases import normalise_url
from registry.store import RoleChange, dispose_engines, engine_for
from tests.audit_chain import (
    TAMPERS,
    append_in_processes,
    assert_process_chain,
    assert_raced_chain,
    assert_refused,
    build_chain,
    tamper,
)
from tests.racing import run_threads

pytestmark = [pytest.mark.postgres, pytest.mark.usefixtures("fresh_engines")]


@pytest.mark.timeout(180)
def test_fifty_concurrent_writers_keep_one_chain(
    pg_database: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Half append through the shared engine, half through their own engine and Session."""
    engine_for(pg_database)
    barrier = threading.Barrier(50)
    errors: list[BaseException] = []

    def writer(i: int) -> None:
        try:
            if i % 2:
                own = create_engine(normalise_url(pg_database))
                try:
                    barrier.wait()
                    with Session(own) as session, session.begin():
                        grant = {"i": i, "user": f"u{i}", "role": "approver"}
                        record = append_event(session, "role_granted", actor=f"w{i}", payload=grant)
                        session.add(
                            RoleChange(
                                user_name=f"u{i}",
                                role="approver",
                                action="grant",
                                actor=f"w{i}",
                                audit_seq=record.seq,
                            )
                        )
                finally:
                    own.dispose()
            else:
                barrier.wait()
                append_event(pg_database, "gate_result", actor=f"w{i}", payload={"i": i})
        except BaseException as exc:  # noqa: BLE001 (reported below)
            errors.append(exc)

    run_threads(50, writer, join_timeout=150)
    assert errors == []
    assert_raced_chain(pg_database, caplog, 50)
    assert len(events(pg_database, kinds=["role_granted"])) == 25


@pytest.mark.timeout(240)
def test_four_processes_keep_one_chain(pg_database: str, tmp_path: Path) -> None:
    append_in_processes(pg_database, tmp_path)
    assert_process_chain(pg_database)


def test_triggers_refuse_update_delete_and_truncate(pg_database: str) -> None:
    build_chain(pg_database, 3)
    assert_refused(pg_database, "TRUNCATE audit_events")
    assert verify_chain(pg_database).ok and head(pg_database)[0] == 3


@pytest.mark.parametrize(
    "how",
    ["modify_payload", "delete_middle", "insert_forged", "swap_seqs", "change_last"],
)
def test_tampering_is_found_at_that_event(pg_database: str, how: str) -> None:
    build_chain(pg_database, 10)
    assert verify_chain(pg_database).ok
    bad_seq = tamper(pg_database, TAMPERS[how])
    report = verify_chain(pg_database)
    assert not report.ok
    assert report.first_bad_seq == bad_seq, report.problem
    assert report.problem and f"seq {bad_seq}" in report.problem


def test_timestamps_survive_a_non_utc_session(pg_database: str) -> None:
    """PostgreSQL hands timestamptz back in the session's zone; hashes use UTC."""
    build_chain(pg_database, 3)
    name = make_url(pg_database).database
    with engine_for(pg_database).begin() as conn:
        conn.execute(text(f"ALTER DATABASE \"{name}\" SET timezone TO 'America/New_York'"))
    dispose_engines()
    report = verify_chain(pg_database)
    assert report.ok, report.problem
    assert events(pg_database)[0].occurred_at.utcoffset().total_seconds() == 0
