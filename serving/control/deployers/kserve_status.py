"""What a KServe ``InferenceService``'s status says: ready, failed for good, or still
coming up (read by :class:`serving.control.deployers.kubernetes.KubernetesDeployer`)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pipelines.errors import DeploymentError
from serving.control.checks import ANNOTATION_SHA256

# KServe's modelStatus.transitionStatus values that no amount of waiting fixes
FAILED_TRANSITIONS = ("BlockedByFailedLoad", "InvalidSpec")


def conditions(obj: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """The object's status conditions by type."""
    status = obj.get("status") or {}
    return {c.get("type", "?"): dict(c) for c in status.get("conditions") or [] if c}


def not_found(exc: Exception) -> bool:
    """Whether a Kubernetes API error means the object does not exist."""
    return getattr(exc, "status", None) == 404


def is_ready(name: str, obj: Mapping[str, Any], generation: int | None) -> bool:
    """Whether ``obj`` is Ready, with a URL, for ``generation``; DeploymentError when
    KServe could not load the model (waiting will not help)."""
    status = obj.get("status") or {}
    observed = status.get("observedGeneration")
    current = generation is None or observed is None or observed >= generation
    ready = conditions(obj).get("Ready", {})
    if current and str(ready.get("status")) == "True" and status.get("url"):
        return True
    model_status = status.get("modelStatus") or {}
    if current and model_status.get("transitionStatus") in FAILED_TRANSITIONS:
        failure = model_status.get("lastFailureInfo") or {}
        why = " ".join(str(failure[k]) for k in ("reason", "message") if failure.get(k))
        raise DeploymentError(
            f"{name}: KServe could not load the model "
            f"({model_status['transitionStatus']}: {why or 'no details'})"
        )
    return False


def describe(obj: Mapping[str, Any]) -> str:
    """The object's conditions in one line (for messages)."""
    if not obj:
        return "the object was not found"
    found = conditions(obj)
    if not found:
        return "no status conditions yet"
    return "; ".join(
        f"{kind}={c.get('status')}"
        + (f" ({c.get('reason')}: {c.get('message')})" if c.get("message") else "")
        for kind, c in sorted(found.items())
    )


def status_of(obj: Mapping[str, Any]) -> dict[str, Any]:
    """The deployer's ``status`` fields of an existing InferenceService."""
    status = obj.get("status") or {}
    ready = str(conditions(obj).get("Ready", {}).get("status")) == "True"
    annotations = (obj.get("metadata") or {}).get("annotations") or {}
    return {
        "running": ready,
        "cluster": True,
        "exists": True,
        "url": status.get("url"),
        "artifact_sha256": annotations.get(ANNOTATION_SHA256),
        "generation": (obj.get("metadata") or {}).get("generation"),
        "observed_generation": status.get("observedGeneration"),
        "conditions": describe(obj),
    }
