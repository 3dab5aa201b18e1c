"""Human approval of a registered model version: four-eyes rules, binding and expiry.

The governance store is the record. A lifecycle run asks for approval of one model
version (``request_approval``); reviewers answer in the Airflow UI or the CLI
(``decide``); the deploy step may only use a valid approval (``authorise_deploy``).

Rules enforced here, each refusal recorded in the audit trail and raised as
:class:`~pipelines.errors.ApprovalError`:

* the approver holds one of the spec's approver roles (``role_grants``);
* the approver is neither whoever triggered the run nor the model's author;
* a high-risk change (a gate warning, fairness near its limit, a new feature set)
  needs ``high_risk_approvers`` distinct approvers, otherwise ``min_approvers``;
* one decision per person and request: a replayed decision is refused, and so is
  any decision once the request is rejected, expired or void;
* no answer before ``respond_by`` counts as a rejection (``expire``);
* an approval is bound to the exact version and artifact SHA-256: approving
  version 7 never deploys version 8, a changed artifact voids the approval, and an
  approval is used by one deployment only; it expires ``expires_after`` after it
  was granted.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import asdict, dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from pipelines.errors import ApprovalError
from pipelines.spec import ModelSpec
from registry import audit
from registry.store import ApprovalDecision, ApprovalRequest, RoleGrant, engine_for

log = logging.getLogger(__name__)

PENDING, APPROVED, REJECTED, EXPIRED, VOID = "pending", "approved", "rejected", "expired", "void"
APPROVE, REJECT = "approve", "reject"
SYSTEM = "govml"


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _aware(value: dt.datetime | None) -> dt.datetime | None:
    """SQLite hands back naive datetimes; every time here is UTC."""
    if value is None or value.tzinfo is not None:
        return value
    return value.replace(tzinfo=dt.UTC)


@dataclass(frozen=True)
class Decision:
    user: str
    decision: str
    reason: str
    channel: str
    decided_at: str


@dataclass(frozen=True)
class ApprovalState:
    """A request with its decisions, as callers and the evidence pack see it."""

    id: int
    model_name: str
    model_version: str
    artifact_sha256: str
    run_id: str
    dag_id: str | None
    triggered_by: str | None
    author: str | None
    approver_roles: list[str]
    required_approvers: int
    risk_reasons: list[str]
    status: str
    requested_at: str
    respond_by: str
    valid_until: str | None
    consumed_at: str | None
    decisions: list[Decision]

    @property
    def approvers(self) -> list[str]:
        return [d.user for d in self.decisions if d.decision == APPROVE]

    @property
    def high_risk(self) -> bool:
        return bool(self.risk_reasons)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["approvers"] = self.approvers
        out["high_risk"] = self.high_risk
        return out

    def mlflow_tags(self) -> dict[str, str]:
        """The decision state mirrored as model-version tags (``govml.approval.*``)."""
        tags = {
            "govml.approval.request_id": str(self.id),
            "govml.approval.status": self.status,
            "govml.approval.required_approvers": str(self.required_approvers),
            "govml.approval.approvers": ",".join(self.approvers),
            "govml.approval.high_risk": str(self.high_risk).lower(),
        }
        if self.risk_reasons:
            tags["govml.approval.risk_reasons"] = "; ".join(self.risk_reasons)[:5000]
        if self.valid_until:
            tags["govml.approval.valid_until"] = self.valid_until
        for d in self.decisions:
            tags[f"govml.approval.{d.decision}.{d.user}"] = (
                f"{d.decided_at} via {d.channel}: {d.reason}"
            )[:5000]
        return tags


def _iso(value: dt.datetime | None) -> str | None:
    value = _aware(value)
    return value.isoformat() if value is not None else None


def iso_utc(value: dt.datetime) -> str:
    """ISO-8601 with the UTC offset (SQLite returns naive datetimes)."""
    return _iso(value) or ""


def _state(session: Session, request: ApprovalRequest) -> ApprovalState:
    decisions = session.scalars(
        select(ApprovalDecision)
        .where(ApprovalDecision.request_id == request.id)
        .order_by(ApprovalDecision.decided_at, ApprovalDecision.id)
    ).all()
    return ApprovalState(
        id=request.id,
        model_name=request.model_name,
        model_version=request.model_version,
        artifact_sha256=request.artifact_sha256,
        run_id=request.run_id,
        dag_id=request.dag_id,
        triggered_by=request.triggered_by,
        author=request.author,
        approver_roles=list(request.approver_roles or []),
        required_approvers=request.required_approvers,
        risk_reasons=list(request.risk_reasons or []),
        status=request.status,
        requested_at=_iso(request.requested_at) or "",
        respond_by=_iso(request.respond_by) or "",
        valid_until=_iso(request.valid_until),
        consumed_at=_iso(request.consumed_at),
        decisions=[
            Decision(d.user_name, d.decision, d.reason, d.channel, _iso(d.decided_at) or "")
            for d in decisions
        ],
    )


def _subject(request: ApprovalRequest) -> dict[str, Any]:
    return {
        "model_name": request.model_name,
        "model_version": request.model_version,
        "run_id": request.run_id,
    }


# --------------------------------------------------------------------------- roles


def grant_role(url: str, user: str, role: str, granted_by: str) -> bool:
    """Give ``user`` the approver role ``role``; False when the user already had it."""
    user, role = _name(user, "user"), _name(role, "role")
    with Session(engine_for(url)) as session, session.begin():
        exists = session.scalar(
            select(RoleGrant).where(RoleGrant.user_name == user, RoleGrant.role == role)
        )
        if exists is not None:
            return False
        session.add(RoleGrant(user_name=user, role=role, granted_by=granted_by, granted_at=_now()))
        audit.append_event(
            session, "role_granted", actor=granted_by, payload={"user": user, "role": role}
        )
    return True


def revoke_role(url: str, user: str, role: str, revoked_by: str) -> bool:
    with Session(engine_for(url)) as session, session.begin():
        row = session.scalar(
            select(RoleGrant).where(RoleGrant.user_name == user, RoleGrant.role == role)
        )
        if row is None:
            return False
        session.delete(row)
        audit.append_event(
            session, "role_revoked", actor=revoked_by, payload={"user": user, "role": role}
        )
    return True


def roles_of(url: str, user: str) -> set[str]:
    with Session(engine_for(url)) as session:
        return set(session.scalars(select(RoleGrant.role).where(RoleGrant.user_name == user)))


def role_grants(url: str) -> list[tuple[str, str, str]]:
    with Session(engine_for(url)) as session:
        rows = session.scalars(select(RoleGrant).order_by(RoleGrant.user_name, RoleGrant.role))
        return [(r.user_name, r.role, r.granted_by) for r in rows]


def _name(value: str, what: str) -> str:
    value = (value or "").strip()
    if not value or len(value) > 120 or any(c.isspace() for c in value):
        raise ApprovalError(f"invalid {what} {value!r}: a non-empty name without spaces")
    return value


# --------------------------------------------------------------------------- risk


def assess_risk(
    spec: ModelSpec,
    gates: dict[str, Any],
    features: list[str],
    champion_features: list[str] | None,
) -> list[str]:
    """Why this change is high-risk (empty: it is not).

    ``gates`` is the gates stage's ``gates.json``: any ``warn`` check (a metric or
    fairness value within its warn margin of the limit, a proxy feature) counts.
    A feature set that differs from the champion's counts too.
    """
    reasons = []
    for check in gates.get("checks", []):
        if check.get("status") == "warn":
            reasons.append(f"gate warning: {check.get('message') or check.get('name')}")
    if champion_features is not None and list(champion_features) != list(features):
        added = sorted(set(features) - set(champion_features))
        removed = sorted(set(champion_features) - set(features))
        detail = []
        if added:
            detail.append(f"added {added}")
        if removed:
            detail.append(f"removed {removed}")
        if not detail:
            detail.append("same features in a different order")
        reasons.append("new feature set vs the champion: " + ", ".join(detail))
    return reasons


# --------------------------------------------------------------------------- requests


def request_approval(
    url: str,
    spec: ModelSpec,
    *,
    model_version: str,
    artifact_sha256: str,
    run_id: str,
    dag_id: str | None,
    triggered_by: str | None,
    author: str | None,
    risk_reasons: list[str],
    trigger_authenticated: bool = True,
    now: dt.datetime | None = None,
) -> ApprovalState:
    """Open (or return the already open) approval request of a lifecycle run's version.

    ``trigger_authenticated``: whether ``triggered_by`` was proven (Airflow's login,
    ``govml run``'s password check, or the schedule); an unproven trigger's version
    cannot be approved.
    """
    now = now or _now()
    required = spec.approval.high_risk_approvers if risk_reasons else spec.approval.min_approvers
    with Session(engine_for(url)) as session, session.begin():
        request = session.scalar(
            select(ApprovalRequest).where(
                ApprovalRequest.model_name == spec.name,
                ApprovalRequest.model_version == str(model_version),
                ApprovalRequest.run_id == run_id,
            )
        )
        if request is not None:
            if request.artifact_sha256 != artifact_sha256:
                raise ApprovalError(
                    f"{spec.name} v{model_version}: the artifact changed since approval was "
                    f"requested ({request.artifact_sha256[:12]} -> {artifact_sha256[:12]})"
                )
            return _state(session, request)
        request = ApprovalRequest(
            model_name=spec.name,
            model_version=str(model_version),
            artifact_sha256=artifact_sha256,
            run_id=run_id,
            dag_id=dag_id,
            triggered_by=triggered_by,
            author=author,
            approver_roles=list(spec.approval.roles),
            required_approvers=required,
            risk_reasons=list(risk_reasons),
            status=PENDING,
            requested_at=now,
            respond_by=now + dt.timedelta(seconds=spec.approval.timeout_seconds),
            valid_for_seconds=spec.approval.expires_after_seconds,
        )
        session.add(request)
        session.flush()
        audit.append_event(
            session,
            "approval_requested",
            actor=triggered_by or SYSTEM,
            payload={
                "request_id": request.id,
                "artifact_sha256": artifact_sha256,
                "required_approvers": required,
                "approver_roles": list(spec.approval.roles),
                "risk_reasons": list(risk_reasons),
                "triggered_by": triggered_by,
                "trigger_authenticated": bool(trigger_authenticated),
                "author": author,
                "respond_by": _iso(request.respond_by),
            },
            **_subject(request),
        )
        return _state(session, request)


def _find(
    session: Session, model_name: str, model_version: str, run_id: str | None = None
) -> ApprovalRequest:
    query = select(ApprovalRequest).where(
        ApprovalRequest.model_name == model_name,
        ApprovalRequest.model_version == str(model_version),
    )
    if run_id is not None:
        query = query.where(ApprovalRequest.run_id == run_id)
    request = session.scalar(query.order_by(ApprovalRequest.id.desc()))
    if request is None:
        raise ApprovalError(f"no approval request for {model_name} version {model_version}")
    return request


def get_request(
    url: str, model_name: str, model_version: str, run_id: str | None = None
) -> ApprovalState:
    with Session(engine_for(url)) as session:
        return _state(session, _find(session, model_name, model_version, run_id))


def list_requests(
    url: str, model_name: str | None = None, status: str | None = None
) -> list[ApprovalState]:
    with Session(engine_for(url)) as session:
        query = select(ApprovalRequest).order_by(ApprovalRequest.id)
        if model_name:
            query = query.where(ApprovalRequest.model_name == model_name)
        if status:
            query = query.where(ApprovalRequest.status == status)
        return [_state(session, r) for r in session.scalars(query).all()]


def _refuse(session_url: str, request_id: int, actor: str, why: str, extra: dict) -> None:
    """Record a refused action in its own transaction (the caller's one rolls back)."""
    with Session(engine_for(session_url)) as session, session.begin():
        request = session.get(ApprovalRequest, request_id)
        assert request is not None
        audit.append_event(
            session,
            "approval_refused",
            actor=actor,
            payload={"request_id": request_id, "reason": why, **extra},
            **_subject(request),
        )


def decide(
    url: str,
    model_name: str,
    model_version: str,
    *,
    user: str,
    decision: str,
    reason: str,
    channel: str,
    run_id: str | None = None,
    artifact_sha256: str | None = None,
    now: dt.datetime | None = None,
) -> ApprovalState:
    """Record one reviewer's decision after checking every four-eyes rule.

    ``artifact_sha256`` is the artifact the reviewer looked at (the CLI and UI pass
    the registered version's); a mismatch with the request is refused.
    The same decision arriving twice from the same person on the same channel pair
    (the CLI records, then wakes the waiting Airflow task with the same answer) is
    not a second decision: the current state is returned.
    """
    now = now or _now()
    decision = decision.lower()
    if decision not in (APPROVE, REJECT):
        raise ApprovalError(f"decision must be {APPROVE!r} or {REJECT!r}, not {decision!r}")
    user = _name(user, "user")
    reason = (reason or "").strip()
    try:
        with Session(engine_for(url)) as session, session.begin():
            request = _find(session, model_name, model_version, run_id)
            request_id = request.id
            previous = session.scalar(
                select(ApprovalDecision).where(
                    ApprovalDecision.request_id == request_id, ApprovalDecision.user_name == user
                )
            )
            problem = _check(
                session, request, user, decision, reason, artifact_sha256, now, previous
            )
            if problem == "duplicate":
                return _state(session, request)
            if problem == "expired":
                _mark_expired(session, request, now)
                problem = f"the response deadline {_iso(request.respond_by)} has passed"
            if problem is None:
                session.add(
                    ApprovalDecision(
                        request_id=request_id,
                        user_name=user,
                        decision=decision,
                        reason=reason,
                        channel=channel,
                        artifact_sha256=request.artifact_sha256,
                        decided_at=now,
                    )
                )
                session.flush()
                return _apply(session, request, user, decision, reason, channel, now)
    except IntegrityError:
        # the same person's decision landed concurrently (unique request_id, user_name)
        problem = f"{user} has already decided on this request"
    # refused: the transaction above committed only an expiry (if any)
    label = f"{model_name} v{model_version} (request {request_id})"
    _refuse(url, request_id, user, problem, {"decision": decision, "channel": channel})
    log.info("%s: %s's %s refused: %s", label, user, decision, problem)
    raise ApprovalError(f"{label}: {decision} by {user} refused: {problem}")


def _check(
    session: Session,
    request: ApprovalRequest,
    user: str,
    decision: str,
    reason: str,
    artifact_sha256: str | None,
    now: dt.datetime,
    previous: ApprovalDecision | None,
) -> str | None:
    """None when the decision is allowed; else why not ("duplicate": already recorded)."""
    if previous is not None:
        if previous.decision == decision and previous.reason == reason:
            return "duplicate"
        return f"{user} already decided ({previous.decision}) at {_iso(previous.decided_at)}"
    if request.status != PENDING:
        return f"the request is {request.status}, no further decisions are accepted"
    if now >= _aware(request.respond_by):
        return "expired"
    if not reason:
        return "a reason (comment) is required"
    if artifact_sha256 is not None and artifact_sha256 != request.artifact_sha256:
        return (
            f"the artifact {artifact_sha256[:12]} is not the one submitted for approval "
            f"({request.artifact_sha256[:12]})"
        )
    if user == request.triggered_by:
        return f"{user} triggered this run and cannot approve or reject it (four-eyes)"
    if user == request.author:
        return f"{user} is the model's author and cannot approve or reject it (four-eyes)"
    held = set(session.scalars(select(RoleGrant.role).where(RoleGrant.user_name == user)))
    allowed = set(request.approver_roles or [])
    if not held & allowed:
        return f"{user} holds none of the approver roles {sorted(allowed)}"
    return None


def _apply(
    session: Session,
    request: ApprovalRequest,
    user: str,
    decision: str,
    reason: str,
    channel: str,
    now: dt.datetime,
) -> ApprovalState:
    approvers = set(
        session.scalars(
            select(ApprovalDecision.user_name).where(
                ApprovalDecision.request_id == request.id, ApprovalDecision.decision == APPROVE
            )
        )
    )
    payload: dict[str, Any] = {
        "request_id": request.id,
        "reason": reason,
        "channel": channel,
        "artifact_sha256": request.artifact_sha256,
    }
    if decision == REJECT:
        request.status = REJECTED
        request.decided_at = now
        kind = "approval_rejected"
    else:
        payload["approvals"] = len(approvers)
        payload["required_approvers"] = request.required_approvers
        kind = "approval_granted"
        if len(approvers) >= request.required_approvers:
            request.status = APPROVED
            request.decided_at = now
            request.valid_until = now + dt.timedelta(seconds=request.valid_for_seconds)
            payload["valid_until"] = _iso(request.valid_until)
    payload["status"] = request.status
    audit.append_event(session, kind, actor=user, payload=payload, **_subject(request))
    return _state(session, request)


def _mark_expired(session: Session, request: ApprovalRequest, now: dt.datetime) -> None:
    request.status = EXPIRED
    request.decided_at = now
    audit.append_event(
        session,
        "approval_expired",
        actor=SYSTEM,
        payload={
            "request_id": request.id,
            "respond_by": _iso(request.respond_by),
            "reason": "no decision before the response deadline: counts as a rejection",
        },
        **_subject(request),
    )


def expire(
    url: str, model_name: str, model_version: str, run_id: str | None = None
) -> ApprovalState:
    """The response deadline passed without enough approvals: a rejection."""
    with Session(engine_for(url)) as session, session.begin():
        request = _find(session, model_name, model_version, run_id)
        if request.status == PENDING:
            _mark_expired(session, request, _now())
        return _state(session, request)


# --------------------------------------------------------------------------- deploy


def authorise_deploy(
    url: str,
    model_name: str,
    model_version: str,
    artifact_sha256: str,
    *,
    actor: str,
    consume: bool = True,
    now: dt.datetime | None = None,
) -> ApprovalState:
    """Use this version's approval for one deployment, or refuse.

    ``artifact_sha256`` is the SHA-256 of the artifact about to be deployed, computed
    from the registry at deploy time. ``consume=False`` only checks: the caller then
    marks the approval used when it records the deployment (``consume_approval``).
    """
    now = now or _now()
    problem = None
    with Session(engine_for(url)) as session, session.begin():
        query = (
            select(ApprovalRequest)
            .where(
                ApprovalRequest.model_name == model_name,
                ApprovalRequest.model_version == str(model_version),
            )
            .order_by(ApprovalRequest.id.desc())
        )
        requests = session.scalars(query).all()
        approved = [r for r in requests if r.status == APPROVED]
        if not requests:
            problem = "no approval was requested for this version"
        elif not approved:
            statuses = sorted({r.status for r in requests})
            problem = f"no valid approval for this version (request status: {statuses})"
        else:
            request = approved[0]
            if request.artifact_sha256 != artifact_sha256:
                request.status = VOID
                audit.append_event(
                    session,
                    "approval_voided",
                    actor=actor,
                    payload={
                        "request_id": request.id,
                        "approved_sha256": request.artifact_sha256,
                        "found_sha256": artifact_sha256,
                        "reason": "the artifact changed after approval",
                    },
                    **_subject(request),
                )
                problem = (
                    f"the artifact changed after approval (approved "
                    f"{request.artifact_sha256[:12]}, found {artifact_sha256[:12]}): "
                    "the approval is void"
                )
            elif request.consumed_at is not None:
                problem = (
                    f"approval request {request.id} was already used by a deployment at "
                    f"{_iso(request.consumed_at)}"
                )
            elif request.valid_until is None or now >= _aware(request.valid_until):
                problem = f"the approval expired at {_iso(request.valid_until)}"
            else:
                if consume:
                    request.consumed_at = now
                return _state(session, request)
        request_id = requests[0].id if requests else None
    label = f"{model_name} v{model_version}"
    if request_id is not None:
        _refuse(url, request_id, actor, f"deploy refused: {problem}", {"action": "deploy"})
    raise ApprovalError(f"{label}: deployment refused: {problem}")


def consume_approval(session: Session, request_id: int, now: dt.datetime) -> None:
    """Mark an approval used, inside the caller's transaction; refuse a second use."""
    from sqlalchemy import update

    result = session.execute(
        update(ApprovalRequest)
        .where(ApprovalRequest.id == request_id, ApprovalRequest.consumed_at.is_(None))
        .values(consumed_at=now)
    )
    if result.rowcount != 1:
        raise ApprovalError(f"approval request {request_id} was already used by a deployment")
