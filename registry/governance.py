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
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session

from pipelines.spec import ModelSpec
from registry import approvals, audit
from registry.store import Deployment, engine_for

log = logging.getLogger(__name__)

ACTOR = "govml-lifecycle"


def append_once(
    url: str,
    kind: str,
    *,
    actor: str,
    payload: dict[str, Any],
    model_name: str | None = None,
    model_version: str | None = None,
    run_id: str | None = None,
) -> bool:
    """Append an event unless the identical one (kind, subject, payload) is there; True if new."""
    wanted = json.loads(audit.canonical_json(payload))
    for event in audit.events(
        url, model_name=model_name, model_version=model_version, run_id=run_id, kinds=[kind]
    ):
        if event.payload == wanted:
            return False
    audit.append_event(
        url,
        kind,
        actor=actor,
        payload=payload,
        model_name=model_name,
        model_version=model_version,
        run_id=run_id,
    )
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
    return append_once(
        url, "data_validated", actor=ACTOR, payload=payload, model_name=spec.name, run_id=run_id
    )


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
        new += append_once(
            url, "gate_result", actor=ACTOR, payload=payload, model_name=spec.name, run_id=run_id
        )
    return new


def record_registration(url: str, run_id: str, result: dict[str, Any]) -> bool:
    payload = {
        "alias": result.get("alias"),
        "artifact_sha256": result.get("artifact_sha256"),
        "mlflow_run_id": result.get("run_id"),
        "model_uri": result.get("model_uri"),
    }
    return append_once(
        url,
        "model_registered",
        actor=ACTOR,
        payload=payload,
        model_name=result["model_name"],
        model_version=str(result["version"]),
        run_id=run_id,
    )


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
    run_id: str,
    dag_id: str | None,
    triggered_by: str | None,
    author: str | None,
    champion_model: Path | None,
    out_dir: Path,
    trigger_authenticated: bool = True,
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
        run_id=run_id,
        dag_id=dag_id,
        triggered_by=triggered_by,
        author=author,
        risk_reasons=reasons,
        trigger_authenticated=trigger_authenticated,
    )
    tag_version(tracking_uri, state.model_name, state.model_version, state.mlflow_tags())
    payload = state.to_dict()
    write_json(Path(out_dir) / "request.json", payload)
    return payload


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
    """A ``deployments`` row and its ``deployed``/``promoted``/... audit event, atomically.

    ``consume``: this deployment uses the approval (once only).
    """
    kind = {
        "deployed": "deployed",
        "shadow": "deployed",
        "canary": "traffic_shifted",
        "promoted": "promoted",
        "rolled_back": "rolled_back",
        "retired": "deployed",
    }[action]
    now = dt.datetime.now(dt.UTC)
    with Session(engine_for(url)) as session, session.begin():
        if consume:
            approvals.consume_approval(session, state.id, now)
        session.add(
            Deployment(
                model_name=state.model_name,
                model_version=state.model_version,
                artifact_sha256=state.artifact_sha256,
                environment=environment,
                action=action,
                traffic_percent=traffic_percent,
                approval_request_id=state.id,
                actor=actor,
                occurred_at=now,
                details=dict(details or {}),
            )
        )
        audit.append_event(
            session,
            kind,
            actor=actor,
            payload={
                "action": action,
                "environment": environment,
                "traffic_percent": traffic_percent,
                "approval_request_id": state.id,
                "approvers": state.approvers,
                "artifact_sha256": state.artifact_sha256,
                **dict(details or {}),
            },
            model_name=state.model_name,
            model_version=state.model_version,
            run_id=state.run_id,
        )


def deployments(url: str, model_name: str, model_version: str | None = None) -> list[dict]:
    from sqlalchemy import select

    with Session(engine_for(url)) as session:
        query = select(Deployment).where(Deployment.model_name == model_name)
        if model_version is not None:
            query = query.where(Deployment.model_version == str(model_version))
        rows = session.scalars(query.order_by(Deployment.occurred_at, Deployment.id)).all()
        return [
            {
                "model_name": r.model_name,
                "model_version": r.model_version,
                "artifact_sha256": r.artifact_sha256,
                "environment": r.environment,
                "action": r.action,
                "traffic_percent": r.traffic_percent,
                "approval_request_id": r.approval_request_id,
                "actor": r.actor,
                "occurred_at": approvals.iso_utc(r.occurred_at),
                "details": dict(r.details or {}),
            }
            for r in rows
        ]


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
    from registry.mlflow_registry import CHALLENGER, artifact_sha256_of, set_alias, tag_version

    for done in deployments(url, model_name, str(model_version)):
        if done["action"] == "deployed" and done["details"].get("lifecycle_run_id") == run_id:
            log.info("%s v%s already released by run %s", model_name, model_version, run_id)
            return _release_result(done, out_dir)
    sha = artifact_sha256_of(tracking_uri, model_name, str(model_version))
    state = approvals.authorise_deploy(
        url, model_name, str(model_version), sha, actor=actor, consume=False
    )
    served = serve(state) if serve is not None else {}
    set_alias(tracking_uri, model_name, CHALLENGER, str(model_version))
    record_deployment(
        url,
        state,
        environment=str(served.get("deployer") or "registry"),
        action="deployed",
        actor=actor,
        details={"alias": CHALLENGER, "lifecycle_run_id": run_id, **served},
        consume=True,
    )
    tag_version(
        tracking_uri,
        model_name,
        str(model_version),
        state.mlflow_tags() | {"govml.deployed_at": dt.datetime.now(dt.UTC).isoformat()},
    )
    log.info(
        "%s v%s released as %s (approvers %s)",
        model_name,
        model_version,
        CHALLENGER,
        ", ".join(state.approvers),
    )
    return _release_result(deployments(url, model_name, str(model_version))[-1], out_dir)


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
