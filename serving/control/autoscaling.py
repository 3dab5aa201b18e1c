"""How many replicas a model version runs and what each may use: :class:`Scaling` (KServe's
autoscaler: replicas, metric, target) and :class:`Resources` (requests and limits), checked
before anything is rendered; and the PodDisruptionBudget of a hot standby."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any, Literal

from serving.control.checks import (
    INT32_MAX,
    LABEL_MODEL,
    LABEL_VERSION,
    Problems,
    check_int,
    label_value_problem,
    name_problem,
    parse_quantity,
)

ScaleMetric = Literal["concurrency", "cpu", "rps"]
SCALE_METRICS = ("concurrency", "cpu", "rps")


@dataclass(frozen=True)
class Scaling:
    """KServe's autoscaling of the predictor: ``scale_target`` is concurrent requests per
    replica, requests per second, or CPU utilisation percent (``scale_metric``)."""

    min_replicas: int = 1
    max_replicas: int = 3
    scale_metric: ScaleMetric = "concurrency"
    scale_target: int = 10


@dataclass(frozen=True)
class Resources:
    """Each replica's CPU and memory requests and limits (Kubernetes quantities)."""

    cpu_request: str = "500m"
    cpu_limit: str = "1"
    memory_request: str = "1Gi"
    memory_limit: str = "2Gi"


def check_scaling(problems: Problems, scaling: Scaling) -> None:
    """Every bad replica count, metric or target, into ``problems``."""
    min_replicas, max_replicas = scaling.min_replicas, scaling.max_replicas
    min_ok = check_int(problems, "min_replicas", min_replicas, 0, INT32_MAX)
    max_ok = check_int(problems, "max_replicas", max_replicas, 1, INT32_MAX)
    if min_ok and max_ok and min_replicas > max_replicas:
        problems.add("min_replicas", f"{min_replicas} is more than max_replicas {max_replicas}")
    if scaling.scale_metric not in SCALE_METRICS:
        problems.add(
            "scale_metric", f"{scaling.scale_metric!r} is not one of {list(SCALE_METRICS)}"
        )
    high = 100 if scaling.scale_metric == "cpu" else INT32_MAX
    check_int(problems, "scale_target", scaling.scale_target, 1, high)


def check_resources(problems: Problems, resources: Resources) -> None:
    """Every bad CPU or memory quantity (or a request above its limit), into ``problems``."""
    _check_pair(problems, "cpu", resources.cpu_request, resources.cpu_limit)
    _check_pair(problems, "memory", resources.memory_request, resources.memory_limit)


def _check_pair(problems: Problems, kind: str, request: object, limit: object) -> None:
    parsed: dict[str, Decimal] = {}
    for suffix, value in (("request", request), ("limit", limit)):
        name = f"{kind}_{suffix}"
        if not isinstance(value, str | int | float) or isinstance(value, bool):
            problems.add(name, f"must be a quantity such as 500m or 2Gi, not {value!r}")
            continue
        try:
            amount = parse_quantity(str(value))
        except (ValueError, InvalidOperation) as exc:
            problems.add(name, str(exc))
            continue
        if amount <= 0:
            problems.add(name, f"{value!r} must be greater than zero")
            continue
        parsed[suffix] = amount
    if len(parsed) == 2 and parsed["request"] > parsed["limit"]:
        problems.add(
            f"{kind}_request",
            f"{request!r} is more than {kind}_limit {limit!r} (Kubernetes refuses)",
        )


PDB_API_VERSION = "policy/v1"
#: the label KServe puts on every pod of an InferenceService
ISVC_POD_LABEL = "serving.kserve.io/inferenceservice"


def render_pod_disruption_budget(
    name: str,
    namespace: str,
    *,
    min_replicas: int,
    model_name: str | None = None,
    model_version: str | None = None,
) -> dict[str, Any]:
    """The PodDisruptionBudget of an InferenceService kept as a hot standby.

    ``maxUnavailable: 1``: a node drain or cluster upgrade evicts the model's pods one at
    a time, so with at least two replicas one always serves; it stays valid whatever
    the autoscaler does above the minimum. A single replica gets no budget (a budget
    that forbids evicting it would block every drain), so ``min_replicas`` must be >= 2.
    """
    problems = Problems()
    problems.add("name", name_problem(name, "dns1123-subdomain"))
    problems.add("namespace", name_problem(namespace, "dns1123-label"))
    if check_int(problems, "min_replicas", min_replicas, 0, INT32_MAX) and min_replicas < 2:
        problems.add(
            "min_replicas",
            f"{min_replicas}: a disruption budget needs at least 2 replicas (hot standby)",
        )
    labels = {}
    if model_name is not None:
        problems.add("model_name", label_value_problem(model_name))
        labels[LABEL_MODEL] = model_name
    if model_version is not None:
        problems.add("model_version", label_value_problem(str(model_version)))
        labels[LABEL_VERSION] = str(model_version)
    problems.raise_if_any(f"PodDisruptionBudget {name!r}")
    return {
        "apiVersion": PDB_API_VERSION,
        "kind": "PodDisruptionBudget",
        "metadata": {"name": name, "namespace": namespace, "labels": labels},
        "spec": {"maxUnavailable": 1, "selector": {"matchLabels": {ISVC_POD_LABEL: name}}},
    }
