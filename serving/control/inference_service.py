"""KServe ``InferenceService`` manifests: one model version behind KServe (the feature
transformer in front of it: :mod:`serving.control.feature_transformer`).

``render_inference_service`` builds the manifest (``serving.kserve.io/v1beta1``) for one
model version (:class:`ServedModel`), checking every input first and raising one
:class:`DeploymentError` that names each bad field. Two predictor shapes
(:class:`ServingImage`):

- ``runtime="lightgbm"``: KServe's built-in LightGBM runtime (``kserve-lgbserver``, model
  format ``lightgbm`` v4) fetches ``storageUri`` with its storage initializer;
- ``runtime="custom"``: this project's model server image (``python -m serving``), which
  checks the artifact's SHA-256 before loading. URIs KServe's storage initializer can
  fetch (``s3://``, ``gs://``, ``pvc://``, ...) are downloaded to ``/mnt/models`` by KServe
  (``STORAGE_URI``); MLflow URIs (``models:/``, ``runs:/``) are resolved by the server.

Governance metadata: see :mod:`serving.control.checks`. Closed by default: the project's
server image always gets ``tokens_secret`` (the deployment's Secret,
:func:`serving.control.secret.render_tokens_secret`) and listens on the pod's address
(``--host=0.0.0.0``, explicit: inside a pod the network policy and the Service are the
boundary, and the token check still applies). Checking against the CRD:
:mod:`serving.control.crd`; applying: :mod:`serving.control.apply`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from serving.control.autoscaling import Resources, Scaling, check_resources, check_scaling
from serving.control.checks import (
    ANNOTATION_APPROVAL,
    ANNOTATION_SHA256,
    LABEL_MODEL,
    LABEL_VERSION,
    SHA256_HEX,
    Problems,
    check_int,
    check_map,
    is_int,
    label_value_problem,
    name_problem,
)
from serving.control.secret import (
    PREDICTION_LOG_KEY_SECRET_KEY,
    TOKENS_SECRET_KEY,
)

GROUP = "serving.kserve.io"
VERSION = "v1beta1"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "InferenceService"
PLURAL = "inferenceservices"

CONTAINER_NAME = "kserve-container"
RESERVED_ENV = ("MODEL_NAME", "MODEL_URI", "EXPECTED_SHA256", "STORAGE_URI")
HTTP_PORT = 8080
MODEL_MOUNT = "/mnt/models"
LIGHTGBM_FORMAT_VERSION = "4"  # kserve-lgbserver's supportedModelFormats

Runtime = Literal["lightgbm", "custom"]
RUNTIMES = ("lightgbm", "custom")

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


@dataclass(frozen=True)
class ServedModel:
    """What an InferenceService serves: one model version, its approved artifact and
    where it is fetched from. ``model_name`` (default: the service's name) is the name the
    model answers to (``/v1/models/<model_name>``) and the ``govml/model`` label."""

    storage_uri: str
    version: str | int
    artifact_sha256: str
    model_name: str | None = None
    approval_request: str | None = None


@dataclass(frozen=True)
class ServingImage:
    """The server that runs the model: KServe's LightGBM runtime (no image), or the
    project's image (``runtime="custom"``) with what the local deployer gives its servers:
    ``spec_file`` (a path in the image, e.g. ``specs/fraud.yaml``) for strict input and
    decisions; ``tokens_secret``, a Secret with ``tokens.json`` (hashed bearer tokens,
    mounted read-only) and optionally ``prediction-log-key``; ``prediction_log_claim``, a
    PersistentVolumeClaim for the prediction log."""

    runtime: Runtime = "lightgbm"
    image: str | None = None
    spec_file: str | None = None
    tokens_secret: str | None = None
    prediction_log_claim: str | None = None


LIGHTGBM = ServingImage()


@dataclass(frozen=True)
class PodOptions:
    """Extra settings of the predictor's pods and the object's metadata."""

    service_account: str | None = None
    env: Mapping[str, str] | None = None
    labels: Mapping[str, str] | None = None
    annotations: Mapping[str, str] | None = None


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
def _check_model(
    problems: Problems, name: str, namespace: str, model: ServedModel, server: ServingImage
) -> None:
    """Problems with the names, the runtime and what is served (in message order)."""
    runtime, image = server.runtime, server.image
    problems.add("name", name_problem(name, "dns1035"))
    problems.add("namespace", name_problem(namespace, "dns1123-label"))
    if runtime not in RUNTIMES:
        problems.add("runtime", f"{runtime!r} is not one of {list(RUNTIMES)}")
    problems.add("storage_uri", _storage_problem(model.storage_uri, runtime))
    if runtime == "custom" and (not isinstance(image, str) or not image.strip() or " " in image):
        problems.add("image", f"runtime='custom' needs a container image, got {image!r}")
    if runtime == "lightgbm" and image is not None:
        problems.add("image", "only runtime='custom' takes an image (KServe picks lgbserver's)")
    if model.model_name is not None:  # (the default, name, is checked above)
        problems.add(
            "model_name",
            name_problem(model.model_name, "dns1123-subdomain")
            or label_value_problem(model.model_name),
        )
    version = _version_label(model)
    problems.add("model_version", label_value_problem(version) or (None if version else "empty"))
    artifact_sha256, approval_request = model.artifact_sha256, model.approval_request
    if not isinstance(artifact_sha256, str) or not SHA256_HEX.match(artifact_sha256):
        problems.add(
            "artifact_sha256", f"must be 64 lower-case hex characters, got {artifact_sha256!r}"
        )
    if approval_request is not None and (
        not isinstance(approval_request, str) or not approval_request
    ):
        problems.add("approval_request", "must be a non-empty string when given")


def _check_server(problems: Problems, server: ServingImage, pod: PodOptions) -> None:
    """Problems with the governance options and the environment (in message order)."""
    runtime, spec_file = server.runtime, server.spec_file
    tokens_secret, prediction_log_claim = server.tokens_secret, server.prediction_log_claim
    if spec_file is not None and (
        not isinstance(spec_file, str) or not spec_file.endswith((".yaml", ".yml"))
    ):
        problems.add("spec_file", f"must be a .yaml path in the image, got {spec_file!r}")
    for field_name, value in (
        ("tokens_secret", tokens_secret),
        ("prediction_log_claim", prediction_log_claim),
    ):
        if value is not None:
            problems.add(field_name, name_problem(value, "dns1123-subdomain"))
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
    for key, value in (pod.env or {}).items():
        if not isinstance(key, str) or not key or not isinstance(value, str):
            problems.add("env", f"{key!r}: names and values must be non-empty strings")
        elif runtime == "custom" and key in RESERVED_ENV:
            problems.add("env", f"{key!r} is set by the renderer")


def _version_label(model: ServedModel) -> Any:
    """The model version as a label value (whole numbers become strings)."""
    return str(model.version) if is_int(model.version) else model.version


def _predictor(
    name: str,
    model: ServedModel,
    server: ServingImage,
    placement: _Placement,
) -> dict[str, Any]:
    """The ``spec.predictor`` of a checked InferenceService."""
    scaling, pod = placement.scaling, placement.pod
    served_name = name if model.model_name is None else model.model_name
    version = _version_label(model)
    resources = {
        "requests": {
            "cpu": str(placement.resources.cpu_request),
            "memory": str(placement.resources.memory_request),
        },
        "limits": {
            "cpu": str(placement.resources.cpu_limit),
            "memory": str(placement.resources.memory_limit),
        },
    }
    predictor: dict[str, Any] = {
        "minReplicas": scaling.min_replicas,
        "maxReplicas": scaling.max_replicas,
        "scaleMetric": scaling.scale_metric,
        "scaleTarget": scaling.scale_target,
    }
    if placement.canary_traffic_percent is not None:
        predictor["canaryTrafficPercent"] = placement.canary_traffic_percent
    if pod.service_account is not None:
        predictor["serviceAccountName"] = pod.service_account
    predictor["labels"] = {LABEL_MODEL: served_name, LABEL_VERSION: version}
    env_list = [{"name": k, "value": v} for k, v in (pod.env or {}).items()]
    if server.runtime == "lightgbm":
        served: dict[str, Any] = {
            "modelFormat": {"name": "lightgbm", "version": LIGHTGBM_FORMAT_VERSION},
            "storageUri": model.storage_uri,
            "resources": resources,
        }
        if env_list:
            served["env"] = env_list
        predictor["model"] = served
        return predictor
    assert server.image is not None
    container = _custom_container(
        server.image, served_name, model.storage_uri, model.artifact_sha256, resources, env_list
    )
    container["args"].append(f"--model_version={version}")
    volumes = _governance_mounts(
        container, server.spec_file, server.tokens_secret, server.prediction_log_claim
    )
    predictor["containers"] = [container]
    if volumes:
        predictor["volumes"] = volumes
    return predictor


@dataclass(frozen=True)
class _Placement:
    """Where and how many pods run one revision (the renderer's keyword arguments)."""

    scaling: Scaling
    resources: Resources
    pod: PodOptions
    canary_traffic_percent: int | None


def render_inference_service(
    name: str,
    namespace: str,
    model: ServedModel,
    *,
    server: ServingImage = LIGHTGBM,
    scaling: Scaling = Scaling(),
    resources: Resources = Resources(),
    pod: PodOptions = PodOptions(),
    canary_traffic_percent: int | None = None,
) -> dict[str, Any]:
    """The ``InferenceService`` for one model version; every bad input named at once.

    What is served (:class:`ServedModel`), by which server (:class:`ServingImage`), at
    which scale (:class:`~serving.control.autoscaling.Scaling`,
    :class:`~serving.control.autoscaling.Resources`) with which pods (:class:`PodOptions`).
    ``canary_traffic_percent`` sends that share of traffic to this (latest) revision and
    the rest to the previous ready one; ``None`` sends it all.
    """
    problems = Problems()
    _check_model(problems, name, namespace, model, server)
    check_scaling(problems, scaling)
    check_resources(problems, resources)
    if canary_traffic_percent is not None:
        check_int(problems, "canary_traffic_percent", canary_traffic_percent, 0, 100)
    if pod.service_account is not None:
        problems.add("service_account", name_problem(pod.service_account, "dns1123-subdomain"))
    check_map(problems, "labels", pod.labels, labels=True)
    check_map(problems, "annotations", pod.annotations, labels=False)
    _check_server(problems, server, pod)
    problems.raise_if_any(f"InferenceService {name!r}")

    placement = _Placement(scaling, resources, pod, canary_traffic_percent)
    predictor = _predictor(name, model, server, placement)
    meta_annotations = dict(pod.annotations or {})
    meta_annotations[ANNOTATION_SHA256] = model.artifact_sha256
    if model.approval_request is not None:
        meta_annotations[ANNOTATION_APPROVAL] = model.approval_request
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": {**dict(pod.labels or {}), **predictor["labels"]},
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
        "readinessProbe": readiness_probe(model_name),
    }


def readiness_probe(model_name: str) -> dict[str, Any]:
    return {
        "httpGet": {"path": f"/v1/models/{model_name}", "port": HTTP_PORT},
        "initialDelaySeconds": 2,
        "periodSeconds": 5,
        "timeoutSeconds": 2,
        "failureThreshold": 3,
    }
