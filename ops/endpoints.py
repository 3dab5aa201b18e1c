"""The model endpoints of the embedded stack: ``make up`` serves each model's champion.

Before serving, the registry is reconciled with the audit chain
(:mod:`registry.reconcile`): each alias and each aliased artifact is held to what govml
recorded. Every new drift is recorded once (``registry_drift``) and raised as an alert
(:mod:`ops.notify`); the report line says what was found and what is served instead.

For every model :func:`serve_models` then serves the version the reconciler picked, fail
safe:

- the version holding the MLflow alias ``champion``, when it is sound (the alias is
  where govml last put it, the version is approved and was released under that
  approval, its artifact is the approved one);
- otherwise the last approved version: the one the chain last made champion, else the
  newest promoted, else, for a model without a champion yet, its most recently deployed
  version (the deploy step gives it the alias ``challenger``), said so in the report.

A ``champion`` set by hand on an unapproved version is drift: it is never served, and it
never takes the approved version offline. Serving here restarts an approved deployment;
it is not a new one and uses no approval; the server gets the approved SHA-256 and
refuses any other file.

Endpoints are reconciled too (:func:`serving.control.routes.reconcile_endpoints`): a
version served at a new address (the local deployer picks a free port each start) gets
an ``endpoint_reconciled`` event naming the old and the new URL, and a version still
recorded at an address that no longer answers (not served again after ``make
down``/``make up``) gets one with no URL: the recorded endpoint
(:func:`registry.reconcile.recorded_endpoint`) is always the live one.

:func:`stop_models` stops the local model servers (``make down``); servers of the
``kubernetes`` deployer are left to the cluster.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipelines.config import Settings
from pipelines.errors import GovMLError

log = logging.getLogger(__name__)

ACTOR = "govml-stack"


@dataclass(frozen=True)
class Served:
    """One model's line in the ``make up`` report, and what else was found (``details``:
    registry drift, endpoint changes)."""

    model_name: str
    version: str | None
    alias: str | None
    url: str | None
    note: str
    details: tuple[str, ...] = ()


def reconcile_registry(
    settings: Settings,
    names: list[str] | None = None,
    *,
    actor: str = ACTOR,
    tracking_uri: str | None = None,
) -> list[Any]:
    """Run the registry reconciler; alert on each drift it recorded now (once per drift).

    Returns its :class:`registry.reconcile.ModelReport` list.
    """
    from ops.notify import notify
    from registry.reconcile import reconcile

    reports = reconcile(
        settings.governance_url,
        tracking_uri or settings.mlflow_tracking_uri,
        names,
        actor=actor,
    )
    now = dt.datetime.now(dt.UTC).isoformat()
    for report in reports:
        serving = f"v{report.serve.version} stays served" if report.serve else "no approved version"
        for drift in report.recorded:
            notify({
                "model": report.model_name, "version": drift.version, "kind": "registry_drift",
                "severity": "alarm", "message": f"{drift.message}; {serving}",
                "details": drift.payload(), "raised_at": now,
            })  # fmt: skip
    return reports


def _note(report: Any, url: str) -> str:
    serve = report.serve
    name = report.model_name
    if serve.alias == "champion" and serve.source == "alias":
        return f"{name} v{serve.version} (champion) serving at {url}"
    if serve.alias == "champion":
        return f"{name} v{serve.version} (the last approved champion) serving at {url}"
    return (
        f"{name} has no champion yet: serving its most recently deployed approved "
        f"version v{serve.version} ({serve.alias}) at {url}"
    )


def serve_models(settings: Settings, tracking_uri: str | None = None) -> list[Served]:
    """Reconcile the registry, then start each model's chosen server; a report.

    One line per model served (or why not) and one per registry drift.
    """
    from ops.deploy import deployer_for
    from registry.mlflow_registry import serving_uri
    from serving.control.deployers import Release
    from serving.control.routes import reconcile_endpoints

    tracking_uri = tracking_uri or settings.mlflow_tracking_uri
    out: list[Served] = []
    try:
        reports = reconcile_registry(settings, tracking_uri=tracking_uri)
    except Exception as exc:  # noqa: BLE001 (the stack stays up; the report says why)
        return [Served("-", None, None, None, f"cannot reconcile the registry: {exc}")]
    deployer = None
    for report in reports:
        name = report.model_name
        drifts = tuple(f"REGISTRY DRIFT: {d.message}" for d in report.drifts)
        choice = report.serve
        if choice is None:
            if report.problem is not None:
                out.append(Served(name, None, None, None, f"NOT served: {report.problem}", drifts))
            elif drifts:
                note = f"{name}: NOT served: no approved version to serve"
                out.append(Served(name, None, None, None, note, drifts))
            continue
        spec_path = settings.specs_dir / f"{name}.yaml"
        try:
            deployer = deployer or deployer_for(settings)
            release = Release(
                model_name=name,
                version=choice.version,
                model_uri=serving_uri(
                    tracking_uri, name, choice.version, settings.mlflow_artifacts
                ),
                artifact_sha256=choice.artifact_sha256,
                approval_request_id=choice.approval_request_id,
                spec_path=str(spec_path) if spec_path.is_file() else None,
                **_features_of_last_deploy(deployer, name, choice.version),
            )
            endpoint = deployer.deploy(release)
        except Exception as exc:  # noqa: BLE001 (one model's failure must not stop the others)
            note = f"{name} v{choice.version} ({choice.alias}): NOT served: {exc}"
            out.append(Served(name, choice.version, choice.alias, None, note, drifts))
            continue
        moved = tuple(reconcile_endpoints(settings, name, choice.version, endpoint, ACTOR))
        note = _note(report, endpoint.url)
        out.append(Served(name, choice.version, choice.alias, endpoint.url, note, drifts + moved))
    if not out:
        out.append(Served("-", None, None, None, "no approved, deployed model version to serve"))
    return out


def _features_of_last_deploy(deployer: Any, name: str, version: str) -> dict[str, Any]:
    """The feature transformer the deploy step gave this version (its store and, for the
    in-process store, the history it warmed up from), so that ``make up`` serves it the
    same way; nothing for a version deployed without one. Raises when the in-process
    store's history is gone (the version would answer without its warm state)."""
    folder = getattr(deployer, "state_root", None)
    if folder is None:
        return {}
    try:
        deployed = Path(folder) / f"{name.replace('_', '-')}-v{version}"
        last = json.loads((deployed / "release.json").read_text())
    except (OSError, ValueError):
        return {}
    store, history = last.get("feature_store"), last.get("history")
    if not store:
        return {}
    if store == "memory" and not (history and Path(history).is_file()):
        raise GovMLError(
            f"its feature transformer warmed up from {history}, which is gone: deploy the "
            "version again from a lifecycle run (or use a Redis store: GOVML_FEATURE_STORE)"
        )
    return {"feature_store": store, "history": history}


def running(settings: Settings) -> list[dict[str, Any]]:
    """The local model servers that run now: name, supervisor pid, URL, readiness."""
    if settings.deployer != "local":
        return []
    from ops.deploy import deployer_for

    deployer = deployer_for(settings)
    found = []
    for name in deployer.deployed():
        state = deployer.status(name)
        if state.get("running") and state.get("url"):
            try:
                release = json.loads((deployer.state_root / name / "release.json").read_text())
            except (OSError, ValueError):
                release = {}
            found.append(
                {
                    "name": name,
                    "model_name": release.get("model_name"),
                    "version": release.get("version"),
                    **state,
                }
            )
    return found


def stop_models(settings: Settings) -> list[str]:
    """Stop every local model server of this stack; the names of those that ran."""
    if settings.deployer != "local":
        return []
    from ops.deploy import deployer_for

    deployer = deployer_for(settings)
    return [name for name in deployer.deployed() if deployer.stop(name)]
