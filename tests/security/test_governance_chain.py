"""Attacks 1 and 6 of issue 21 on the governance store, on SQLite and on PostgreSQL.

The attacker can write the governance database (even drop its triggers) but does not
hold the audit key. Every forged approval is refused at deploy time and reported by
``audit verify``; every forged, rewritten or deleted event is named by sequence number.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError

from pipelines.errors import ApprovalError
from pipelines.spec import load_spec
from registry import approvals, audit, audit_keys
from registry.audit_verify import anchor, verify_chain
from registry.governance import record_deployment
from registry.store import dispose_engines, engine_for
from tests.security.chain_attacks import (
    append_forged,
    delete_from,
    drop_append_only,
    head,
    rewrite_from,
)

ROOT = Path(__file__).resolve().parents[2]
SPEC = load_spec(ROOT / "specs" / "german_credit.yaml")
SHA = "a" * 64
RISK = ["gate warning: roc_auc within its warn margin"]  # a high-risk change: two approvers


@pytest.fixture(params=["sqlite", "postgresql"])
def url(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch) -> Iterator[str]:  # noqa: ANN001
    monkeypatch.setenv("GOVML_AUDIT_KEY_FILE", str(tmp_path / "keys" / "audit-keys.json"))
    monkeypatch.setenv("GOVML_AUDIT_CHECKPOINTS", f"file:{tmp_path / 'audit' / 'cp.jsonl'}")
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'governance.db'}"
    else:
        yield request.getfixturevalue("pg_database")
    dispose_engines()


def _pending(url: str) -> approvals.ApprovalState:
    for user in ("reviewer", "validator"):
        approvals.grant_role(url, user, "model_risk", granted_by="admin")
    state = approvals.request_approval(
        url,
        SPEC,
        model_version="7",
        artifact_sha256=SHA,
        origin=approvals.RunOrigin(
            run_id="run-1",
            dag_id="german_credit_lifecycle",
            triggered_by="operator",
            author="alice",
        ),
        risk_reasons=RISK,
    )
    approvals.decide(
        url,
        SPEC.name,
        "7",
        approvals.Review(user="reviewer", decision="approve", reason="ok", channel="cli"),
    )
    return state


# --------------------------------------------------------------------------- attack 1
def test_forged_table_rows_approve_nothing(url: str) -> None:
    request = _pending(url)
    engine = engine_for(url)
    # the mutable status column is gone, and the rows refuse any change
    with pytest.raises(SQLAlchemyError, match="status"), engine.begin() as conn:
        conn.execute(text("UPDATE approval_requests SET status = 'approved'"))
    with (
        pytest.raises(SQLAlchemyError, match="approval_requests is append-only"),
        engine.begin() as conn,
    ):
        conn.execute(text("UPDATE approval_requests SET required_approvers = 0"))

    with engine.begin() as conn:  # a DBA drops the triggers and writes "approvals"
        drop_append_only(conn)
        for user in ("mallory", "trudy"):
            conn.execute(
                text(
                    "INSERT INTO approval_decisions (request_id, user_name, decision, reason,"
                    " channel, artifact_sha256, decided_at) VALUES (:r, :u, 'approve', 'lgtm',"
                    " 'ui', :sha, CURRENT_TIMESTAMP)"
                ),
                {"r": request.id, "u": user, "sha": SHA},
            )
        conn.execute(
            text(
                "INSERT INTO role_changes (user_name, role, action, actor, occurred_at)"
                " VALUES ('mallory', 'model_risk', 'grant', 'admin', CURRENT_TIMESTAMP)"
            )
        )

    assert approvals.get_request(url, SPEC.name, "7").approvers == ["reviewer"]
    assert approvals.roles_of(url, "mallory") == set()
    with pytest.raises(ApprovalError) as refused:
        approvals.authorise_deploy(url, SPEC.name, "7", SHA, actor="govml-lifecycle")
    assert str(refused.value) == (
        "german_credit v7: deployment refused: the governance store was changed outside "
        "govml: approval_decisions row 2 is not backed by the chain: no approval_granted/"
        "approval_rejected event backs it (and 2 more)"
    )
    report = verify_chain(url)
    assert not report.ok and report.problem is None
    assert report.unbacked[0].startswith("approval_decisions row 2 is not backed by the chain: ")
    assert report.unbacked[0].endswith("no approval_granted/approval_rejected event backs it")
    assert any(line.startswith("role_changes row 3 is not backed") for line in report.unbacked)


def test_a_forged_approval_event_stops_every_governance_action(url: str) -> None:
    request = _pending(url)
    with engine_for(url).begin() as conn:
        seq = append_forged(
            conn,
            "approval_granted",
            "validator",
            {"request_id": request.id, "reason": "ok", "channel": "ui", "artifact_sha256": SHA},
            model_name=SPEC.name,
            model_version="7",
            run_id="run-1",
        )
    report = verify_chain(url)
    assert (report.ok, report.first_bad_seq) == (False, seq)
    assert report.problem == (
        f"event seq {seq} is not authenticated: it carries no MAC (forged, or written "
        "without the audit key)"
    )
    broken = f"audit chain broken at seq {seq}: {report.problem}; governance actions are refused"
    with pytest.raises(audit.AuditError) as refused:
        approvals.authorise_deploy(url, SPEC.name, "7", SHA, actor="govml-lifecycle")
    assert str(refused.value) == broken
    with pytest.raises(audit.AuditError, match=re.escape(broken)):
        approvals.decide(
            url,
            SPEC.name,
            "7",
            approvals.Review(user="validator", decision="approve", reason="x", channel="ui"),
        )


def _forged_grant(conn: Any, key: bytes, key_id: str) -> int:
    """mallory's approver role, granted by "admin" in an event MACed with ``key`` under the
    name ``key_id``: its seq."""
    return append_forged(
        conn, "role_granted", "admin", {"user": "mallory", "role": "model_risk"},
        key=key, key_id=key_id,
    )  # fmt: skip


def test_an_event_signed_with_another_key_is_named(url: str, tmp_path: Path) -> None:
    _pending(url)
    real = audit_keys.load(tmp_path / "keys" / "audit-keys.json")
    assert real is not None
    own = secrets.token_bytes(32)
    with engine_for(url).begin() as conn:
        other = _forged_grant(conn, own, audit_keys.key_id(own))
    report = verify_chain(url)
    assert report.first_bad_seq == other
    assert report.problem == (
        f"event seq {other} is signed with key {audit_keys.key_id(own)}, but the chain's key "
        f"at that point is {real.active} (forged with another or a retired key)"
    )
    with engine_for(url).begin() as conn:
        drop_append_only(conn)
        delete_from(conn, other)
        guessed = _forged_grant(conn, own, real.active)
    report = verify_chain(url)
    assert report.first_bad_seq == guessed
    assert report.problem == (
        f"event seq {guessed} is not authentic: its MAC does not match (key {real.active}) "
        "(forged or rewritten)"
    )


# --------------------------------------------------------------------------- attack 6
def _deployed(url: str) -> int:
    """Approve (second approver), deploy once; the deployment writes a checkpoint."""
    approvals.decide(
        url,
        SPEC.name,
        "7",
        approvals.Review(user="validator", decision="approve", reason="ok", channel="ui"),
    )
    state = approvals.authorise_deploy(url, SPEC.name, "7", SHA, actor="govml-lifecycle")
    record_deployment(
        url, state, environment="local", action="deployed", actor="govml-lifecycle", consume=True
    )
    deployed = [e for e in audit.events(url) if e.kind == "deployed"]
    return deployed[-1].seq


def test_truncation_after_a_checkpoint_is_named(url: str) -> None:
    _pending(url)
    deployed = _deployed(url)
    seq_before, hash_before = audit.head(url)  # also what `audit head` would have saved
    with engine_for(url).begin() as conn:
        drop_append_only(conn)
        delete_from(conn, deployed)  # remove the deployment: the approval looks unused
    report = verify_chain(url)
    assert report.first_bad_seq == deployed
    assert re.fullmatch(
        rf"event seq {deployed} was deleted: the checkpoint of \S+ \(seq {deployed}, "
        rf"[0-9a-f]{{16}}\.\.\.\) vouches for it, but the chain now ends at seq "
        rf"{deployed - 1} \(truncated after a checkpoint\)",
        report.problem or "",
    ), report.problem
    with pytest.raises(audit.AuditError, match=f"audit chain broken at seq {deployed}: "):
        approvals.authorise_deploy(url, SPEC.name, "7", SHA, actor="govml-lifecycle")
    # an anchor saved before the cut is caught too, at the anchored seq
    assert seq_before > deployed
    assert verify_chain(url, anchor=f"{seq_before} {hash_before}").first_bad_seq == deployed


def test_a_consistent_rewrite_is_named_at_its_first_event(url: str) -> None:
    _pending(url)
    anchor(url, actor="test")
    seq, digest = audit.head(url)
    with engine_for(url).begin() as conn:
        drop_append_only(conn)
        first = rewrite_from(conn, 4, {"reason": "rewritten"})
        assert head(conn)[1] != digest
    report = verify_chain(url, anchor=f"{seq} {digest}")
    assert report.first_bad_seq == first
    assert report.problem.startswith(f"event seq {first} is not authentic: its MAC does not match")
    with engine_for(url).begin() as conn:
        rewrite_from(conn, 1, {"user": "mallory"})
    full = verify_chain(url)
    assert full.first_bad_seq == 1
    assert full.problem.startswith("event seq 1 is not authentic: its MAC does not match")
