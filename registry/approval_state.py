"""Approval state, derived from the verified audit chain alone.

Who holds which approver role, every approval request with its decisions and status,
which approval a deployment used, and every deployment action are folded from the
chain's events (:func:`fold`), after :func:`registry.audit_verify.load_verified` has
checked links, hashes, MACs and checkpoints. The governance tables are indexes of
these events; :func:`registry.row_backing.unbacked_rows` names any row the chain does
not back.

The four-eyes rules live here once (:func:`decision_problem`): ``registry.approvals``
checks a new decision with them before recording it, and the fold checks every
recorded decision again, so an event that breaks a rule (written by a bug or with a
stolen key) counts for nothing and is reported as an anomaly.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import Any

from registry.audit import AuditRecord


class ApprovalStatus(StrEnum):
    """An approval request's status; its value is what tables, tags and JSON hold."""

    PENDING = "pending"
    APPROVED = "approved"
    REJECTED = "rejected"
    EXPIRED = "expired"
    VOID = "void"


APPROVE, REJECT = "approve", "reject"
DEPLOYMENT_KINDS = {
    "deployed": "deployed",
    "shadow": "deployed",
    "canary": "traffic_shifted",
    "promoted": "promoted",
    "rolled_back": "rolled_back",
    "retired": "deployed",
}


def aware(value: dt.datetime | None) -> dt.datetime | None:
    """SQLite hands back naive datetimes; every time here is UTC."""
    if value is None or value.tzinfo is not None:
        return value
    return value.replace(tzinfo=dt.UTC)


def iso(value: dt.datetime | None) -> str | None:
    value = aware(value)
    return value.isoformat() if value is not None else None


def _parse_time(text: Any) -> dt.datetime | None:
    if not text:
        return None
    value = dt.datetime.fromisoformat(str(text).replace("Z", "+00:00"))
    return aware(value)


# --------------------------------------------------------------------------- public state
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
    status: ApprovalStatus
    requested_at: str
    respond_by: str
    valid_until: str | None
    consumed_at: str | None
    decisions: list[Decision]
    trigger_authenticated: bool = True
    audit_seq: int | None = None

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


# --------------------------------------------------------------------------- fold
@dataclass
class RequestFold:
    """A request while the chain is folded (mutable); :meth:`state` freezes it."""

    id: int
    model_name: str
    model_version: str
    run_id: str
    payload: dict[str, Any]
    requested_at: dt.datetime
    audit_seq: int
    status: ApprovalStatus = ApprovalStatus.PENDING
    decided_at: dt.datetime | None = None
    valid_until: dt.datetime | None = None
    consumed_at: dt.datetime | None = None
    decisions: list[tuple[Decision, int]] = field(default_factory=list)

    @property
    def artifact_sha256(self) -> str:
        return str(self.payload.get("artifact_sha256") or "")

    @property
    def triggered_by(self) -> str | None:
        return self.payload.get("triggered_by")

    @property
    def author(self) -> str | None:
        return self.payload.get("author")

    @property
    def trigger_authenticated(self) -> bool:
        return bool(self.payload.get("trigger_authenticated", True))

    @property
    def respond_by(self) -> dt.datetime | None:
        return _parse_time(self.payload.get("respond_by"))

    @property
    def required(self) -> int:
        return int(self.payload.get("required_approvers") or 1)

    @property
    def roles(self) -> set[str]:
        return set(self.payload.get("approver_roles") or [])

    def approvers(self) -> set[str]:
        return {d.user for d, _seq in self.decisions if d.decision == APPROVE}

    def decided_by(self, user: str) -> Decision | None:
        return next((d for d, _seq in self.decisions if d.user == user), None)

    def state(self) -> ApprovalState:
        return ApprovalState(
            id=self.id,
            model_name=self.model_name,
            model_version=self.model_version,
            artifact_sha256=self.artifact_sha256,
            run_id=self.run_id,
            dag_id=self.payload.get("dag_id"),
            triggered_by=self.triggered_by,
            author=self.author,
            approver_roles=list(self.payload.get("approver_roles") or []),
            required_approvers=self.required,
            risk_reasons=list(self.payload.get("risk_reasons") or []),
            status=self.status,
            requested_at=iso(self.requested_at) or "",
            respond_by=iso(self.respond_by) or "",
            valid_until=iso(self.valid_until),
            consumed_at=iso(self.consumed_at),
            decisions=[d for d, _seq in self.decisions],
            trigger_authenticated=self.trigger_authenticated,
            audit_seq=self.audit_seq,
        )


@dataclass
class GovernanceState:
    """Everything the chain says about approvals, roles and deployments."""

    requests: dict[int, RequestFold] = field(default_factory=dict)
    roles: dict[str, set[str]] = field(default_factory=dict)
    role_events: list[AuditRecord] = field(default_factory=list)
    deployments: list[AuditRecord] = field(default_factory=list)
    anomalies: list[str] = field(default_factory=list)
    events: dict[int, AuditRecord] = field(default_factory=dict)  # the folded ones, by seq

    def roles_of(self, user: str) -> set[str]:
        return set(self.roles.get(user, set()))

    def requests_for(
        self, model_name: str | None = None, model_version: str | None = None
    ) -> list[RequestFold]:
        return [
            r
            for r in sorted(self.requests.values(), key=lambda r: r.id)
            if (model_name is None or r.model_name == model_name)
            and (model_version is None or r.model_version == str(model_version))
        ]


def decision_problem(
    held_roles: set[str],
    request: RequestFold,
    user: str,
    decision: str,
    reason: str,
    artifact_sha256: str | None,
    now: dt.datetime,
) -> str | None:
    """None when ``user`` may record ``decision`` on ``request`` now; else why not.

    ``"expired"`` means the response deadline has passed (the caller records the expiry).
    """
    previous = request.decided_by(user)
    if previous is not None:
        return f"{user} already decided ({previous.decision}) at {previous.decided_at}"
    if request.status != ApprovalStatus.PENDING:
        return f"the request is {request.status}, no further decisions are accepted"
    respond_by = request.respond_by
    if respond_by is not None and now >= respond_by:
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
    if not held_roles & request.roles:
        return f"{user} holds none of the approver roles {sorted(request.roles)}"
    if decision == APPROVE and not request.trigger_authenticated:
        who = request.triggered_by or "unknown"
        return (
            f"the run's trigger ({who}) was not authenticated, so its version cannot be "
            "approved for deployment: rerun it with `govml run --as USER` or from the Airflow UI"
        )
    return None


def _on_request(state: GovernanceState, event: AuditRecord) -> None:
    request_id = event.payload.get("request_id")
    if not isinstance(request_id, int) or request_id in state.requests:
        state.anomalies.append(
            f"event seq {event.seq}: approval_requested with a missing or repeated request id "
            f"{request_id!r} does not count"
        )
        return
    state.requests[request_id] = RequestFold(
        id=request_id,
        model_name=str(event.model_name),
        model_version=str(event.model_version),
        run_id=str(event.run_id),
        payload=dict(event.payload),
        requested_at=event.occurred_at,
        audit_seq=event.seq,
    )


def _request_of(state: GovernanceState, event: AuditRecord) -> RequestFold | None:
    request = state.requests.get(event.payload.get("request_id"))  # type: ignore[arg-type]
    if request is None:
        state.anomalies.append(
            f"event seq {event.seq}: {event.kind} names request "
            f"{event.payload.get('request_id')!r}, which was never requested"
        )
    return request


def _on_decision(state: GovernanceState, event: AuditRecord) -> None:
    request = _request_of(state, event)
    if request is None:
        return
    decision = APPROVE if event.kind == "approval_granted" else REJECT
    reason = str(event.payload.get("reason") or "")
    sha = event.payload.get("artifact_sha256")
    problem = decision_problem(
        state.roles_of(event.actor), request, event.actor, decision, reason, sha, event.occurred_at
    )
    if problem is not None:
        why = "past its deadline" if problem == "expired" else problem
        state.anomalies.append(
            f"event seq {event.seq}: {event.actor}'s {decision} of request {request.id} "
            f"breaks a rule and does not count ({why})"
        )
        return
    at = event.occurred_at
    channel = str(event.payload.get("channel") or "")
    request.decisions.append(
        (Decision(event.actor, decision, reason, channel, iso(at) or ""), event.seq)
    )
    if decision == REJECT:
        request.status, request.decided_at = ApprovalStatus.REJECTED, at
    elif len(request.approvers()) >= request.required:
        request.status, request.decided_at = ApprovalStatus.APPROVED, at
        valid_for = request.payload.get("valid_for_seconds")
        granted_until = _parse_time(event.payload.get("valid_until"))
        request.valid_until = (
            at + dt.timedelta(seconds=int(valid_for)) if valid_for is not None else granted_until
        )


def _on_status(state: GovernanceState, event: AuditRecord) -> None:
    request = _request_of(state, event)
    if request is None:
        return
    if event.kind == "approval_expired" and request.status == ApprovalStatus.PENDING:
        request.status, request.decided_at = ApprovalStatus.EXPIRED, event.occurred_at
    elif event.kind == "approval_voided" and request.status == ApprovalStatus.APPROVED:
        request.status = ApprovalStatus.VOID


def _on_role(state: GovernanceState, event: AuditRecord) -> None:
    user, role = event.payload.get("user"), event.payload.get("role")
    if not isinstance(user, str) or not isinstance(role, str):
        state.anomalies.append(f"event seq {event.seq}: {event.kind} without user and role")
        return
    if event.kind == "role_granted" and event.actor == user:
        state.anomalies.append(
            f"event seq {event.seq}: {user} granted themselves {role}; the grant does not count"
        )
        return
    held = state.roles.setdefault(user, set())
    if event.kind == "role_granted":
        held.add(role)
    else:
        held.discard(role)
    state.role_events.append(event)


def consumes_approval(event: AuditRecord) -> bool:
    """Whether this deployment event used its approval (the deploy step's release)."""
    if event.kind != "deployed" or event.payload.get("action") != "deployed":
        return False
    return bool(event.payload.get("consumes_approval", True))


def _on_deployment(state: GovernanceState, event: AuditRecord) -> None:
    if event.payload.get("action") not in DEPLOYMENT_KINDS:
        return
    state.deployments.append(event)
    if not consumes_approval(event):
        return
    request = state.requests.get(event.payload.get("approval_request_id"))  # type: ignore[arg-type]
    if request is None or request.status != ApprovalStatus.APPROVED:
        state.anomalies.append(
            f"event seq {event.seq}: a deployment of {event.model_name} v{event.model_version} "
            f"names request {event.payload.get('approval_request_id')!r}, which is not approved"
        )
    elif request.consumed_at is None:
        request.consumed_at = event.occurred_at


_HANDLERS = {
    "approval_requested": _on_request,
    "approval_granted": _on_decision,
    "approval_rejected": _on_decision,
    "approval_expired": _on_status,
    "approval_voided": _on_status,
    "role_granted": _on_role,
    "role_revoked": _on_role,
    "deployed": _on_deployment,
    "traffic_shifted": _on_deployment,
    "promoted": _on_deployment,
    "rolled_back": _on_deployment,
}


FOLDED_KINDS = frozenset(_HANDLERS)


def fold_into(state: GovernanceState, event: AuditRecord) -> None:
    """Apply one event (the next in seq order) to ``state``."""
    handler = _HANDLERS.get(event.kind)
    if handler is not None:
        state.events[event.seq] = event
        handler(state, event)


def fold(records: list[AuditRecord]) -> GovernanceState:
    """Replay the chain (in seq order) into approval, role and deployment state."""
    state = GovernanceState()
    for event in records:
        fold_into(state, event)
    return state
