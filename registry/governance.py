"""What the lifecycle writes to the governance store, one function per DAG step.

Each function reads the stage's files from the run folder and appends audit events
(data validated, one per gate result, registered, deployed) or drives the approval
record. A rerun of a task appends nothing new when the same event (kind, run,
version, payload) is already in the chain: the trail records actions, not retries.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session

from pipelines.errors import ApprovalError
from pipelines.spec import ModelSpec
from registry import approvals, audit
from registry.approval_state import DEPLOYMENT_KINDS, GovernanceState
from registry.audit_verify import anchor
from registry.row_backing import deployment_row
from registry.store import Deployment

log = logging.getLogger(__name__)

ACTOR = "govml-lifecycle"


@dataclass(frozen=True)
class Subject:
    """What a lifecycle event is about: the model, the lifecycle run, the version once
    registered (the filter ``audit.events`` takes and the columns an event stores)."""

    model_name: str
    run_id: str
    model_version: str | None = None


def append_once(url: str, kind: str, payload: dict[str, Any], subject: Subject) -> bool:
    """Append the lifecycle's event unless the identical one (kind, subject, payload) is
    there; True if new."""
    wanted = json.loads(audit.canonical_json(payload))
    about = asdict(subject)
    if any(e.payload == wanted for e in audit.events(url, **about, kinds=[kind])):
        return False
    audit.append_event(url, kind, actor=ACTOR, payload=payload, **about)
    return True


def _read(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def record_data_validation(url: str, spec: ModelSpec, run_id: str, folder: Path) -> bool:
    """``data_validated`` with the outcome, whether it passed or stopped the run."""
    result = _read(Path(folder) / "result.json")
    if result is None:
        return False
    payload = {
        "passed": bool(result.get("passed")),
        "data_sha256": result.get("data_sha256"),
        "rows": result.get("rows"),
        "suite": result.get("suite"),
        "expectations": result.get("expectations"),
        "failed": list(result.get("failed") or []),
        "warnings": list(result.get("warnings") or []),
        "reference_profile": result.get("reference_profile"),
    }
    return append_once(url, "data_validated", payload, Subject(spec.name, run_id))


def record_gate_results(url: str, spec: ModelSpec, run_id: str, folder: Path) -> int:
    """One ``gate_result`` per check (pass, warn, fail, skipped); returns how many were new."""
    gates = _read(Path(folder) / "gates.json")
    if gates is None:
        return 0
    new = 0
    for check in gates.get("checks", []):
        payload = {
            k: check.get(k) for k in ("name", "status", "value", "op", "threshold", "message")
        }
        payload["passed_overall"] = bool(gates.get("passed"))
        new += append_once(url, "gate_result", payload, Subject(spec.name, run_id))
    return new


def record_registration(url: str, run_id: str, result: dict[str, Any]) -> bool:
    payload = {
        "alias": result.get("alias"),
        "artifact_sha256": result.get("artifact_sha256"),
        "mlflow_run_id": result.get("run_id"),
        "model_uri": result.get("model_uri"),
    }
    subject = Subject(result["model_name"], run_id, str(result["version"]))
    return append_once(url, "model_registered", payload, subject)


def _model_features(path: Path) -> list[str]:
    from pipelines.training import load_model

    return list(load_model(path).feature_name())


def open_approval(
    url: str,
    tracking_uri: str,
    spec: ModelSpec,
    run_dir: Path,
    registered: dict[str, Any],
    *,
    origin: approvals.RunOrigin,
    champion_model: Path | None,
    out_dir: Path,
) -> dict[str, Any]:
    """Assess the change's risk and open the approval request for the registered version.

    The request is mirrored as model-version tags and written to ``out_dir/request.json``.
    """
    from pipelines.artifacts import write_json
    from registry.mlflow_registry import tag_version

    gates = _read(run_dir / "gates" / "gates.json") or {}
    features = (_read(run_dir / "features" / "features.json") or {}).get("features") or []
    champion_features = _model_features(champion_model) if champion_model else None
    reasons = approvals.assess_risk(spec, gates, list(features), champion_features)
    state = approvals.request_approval(
        url,
        spec,
        model_version=str(registered["version"]),
        artifact_sha256=registered["artifact_sha256"],
        origin=origin,
        risk_reasons=reasons,
    )
    tag_version(tracking_uri, state.model_name, state.model_version, state.mlflow_tags())
    payload = state.to_dict()
    write_json(Path(out_dir) / "request.json", payload)
    return payload


def _check_consumable(
    session: Session, chain: GovernanceState, state: approvals.ApprovalState, actor: str
) -> None:
    """Refuse unless ``state`` is still this version's valid, unused approval."""
    found, problem = approvals.deploy_problem(
        session,
        chain,
        state.model_name,
        state.model_version,
        state.artifact_sha256,
        actor,
        audit.clock(),
    )
    if problem is not None or found is None or found.id != state.id:
        why = problem or f"approval request {state.id} is not this version's approval"
        raise ApprovalError(f"{state.model_name} v{state.model_version}: deployment refused: {why}")


@dataclass(frozen=True)
class _Action:
    """What a deployment did: where, which action, at what traffic share, by whom."""

    environment: str
    action: str
    actor: str
    traffic_percent: float | None
    details: dict[str, Any]


def _deployment_index_row(
    record: audit.AuditRecord, state: approvals.ApprovalState, done: _Action
) -> Deployment:
    """The ``deployments`` row a deployment event backs."""
    return Deployment(
        model_name=state.model_name,
        model_version=state.model_version,
        artifact_sha256=state.artifact_sha256,
        environment=done.environment,
        action=done.action,
        traffic_percent=done.traffic_percent,
        approval_request_id=state.id,
        actor=done.actor,
        occurred_at=record.occurred_at,
        details=done.details,
        audit_seq=record.seq,
    )


def record_deployment(
    url: str,
    state: approvals.ApprovalState,
    *,
    environment: str,
    action: str,
    actor: str,
    traffic_percent: float | None = None,
    details: dict[str, Any] | None = None,
    consume: bool = False,
) -> None:
    """A deployment's audit event (and its ``deployments`` index row), then a checkpoint.

    ``consume``: this deployment uses the approval, which must still be valid and
    unused in the chain (checked again here, under the chain's lock). The approvers
    named in the event come from the chain, never from the caller.
    """
    kind = DEPLOYMENT_KINDS[action]

    def work(session: Session, chain: GovernanceState) -> None:
        request = chain.requests.get(state.id)
        if consume:
            _check_consumable(session, chain, state, actor)
        record = audit.append_event(
            session,
            kind,
            actor=actor,
            payload={
                "action": action,
                "environment": environment,
                "traffic_percent": traffic_percent,
                "approval_request_id": state.id,
                "approvers": sorted(request.approvers()) if request is not None else [],
                "artifact_sha256": state.artifact_sha256,
                "consumes_approval": bool(consume),
                **dict(details or {}),
            },
            model_name=state.model_name,
            model_version=state.model_version,
            run_id=state.run_id,
        )
        done = _Action(environment, action, actor, traffic_percent, dict(details or {}))
        session.add(_deployment_index_row(record, state, done))

    approvals.in_chain_transaction(url, work)
    anchor(url, actor, reason=f"{action} {state.model_name} v{state.model_version}")


def deployments(url: str, model_name: str, model_version: str | None = None) -> list[dict]:
    """Every deployment action of a model (or one version), oldest first, from the chain."""
    return [
        deployment_row(event)
        for event in approvals.governance_state(url).deployments
        if event.model_name == model_name
        and (model_version is None or event.model_version == str(model_version))
    ]


def _released_by(url: str, model_name: str, version: str, run_id: str) -> dict[str, Any] | None:
    """The version's ``deployed`` row of lifecycle run ``run_id`` (None: not released yet)."""
    for done in deployments(url, model_name, version):
        if done["action"] == "deployed" and done["details"].get("lifecycle_run_id") == run_id:
            return done
    return None


def release_approved(
    url: str,
    tracking_uri: str,
    model_name: str,
    model_version: str,
    *,
    actor: str,
    run_id: str,
    out_dir: Path | None = None,
    serve: Callable[[approvals.ApprovalState], dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """The deploy step: use a valid approval of exactly this version and release it.

    The artifact's SHA-256 is recomputed from the registry now, so an artifact
    changed after approval voids the approval. ``serve`` (the orchestration's
    deployer) then puts the version behind an endpoint and checks its answers; only
    then does the version get the ``challenger`` alias and a ``deployments`` row
    (using the approval), with the endpoint in the row's details.
    """
    from registry.mlflow_registry import CHALLENGER, artifact_sha256_of, set_alias

    done = _released_by(url, model_name, str(model_version), run_id)
    if done is not None:
        log.info("%s v%s already released by run %s", model_name, model_version, run_id)
        anchor(url, actor, reason=f"deployed {model_name} v{model_version}")
        return _release_result(done, out_dir)
    sha = artifact_sha256_of(tracking_uri, model_name, str(model_version))
    state = approvals.authorise_deploy(url, model_name, str(model_version), sha, actor=actor)
    served = serve(state) if serve is not None else {}
    set_alias(
        tracking_uri,
        model_name,
        CHALLENGER,
        str(model_version),
        actor=actor,
        reason=f"released by run {run_id} under approval request {state.id}",
        artifact_sha256=sha,
        governance_url=url,
    )
    record_deployment(
        url,
        state,
        environment=str(served.get("deployer") or "registry"),
        action="deployed",
        actor=actor,
        details={"alias": CHALLENGER, "lifecycle_run_id": run_id, **served},
        consume=True,
    )
    _tag_released(url, tracking_uri, state)
    log.info(
        "%s v%s released as %s (approvers %s)",
        model_name,
        model_version,
        CHALLENGER,
        ", ".join(state.approvers),
    )
    return _release_result(deployments(url, model_name, str(model_version))[-1], out_dir)


def _tag_released(url: str, tracking_uri: str, state: approvals.ApprovalState) -> None:
    """Mirror the used approval and the release time as the version's MLflow tags."""
    from registry.mlflow_registry import tag_version

    released = approvals.get_request(url, state.model_name, state.model_version, state.run_id)
    tag_version(
        tracking_uri,
        state.model_name,
        state.model_version,
        released.mlflow_tags() | {"govml.deployed_at": dt.datetime.now(dt.UTC).isoformat()},
    )


def _release_result(row: dict[str, Any], out_dir: Path | None) -> dict[str, Any]:
    from pipelines.artifacts import write_json

    result = {
        "model_name": row["model_name"],
        "model_version": row["model_version"],
        "alias": row["details"].get("alias"),
        "artifact_sha256": row["artifact_sha256"],
        "approval_request_id": row["approval_request_id"],
        "lifecycle_run_id": row["details"].get("lifecycle_run_id"),
        "endpoint": row["details"].get("endpoint"),
        "transformer": row["details"].get("transformer"),
        "environment": row["environment"],
        "actor": row["actor"],
        "occurred_at": row["occurred_at"],
    }
    if out_dir is not None:
        write_json(Path(out_dir) / "deploy.json", result)
    return result
