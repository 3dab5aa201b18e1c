"""The feature transformer in front of a KServe predictor: raw transactions in, the spec's
aggregates from the shared Redis state, the feature vector to the predictor
(``python -m serving.transformer``, the project's image)."""

from __future__ import annotations

import copy
from typing import Any

from serving.control.checks import LABEL_MODEL, Problems, name_problem
from serving.control.inference_service import (
    CONTAINER_NAME,
    HTTP_PORT,
    POD_HOST,
    TOKENS_MOUNT,
    readiness_probe,
)
from serving.control.secret import (
    FEATURE_KEY_SECRET_KEY,
    PREDICTOR_TOKEN_SECRET_KEY,
    TOKENS_SECRET_KEY,
)


def _check_transformer(
    image: str, spec_file: str, feature_store: str, feature_key_secret: str, tokens_secret: str
) -> None:
    """Every bad input of :func:`add_feature_transformer`, raised at once."""
    problems = Problems()
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
    problems.add("feature_key_secret", name_problem(feature_key_secret, "dns1123-subdomain"))
    problems.add("tokens_secret", name_problem(tokens_secret, "dns1123-subdomain"))
    problems.raise_if_any("feature transformer")


def _transformer_container(
    image: str, model_name: str, spec_file: str, feature_store: str, feature_key_secret: str
) -> dict[str, Any]:
    """The transformer's container before its resources and tokens."""
    env: list[dict[str, Any]] = [
        {"name": "GOVML_FEATURE_STORE", "value": feature_store},
        {
            "name": "GOVML_FEATURE_KEY",
            "valueFrom": {
                "secretKeyRef": {"name": feature_key_secret, "key": FEATURE_KEY_SECRET_KEY}
            },
        },
    ]
    return {
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
        "readinessProbe": readiness_probe(model_name),
    }


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
    _check_transformer(image, spec_file, feature_store, feature_key_secret, tokens_secret)
    predictor = manifest["spec"]["predictor"]
    model_name = manifest["metadata"]["labels"][LABEL_MODEL]
    resources = (predictor.get("containers") or [predictor.get("model") or {}])[0].get("resources")
    container = _transformer_container(
        image, model_name, spec_file, feature_store, feature_key_secret
    )
    env = container["env"]
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
