"""A deployment's token Secret (``<model>-v<N>-tokens``): ``tokens.json``, the hashed bearer
tokens its servers check (mounted read-only, re-read when the kubelet updates it);
``predictor-token``, the transformer's token for its predictor; optionally
``prediction-log-key``. Closed by default: the project's server image always mounts it."""

from __future__ import annotations

import base64
from collections.abc import Mapping
from typing import Any

from serving.control.checks import Problems, check_map, name_problem

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
    problems = Problems()
    problems.add("name", name_problem(name, "dns1123-subdomain"))
    problems.add("namespace", name_problem(namespace, "dns1123-label"))
    for key, value in (("tokens_json", tokens_json), ("predictor_token", predictor_token)):
        if not isinstance(value, str) or not value.strip():
            problems.add(key, "must be a non-empty string")
    check_map(problems, "labels", labels, labels=True)
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
