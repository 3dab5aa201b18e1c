"""Human approval of a registered model version: four-eyes rules, binding and expiry.

The keyed audit chain is the record. A lifecycle run asks for approval of one model
version (``request_approval``); reviewers answer in the Airflow UI or the CLI
(``decide``); the deploy step may only use a valid approval (``authorise_deploy``,
then ``registry.governance.record_deployment`` uses it once). Every request,
decision, refusal, expiry, voiding and role change is an audit event; the state each
function acts on is folded from the verified chain (``registry.approval_state``)
inside the transaction that appends the next event, under the chain's lock. The
``approval_requests``, ``approval_decisions`` and ``role_changes`` tables are
append-only indexes of those events.

Rules enforced (``registry.approval_state.decision_problem``), each refusal recorded
in the audit trail and raised as :class:`~pipelines.errors.ApprovalError`:

* the approver holds one of the spec's approver roles (granted by someone else);
* the approver is neither whoever triggered the run nor the model's author, and the
  run's trigger was authenticated;
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
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from pipelines.errors import ApprovalError
from pipelines.spec import ModelSpec
from registry import audit
from registry.approval_events import (
    SYSTEM,
    open_request_of,
    record_decision,
    record_expiry,
    record_refusal,
    request_row,
    request_subject,
)
from registry.approval_state import (
    APPROVE,
    FOLDED_KINDS,
    REJECT,
    ApprovalState,
    ApprovalStatus,
    Decision,
    GovernanceState,
    RequestFold,
    decision_problem,
    fold,
    fold_into,
    iso,
)
from registry.audit_verify import load_verified
from registry.row_backing import unbacked_rows
from registry.store import ApprovalRequest, RoleChange, engine_for

log = logging.getLogger(__name__)

T = TypeVar("T")
__all__ = [
    "APPROVE",
    "REJECT",
    "ApprovalState",
    "Decision",
]


def _now() -> dt.datetime:
    return audit.clock()


def governance_state(url: str) -> GovernanceState:
    """Approvals, roles and deployments as the verified chain has them now."""
    return fold(load_verified(url, kinds=FOLDED_KINDS))


def in_chain_transaction(url: str, work: Callable[[Session, GovernanceState], T]) -> T:
    """Run ``work`` in one transaction holding the chain's lock, on freshly folded state."""
    with Session(engine_for(url)) as session, session.begin():
        audit.lock_chain(session)
        return work(session, fold(load_verified(url, session, FOLDED_KINDS)))


def _name(value: str, what: str) -> str:
    value = (value or "").strip()
    if not value or len(value) > 120 or any(c.isspace() for c in value):
        raise ApprovalError(f"invalid {what} {value!r}: a non-empty name without spaces")
    return value


# --------------------------------------------------------------------------- roles


def _change_role(url: str, user: str, role: str, actor: str, action: str) -> bool:
    user, role, actor = _name(user, "user"), _name(role, "role"), _name(actor, "actor")
    if action == "grant" and user == actor:
        raise ApprovalError(
            f"{actor} cannot grant a role to themselves: another admin must grant {role} to {user}"
        )

    def work(session: Session, state: GovernanceState) -> bool:
        held = role in state.roles_of(user)
        if held == (action == "grant"):
            return False
        kind = "role_granted" if action == "grant" else "role_revoked"
        record = audit.append_event(
            session, kind, actor=actor, payload={"user": user, "role": role}
        )
        session.add(
            RoleChange(
                user_name=user,
                role=role,
                action=action,
                actor=actor,
                occurred_at=record.occurred_at,
                audit_seq=record.seq,
            )
        )
        return True

    return in_chain_transaction(url, work)


def grant_role(url: str, user: str, role: str, granted_by: str) -> bool:
    """Give ``user`` the approver role ``role``; False when the user already had it.

    Nobody grants a role to themselves.
    """
    return _change_role(url, user, role, granted_by, "grant")


def revoke_role(url: str, user: str, role: str, revoked_by: str) -> bool:
    """Take ``role`` away from ``user``; False when the user did not hold it."""
    return _change_role(url, user, role, revoked_by, "revoke")


def roles_of(url: str, user: str) -> set[str]:
    return governance_state(url).roles_of(user)


def role_grants(url: str) -> list[tuple[str, str, str]]:
    """``(user, role, granted by)`` of every role held now, from the chain."""
    state = governance_state(url)
    granted_by: dict[tuple[str, str], str] = {}
    for event in state.role_events:
        if event.kind == "role_granted":
            granted_by[(event.payload["user"], event.payload["role"])] = event.actor
    return sorted(
        (user, role, granted_by.get((user, role), "?"))
        for user, roles in state.roles.items()
        for role in roles
    )


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


@dataclass(frozen=True)
class RunOrigin:
    """The lifecycle run a version comes from, and who started it.

    ``trigger_authenticated``: whether ``triggered_by`` was proven (Airflow's login,
    ``govml run``'s password check, or the schedule); an unproven trigger's version
    cannot be approved.
    """

    run_id: str
    dag_id: str | None
    triggered_by: str | None
    author: str | None
    trigger_authenticated: bool = True


@dataclass(frozen=True)
class Review:
    """One reviewer's answer to an approval request, and where it was given."""

    user: str
    decision: str
    reason: str
    channel: str


def request_approval(
    url: str,
    spec: ModelSpec,
    *,
    model_version: str,
    artifact_sha256: str,
    origin: RunOrigin,
    risk_reasons: list[str],
) -> ApprovalState:
    """Open (or return the already open) approval request of a lifecycle run's version."""
    now = _now()
    run_id, dag_id, triggered_by = origin.run_id, origin.dag_id, origin.triggered_by
    author, trigger_authenticated = origin.author, origin.trigger_authenticated
    required = spec.approval.high_risk_approvers if risk_reasons else spec.approval.min_approvers

    def work(session: Session, state: GovernanceState) -> ApprovalState:
        existing = open_request_of(state, spec.name, str(model_version), run_id, artifact_sha256)
        if existing is not None:
            return existing.state()
        request_id = (session.scalar(select(func.max(ApprovalRequest.id))) or 0) + 1
        respond_by = now + dt.timedelta(seconds=spec.approval.timeout_seconds)
        payload = {
            "request_id": request_id,
            "artifact_sha256": artifact_sha256,
            "required_approvers": required,
            "approver_roles": list(spec.approval.roles),
            "risk_reasons": list(risk_reasons),
            "triggered_by": triggered_by,
            "trigger_authenticated": bool(trigger_authenticated),
            "author": author,
            "dag_id": dag_id,
            "respond_by": iso(respond_by),
            "valid_for_seconds": spec.approval.expires_after_seconds,
        }
        record = audit.append_event(
            session,
            "approval_requested",
            actor=triggered_by or SYSTEM,
            payload=payload,
            model_name=spec.name,
            model_version=str(model_version),
            run_id=run_id,
        )
        session.add(request_row(record, spec, dag_id, respond_by))
        fold_into(state, record)
        return state.requests[request_id].state()

    return in_chain_transaction(url, work)


def _find(
    state: GovernanceState, model_name: str, model_version: str, run_id: str | None = None
) -> RequestFold:
    found = [
        r
        for r in state.requests_for(model_name, str(model_version))
        if run_id is None or r.run_id == run_id
    ]
    if not found:
        raise ApprovalError(f"no approval request for {model_name} version {model_version}")
    return found[-1]


def get_request(
    url: str, model_name: str, model_version: str, run_id: str | None = None
) -> ApprovalState:
    return _find(governance_state(url), model_name, model_version, run_id).state()


def list_requests(
    url: str, model_name: str | None = None, status: str | None = None
) -> list[ApprovalState]:
    states = [r.state() for r in governance_state(url).requests_for(model_name)]
    return [s for s in states if status is None or s.status == status]


def decide(
    url: str,
    model_name: str,
    model_version: str,
    review: Review,
    *,
    run_id: str | None = None,
    artifact_sha256: str | None = None,
) -> ApprovalState:
    """Record one reviewer's decision after checking every four-eyes rule.

    ``artifact_sha256`` is the artifact the reviewer looked at, hashed at decision
    time (the CLI and UI pass the registered version's); a mismatch is refused.
    The same decision arriving twice from the same person (the CLI records, then
    wakes the waiting Airflow task with the same answer) is not a second decision:
    the current state is returned.
    """
    decision, channel = review.decision.lower(), review.channel
    if decision not in (APPROVE, REJECT):
        raise ApprovalError(f"decision must be {APPROVE!r} or {REJECT!r}, not {decision!r}")
    user = _name(review.user, "user")
    reason = (review.reason or "").strip()

    def work(session: Session, state: GovernanceState) -> tuple[ApprovalState, str | None, int]:
        now = _now()
        request = _find(state, model_name, model_version, run_id)
        previous = request.decided_by(user)
        if previous is not None and (previous.decision, previous.reason) == (decision, reason):
            return request.state(), None, request.id
        problem = decision_problem(
            state.roles_of(user), request, user, decision, reason, artifact_sha256, now
        )
        if problem == "expired":
            record_expiry(session, state, request)
            problem = f"the response deadline {iso(request.respond_by)} has passed"
        if problem is None:
            recorded = record_decision(
                session, state, request, user, decision, reason, channel, now
            )
            return recorded, None, request.id
        record_refusal(session, request, user, problem, {"decision": decision, "channel": channel})
        return request.state(), problem, request.id

    result, problem, request_id = in_chain_transaction(url, work)
    if problem is None:
        return result
    label = f"{model_name} v{model_version} (request {request_id})"
    log.info("%s: %s's %s refused: %s", label, user, decision, problem)
    raise ApprovalError(f"{label}: {decision} by {user} refused: {problem}")


def refuse(
    url: str,
    model_name: str,
    model_version: str,
    *,
    user: str,
    decision: str,
    why: str,
    channel: str,
    run_id: str | None = None,
) -> ApprovalState:
    """Record an answer refused before the rules could be checked (e.g. the registry
    could not re-hash the artifact): an ``approval_refused`` event, nothing decided."""

    def work(session: Session, state: GovernanceState) -> ApprovalState:
        request = _find(state, model_name, model_version, run_id)
        record_refusal(session, request, user, why, {"decision": decision, "channel": channel})
        return request.state()

    return in_chain_transaction(url, work)


def expire(
    url: str, model_name: str, model_version: str, run_id: str | None = None
) -> ApprovalState:
    """The response deadline passed without enough approvals: a rejection."""

    def work(session: Session, state: GovernanceState) -> ApprovalState:
        request = _find(state, model_name, model_version, run_id)
        if request.status == ApprovalStatus.PENDING:
            record_expiry(session, state, request)
        return request.state()

    return in_chain_transaction(url, work)


# --------------------------------------------------------------------------- deploy


def deploy_problem(
    session: Session,
    state: GovernanceState,
    model_name: str,
    model_version: str,
    artifact_sha256: str,
    actor: str,
    now: dt.datetime,
) -> tuple[RequestFold | None, str | None]:
    """``(the approved request to use, None)`` or ``(request or None, why not)``.

    A changed artifact voids the approval (an ``approval_voided`` event, in ``session``).
    """
    requests = state.requests_for(model_name, str(model_version))
    approved = [r for r in requests if r.status == ApprovalStatus.APPROVED]
    tampered = unbacked_rows(session, list(state.events.values()))
    if tampered:
        more = f" (and {len(tampered) - 1} more)" if len(tampered) > 1 else ""
        return (requests[-1] if requests else None), (
            f"the governance store was changed outside govml: {tampered[0]}{more}"
        )
    if not requests:
        return None, "no approval was requested for this version"
    if not approved:
        statuses = sorted({r.status for r in requests})
        return requests[-1], f"no valid approval for this version (request status: {statuses})"
    request = approved[-1]
    if request.artifact_sha256 != artifact_sha256:
        record = audit.append_event(
            session,
            "approval_voided",
            actor=actor,
            payload={
                "request_id": request.id,
                "approved_sha256": request.artifact_sha256,
                "found_sha256": artifact_sha256,
                "reason": "the artifact changed after approval",
            },
            **request_subject(request),
        )
        fold_into(state, record)
        return request, (
            f"the artifact changed after approval (approved {request.artifact_sha256[:12]}, "
            f"found {artifact_sha256[:12]}): the approval is void"
        )
    if request.consumed_at is not None:
        return request, (
            f"approval request {request.id} was already used by a deployment at "
            f"{iso(request.consumed_at)}"
        )
    if request.valid_until is None or now >= request.valid_until:
        return request, f"the approval expired at {iso(request.valid_until)}"
    return request, None


def authorise_deploy(
    url: str,
    model_name: str,
    model_version: str,
    artifact_sha256: str,
    *,
    actor: str,
) -> ApprovalState:
    """The valid, unused approval of exactly this version and artifact, or refuse.

    ``artifact_sha256`` is the SHA-256 of the artifact about to be deployed, computed
    from the registry at deploy time. Only the chain counts: an ``approved`` claim
    anywhere else (a table row, an MLflow tag) is ignored. The caller uses the
    approval when it records the deployment (``registry.governance.record_deployment``
    with ``consume=True``, which checks all this again under the chain's lock).
    """
    now = _now()

    def work(session: Session, state: GovernanceState) -> tuple[ApprovalState | None, str | None]:
        request, problem = deploy_problem(
            session, state, model_name, model_version, artifact_sha256, actor, now
        )
        if problem is None and request is not None:
            return request.state(), None
        if request is not None:
            record_refusal(
                session, request, actor, f"deploy refused: {problem}", {"action": "deploy"}
            )
        return None, problem

    result, problem = in_chain_transaction(url, work)
    if result is not None:
        return result
    raise ApprovalError(f"{model_name} v{model_version}: deployment refused: {problem}")
