"""Four-eyes approval rules: every bypass attempt is refused and recorded.

Runs against a real governance store (SQLite file; the PostgreSQL variant of the
store itself is covered by the audit tests) with the German Credit spec's rules:
approver roles model_risk / credit_policy, one approver (two for a high-risk change),
answer within 24 h, an approval valid for 72 h.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from pipelines.errors import ApprovalError
from pipelines.spec import load_spec
from registry import approvals, audit, audit_verify

ROOT = Path(__file__).resolve().parents[2]
SPEC = load_spec(ROOT / "specs" / "german_credit.yaml")
SHA = "a" * 64
T0 = dt.datetime(2026, 11, 2, 9, 0, tzinfo=dt.UTC)


@pytest.fixture
def url(tmp_path: Path, audit_clock) -> str:  # noqa: ANN001 (tests/conftest.py AuditClock)
    url = f"sqlite:///{tmp_path / 'governance.db'}"
    for user in ("reviewer", "validator", "alice", "bob"):
        approvals.grant_role(url, user, "model_risk", granted_by="test-admin")
    return url


def _request(url: str, version: str = "7", risk: list[str] | None = None, run: str = "run-1"):
    return approvals.request_approval(
        url,
        SPEC,
        model_version=version,
        artifact_sha256=SHA,
        origin=approvals.RunOrigin(
            run_id=run, dag_id="german_credit_lifecycle", triggered_by="alice", author="bob"
        ),
        risk_reasons=list(risk or []),
    )


def _decide(url: str, user: str, decision: str = "approve", version: str = "7", **kw):
    kw.setdefault("reason", f"{user} reviewed the evidence")
    clock = audit.clock
    clock.at(kw.pop("now", T0 + dt.timedelta(hours=1)))  # type: ignore[attr-defined]
    return approvals.decide(
        url, SPEC.name, version, approvals.Review(user, decision, kw.pop("reason"), "cli"), **kw
    )


def _deploy(url: str, state: approvals.ApprovalState) -> None:
    from registry.governance import record_deployment

    record_deployment(
        url, state, environment="test", action="deployed", actor="deployer", consume=True
    )


def _kinds(url: str) -> list[str]:
    return [e.kind for e in audit.events(url, model_name=SPEC.name)]


def _refused_deploy(url: str, match: str, version: str = "7") -> None:
    with pytest.raises(ApprovalError, match=match):
        approvals.authorise_deploy(url, SPEC.name, version, SHA, actor="deployer")


def _assert_ended(url: str, status: str, kind: str) -> None:
    """Version 7's request ended with ``status`` (event ``kind``): nothing deploys it."""
    assert approvals.get_request(url, SPEC.name, "7").status == status
    assert kind in _kinds(url)
    _refused_deploy(url, "no valid approval")


def test_valid_approval_is_recorded_bound_and_used_once(url: str) -> None:
    request = _request(url)
    assert request.status == "pending" and request.required_approvers == 1
    state = _decide(url, "reviewer")
    assert state.status == "approved"
    assert state.approvers == ["reviewer"]
    assert state.valid_until == (T0 + dt.timedelta(hours=73)).isoformat()
    assert state.mlflow_tags()["govml.approval.status"] == "approved"
    audit.clock.at(T0 + dt.timedelta(hours=2))  # type: ignore[attr-defined]
    ok = approvals.authorise_deploy(url, SPEC.name, "7", SHA, actor="deployer")
    assert ok.consumed_at is None  # checking uses nothing
    _deploy(url, ok)
    used = approvals.get_request(url, SPEC.name, "7")
    assert used.consumed_at == (T0 + dt.timedelta(hours=2)).isoformat()
    assert _kinds(url) == ["approval_requested", "approval_granted", "deployed"]
    assert audit_verify.verify_chain(url).ok


def test_self_approval_is_refused(url: str) -> None:
    _request(url)
    with pytest.raises(ApprovalError, match="alice triggered this run"):
        _decide(url, "alice")
    assert approvals.get_request(url, SPEC.name, "7").status == "pending"
    refused = audit.events(url, model_name=SPEC.name, kinds=["approval_refused"])
    assert refused and refused[-1].actor == "alice"


def test_the_models_author_cannot_approve(url: str) -> None:
    _request(url)
    with pytest.raises(ApprovalError, match="bob is the model's author"):
        _decide(url, "bob")


def test_an_approver_without_the_role_is_refused(url: str) -> None:
    _request(url)
    with pytest.raises(ApprovalError, match="holds none of the approver roles"):
        _decide(url, "mallory")
    approvals.grant_role(url, "mallory", "fraud_lead", granted_by="test-admin")
    with pytest.raises(ApprovalError, match="holds none of the approver roles"):
        _decide(url, "mallory")  # a role, but not one this spec accepts
    assert approvals.get_request(url, SPEC.name, "7").approvers == []


def test_one_approver_is_not_enough_for_a_high_risk_change(url: str) -> None:
    _request(url, risk=["gate warning: roc_auc 0.71 within warn margin"])
    state = _decide(url, "reviewer")
    assert (state.status, state.required_approvers) == ("pending", 2)
    _refused_deploy(url, "no valid approval")
    # the same person again does not count twice
    again = _decide(url, "reviewer")
    assert again.status == "pending" and again.approvers == ["reviewer"]
    state = _decide(url, "validator")
    assert state.status == "approved" and state.approvers == ["reviewer", "validator"]


def test_an_expired_approval_cannot_deploy(url: str) -> None:
    _request(url)
    _decide(url, "reviewer")
    audit.clock.at(T0 + dt.timedelta(hours=74))  # type: ignore[attr-defined]
    _refused_deploy(url, "expired")


def test_no_answer_before_the_deadline_counts_as_a_rejection(url: str) -> None:
    _request(url)
    with pytest.raises(ApprovalError, match="deadline"):
        _decide(url, "reviewer", now=T0 + dt.timedelta(hours=25))
    _assert_ended(url, "expired", "approval_expired")


def test_expire_marks_a_pending_request(url: str) -> None:
    _request(url)
    assert approvals.expire(url, SPEC.name, "7").status == "expired"


def test_approving_version_7_never_deploys_version_8(url: str) -> None:
    _request(url, version="7")
    _decide(url, "reviewer", version="7")
    _refused_deploy(url, "no approval was requested", "8")
    _request(url, version="8", run="run-2")
    _refused_deploy(url, "no valid approval", "8")


def test_a_tampered_artifact_voids_the_approval(url: str) -> None:
    _request(url)
    _decide(url, "reviewer")
    with pytest.raises(ApprovalError, match="artifact changed after approval"):
        approvals.authorise_deploy(url, SPEC.name, "7", "b" * 64, actor="deployer")
    _assert_ended(url, "void", "approval_voided")  # restoring the file revives nothing


def test_a_reviewer_who_saw_another_artifact_is_refused(url: str) -> None:
    _request(url)
    with pytest.raises(ApprovalError, match="not the one submitted"):
        _decide(url, "reviewer", artifact_sha256="c" * 64)


def test_a_replayed_approval_is_refused(url: str) -> None:
    _request(url)
    _decide(url, "reviewer")
    audit.clock.at(T0 + dt.timedelta(hours=2))  # type: ignore[attr-defined]
    _deploy(url, approvals.authorise_deploy(url, SPEC.name, "7", SHA, actor="deployer"))
    # the approval was used by one deployment; replaying it for another is refused
    _refused_deploy(url, "already used")
    state = approvals.get_request(url, SPEC.name, "7")
    with pytest.raises(ApprovalError, match="already used"):
        _deploy(url, state)
    # and the same reviewer cannot re-submit a different decision
    with pytest.raises(ApprovalError, match="already decided"):
        _decide(url, "reviewer", decision="reject", reason="changed my mind")


def test_approving_after_a_rejection_is_refused(url: str) -> None:
    _request(url)
    state = _decide(url, "reviewer", decision="reject", reason="KS too low for this segment")
    assert state.status == "rejected"
    with pytest.raises(ApprovalError, match="request is rejected"):
        _decide(url, "validator")
    assert approvals.get_request(url, SPEC.name, "7").approvers == []


def test_a_decision_needs_a_reason(url: str) -> None:
    _request(url)
    with pytest.raises(ApprovalError, match="reason"):
        _decide(url, "reviewer", reason="  ")


def test_requesting_twice_returns_the_same_request_and_a_changed_artifact_is_refused(
    url: str,
) -> None:
    first = _request(url)
    assert _request(url).id == first.id
    with pytest.raises(ApprovalError, match="artifact changed"):
        approvals.request_approval(
            url,
            SPEC,
            model_version="7",
            artifact_sha256="d" * 64,
            origin=approvals.RunOrigin(
                run_id="run-1", dag_id=None, triggered_by="alice", author=None
            ),
            risk_reasons=[],
        )
    assert _kinds(url).count("approval_requested") == 1


def test_role_grants_are_audited(url: str) -> None:
    assert approvals.grant_role(url, "carol", "credit_policy", granted_by="admin")
    assert not approvals.grant_role(url, "carol", "credit_policy", granted_by="admin")
    assert "credit_policy" in approvals.roles_of(url, "carol")
    assert approvals.revoke_role(url, "carol", "credit_policy", revoked_by="admin")
    assert approvals.roles_of(url, "carol") == set()
    kinds = [e.kind for e in audit.events(url)]
    assert kinds.count("role_granted") == 5 and kinds.count("role_revoked") == 1


def test_risk_assessment_names_gate_warnings_and_a_new_feature_set() -> None:
    gates = {
        "checks": [
            {"name": "roc_auc", "status": "pass", "message": "ok"},
            {"name": "dpr_sex", "status": "warn", "message": "dpr 0.82 within warn margin"},
        ]
    }
    reasons = approvals.assess_risk(SPEC, gates, ["a", "b", "c"], ["a", "b"])
    assert reasons[0] == "gate warning: dpr 0.82 within warn margin"
    assert "added ['c']" in reasons[1]
    assert approvals.assess_risk(SPEC, {"checks": []}, ["a"], ["a"]) == []
    assert approvals.assess_risk(SPEC, {"checks": []}, ["a"], None) == []
