"""The governance tables are indexes of the chain's events: each row is checked against
the event that backs it (:func:`unbacked_rows` names any row the chain does not back),
and a deployment event gives the ``deployments`` row it backs (:func:`deployment_row`)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from registry.approval_state import APPROVE, DEPLOYMENT_KINDS, REJECT, iso
from registry.audit import AuditRecord
from registry.store import ApprovalDecision, ApprovalRequest, Deployment, RoleChange

_DEPLOYMENT_FIELDS = (
    "action",
    "environment",
    "traffic_percent",
    "approval_request_id",
    "approvers",
    "artifact_sha256",
    "consumes_approval",
)


def deployment_row(event: AuditRecord) -> dict[str, Any]:
    """A deployment event as the ``deployments`` row it backs."""
    p = event.payload
    return {
        "model_name": event.model_name,
        "model_version": event.model_version,
        "artifact_sha256": p.get("artifact_sha256"),
        "environment": p.get("environment"),
        "action": p.get("action"),
        "traffic_percent": p.get("traffic_percent"),
        "approval_request_id": p.get("approval_request_id"),
        "approvers": list(p.get("approvers") or []),
        "actor": event.actor,
        "occurred_at": iso(event.occurred_at),
        "details": {k: v for k, v in p.items() if k not in _DEPLOYMENT_FIELDS},
        "audit_seq": event.seq,
    }


def _by_seq(records: list[AuditRecord]) -> dict[int, AuditRecord]:
    return {r.seq: r for r in records}


def _request_row_problem(row: ApprovalRequest, event: AuditRecord | None) -> str | None:
    if event is None or event.kind != "approval_requested":
        return "no approval_requested event backs it"
    p = event.payload
    expected = {
        "id": p.get("request_id"),
        "model_name": event.model_name,
        "model_version": event.model_version,
        "run_id": event.run_id,
        "artifact_sha256": p.get("artifact_sha256"),
        "required_approvers": p.get("required_approvers"),
        "triggered_by": p.get("triggered_by"),
        "author": p.get("author"),
    }
    return _mismatch(row, expected)


def _decision_row_problem(row: ApprovalDecision, event: AuditRecord | None) -> str | None:
    if event is None or event.kind not in ("approval_granted", "approval_rejected"):
        return "no approval_granted/approval_rejected event backs it"
    decision = APPROVE if event.kind == "approval_granted" else REJECT
    expected = {
        "request_id": event.payload.get("request_id"),
        "user_name": event.actor,
        "decision": decision,
        "reason": event.payload.get("reason"),
        "artifact_sha256": event.payload.get("artifact_sha256"),
    }
    return _mismatch(row, expected)


def _role_row_problem(row: RoleChange, event: AuditRecord | None) -> str | None:
    kind = {"grant": "role_granted", "revoke": "role_revoked"}.get(row.action)
    if event is None or event.kind != kind:
        return f"no {kind or 'role'} event backs it"
    expected = {
        "user_name": event.payload.get("user"),
        "role": event.payload.get("role"),
        "actor": event.actor,
    }
    return _mismatch(row, expected)


def _deployment_row_problem(row: Deployment, event: AuditRecord | None) -> str | None:
    if event is None or event.kind not in set(DEPLOYMENT_KINDS.values()):
        return "no deployment event backs it"
    expected = {
        "model_name": event.model_name,
        "model_version": event.model_version,
        "action": event.payload.get("action"),
        "approval_request_id": event.payload.get("approval_request_id"),
        "artifact_sha256": event.payload.get("artifact_sha256"),
        "environment": event.payload.get("environment"),
    }
    return _mismatch(row, expected)


def _mismatch(row: Any, expected: dict[str, Any]) -> str | None:
    for name, value in expected.items():
        if getattr(row, name) != value:
            return f"its {name} {getattr(row, name)!r} differs from the event's {value!r}"
    return None


def unbacked_rows(session: Session, records: list[AuditRecord]) -> list[str]:
    """One line per governance table row that the (verified) chain does not back.

    ``records``: the verified chain, or at least its events of :data:`FOLDED_KINDS`
    (the only kinds index rows name)."""
    events = _by_seq(records)
    checks = (
        (ApprovalRequest, _request_row_problem, "approval_requests"),
        (ApprovalDecision, _decision_row_problem, "approval_decisions"),
        (RoleChange, _role_row_problem, "role_changes"),
        (Deployment, _deployment_row_problem, "deployments"),
    )
    problems = []
    for model, check, table in checks:
        for row in session.scalars(select(model).order_by(model.id)):
            event = events.get(row.audit_seq) if row.audit_seq is not None else None
            problem = check(row, event)
            if problem is not None:
                where = f" (audit seq {row.audit_seq})" if row.audit_seq is not None else ""
                problems.append(
                    f"{table} row {row.id}{where} is not backed by the chain: {problem}"
                )
    return problems
