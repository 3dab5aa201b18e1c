"""The model endpoints of the embedded stack: ``make up`` serves each model's champion.

For every registered model, :func:`serve_models` picks the version to serve:

- the version holding the MLflow alias ``champion``;
- a model without a champion yet: its most recently deployed version (the lifecycle's
  deploy step gives it the alias ``challenger``), said so in the report.

Only a version the governance store shows as approved (an ``approved`` request) and
released under that approval (a ``deployments`` row naming the request) is served, with
the approved artifact SHA-256 (the model server refuses any other file). Anything else,
e.g. a ``champion`` alias set by hand in MLflow, is refused and reported. Serving here
restarts an approved deployment; it is not a new one and uses no approval.

:func:`stop_models` stops the local model servers (``make down``); servers of the
``kubernetes`` deployer are left to the cluster.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipelines.config import Settings
from pipelines.errors import GovMLError

log = logging.getLogger(__name__)

ACTIVE_ACTIONS = ("deployed", "shadow", "canary", "promoted")


@dataclass(frozen=True)
class Choice:
    """The version of one model to serve, or why none is."""

    model_name: str
    version: str | None
    alias: str | None
    artifact_sha256: str | None = None
    approval_request_id: int | None = None
    problem: str | None = None


@dataclass(frozen=True)
class Served:
    model_name: str
    version: str | None
    alias: str | None
    url: str | None
    note: str


def registered_models(tracking_uri: str) -> list[str]:
    from registry.mlflow_registry import _client

    return sorted(m.name for m in _client(tracking_uri).search_registered_models())


def _approved_release(url: str, name: str, version: str) -> tuple[Any, str | None]:
    """(the approved request of ``version`` it was released under, None) or (None, why not)."""
    from registry.approvals import APPROVED, list_requests
    from registry.governance import deployments

    approved = [
        r
        for r in list_requests(url, name)
        if r.model_version == str(version) and r.status == APPROVED
    ]
    if not approved:
        return None, "has no recorded approval"
    released = {
        row["approval_request_id"]
        for row in deployments(url, name, str(version))
        if row["action"] in ACTIVE_ACTIONS
    }
    for request in reversed(approved):
        if request.id in released:
            return request, None
    return None, "is approved but was never released by the deploy step"


def _latest_deployed(url: str, name: str) -> str | None:
    """The most recently deployed version still in service (not rolled back or retired)."""
    from registry.governance import deployments

    last: dict[str, dict[str, Any]] = {}
    for row in deployments(url, name):  # in time order
        last[row["model_version"]] = row
    active = [row for row in last.values() if row["action"] in ACTIVE_ACTIONS]
    if not active:
        return None
    return max(active, key=lambda r: (r["occurred_at"], int(r["model_version"])))["model_version"]


def choose(settings: Settings, tracking_uri: str, name: str) -> Choice | None:
    """Which version of ``name`` to serve; None when the model has nothing deployed."""
    from registry.mlflow_registry import CHALLENGER, CHAMPION, version_by_alias

    url = settings.governance_url
    champion = version_by_alias(tracking_uri, name, CHAMPION)
    if champion is not None:
        version, alias = str(champion.version), CHAMPION
    else:
        version, alias = _latest_deployed(url, name), CHALLENGER
        if version is None:
            return None
    request, problem = _approved_release(url, name, version)
    if request is None:
        return Choice(name, version, alias, problem=f"{name} v{version} ({alias}) {problem}")
    return Choice(name, version, alias, request.artifact_sha256, request.id)


def serve_models(settings: Settings, tracking_uri: str | None = None) -> list[Served]:
    """Start the server of each model's champion (or latest deployed version); a report."""
    from ops.deploy import deployer_for
    from registry.mlflow_registry import CHAMPION, serving_uri
    from serving.deployers import Release

    tracking_uri = tracking_uri or settings.mlflow_tracking_uri
    out: list[Served] = []
    try:
        names = registered_models(tracking_uri)
    except Exception as exc:  # noqa: BLE001 (the stack stays up; the report says why)
        return [Served("-", None, None, None, f"cannot list registered models: {exc}")]
    deployer = None
    for name in names:
        try:
            choice = choose(settings, tracking_uri, name)
        except GovMLError as exc:
            out.append(Served(name, None, None, None, f"{name}: not served: {exc}"))
            continue
        if choice is None:
            continue
        if choice.problem is not None:
            out.append(
                Served(name, choice.version, choice.alias, None, f"NOT served: {choice.problem}")
            )
            continue
        assert choice.version is not None and choice.artifact_sha256 is not None
        spec_path = settings.specs_dir / f"{name}.yaml"
        try:
            deployer = deployer or deployer_for(settings)
            release = Release(
                model_name=name,
                version=choice.version,
                model_uri=serving_uri(tracking_uri, name, choice.version),
                artifact_sha256=choice.artifact_sha256,
                approval_request_id=choice.approval_request_id,
                spec_path=str(spec_path) if spec_path.is_file() else None,
                **_features_of_last_deploy(deployer, name, choice.version),
            )
            endpoint = deployer.deploy(release)
        except Exception as exc:  # noqa: BLE001 (one model's failure must not stop the others)
            note = f"{name} v{choice.version} ({choice.alias}): NOT served: {exc}"
            out.append(Served(name, choice.version, choice.alias, None, note))
            continue
        if choice.alias == CHAMPION:
            note = f"{name} v{choice.version} (champion) serving at {endpoint.url}"
        else:
            note = (
                f"{name} has no champion yet: serving its most recently deployed approved "
                f"version v{choice.version} ({choice.alias}) at {endpoint.url}"
            )
        out.append(Served(name, choice.version, choice.alias, endpoint.url, note))
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
