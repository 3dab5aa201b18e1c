"""KServe ``InferenceService`` manifests: render, check against the real CRD, apply.

``render_inference_service`` builds the manifest (``serving.kserve.io/v1beta1``) for one
model version, checking every input first and raising one :class:`DeploymentError` that
names each bad field. Two predictor shapes:

- ``runtime="lightgbm"``: KServe's built-in LightGBM runtime (``kserve-lgbserver``, model
  format ``lightgbm`` v4) fetches ``storageUri`` with its storage initializer;
- ``runtime="custom"``: this project's model server image (``python -m serving``), which
  checks the artifact's SHA-256 before loading. URIs KServe's storage initializer can
  fetch (``s3://``, ``gs://``, ``pvc://``, ...) are downloaded to ``/mnt/models`` by KServe
  (``STORAGE_URI``); MLflow URIs (``models:/``, ``runs:/``) are resolved by the server.

Governance metadata: labels ``govml/model`` and ``govml/version`` (selectable, also put on
the predictor pods), annotations ``govml/artifact-sha256`` (64 hex characters do not fit a
label value, which Kubernetes caps at 63) and ``govml/approval-request``.

Closed by default: the project's server image always gets ``tokens_secret`` (the
deployment's Secret, :func:`render_tokens_secret`: ``tokens.json``, the hashed bearer
tokens its servers check, mounted read-only and re-read when the kubelet updates it;
``predictor-token``, the transformer's token for its predictor) and listens on the
pod's address (``--host=0.0.0.0``, explicit: inside a pod the network policy and the
Service are the boundary, and the token check still applies).

``validate_manifest`` checks a manifest against the ``openAPIV3Schema`` of KServe's CRD the
way the API server reads it (see :func:`structural_to_jsonschema`); it needs
``jsonschema``, which only the orchestration environment has, and is imported lazily.
``apply`` creates or updates the object with the Kubernetes client's server-side apply
(imported lazily; only the serving environment has it).
"""

from __future__ import annotations

import base64
import copy
import functools
import json
import os
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any, Literal, Protocol

import yaml

from pipelines.errors import DeploymentError

GROUP = "serving.kserve.io"
VERSION = "v1beta1"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "InferenceService"
PLURAL = "inferenceservices"
CRD_FILE = "serving.kserve.io_inferenceservices.yaml"
CRD_ENV = "GOVML_KSERVE_CRD"
REPO_ROOT = Path(__file__).resolve().parent.parent

LABEL_MODEL = "govml/model"
LABEL_VERSION = "govml/version"
ANNOTATION_SHA256 = "govml/artifact-sha256"
ANNOTATION_APPROVAL = "govml/approval-request"
GOVML_KEYS = (LABEL_MODEL, LABEL_VERSION, ANNOTATION_SHA256, ANNOTATION_APPROVAL)

CONTAINER_NAME = "kserve-container"
RESERVED_ENV = ("MODEL_NAME", "MODEL_URI", "EXPECTED_SHA256", "STORAGE_URI")
HTTP_PORT = 8080
MODEL_MOUNT = "/mnt/models"
LIGHTGBM_FORMAT_VERSION = "4"  # kserve-lgbserver's supportedModelFormats
FIELD_MANAGER = "govml"
APPLY_PATCH = "application/apply-patch+yaml"

Runtime = Literal["lightgbm", "custom"]
ScaleMetric = Literal["concurrency", "cpu", "rps"]
RUNTIMES = ("lightgbm", "custom")
SCALE_METRICS = ("concurrency", "cpu", "rps")

# Kubernetes name rules (k8s.io/apimachinery/pkg/util/validation).
DNS1035_LABEL = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
DNS1123_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
QUALIFIED_NAME = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")
SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")
LABEL_MAX = 63
SUBDOMAIN_MAX = 253
INT32_MAX = 2**31 - 1

# URI schemes KServe's default storage initializer fetches (ClusterStorageContainer
# "default": gs, s3, hdfs, webhdfs, http(s) incl. Azure blob/file, hf) plus pvc:// and
# oci:// (modelcar), which KServe handles without downloading.
STORAGE_SCHEMES = (
    "s3://",
    "gs://",
    "pvc://",
    "hdfs://",
    "webhdfs://",
    "http://",
    "https://",
    "hf://",
    "oci://",
)

_QUANTITY = re.compile(r"^([+-]?(?:\d+(?:\.\d*)?|\.\d+))([numkMGTPE]|[KMGTPE]i|[eE][+-]?\d+)?$")
_BINARY = {"Ki": 1, "Mi": 2, "Gi": 3, "Ti": 4, "Pi": 5, "Ei": 6}
_DECIMAL = {"n": -9, "u": -6, "m": -3, "": 0, "k": 3, "M": 6, "G": 9, "T": 12, "P": 15, "E": 18}


# --------------------------------------------------------------------------- checks
def parse_quantity(value: str) -> Decimal:
    """A Kubernetes resource quantity (``500m``, ``2Gi``, ``1e3``) as a number."""
    match = _QUANTITY.match(value.strip())
    if match is None:
        raise ValueError(f"{value!r} is not a Kubernetes quantity (e.g. 500m, 1, 512Mi, 2Gi)")
    number, suffix = Decimal(match.group(1)), match.group(2) or ""
    if suffix in _BINARY:
        return number * (Decimal(1024) ** _BINARY[suffix])
    if suffix in _DECIMAL:
        return number.scaleb(_DECIMAL[suffix])
    return number.scaleb(int(suffix[1:]))


def _name_problem(value: object, rule: str) -> str | None:
    if not isinstance(value, str) or not value:
        return "must be a non-empty string"
    if rule == "dns1035":
        ok, max_len = DNS1035_LABEL.match(value), LABEL_MAX
        text = "a DNS-1035 label (lower-case letters, digits and '-', starting with a letter)"
    elif rule == "dns1123-label":
        ok, max_len = DNS1123_LABEL.match(value), LABEL_MAX
        text = "a DNS-1123 label (lower-case letters, digits and '-')"
    else:
        ok, max_len = DNS1123_SUBDOMAIN.match(value), SUBDOMAIN_MAX
        text = "a DNS-1123 subdomain (lower-case letters, digits, '-' and '.')"
    if not ok:
        return f"{value!r} is not {text}"
    if len(value) > max_len:
        return f"{value!r} is {len(value)} characters long; the limit is {max_len}"
    return None


def _label_value_problem(value: object) -> str | None:
    if not isinstance(value, str):
        return "must be a string"
    if len(value) > LABEL_MAX:
        return f"{value!r} is {len(value)} characters long; a label value holds at most 63"
    if not LABEL_VALUE.match(value):
        return f"{value!r} is not a label value (letters, digits, '-', '_', '.'; alphanumeric ends)"
    return None


def _key_problem(key: object) -> str | None:
    """A label or annotation key: ``[prefix/]name``, prefix a DNS-1123 subdomain."""
    if not isinstance(key, str) or not key:
        return "keys must be non-empty strings"
    prefix, _, name = key.rpartition("/")
    if prefix and (_name_problem(prefix, "dns1123-subdomain") is not None):
        return f"key {key!r}: prefix {prefix!r} is not a DNS-1123 subdomain"
    if len(name) > LABEL_MAX or not QUALIFIED_NAME.match(name):
        return f"key {key!r}: name part must be 1-63 letters, digits, '-', '_', '.'"
    return None


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


class _Problems:
    """Collects every bad input, then raises once."""

    def __init__(self) -> None:
        self.items: list[str] = []

    def add(self, field_name: str, problem: str | None) -> None:
        if problem is not None:
            self.items.append(f"{field_name}: {problem}")

    def raise_if_any(self, what: str) -> None:
        if self.items:
            raise DeploymentError(f"cannot render {what}: " + "; ".join(self.items))


def _check_int(problems: _Problems, name: str, value: object, low: int, high: int) -> bool:
    if not _is_int(value):
        problems.add(name, f"must be a whole number, not {value!r}")
        return False
    assert isinstance(value, int)
    if not low <= value <= high:
        problems.add(name, f"{value} is outside {low}..{high}")
        return False
    return True


def _check_resources(problems: _Problems, kind: str, request: object, limit: object) -> None:
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


def _check_map(
    problems: _Problems, name: str, mapping: Mapping[str, str] | None, labels: bool
) -> None:
    if mapping is None:
        return
    if not isinstance(mapping, Mapping):
        problems.add(name, "must be a mapping of string to string")
        return
    for key, value in mapping.items():
        problems.add(name, _key_problem(key))
        if key in GOVML_KEYS:
            problems.add(name, f"{key!r} is set by the renderer; pass it as its own argument")
        if labels:
            problems.add(f"{name}[{key!r}]", _label_value_problem(value))
        elif not isinstance(value, str):
            problems.add(f"{name}[{key!r}]", "annotation values must be strings")


def _storage_problem(storage_uri: object, runtime: str) -> str | None:
    if not isinstance(storage_uri, str) or not storage_uri.strip():
        return "must be a non-empty URI"
    if runtime == "lightgbm" and not storage_uri.startswith(STORAGE_SCHEMES):
        return (
            f"{storage_uri!r}: KServe's storage initializer fetches only "
            f"{', '.join(STORAGE_SCHEMES)}; resolve an MLflow URI to its artifact location "
            "or use runtime='custom' (the project's server resolves MLflow URIs)"
        )
    return None


# --------------------------------------------------------------------------- render
def render_inference_service(
    name: str,
    namespace: str,
    storage_uri: str,
    *,
    runtime: Runtime = "lightgbm",
    image: str | None = None,
    model_name: str | None = None,
    model_version: str | int,
    artifact_sha256: str,
    approval_request: str | None = None,
    min_replicas: int = 1,
    max_replicas: int = 3,
    scale_target: int = 10,
    scale_metric: ScaleMetric = "concurrency",
    cpu_request: str = "500m",
    cpu_limit: str = "1",
    memory_request: str = "1Gi",
    memory_limit: str = "2Gi",
    canary_traffic_percent: int | None = None,
    service_account: str | None = None,
    env: Mapping[str, str] | None = None,
    labels: Mapping[str, str] | None = None,
    annotations: Mapping[str, str] | None = None,
    spec_file: str | None = None,
    tokens_secret: str | None = None,
    prediction_log_claim: str | None = None,
) -> dict[str, Any]:
    """The ``InferenceService`` for one model version; every bad input named at once.

    The custom runtime (the project's server image) takes what the local deployer gives
    its servers: ``spec_file`` (a path in the image, e.g. ``specs/fraud.yaml``) for strict
    input validation and decisions; ``tokens_secret``, a Secret with ``tokens.json``
    (hashed bearer tokens, mounted read-only) and optionally ``prediction-log-key``;
    ``prediction_log_claim``, a PersistentVolumeClaim for the prediction log.

    ``model_name`` (default: ``name``) is the name the model answers to
    (``/v1/models/<model_name>``) and the ``govml/model`` label. ``scale_target`` is
    concurrent requests per replica, requests per second, or CPU utilisation percent.
    ``canary_traffic_percent`` sends that share of traffic to this (latest) revision and
    the rest to the previous ready one; ``None`` sends it all.
    """
    problems = _Problems()
    problems.add("name", _name_problem(name, "dns1035"))
    problems.add("namespace", _name_problem(namespace, "dns1123-label"))
    if runtime not in RUNTIMES:
        problems.add("runtime", f"{runtime!r} is not one of {list(RUNTIMES)}")
    problems.add("storage_uri", _storage_problem(storage_uri, runtime))
    if runtime == "custom" and (not isinstance(image, str) or not image.strip() or " " in image):
        problems.add("image", f"runtime='custom' needs a container image, got {image!r}")
    if runtime == "lightgbm" and image is not None:
        problems.add("image", "only runtime='custom' takes an image (KServe picks lgbserver's)")
    served_name = name if model_name is None else model_name
    if model_name is not None:  # (the default, name, is checked above)
        problems.add(
            "model_name",
            _name_problem(model_name, "dns1123-subdomain") or _label_value_problem(model_name),
        )
    version = str(model_version) if _is_int(model_version) else model_version
    problems.add("model_version", _label_value_problem(version) or (None if version else "empty"))
    if not isinstance(artifact_sha256, str) or not SHA256_HEX.match(artifact_sha256):
        problems.add(
            "artifact_sha256", f"must be 64 lower-case hex characters, got {artifact_sha256!r}"
        )
    if approval_request is not None and (
        not isinstance(approval_request, str) or not approval_request
    ):
        problems.add("approval_request", "must be a non-empty string when given")
    min_ok = _check_int(problems, "min_replicas", min_replicas, 0, INT32_MAX)
    max_ok = _check_int(problems, "max_replicas", max_replicas, 1, INT32_MAX)
    if min_ok and max_ok and min_replicas > max_replicas:
        problems.add("min_replicas", f"{min_replicas} is more than max_replicas {max_replicas}")
    if scale_metric not in SCALE_METRICS:
        problems.add("scale_metric", f"{scale_metric!r} is not one of {list(SCALE_METRICS)}")
    high = 100 if scale_metric == "cpu" else INT32_MAX
    _check_int(problems, "scale_target", scale_target, 1, high)
    _check_resources(problems, "cpu", cpu_request, cpu_limit)
    _check_resources(problems, "memory", memory_request, memory_limit)
    if canary_traffic_percent is not None:
        _check_int(problems, "canary_traffic_percent", canary_traffic_percent, 0, 100)
    if service_account is not None:
        problems.add("service_account", _name_problem(service_account, "dns1123-subdomain"))
    _check_map(problems, "labels", labels, labels=True)
    _check_map(problems, "annotations", annotations, labels=False)
    if spec_file is not None and (
        not isinstance(spec_file, str) or not spec_file.endswith((".yaml", ".yml"))
    ):
        problems.add("spec_file", f"must be a .yaml path in the image, got {spec_file!r}")
    for field_name, value in (
        ("tokens_secret", tokens_secret),
        ("prediction_log_claim", prediction_log_claim),
    ):
        if value is not None:
            problems.add(field_name, _name_problem(value, "dns1123-subdomain"))
    if runtime == "custom" and tokens_secret is None:
        problems.add(
            "tokens_secret",
            "required: the project's model server never runs without bearer tokens",
        )
    if runtime == "lightgbm" and (spec_file or tokens_secret or prediction_log_claim):
        problems.add(
            "runtime",
            "spec_file, tokens_secret and prediction_log_claim need runtime='custom' "
            "(KServe's LightGBM server has no strict input, tokens or prediction log)",
        )
    if env is not None:
        for key, value in env.items():
            if not isinstance(key, str) or not key or not isinstance(value, str):
                problems.add("env", f"{key!r}: names and values must be non-empty strings")
            elif runtime == "custom" and key in RESERVED_ENV:
                problems.add("env", f"{key!r} is set by the renderer")
    problems.raise_if_any(f"InferenceService {name!r}")

    govml_labels = {LABEL_MODEL: served_name, LABEL_VERSION: version}
    meta_annotations = dict(annotations or {})
    meta_annotations[ANNOTATION_SHA256] = artifact_sha256
    if approval_request is not None:
        meta_annotations[ANNOTATION_APPROVAL] = approval_request
    resources = {
        "requests": {"cpu": str(cpu_request), "memory": str(memory_request)},
        "limits": {"cpu": str(cpu_limit), "memory": str(memory_limit)},
    }
    predictor: dict[str, Any] = {
        "minReplicas": min_replicas,
        "maxReplicas": max_replicas,
        "scaleMetric": scale_metric,
        "scaleTarget": scale_target,
    }
    if canary_traffic_percent is not None:
        predictor["canaryTrafficPercent"] = canary_traffic_percent
    if service_account is not None:
        predictor["serviceAccountName"] = service_account
    predictor["labels"] = dict(govml_labels)
    env_list = [{"name": k, "value": v} for k, v in (env or {}).items()]
    if runtime == "lightgbm":
        model: dict[str, Any] = {
            "modelFormat": {"name": "lightgbm", "version": LIGHTGBM_FORMAT_VERSION},
            "storageUri": storage_uri,
            "resources": resources,
        }
        if env_list:
            model["env"] = env_list
        predictor["model"] = model
    else:
        assert image is not None
        container = _custom_container(
            image, served_name, storage_uri, artifact_sha256, resources, env_list
        )
        container["args"].append(f"--model_version={version}")
        volumes = _governance_mounts(container, spec_file, tokens_secret, prediction_log_claim)
        predictor["containers"] = [container]
        if volumes:
            predictor["volumes"] = volumes
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": {**dict(labels or {}), **govml_labels},
            "annotations": meta_annotations,
        },
        "spec": {"predictor": predictor},
    }


TOKENS_MOUNT = "/etc/govml/tokens"
PREDICTION_LOG_MOUNT = "/var/log/govml"
POD_HOST = "0.0.0.0"  # noqa: S104 (a pod's own network namespace; tokens still required)


def _governance_mounts(
    container: dict[str, Any],
    spec_file: str | None,
    tokens_secret: str | None,
    prediction_log_claim: str | None,
) -> list[dict[str, Any]]:
    """Arguments, mounts and volumes for strict input, tokens and the prediction log."""
    volumes: list[dict[str, Any]] = []
    mounts: list[dict[str, Any]] = []
    if spec_file:
        container["args"].append(f"--spec={spec_file}")
    if tokens_secret:
        volumes.append(
            {"name": "govml-tokens", "secret": {"secretName": tokens_secret, "optional": False}}
        )
        mounts.append({"name": "govml-tokens", "mountPath": TOKENS_MOUNT, "readOnly": True})
        container["args"].append(f"--tokens={TOKENS_MOUNT}/{TOKENS_SECRET_KEY}")
        container["env"].append(
            {
                "name": "GOVML_PREDICTION_LOG_KEY",
                "valueFrom": {
                    "secretKeyRef": {
                        "name": tokens_secret,
                        "key": PREDICTION_LOG_KEY_SECRET_KEY,
                        "optional": True,
                    }
                },
            }
        )
    if prediction_log_claim:
        volumes.append(
            {
                "name": "govml-prediction-log",
                "persistentVolumeClaim": {"claimName": prediction_log_claim},
            }
        )
        mounts.append({"name": "govml-prediction-log", "mountPath": PREDICTION_LOG_MOUNT})
        # one folder per pod: replicas never share a file (names carry an instance id too)
        container["env"].append(
            {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}
        )
        container["args"].append(f"--prediction_log={PREDICTION_LOG_MOUNT}/$(POD_NAME)")
    if mounts:
        container["volumeMounts"] = mounts
    return volumes


def _custom_container(
    image: str,
    model_name: str,
    storage_uri: str,
    sha256: str,
    resources: dict[str, Any],
    extra_env: list[dict[str, str]],
) -> dict[str, Any]:
    fetched_by_kserve = storage_uri.startswith(STORAGE_SCHEMES)
    env = [
        {"name": "MODEL_NAME", "value": model_name},
        {"name": "MODEL_URI", "value": MODEL_MOUNT if fetched_by_kserve else storage_uri},
        {"name": "EXPECTED_SHA256", "value": sha256},
    ]
    if fetched_by_kserve:  # KServe injects its storage initializer for this variable
        env.append({"name": "STORAGE_URI", "value": storage_uri})
    env += extra_env
    return {
        "name": CONTAINER_NAME,
        "image": image,
        # The image's entrypoint is ``python -m serving``; Kubernetes expands $(VAR).
        "args": [
            "--model_name=$(MODEL_NAME)",
            "--model_uri=$(MODEL_URI)",
            "--expected_sha256=$(EXPECTED_SHA256)",
            f"--http_port={HTTP_PORT}",
            f"--host={POD_HOST}",
        ],
        "env": env,
        "ports": [{"name": "http1", "containerPort": HTTP_PORT, "protocol": "TCP"}],
        "resources": resources,
        # KServe answers 503 here until the model is loaded and ready.
        "readinessProbe": _readiness_probe(model_name),
    }


def _readiness_probe(model_name: str) -> dict[str, Any]:
    return {
        "httpGet": {"path": f"/v1/models/{model_name}", "port": HTTP_PORT},
        "initialDelaySeconds": 2,
        "periodSeconds": 5,
        "timeoutSeconds": 2,
        "failureThreshold": 3,
    }


FEATURE_KEY_SECRET_KEY = "feature-key"
PREDICTOR_TOKEN_SECRET_KEY = "predictor-token"
TOKENS_SECRET_KEY = "tokens.json"
PREDICTION_LOG_KEY_SECRET_KEY = "prediction-log-key"


def tokens_secret_name(deployment: str) -> str:
    """The deployment's token Secret: ``<model>-v<N>-tokens``."""
    return f"{deployment}-tokens"


def render_tokens_secret(
    name: str,
    namespace: str,
    *,
    tokens_json: str,
    predictor_token: str,
    prediction_log_key: str | None = None,
    labels: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """A deployment's token Secret (``v1``, type Opaque): ``tokens.json`` (the hashed
    records its servers check), ``predictor-token`` (the transformer's token for its
    predictor) and, when given, ``prediction-log-key``. Values are base64 in ``data``."""
    problems = _Problems()
    problems.add("name", _name_problem(name, "dns1123-subdomain"))
    problems.add("namespace", _name_problem(namespace, "dns1123-label"))
    for key, value in (("tokens_json", tokens_json), ("predictor_token", predictor_token)):
        if not isinstance(value, str) or not value.strip():
            problems.add(key, "must be a non-empty string")
    _check_map(problems, "labels", labels, labels=True)
    problems.raise_if_any(f"Secret {name!r}")
    values = {TOKENS_SECRET_KEY: tokens_json, PREDICTOR_TOKEN_SECRET_KEY: predictor_token}
    if prediction_log_key:
        values[PREDICTION_LOG_KEY_SECRET_KEY] = prediction_log_key
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name, "namespace": namespace, "labels": dict(labels or {})},
        "type": "Opaque",
        "data": {k: base64.b64encode(v.encode()).decode() for k, v in values.items()},
    }


def apply_secret(
    manifest: Mapping[str, Any], api: Any, field_manager: str = FIELD_MANAGER
) -> ApplyResult:
    """Create or update a Secret with server-side apply (like :func:`apply`); errors
    name the Secret, never its values (and the result carries none of them)."""
    result = _apply_namespaced(
        manifest, "secrets", api.read_namespaced_secret, api.patch_namespaced_secret, field_manager
    )
    return ApplyResult(result.action, result.name, result.namespace, {})


def delete_secret(name: str, namespace: str, api: Any) -> bool:
    """Delete a Secret; True if there was one."""
    try:
        api.delete_namespaced_secret(name, namespace)
    except Exception as exc:  # noqa: BLE001
        if getattr(exc, "status", None) == 404:
            return False
        raise DeploymentError(
            f"cannot delete secrets/{name} in namespace {namespace}: {_api_error(exc)}"
        ) from None
    return True


def add_feature_transformer(
    manifest: dict[str, Any],
    *,
    image: str,
    spec_file: str,
    feature_store: str,
    feature_key_secret: str,
    tokens_secret: str,
) -> dict[str, Any]:
    """Put the feature transformer (``python -m serving.transformer``, the project's
    image) in front of the manifest's predictor: raw transactions in, the spec's
    aggregates from the Redis state (``feature_store``, a ``redis://`` URL as the pods
    reach it; the key from ``feature_key_secret``'s ``feature-key``), the feature vector
    to the predictor. KServe adds ``--predictor_host`` (the predictor's service) to the
    container's arguments; replicas, autoscaling and resources follow the predictor's.
    The transformer becomes ready only on a backfilled namespace (its readiness probe).
    """
    problems = _Problems()
    if not isinstance(image, str) or not image.strip() or " " in image:
        problems.add("image", f"the transformer needs the project's image, got {image!r}")
    if not isinstance(spec_file, str) or not spec_file.endswith((".yaml", ".yml")):
        problems.add("spec_file", f"must be a .yaml path in the image, got {spec_file!r}")
    if not isinstance(feature_store, str) or not feature_store.startswith(
        ("redis://", "rediss://")
    ):
        problems.add(
            "feature_store",
            f"replicas must share their state: a redis:// URL, got {feature_store!r}",
        )
    problems.add("feature_key_secret", _name_problem(feature_key_secret, "dns1123-subdomain"))
    problems.add("tokens_secret", _name_problem(tokens_secret, "dns1123-subdomain"))
    problems.raise_if_any("feature transformer")
    predictor = manifest["spec"]["predictor"]
    model_name = manifest["metadata"]["labels"][LABEL_MODEL]
    resources = (predictor.get("containers") or [predictor.get("model") or {}])[0].get("resources")
    env: list[dict[str, Any]] = [
        {"name": "GOVML_FEATURE_STORE", "value": feature_store},
        {
            "name": "GOVML_FEATURE_KEY",
            "valueFrom": {
                "secretKeyRef": {"name": feature_key_secret, "key": FEATURE_KEY_SECRET_KEY}
            },
        },
    ]
    container: dict[str, Any] = {
        "name": CONTAINER_NAME,
        "image": image,
        "command": ["python", "-m", "serving.transformer"],
        "args": [
            f"--model_name={model_name}",
            f"--spec={spec_file}",
            "--feature_store=$(GOVML_FEATURE_STORE)",
            f"--http_port={HTTP_PORT}",
            f"--host={POD_HOST}",
        ],
        "env": env,
        "ports": [{"name": "http1", "containerPort": HTTP_PORT, "protocol": "TCP"}],
        # ready only once the model's namespace carries its backfill record
        "readinessProbe": _readiness_probe(model_name),
    }
    if resources:
        container["resources"] = copy.deepcopy(resources)
    transformer: dict[str, Any] = {
        key: predictor[key]
        for key in ("minReplicas", "maxReplicas", "scaleMetric", "scaleTarget", "labels")
        if key in predictor
    }
    transformer["volumes"] = [
        {"name": "govml-tokens", "secret": {"secretName": tokens_secret, "optional": False}}
    ]
    container["volumeMounts"] = [
        {"name": "govml-tokens", "mountPath": TOKENS_MOUNT, "readOnly": True}
    ]
    container["args"].append(f"--tokens={TOKENS_MOUNT}/{TOKENS_SECRET_KEY}")
    env.append(
        {
            "name": "GOVML_PREDICTOR_TOKEN",
            "valueFrom": {
                "secretKeyRef": {
                    "name": tokens_secret,
                    "key": PREDICTOR_TOKEN_SECRET_KEY,
                    "optional": False,
                }
            },
        }
    )
    transformer["containers"] = [container]
    manifest["spec"]["transformer"] = transformer
    return manifest


def to_yaml(manifest: Mapping[str, Any]) -> str:
    """The manifest as YAML, keys in the rendered order (``kubectl apply -f`` ready)."""
    return yaml.safe_dump(dict(manifest), sort_keys=False, default_flow_style=False)


# --------------------------------------------------------------------------- the CRD
def crd_candidates() -> list[Path]:
    """Where the KServe CRD is looked for: $GOVML_KSERVE_CRD, ../shared/kserve, /work/shared."""
    out = []
    configured = os.environ.get(CRD_ENV)
    if configured:
        out.append(Path(configured))
    out.append(REPO_ROOT.parent / "shared" / "kserve" / CRD_FILE)
    out.append(Path("/work/shared/kserve") / CRD_FILE)
    return out


def find_crd() -> Path | None:
    """The first candidate CRD file that exists, else None."""
    return next((path for path in crd_candidates() if path.is_file()), None)


@functools.lru_cache(maxsize=4)
def _load_crd(path: str, mtime_ns: int, size: int) -> dict[str, Any]:
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    with open(path, encoding="utf-8") as handle:
        data = yaml.load(handle, Loader=loader)  # noqa: S506 (a safe loader)
    if not isinstance(data, dict) or data.get("kind") != "CustomResourceDefinition":
        raise DeploymentError(f"{path} is not a CustomResourceDefinition")
    return data


def load_crd(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The parsed CRD (cached while the file is unchanged)."""
    stat = Path(path).stat()
    return _load_crd(str(Path(path).resolve()), stat.st_mtime_ns, stat.st_size)


def served_schema(crd: Mapping[str, Any], api_version: str | None = None) -> dict[str, Any]:
    """The ``openAPIV3Schema`` of the served version ``api_version`` (default: storage)."""
    group = crd["spec"]["group"]
    served = [v for v in crd["spec"]["versions"] if v.get("served")]
    if api_version is None:
        chosen = next((v for v in served if v.get("storage")), served[0] if served else None)
    else:
        chosen = next((v for v in served if f"{group}/{v['name']}" == api_version), None)
    if chosen is None:
        offered = [f"{group}/{v['name']}" for v in served]
        raise DeploymentError(f"the CRD serves no {api_version!r}; it serves {offered}")
    return chosen["schema"]["openAPIV3Schema"]


_INT_RANGES = {"int32": (-(2**31), 2**31 - 1), "int64": (-(2**63), 2**63 - 1)}
_KEPT_EXTENSIONS = ("x-kubernetes-list-type", "x-kubernetes-list-map-keys")


def structural_to_jsonschema(schema: Mapping[str, Any]) -> dict[str, Any]:
    """A Kubernetes structural schema as plain JSON Schema, with the API server's semantics.

    - ``x-kubernetes-int-or-string``: ``anyOf: [integer, string]`` (no ``type``);
    - an object schema without ``additionalProperties`` and without
      ``x-kubernetes-preserve-unknown-fields`` is closed: the API server prunes unknown
      fields there (or refuses them under strict field validation, kubectl's default), so
      a misspelt field would silently vanish; here it is an error;
    - a ``required`` property that has a ``default`` is not required (defaulting runs first);
    - ``format: int32/int64`` become ranges; ``nullable: true`` admits null;
    - ``x-kubernetes-list-type: set/map`` are checked for duplicates by the validator;
    - ``x-kubernetes-embedded-resource`` objects admit apiVersion/kind/metadata.
    """
    return _convert(schema)


def _convert(node: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key == "properties":
            out[key] = {name: _convert(sub) for name, sub in value.items()}
        elif key in ("items", "additionalProperties", "not") and isinstance(value, Mapping):
            out[key] = _convert(value)
        elif key in ("anyOf", "allOf", "oneOf"):
            out[key] = [_convert(sub) for sub in value]
        elif key == "nullable" or (key.startswith("x-kubernetes-") and key not in _KEPT_EXTENSIONS):
            continue  # handled below
        else:
            out[key] = copy.deepcopy(value)
    if node.get("x-kubernetes-int-or-string"):
        out.pop("type", None)
        out.setdefault("anyOf", [{"type": "integer"}, {"type": "string"}])
    if node.get("x-kubernetes-embedded-resource"):
        props = out.setdefault("properties", {})
        props.setdefault("apiVersion", {"type": "string"})
        props.setdefault("kind", {"type": "string"})
        props.setdefault("metadata", {"type": "object"})
    preserve = node.get("x-kubernetes-preserve-unknown-fields") is True
    if node.get("type") == "object" and "additionalProperties" not in node and not preserve:
        out["additionalProperties"] = False
    if "required" in node:
        props = node.get("properties", {})
        required = [r for r in node["required"] if "default" not in props.get(r, {})]
        if required:
            out["required"] = required
        else:
            out.pop("required")
    fmt = node.get("format")
    if node.get("type") == "integer" and fmt in _INT_RANGES:
        low, high = _INT_RANGES[fmt]
        out.setdefault("minimum", low)
        out.setdefault("maximum", high)
    if node.get("nullable") is True and "type" in out:
        out["type"] = [out["type"], "null"]
    return out


def _object_meta_schema() -> dict[str, Any]:
    """What the API server accepts in a custom resource's ``metadata`` (ObjectMeta)."""
    key = (
        r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
        r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$"
    )
    value = {"type": "string", "maxLength": LABEL_MAX, "pattern": LABEL_VALUE.pattern}
    loose = {}  # server-set fields: accepted, not checked here
    for name in ("uid", "resourceVersion", "generation", "creationTimestamp", "selfLink"):
        loose[name] = {}
    for name in ("deletionTimestamp", "deletionGracePeriodSeconds", "managedFields"):
        loose[name] = {}
    return {
        "type": "object",
        "additionalProperties": False,
        "required": ["name"],
        "properties": {
            "name": {
                "type": "string",
                "maxLength": SUBDOMAIN_MAX,
                "pattern": DNS1123_SUBDOMAIN.pattern,
            },
            "generateName": {"type": "string"},
            "namespace": {
                "type": "string",
                "maxLength": LABEL_MAX,
                "pattern": DNS1123_LABEL.pattern,
            },
            "labels": {
                "type": "object",
                "additionalProperties": False,
                "patternProperties": {key: value},
            },
            "annotations": {
                "type": "object",
                "additionalProperties": False,
                "patternProperties": {key: {"type": "string"}},
            },
            "finalizers": {"type": "array", "items": {"type": "string"}},
            "ownerReferences": {"type": "array", "items": {"type": "object"}},
            **loose,
        },
    }


def _list_type(
    validator: Any, list_type: str, instance: Any, schema: Mapping[str, Any]
) -> Iterator[Any]:
    """``x-kubernetes-list-type``: ``set`` items and ``map`` keys must be unique."""
    from jsonschema.exceptions import ValidationError

    if not isinstance(instance, list) or list_type not in ("set", "map"):
        return
    keys = schema.get("x-kubernetes-list-map-keys", []) if list_type == "map" else []
    props = (schema.get("items") or {}).get("properties", {})
    seen: set[str] = set()
    for index, item in enumerate(instance):
        if list_type == "map":
            if not isinstance(item, dict):
                continue
            ident = {k: item.get(k, props.get(k, {}).get("default")) for k in keys}
        else:
            ident = item
        token = json.dumps(ident, sort_keys=True, default=str)
        if token in seen:
            what = f"key {ident}" if list_type == "map" else f"value {item!r}"
            yield ValidationError(f"item {index}: duplicate {what} in a list of type {list_type}")
        seen.add(token)


def _validator_class() -> Any:
    """JSON Schema Draft 4 (OpenAPI v3.0's base) plus Kubernetes list semantics."""
    from jsonschema import Draft4Validator, validators

    return validators.extend(Draft4Validator, {"x-kubernetes-list-type": _list_type})


@functools.lru_cache(maxsize=8)
def _validator(path: str, mtime_ns: int, size: int, api_version: str) -> Any:
    schema = structural_to_jsonschema(served_schema(_load_crd(path, mtime_ns, size), api_version))
    schema.setdefault("properties", {})["metadata"] = _object_meta_schema()
    return _validator_class()(schema)


def validate_manifest(
    manifest: Mapping[str, Any], crd_path: str | os.PathLike[str] | None = None
) -> list[str]:
    """Every way ``manifest`` breaks the CRD's schema, as ``path: problem``; [] when valid.

    ``crd_path`` defaults to :func:`find_crd`. Needs ``jsonschema`` (the .venv environment).
    """
    try:
        import jsonschema  # noqa: F401
    except ImportError:
        raise DeploymentError(
            "validate_manifest needs the jsonschema package (in .venv, not .venv-serving)"
        ) from None
    path = Path(crd_path) if crd_path is not None else find_crd()
    if path is None or not path.is_file():
        tried = [str(p) for p in ([path] if path else crd_candidates())]
        raise DeploymentError(f"KServe CRD not found (looked at {tried}); set {CRD_ENV}")
    crd = load_crd(path)
    group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
    api_version = manifest.get("apiVersion")
    problems = []
    if manifest.get("kind") != kind:
        problems.append(f"kind: {manifest.get('kind')!r} is not {kind!r}")
    served = [f"{group}/{v['name']}" for v in crd["spec"]["versions"] if v.get("served")]
    if api_version not in served:
        problems.append(f"apiVersion: {api_version!r} is not one of {served}")
        return problems
    stat = path.stat()
    validator = _validator(str(path.resolve()), stat.st_mtime_ns, stat.st_size, api_version)
    for error in sorted(
        validator.iter_errors(dict(manifest)), key=lambda e: list(map(str, e.path))
    ):
        problems.append(f"{_json_path(error.path)}: {_short(error.message)}")
    return problems


def _json_path(parts: Any) -> str:
    out = ""
    for part in parts:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "<root>"


def _short(message: str, limit: int = 300) -> str:
    return message if len(message) <= limit else message[: limit - 3] + "..."


# --------------------------------------------------------------------------- apply
class CustomObjectsApiLike(Protocol):
    """The part of ``kubernetes.client.CustomObjectsApi`` that ``apply`` uses."""

    def get_namespaced_custom_object(
        self, group: str, version: str, namespace: str, plural: str, name: str, **kwargs: Any
    ) -> Any: ...

    def patch_namespaced_custom_object(
        self,
        group: str,
        version: str,
        namespace: str,
        plural: str,
        name: str,
        body: Any,
        **kwargs: Any,
    ) -> Any: ...


@dataclass(frozen=True)
class ApplyResult:
    action: Literal["created", "configured"]
    name: str
    namespace: str
    object: dict[str, Any] = field(repr=False)


def apply(
    manifest: Mapping[str, Any],
    kubeconfig: str | os.PathLike[str] | None = None,
    context: str | None = None,
    *,
    api: CustomObjectsApiLike | None = None,
    field_manager: str = FIELD_MANAGER,
    dry_run: bool = False,
) -> ApplyResult:
    """Create or update the InferenceService with server-side apply.

    Server-side apply (one PATCH, ``force``) both creates and updates, and removes the
    fields an earlier apply by ``field_manager`` set and this manifest leaves out (e.g.
    ``canaryTrafficPercent`` on promotion), which a merge patch would keep. A GET first
    tells ``created`` from ``configured``. ``api`` replaces the cluster client (tests);
    otherwise the cluster comes from ``kubeconfig``/``context``, $KUBECONFIG,
    ``~/.kube/config`` or the in-cluster service account, and a missing one raises
    :class:`DeploymentError`.
    """
    name, namespace, group, version = _identity(manifest)
    client = api if api is not None else _custom_objects_api(kubeconfig, context)
    where = f"{PLURAL}/{name} in namespace {namespace}"
    try:
        client.get_namespaced_custom_object(group, version, namespace, PLURAL, name)
        exists = True
    except Exception as exc:  # noqa: BLE001 (ApiException, urllib3 errors: all reported)
        if getattr(exc, "status", None) != 404:
            raise DeploymentError(f"cannot read {where}: {_api_error(exc)}") from None
        exists = False
    kwargs: dict[str, Any] = {
        "field_manager": field_manager,
        "force": True,
        "_content_type": APPLY_PATCH,
    }
    if dry_run:
        kwargs["dry_run"] = "All"
    try:
        result = client.patch_namespaced_custom_object(
            group, version, namespace, PLURAL, name, dict(manifest), **kwargs
        )
    except Exception as exc:  # noqa: BLE001
        raise DeploymentError(f"cannot apply {where}: {_api_error(exc)}") from None
    action: Literal["created", "configured"] = "configured" if exists else "created"
    return ApplyResult(action, name, namespace, dict(result) if isinstance(result, Mapping) else {})


def _identity(manifest: Mapping[str, Any]) -> tuple[str, str, str, str]:
    meta = manifest.get("metadata") or {}
    name, namespace = meta.get("name"), meta.get("namespace")
    api_version = manifest.get("apiVersion")
    if manifest.get("kind") != KIND or not isinstance(api_version, str) or "/" not in api_version:
        raise DeploymentError(
            f"apply: not an {KIND} manifest ({api_version!r}, {manifest.get('kind')!r})"
        )
    if not name or not namespace:
        raise DeploymentError("apply: the manifest needs metadata.name and metadata.namespace")
    group, version = api_version.split("/", 1)
    if group != GROUP:
        raise DeploymentError(f"apply: apiVersion {api_version!r} is not in group {GROUP}")
    return str(name), str(namespace), group, version


def _api_client(kubeconfig: str | os.PathLike[str] | None, context: str | None) -> Any:
    """A Kubernetes ApiClient: in-cluster, or from a kubeconfig; a clear error otherwise."""
    try:
        from kubernetes import client, config
    except ImportError:
        raise DeploymentError(
            "cannot apply: the kubernetes Python client is not installed in this environment "
            "(the serving environment, .venv-serving, has it)"
        ) from None
    in_cluster = bool(os.environ.get("KUBERNETES_SERVICE_HOST"))
    if kubeconfig is None and context is None and in_cluster:
        try:
            configuration = client.Configuration()
            config.load_incluster_config(client_configuration=configuration)
            return client.ApiClient(configuration)
        except Exception as exc:  # noqa: BLE001 (fall back to a kubeconfig below)
            in_cluster_error = str(exc)
    else:
        in_cluster_error = "not in a cluster (KUBERNETES_SERVICE_HOST unset)"
    path = str(kubeconfig) if kubeconfig else os.environ.get("KUBECONFIG") or "~/.kube/config"
    path = os.path.expanduser(path)
    try:
        return config.new_client_from_config(config_file=path, context=context)
    except Exception as exc:  # noqa: BLE001 (ConfigException, YAML and OS errors alike)
        raise DeploymentError(
            f"no Kubernetes cluster configured: kubeconfig {path}: {exc}; in-cluster: "
            f"{in_cluster_error}. Set KUBECONFIG or pass kubeconfig= (and context=)"
        ) from None


def _custom_objects_api(kubeconfig: str | os.PathLike[str] | None, context: str | None) -> Any:
    from kubernetes import client

    return client.CustomObjectsApi(_api_client(kubeconfig, context))


def core_api(kubeconfig: str | os.PathLike[str] | None, context: str | None) -> Any:
    """A ``kubernetes.client.CoreV1Api`` (Secrets) for the configured cluster."""
    from kubernetes import client

    return client.CoreV1Api(_api_client(kubeconfig, context))


def _policy_api(kubeconfig: str | os.PathLike[str] | None, context: str | None) -> Any:
    from kubernetes import client

    return client.PolicyV1Api(_api_client(kubeconfig, context))


# ----------------------------------------------------------------------------- PDB

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
    problems = _Problems()
    problems.add("name", _name_problem(name, "dns1123-subdomain"))
    problems.add("namespace", _name_problem(namespace, "dns1123-label"))
    if _check_int(problems, "min_replicas", min_replicas, 0, INT32_MAX) and min_replicas < 2:
        problems.add(
            "min_replicas",
            f"{min_replicas}: a disruption budget needs at least 2 replicas (hot standby)",
        )
    labels = {}
    if model_name is not None:
        problems.add("model_name", _label_value_problem(model_name))
        labels[LABEL_MODEL] = model_name
    if model_version is not None:
        problems.add("model_version", _label_value_problem(str(model_version)))
        labels[LABEL_VERSION] = str(model_version)
    problems.raise_if_any(f"PodDisruptionBudget {name!r}")
    return {
        "apiVersion": PDB_API_VERSION,
        "kind": "PodDisruptionBudget",
        "metadata": {"name": name, "namespace": namespace, "labels": labels},
        "spec": {"maxUnavailable": 1, "selector": {"matchLabels": {ISVC_POD_LABEL: name}}},
    }


def apply_pod_disruption_budget(
    manifest: Mapping[str, Any], api: Any, field_manager: str = FIELD_MANAGER
) -> ApplyResult:
    """Create or update a PodDisruptionBudget with server-side apply (like :func:`apply`)."""
    return _apply_namespaced(
        manifest,
        "poddisruptionbudgets",
        api.read_namespaced_pod_disruption_budget,
        api.patch_namespaced_pod_disruption_budget,
        field_manager,
    )


def _apply_namespaced(
    manifest: Mapping[str, Any],
    plural: str,
    read: Any,
    patch: Any,
    field_manager: str,
) -> ApplyResult:
    """Server-side apply of one namespaced core object through the client's ``read`` and
    ``patch`` calls; "created" when it did not exist before."""
    meta = manifest["metadata"]
    name, namespace = meta["name"], meta["namespace"]
    where = f"{plural}/{name} in namespace {namespace}"
    try:
        read(name, namespace)
        exists = True
    except Exception as exc:  # noqa: BLE001
        if getattr(exc, "status", None) != 404:
            raise DeploymentError(f"cannot read {where}: {_api_error(exc)}") from None
        exists = False
    try:
        result = patch(
            name, namespace, dict(manifest), field_manager=field_manager, force=True,
            _content_type=APPLY_PATCH,
        )  # fmt: skip
    except Exception as exc:  # noqa: BLE001
        raise DeploymentError(f"cannot apply {where}: {_api_error(exc)}") from None
    action: Literal["created", "configured"] = "configured" if exists else "created"
    body = result.to_dict() if hasattr(result, "to_dict") else result
    return ApplyResult(action, name, namespace, dict(body) if isinstance(body, Mapping) else {})


def _api_error(exc: Exception) -> str:
    status, reason = getattr(exc, "status", None), getattr(exc, "reason", None)
    body = getattr(exc, "body", None)
    message = None
    if body:
        try:
            message = json.loads(body).get("message")
        except (ValueError, TypeError, AttributeError):
            message = str(body)[:300]
    if status is not None:
        return f"HTTP {status} {reason or ''}".rstrip() + (f": {message}" if message else "")
    return f"{type(exc).__name__}: {exc}"
