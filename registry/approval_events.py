"""The audit events and index rows of a request's life: the request (and the run's
request already open), a reviewer's decision, a refused answer, and the expiry of a
request nobody answered in time."""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy.orm import Session

from pipelines.errors import ApprovalError
from pipelines.spec import ModelSpec
from registry import audit
from registry.approval_state import (
    REJECT,
    ApprovalState,
    ApprovalStatus,
    GovernanceState,
    RequestFold,
    fold_into,
    iso,
)
from registry.store import ApprovalDecision, ApprovalRequest

SYSTEM = "govml"


def request_subject(request: RequestFold) -> dict[str, Any]:
    return {
        "model_name": request.model_name,
        "model_version": request.model_version,
        "run_id": request.run_id,
    }


def record_refusal(
    session: Session, request: RequestFold, actor: str, why: str, extra: dict[str, Any]
) -> None:
    audit.append_event(
        session,
        "approval_refused",
        actor=actor,
        payload={"request_id": request.id, "reason": why, **extra},
        **request_subject(request),
    )


def record_expiry(session: Session, state: GovernanceState, request: RequestFold) -> None:
    record = audit.append_event(
        session,
        "approval_expired",
        actor=SYSTEM,
        payload={
            "request_id": request.id,
            "respond_by": iso(request.respond_by),
            "reason": "no decision before the response deadline: counts as a rejection",
        },
        **request_subject(request),
    )
    fold_into(state, record)


def record_decision(
    session: Session,
    state: GovernanceState,
    request: RequestFold,
    user: str,
    decision: str,
    reason: str,
    channel: str,
    now: dt.datetime,
) -> ApprovalState:
    payload: dict[str, Any] = {
        "request_id": request.id,
        "reason": reason,
        "channel": channel,
        "artifact_sha256": request.artifact_sha256,
    }
    if decision == REJECT:
        kind, status = "approval_rejected", ApprovalStatus.REJECTED
    else:
        kind = "approval_granted"
        approvals = len(request.approvers() | {user})
        payload["approvals"] = approvals
        payload["required_approvers"] = request.required
        status = (
            ApprovalStatus.APPROVED if approvals >= request.required else ApprovalStatus.PENDING
        )
        if status == ApprovalStatus.APPROVED:
            valid_for = int(request.payload.get("valid_for_seconds") or 0)
            payload["valid_until"] = iso(now + dt.timedelta(seconds=valid_for))
    payload["status"] = status
    record = audit.append_event(
        session, kind, actor=user, payload=payload, **request_subject(request)
    )
    session.add(
        ApprovalDecision(
            request_id=request.id,
            user_name=user,
            decision=decision,
            reason=reason,
            channel=channel,
            artifact_sha256=request.artifact_sha256,
            decided_at=record.occurred_at,
            audit_seq=record.seq,
        )
    )
    seen = len(state.anomalies)
    fold_into(state, record)
    if len(state.anomalies) > seen:  # the chain would not count it: never record it
        raise ApprovalError(state.anomalies[-1])
    return request.state()


def open_request_of(
    state: GovernanceState, model: str, version: str, run_id: str, artifact_sha256: str
) -> RequestFold | None:
    """The run's request already open for this version, if any; refused when the
    artifact changed since it was requested."""
    for existing in state.requests_for(model, version):
        if existing.run_id != run_id:
            continue
        if existing.artifact_sha256 != artifact_sha256:
            raise ApprovalError(
                f"{model} v{version}: the artifact changed since approval was "
                f"requested ({existing.artifact_sha256[:12]} -> {artifact_sha256[:12]})"
            )
        return existing
    return None


def request_row(
    record: audit.AuditRecord, spec: ModelSpec, dag_id: str | None, respond_by: dt.datetime
) -> ApprovalRequest:
    """The ``approval_requests`` row an ``approval_requested`` event backs."""
    p = record.payload
    return ApprovalRequest(
        id=p["request_id"],
        model_name=spec.name,
        model_version=record.model_version,
        artifact_sha256=p["artifact_sha256"],
        run_id=record.run_id,
        dag_id=dag_id,
        triggered_by=p["triggered_by"],
        author=p["author"],
        approver_roles=list(spec.approval.roles),
        required_approvers=p["required_approvers"],
        risk_reasons=list(p["risk_reasons"]),
        requested_at=record.occurred_at,
        respond_by=respond_by,
        valid_for_seconds=spec.approval.expires_after_seconds,
        audit_seq=record.seq,
    )
