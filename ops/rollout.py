"""Rollouts from the orchestration side: the CLI and the rollout DAG call these.

The controller (:mod:`serving.control.rollout_controller`) moves the gateway's routes
(:mod:`serving.control.routes`: the files, the recorded endpoints, who owns a route); this
module feeds it the live observations (:mod:`serving.control.rollout_windows`), records every
transition in the governance store (a ``deployments`` row and its audit event, with the
actor), and moves the MLflow ``champion`` alias on promotion. A rollback restores the
champion in the routes file before anything is recorded.

Files under ``GOVML_SERVING_DIR``: ``gateway/routes.json`` (the gateway's routes, every
model), ``gateway/shadow.jsonl`` (its shadow comparisons), ``rollouts/<model>.json``
(the controller's state) and ``rollouts/<model>.baseline.json`` (the gateway's counters
when the current step began).

Endpoints are where the chain last recorded each version served (its deployment, or
``make up``'s ``endpoint_reconciled``); a recorded endpoint may still be dead (a stopped
server). The controller probes an endpoint before it routes more traffic to it
(:func:`serving.control.rollout_windows.endpoint_problem`). A person's action towards a dead
endpoint is refused: one line (:class:`~serving.control.rollout_controller.EndpointDown`) and a
``rollout_paused`` audit event naming the endpoint and the probe's answer, routes
unchanged. The controller's own step rolls back instead (``rolled_back``, with the
same reason), so no traffic stays on the dead endpoint.
"""

from __future__ import annotations

import json
import logging
import os
import urllib.request
from pathlib import Path
from typing import Any

from pipelines.config import Settings
from pipelines.errors import DeploymentError
from pipelines.rollout import Window, check_guardrails
from pipelines.spec import ModelSpec
from serving.control.deployers import Release
from serving.control.rollout_controller import EndpointDown, Event, RolloutController, RolloutError
from serving.control.rollout_windows import (
    challenger_errors,
    endpoint_problem,
    gateway_counts,
    log_rows,
    read_labels,
    shadow_pairs,
    window_of,
)
from serving.control.routes import controller, endpoint_of, gateway_dir, routes_path, running_abtest

log = logging.getLogger(__name__)
CONTROLLER = "rollout-controller"
ACTIONS = {
    "rollout_started": "shadow",
    "rollout_step": "canary",
    "rollout_rolled_back": "rolled_back",
    "champion_promoted": "promoted",
}
AUDIT_ONLY = {
    "rollout_paused": "rollout_paused",
    "rollout_resumed": "rollout_resumed",
    "awaiting_approval": "rollout_awaiting_approval",
}


def gateway_url() -> str:
    return os.environ.get("GOVML_GATEWAY_URL", "http://127.0.0.1:8090").rstrip("/")


def _deployment_name(model: str, version: str) -> str:
    return Release(model, str(version), "", "").name


def _counts(model: str) -> dict[str, float]:
    try:
        with urllib.request.urlopen(f"{gateway_url()}/metrics", timeout=5) as resp:
            return gateway_counts(resp.read().decode(), model)
    except OSError as exc:
        raise DeploymentError(f"the gateway at {gateway_url()} does not answer: {exc}") from None


def _baseline_path(settings: Settings, model: str) -> Path:
    return settings.serving_dir / "rollouts" / f"{model}.baseline.json"


def _snapshot(settings: Settings, model: str) -> None:
    path = _baseline_path(settings, model)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(_counts(model)))


def record(settings: Settings, event: Event) -> None:
    """The event in the governance store (and the champion alias on promotion)."""
    from registry import approvals, audit
    from registry.governance import record_deployment
    from registry.mlflow_registry import CHAMPION, set_alias

    details = {"rollout_event": event.kind, **event.detail}
    if event.kind in AUDIT_ONLY:
        audit.append_event(
            settings.governance_url,
            AUDIT_ONLY[event.kind],
            actor=event.actor,
            payload={"traffic_percent": event.percent, **details},
            model_name=event.model,
            model_version=event.version,
        )
        return
    action = ACTIONS.get(event.kind)
    if action is None:  # holds are not transitions
        return
    state = approvals.get_request(settings.governance_url, event.model, event.version)
    if action == "promoted":
        set_alias(
            settings.mlflow_tracking_uri,
            event.model,
            CHAMPION,
            event.version,
            actor=event.actor,
            reason=f"promoted by the rollout ({event.kind})",
            governance_url=settings.governance_url,
        )
    record_deployment(
        settings.governance_url,
        state,
        environment="gateway",
        action=action,
        actor=event.actor,
        traffic_percent=float(event.percent),
        details=details,
    )


def record_refusal(
    settings: Settings, model: str, version: str, exc: EndpointDown, actor: str, percent: int = 0
) -> None:
    """A refused routing to a dead endpoint, in the audit trail (``rollout_paused``)."""
    from registry import audit

    audit.append_event(
        settings.governance_url,
        "rollout_paused",
        actor=actor,
        payload={"rollout_event": "endpoint_down", "traffic_percent": percent, **exc.detail()},
        model_name=model,
        model_version=str(version),
    )
    log.info("%s", exc)  # the caller reports it (one line for a person)


def start(settings: Settings, spec: ModelSpec, version: str, actor: str) -> Event:
    """Shadow the version behind the champion (both must be deployed)."""
    from registry.mlflow_registry import CHAMPION, version_by_alias

    test_id = running_abtest(settings, spec.name)
    if test_id is not None:  # both would own the gateway route
        raise RolloutError(f"{spec.name}: A/B test {test_id} is running; stop it first")
    current = version_by_alias(settings.mlflow_tracking_uri, spec.name, CHAMPION)
    if current is None:
        raise RolloutError(
            f"{spec.name} has no champion to roll out against; promote the first version "
            f"with `govml rollout promote {spec.name} --version {version}`"
        )
    if str(current.version) == str(version):
        raise RolloutError(f"{spec.name} v{version} is already the champion")
    ctl = controller(settings, spec)
    champion = endpoint_of(settings, spec.name, str(current.version))
    challenger = endpoint_of(settings, spec.name, str(version))
    try:
        event = ctl.start(champion, challenger, actor)
    except EndpointDown as exc:
        record_refusal(settings, spec.name, str(version), exc, actor)
        raise
    record(settings, event)
    _snapshot(settings, spec.name)
    return event


def observe(settings: Settings, spec: ModelSpec) -> tuple[Window, Window, Any, list]:
    """(champion window, challenger window, mirrored pairs, trips) for the current step."""
    ctl = controller(settings, spec)
    state = ctl.load()
    if state is None:
        raise RolloutError(f"{spec.name}: no rollout in progress")
    since = state.step_started
    folder = settings.serving_dir
    champion_rows = log_rows(
        folder / _deployment_name(spec.name, state.champion["version"]) / "predictions", since
    )
    challenger_rows = log_rows(
        folder / _deployment_name(spec.name, state.challenger["version"]) / "predictions", since
    )
    labels = read_labels(settings.var_dir / "labels" / spec.name)
    paired = None
    if state.phase == "shadow":
        primary, mirrored, copies, failed, _ = shadow_pairs(
            gateway_dir(settings) / "shadow.jsonl", since
        )
        challenger = window_of(challenger_rows, requests=copies, errors=failed, labels=labels)
        paired = (primary, mirrored)
    else:
        try:
            before = json.loads(_baseline_path(settings, spec.name).read_text())
        except (OSError, ValueError):
            before = {}
        owed, failed = challenger_errors(_counts(spec.name), before)
        challenger = window_of(challenger_rows, requests=owed, errors=failed, labels=labels)
    champion = window_of(champion_rows, labels=labels)
    trips = check_guardrails(
        spec.rollout.guardrails,
        spec.gates.decision_threshold,
        champion,
        challenger,
        paired,
        use_case=spec.use_case,
    )
    return champion, challenger, paired, trips


def evaluate(settings: Settings, spec: ModelSpec, actor: str = CONTROLLER) -> Event:
    """One controller step on the live observations; recorded; the new state's event."""
    _, challenger, _, trips = observe(settings, spec)
    event = controller(settings, spec).step(trips, requests=challenger.requests, actor=actor)
    if event.kind in ("rollout_step", "rollout_resumed"):
        _snapshot(settings, spec.name)
    record(settings, event)
    if trips:
        log.warning("%s: rolled back: %s", spec.name, "; ".join(t.message for t in trips))
    return event


def act(settings: Settings, spec: ModelSpec, action: str, actor: str, reason: str = "") -> Event:
    """A human's action: pause, resume, rollback, approve (the go for 100 %), promote."""
    ctl = controller(settings, spec)
    try:
        return _act(settings, spec, ctl, action, actor, reason)
    except EndpointDown as exc:
        state = ctl.load()
        version = state.challenger["version"] if state else exc.endpoint.get("version", "")
        record_refusal(settings, spec.name, version, exc, actor, state.percent if state else 0)
        raise


def _act(
    settings: Settings, spec: ModelSpec, ctl: RolloutController, action: str, actor: str,
    reason: str,
) -> Event:  # fmt: skip
    if action == "pause":
        event = ctl.pause(actor, reason or "paused by an operator")
    elif action == "resume":
        event = ctl.resume(actor)
        _snapshot(settings, spec.name)
    elif action == "rollback":
        event = ctl.rollback(actor, reason or "rolled back by an operator")
    elif action == "approve":
        event = ctl.approve(actor)
        _snapshot(settings, spec.name)
    elif action == "promote":
        event = ctl.promote(actor)
    else:
        raise RolloutError(f"unknown rollout action {action!r}")
    record(settings, event)
    return event


def promote_first(settings: Settings, spec: ModelSpec, version: str, actor: str) -> Event:
    """The first champion of a model: nothing to compare with, so no rollout."""
    import time

    from registry.mlflow_registry import CHAMPION, version_by_alias

    current = version_by_alias(settings.mlflow_tracking_uri, spec.name, CHAMPION)
    if current is not None:
        raise RolloutError(
            f"{spec.name} already has a champion (v{current.version}): roll v{version} out "
            f"with `govml rollout start {spec.name} --version {version}`"
        )
    endpoint = endpoint_of(settings, spec.name, str(version))
    why = endpoint_problem(spec.name, endpoint)
    if why is not None:
        exc = EndpointDown(spec.name, "champion", endpoint, why, "first promotion")
        record_refusal(settings, spec.name, str(version), exc, actor)
        raise exc
    from serving.gateway_routes import load_routes, write_routes

    path = routes_path(settings)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        raw = json.loads(path.read_text())
    except (OSError, ValueError):
        raw = {"models": {}}
    raw.setdefault("models", {})[spec.name] = {"champion": endpoint}
    write_routes(path, raw)
    load_routes(path)
    event = Event("champion_promoted", spec.name, str(version), 100, actor, time.time(),
                  {"previous": None, "first": True})  # fmt: skip
    record(settings, event)
    return event
