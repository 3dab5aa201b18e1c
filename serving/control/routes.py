"""The gateway's routes, the endpoints they point at, and who owns a model's traffic.

Files under ``GOVML_SERVING_DIR``: ``gateway/routes.json`` (the gateway's routes, every
model), ``rollouts/<model>.json`` (the rollout controller's state) and
``abtests/<model>.json`` (the A/B test's state).

Endpoints are where the chain last recorded each version served (its deployment, or
``make up``'s ``endpoint_reconciled``): :func:`endpoint_of` reads it, and
:func:`reconcile_endpoints` keeps it the live one.

Ownership: a model's route carries its champion alone, or one of two things on top of it,
never both: a rollout (shadow, canary, awaiting approval, paused: :func:`active_rollout`)
or a running A/B test (:func:`running_abtest`). Each refuses to start while the other
holds the route (:mod:`ops.rollout`, :mod:`ops.abtest`).
"""

from __future__ import annotations

import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from pipelines.config import Settings
from pipelines.errors import DeploymentError, GovMLError
from pipelines.files import read_json_or_none
from pipelines.spec import ModelSpec
from serving.control.rollout_controller import ACTIVE, RolloutController
from serving.control.rollout_windows import endpoint_problem

RUNNING = "running"  # an A/B test's status while it holds the route


class RouteError(GovMLError):
    """A routes or ownership file that cannot be read."""

    exit_code = 2


# --------------------------------------------------------------------------- files
def gateway_dir(settings: Settings) -> Path:
    return settings.serving_dir / "gateway"


def routes_path(settings: Settings) -> Path:
    return gateway_dir(settings) / "routes.json"


def rollout_state_path(settings: Settings, model: str) -> Path:
    return settings.serving_dir / "rollouts" / f"{model}.json"


def abtest_state_path(settings: Settings, model: str) -> Path:
    return settings.serving_dir / "abtests" / f"{model}.json"


# --------------------------------------------------------------------------- routes
def read_routes(settings: Settings) -> dict[str, Any]:
    """The routes file (``{"models": {}}`` when there is none yet)."""
    path = routes_path(settings)
    data = read_json_or_none(path, RouteError, f"routes file {path}")
    return data if isinstance(data, dict) else {"models": {}}


def write_route(settings: Settings, model: str, route: dict[str, Any]) -> None:
    """Replace one model's route (others stay as they are); atomically."""
    from serving.gateway_routes import write_routes

    data = read_routes(settings)
    models = dict(data.get("models") or {})
    models[model] = route
    path = routes_path(settings)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_routes(path, {"models": models})


# --------------------------------------------------------------------------- owners
def controller(settings: Settings, spec: ModelSpec) -> RolloutController:
    """The model's rollout controller (it moves the model's route during a rollout)."""
    return RolloutController(
        spec.name,
        spec.rollout,
        routes_path(settings),
        rollout_state_path(settings, spec.name),
        probe=endpoint_problem,
    )


def active_rollout(settings: Settings, spec: ModelSpec) -> str | None:
    """The phase of the rollout that holds the model's route, or None."""
    state = controller(settings, spec).load()
    return state.phase if state is not None and state.phase in ACTIVE else None


def running_abtest(settings: Settings, model: str) -> str | None:
    """The id of the A/B test that holds the model's route, or None."""
    path = abtest_state_path(settings, model)
    data = read_json_or_none(path, RouteError, f"A/B test state {path}")
    if data is None:
        return None
    if not isinstance(data, dict) or "id" not in data:
        raise RouteError(f"A/B test state {path}: not a test's state")
    return str(data["id"]) if data.get("status", RUNNING) == RUNNING else None


# --------------------------------------------------------------------------- endpoints
def endpoint_of(settings: Settings, model: str, version: str) -> dict[str, str]:
    """The endpoint the chain last recorded for a version: its deployment, or where
    ``make up`` served it since (``endpoint_reconciled``)."""
    from registry.reconcile import recorded_endpoint

    found = recorded_endpoint(settings.governance_url, model, str(version))
    if found is None:
        raise DeploymentError(f"{model} v{version} has no deployed endpoint: deploy it first")
    if not found.get("url"):
        raise DeploymentError(
            f"{model} v{version} is recorded as no longer served: deploy it again first"
        )
    return {"url": str(found["url"]), "version": str(version)}


def answers(url: str) -> bool:
    """Whether a model server answers its readiness check at ``url``."""
    try:
        with urllib.request.urlopen(f"{url}/v2/health/ready", timeout=3) as resp:  # noqa: S310
            return resp.status == 200
    except (urllib.error.URLError, OSError, ValueError):
        return False


def reconcile_endpoints(
    settings: Settings, name: str, version: str, endpoint: Any, actor: str
) -> list[str]:
    """The served version's recorded endpoint is its live one; other versions recorded at
    an address that no longer answers are recorded as not served. One line per change."""
    from registry.reconcile import active_versions, record_endpoint, recorded_endpoint

    url = settings.governance_url
    lines = []
    transformer = (endpoint.details.get("transformer") or {}).get("url")
    if record_endpoint(
        url, name, version, endpoint.url, transformer=transformer,
        deployment=endpoint.name, reason="served by make up", actor=actor,
    ):  # fmt: skip
        lines.append(f"endpoint of {name} v{version} recorded as {endpoint.url}")
    for other in active_versions(url, name):
        recorded = recorded_endpoint(url, name, other) if other != version else None
        if recorded and recorded.get("url") and not answers(recorded["url"]):
            why = f"{recorded['url']} does not answer; not served by make up"
            record_endpoint(url, name, other, None, reason=why, actor=actor)
            lines.append(f"endpoint of {name} v{other} cleared: {why}")
    return lines
