"""The hash-chained audit trail: canonical form, appends under concurrency, tamper detection.

The chain builders, tamperers and concurrent writers are in ``tests.audit_chain`` (shared
with tests/integration/test_audit_postgres.py).
"""

from __future__ import annotations

import datetime as dt
import json
import re
import threading
from decimal import Decimal
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import select
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from ops.cli import main
from registry.audit import (
    EVENT_KINDS,
    GENESIS,
    KEY_ROTATED,
    AuditError,
    append_event,
    canonical_json,
    events,
    head,
)
from registry.audit_verify import verify_chain
from registry.store import AuditEvent, RoleChange, engine_for, read_only
from tests.audit_chain import (
    TAMPERS,
    assert_processes_keep_one_chain,
    assert_refused,
    assert_tamper_found,
    build_chain,
    modify_payload,
    race_writers,
    spec_hash,
    tamper,
    truncate_tail,
)

ROOT = Path(__file__).resolve().parents[2]


pytestmark = pytest.mark.usefixtures("fresh_engines")


@pytest.fixture
def url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'governance.db'}"


# --------------------------------------------------------------------------- canonical form
def test_canonical_json_is_sorted_compact_and_utf8() -> None:
    value = {"b": [1, 2.5, "é"], "a": {"z": None, "y": True}}
    assert canonical_json(value) == '{"a":{"y":true,"z":null},"b":[1,2.5,"é"]}'
    assert canonical_json({"b": 1, "a": 2}) == canonical_json({"a": 2, "b": 1})


def test_canonical_json_normalises_times_numbers_and_nan() -> None:
    berlin = dt.timezone(dt.timedelta(hours=1))
    value = {
        "at": dt.datetime(2026, 11, 28, 10, 30, tzinfo=berlin),
        "naive": dt.datetime(2026, 11, 28, 9, 30),
        "day": dt.date(2026, 11, 28),
        "nan": float("nan"),
        "inf": float("-inf"),
        "np": np.float64(0.25),
        "n": np.int64(3),
        "arr": np.array([1, 2]),
        "dec": Decimal("1.10"),
        "tuple": (1, 2),
        "path": Path("/data/x.parquet"),
    }
    assert json.loads(canonical_json(value)) == {
        "at": "2026-11-28T09:30:00.000000Z",
        "naive": "2026-11-28T09:30:00.000000Z",
        "day": "2026-11-28",
        "nan": None,
        "inf": None,
        "np": 0.25,
        "n": 3,
        "arr": [1, 2],
        "dec": "1.10",
        "tuple": [1, 2],
        "path": "/data/x.parquet",
    }


def test_canonical_json_refuses_what_has_no_json_form() -> None:
    with pytest.raises(AuditError, match=r"cannot store object at \$\.x"):
        canonical_json({"x": object()})


# --------------------------------------------------------------------------- append / read
def test_empty_chain(url: str) -> None:
    assert head(url) == (0, GENESIS)
    report = verify_chain(url)
    assert report.ok and report.events == 0 and report.head_seq == 0
    assert report.head_hash == GENESIS and report.first_bad_seq is None


def test_every_event_kind_is_one_the_code_writes() -> None:
    """No kind is dead: each is named by a module that writes events (``audit_key_rotated``
    through ``KEY_ROTATED``). That the lifecycle's events are known is pinned where they
    are written: ``append_event`` refuses an unknown kind (above)."""
    written = {KEY_ROTATED}
    for package in ("pipelines", "registry", "serving", "ops", "dags"):
        for path in (ROOT / package).rglob("*.py"):
            if path.name != "audit.py" and "migrations" not in path.parts:
                written |= set(re.findall(r"[\"']([a-z_]+)[\"']", path.read_text()))
    assert sorted(EVENT_KINDS - written) == []


def test_append_links_events_with_the_documented_hash(url: str) -> None:
    first = append_event(url, "data_validated", actor="pipeline", payload={"rows": 10})
    second = append_event(
        url,
        "model_registered",
        actor="pipeline",
        payload={"auc": 0.91, "when": dt.datetime(2026, 1, 1, tzinfo=dt.UTC)},
        model_name="fraud",
        model_version="4",
        run_id="run-9",
    )
    assert (first.seq, second.seq) == (1, 2)
    assert first.prev_hash == GENESIS and second.prev_hash == first.hash
    assert second.payload == {"auc": 0.91, "when": "2026-01-01T00:00:00.000000Z"}
    body = {
        "seq": 2,
        "occurred_at": second.occurred_at.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        "kind": "model_registered",
        "actor": "pipeline",
        "model_name": "fraud",
        "model_version": "4",
        "run_id": "run-9",
        "payload": second.payload,
    }
    assert second.hash == spec_hash(first.hash, body)
    assert head(url) == (2, second.hash)
    assert events(url) == [first, second]  # stored exactly as returned
    with Session(engine_for(url)) as session:
        stored = session.scalar(select(AuditEvent.payload).where(AuditEvent.seq == 2))
    assert stored == '{"auc":0.91,"when":"2026-01-01T00:00:00.000000Z"}'


def test_unknown_kind_and_missing_actor_are_refused(url: str) -> None:
    with pytest.raises(AuditError, match="unknown audit event kind 'model_blessed'"):
        append_event(url, "model_blessed", actor="x")
    with pytest.raises(AuditError, match="needs an actor"):
        append_event(url, "promoted", actor=" ")
    assert head(url) == (0, GENESIS)


def test_events_filters(url: str) -> None:
    build_chain(url, 6)
    assert [e.seq for e in events(url, model_version="1")] == [2, 4, 6]
    assert [e.seq for e in events(url, model_name="fraud", run_id="run-0")] == [3, 6]
    append_event(url, "drift_alarm", actor="monitor", model_name="credit")
    assert [e.seq for e in events(url, kinds=["drift_alarm"])] == [7]
    assert events(url, model_name="credit")[0].kind == "drift_alarm"
    assert events(url, model_name="mortgage") == []


def test_append_in_a_callers_transaction_commits_or_rolls_back_with_it(url: str) -> None:
    engine = engine_for(url)
    grant = {"user": "ana", "role": "approver"}

    def row(seq: int) -> RoleChange:
        return RoleChange(
            user_name="ana", role="approver", action="grant", actor="admin", audit_seq=seq
        )

    with Session(engine) as session:
        session.begin()
        session.add(row(append_event(session, "role_granted", actor="admin", payload=grant).seq))
        session.rollback()
    assert head(url) == (0, GENESIS)
    with Session(engine) as session, session.begin():
        record = append_event(session, "role_granted", actor="admin", payload=grant)
        session.add(row(record.seq))
    assert head(url) == (1, record.hash)
    with Session(engine) as session:
        assert session.scalars(select(RoleChange.user_name)).all() == ["ana"]
    # A caller whose transaction began DEFERRED still gets the write lock first.
    with Session(read_only(engine)) as session, session.begin():
        append_event(session, "role_revoked", actor="admin", payload=grant)
    assert verify_chain(url).ok and head(url)[0] == 2


# --------------------------------------------------------------------------- concurrency
@pytest.mark.timeout(180)
def test_fifty_concurrent_threads_keep_one_chain(
    url: str, caplog: pytest.LogCaptureFixture
) -> None:
    def write(i: int, barrier: threading.Barrier) -> None:
        barrier.wait()
        append_event(url, "gate_result", actor=f"writer-{i}", payload={"i": i})

    race_writers(url, caplog, 50, write, join_timeout=120)


@pytest.mark.timeout(240)
def test_four_processes_keep_one_chain_on_sqlite(url: str, tmp_path: Path) -> None:
    assert_processes_keep_one_chain(url, tmp_path)


# --------------------------------------------------------------------------- append-only
def test_triggers_refuse_update_and_delete(url: str) -> None:
    build_chain(url, 3)
    engine = engine_for(url)
    assert_refused(url, "DELETE FROM audit_events")
    with pytest.raises(DBAPIError, match="append-only"), Session(engine) as session:
        session.begin()
        row = session.scalars(select(AuditEvent).where(AuditEvent.seq == 1)).one()
        row.payload = "{}"
        session.commit()
    assert verify_chain(url).ok and head(url)[0] == 3


# --------------------------------------------------------------------------- tampering
@pytest.mark.parametrize("how", list(TAMPERS))
def test_tampering_is_found_at_that_event(url: str, how: str) -> None:
    assert "\n" not in assert_tamper_found(url, how)


@pytest.mark.parametrize(
    ("how", "words"),
    [
        ("modify_payload", "event seq 5 was modified (stored hash"),
        ("delete_middle", "event seq 5 is missing (deleted)"),
        ("swap_seqs", "event at seq 3 was inserted or reordered: prev_hash does not match event 2"),
        # a forger without the key: a correct hash, but no MAC / a stale MAC
        ("insert_forged", "event seq 5 is not authenticated: it carries no MAC"),
        ("modify_and_rehash", "event seq 5 is not authentic: its MAC does not match"),
    ],
)
def test_problem_says_what_happened(url: str, how: str, words: str) -> None:
    build_chain(url, 10)
    tamper(url, TAMPERS[how])
    assert verify_chain(url).problem.startswith(words)


def test_anchor_catches_a_truncated_tail(url: str) -> None:
    hashes = build_chain(url, 10)
    assert verify_chain(url, anchor=hashes[-1]).anchor_ok is True
    assert verify_chain(url, anchor=f"10 {hashes[-1]}").ok
    assert verify_chain(url, anchor=hashes[3]).ok  # an older anchor is still in the chain
    tamper(url, truncate_tail(10))
    assert verify_chain(url).ok  # a clean cut at the end leaves a valid chain ...
    report = verify_chain(url, anchor=hashes[-1])
    assert not report.ok and report.anchor_ok is False  # ... but not the anchored head
    assert "does not appear in the chain" in (report.problem or "")
    report = verify_chain(url, anchor=f"10 {hashes[-1]}")
    assert not report.ok and report.first_bad_seq == 10
    for bad in ("abc", "z" * 64, f"x {hashes[0]}"):
        with pytest.raises(AuditError, match="not a 64-hex hash"):
            verify_chain(url, anchor=bad)


# --------------------------------------------------------------------------- CLI
@pytest.fixture
def cli_url(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    for name in ("GOVML_GOVERNANCE_URL", "GOVML_AIRFLOW_DB_URL", "GOVML_MLFLOW_BACKEND_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv("AIRFLOW_HOME", raising=False)
    monkeypatch.setenv("GOVML_VAR_DIR", str(tmp_path / "var"))
    return f"sqlite:///{tmp_path / 'var' / 'governance.db'}"


def test_cli_verify_head_and_log(cli_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    hashes = build_chain(cli_url, 4)
    assert main(["audit", "verify"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].startswith("checkpoint   file:") and lines[0].endswith(": no checkpoint yet")
    assert lines[-1] == f"chain ok: 4 events (signed from seq 1), head seq 4 hash {hashes[-1]}"
    assert main(["audit", "verify", "--anchor", hashes[1]]) == 0
    assert capsys.readouterr().out.strip().endswith(", anchor found")
    assert main(["audit", "head"]) == 0
    assert capsys.readouterr().out.strip() == f"4 {hashes[-1]}"

    assert main(["audit", "log", "--version", "1"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert [line.split()[0] for line in lines] == ["2", "4"]
    assert "gate_result" in lines[0] and "fraud:1" in lines[0] and '{"i":2}' in lines[0]

    assert main(["audit", "log", "--model", "fraud", "--limit", "2", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [e["seq"] for e in listed] == [3, 4]
    assert listed[1]["hash"] == hashes[-1] and listed[1]["payload"] == {"i": 4}
    assert listed[1]["occurred_at"].endswith("Z")


def test_cli_verify_reports_a_broken_chain(
    cli_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    hashes = build_chain(cli_url, 10)
    tamper(cli_url, modify_payload)
    assert main(["audit", "verify"]) == 6
    captured = capsys.readouterr()
    assert "chain ok" not in captured.out
    err = captured.err.strip()
    assert "\n" not in err
    assert err.startswith("error: chain BROKEN at seq 5: event seq 5 was modified")
    tamper(cli_url, truncate_tail(9))
    assert main(["audit", "verify", "--anchor", hashes[-1]]) == 6
    assert "error: chain BROKEN at seq 5" in capsys.readouterr().err  # first problem first


def test_cli_db_init_migrates_the_governance_store(
    cli_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["db", "init"]) == 0
    out = capsys.readouterr().out
    assert "governance  schema at revision 0003_keyed_chain" in out
    assert head(cli_url) == (0, GENESIS)
