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
    assert_processes_keep_one_chain,
    assert_refused,
    assert_tamper_found,
    build_chain,
    race_writers,
)

pytestmark = [pytest.mark.postgres, pytest.mark.usefixtures("fresh_engines")]


@pytest.mark.timeout(180)
def test_fifty_concurrent_writers_keep_one_chain(
    pg_database: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Half append through the shared engine, half through their own engine and Session."""

    def write(i: int, barrier: threading.Barrier) -> None:
        if not i % 2:
            barrier.wait()
            append_event(pg_database, "gate_result", actor=f"w{i}", payload={"i": i})
            return
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

    race_writers(pg_database, caplog, 50, write, join_timeout=150)
    assert len(events(pg_database, kinds=["role_granted"])) == 25


@pytest.mark.timeout(240)
def test_four_processes_keep_one_chain(pg_database: str, tmp_path: Path) -> None:
    assert_processes_keep_one_chain(pg_database, tmp_path)


def test_triggers_refuse_update_delete_and_truncate(pg_database: str) -> None:
    build_chain(pg_database, 3)
    assert_refused(pg_database, "TRUNCATE audit_events")
    assert verify_chain(pg_database).ok and head(pg_database)[0] == 3


@pytest.mark.parametrize(
    "how",
    ["modify_payload", "delete_middle", "insert_forged", "swap_seqs", "change_last"],
)
def test_tampering_is_found_at_that_event(pg_database: str, how: str) -> None:
    assert_tamper_found(pg_database, how)


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
