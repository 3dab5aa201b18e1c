"""The lifecycle's deploy step: serve an approved version and prove it answers correctly.

Called by the DAG's ``deploy`` task through :func:`registry.governance.release_approved`
(which checks the approval first and records the deployment after): starts the
version's model server with the configured deployer (``local``: a supervised process
from the serving environment), loading the version from the registry's artifact
store with the approved artifact SHA-256 (the server refuses any other file); or, with
``GOVML_DEPLOYER=kubernetes``, applies the version's KServe InferenceService and waits
until it is Ready. It then scores rows of the run's out-of-time test set through the
endpoint and requires exactly the scores of the model file the pipeline evaluated.
"""

from __future__ import annotations

import json
import logging
import os
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np

from pipelines.config import Settings
from pipelines.errors import DeploymentError
from serving.deployers import Endpoint, Release

log = logging.getLogger(__name__)

SMOKE_ROWS = 20


def deployer_for(settings: Settings):  # noqa: ANN201
    """The configured deployer (``GOVML_DEPLOYER``): local processes or KServe."""
    if settings.deployer == "kubernetes":
        return _kubernetes_deployer(settings)
    if settings.deployer != "local":
        raise DeploymentError(
            f"unknown deployer {settings.deployer!r}; use GOVML_DEPLOYER=local or kubernetes"
        )
    from serving.deployers.local import LocalDeployer

    env = dict(os.environ)
    env["MLFLOW_TRACKING_URI"] = settings.mlflow_tracking_uri
    env.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    tokens = os.environ.get("GOVML_SERVING_TOKENS")
    return LocalDeployer(
        settings.serving_dir,
        settings.serving_python,
        env=env,
        ready_timeout=300,
        tokens=Path(tokens) if tokens else None,
    )


def _kubernetes_deployer(settings: Settings):  # noqa: ANN202
    from serving.deployers.kubernetes import KubernetesDeployer

    tracking = settings.kube_tracking_uri or settings.mlflow_tracking_uri
    host = urlsplit(tracking).hostname or ""
    if not settings.kube_tracking_uri and (host in ("localhost", "") or host.startswith("127.")):
        tracking = ""  # pods cannot reach this machine's loopback: ask for the real one
    return KubernetesDeployer(
        settings.serving_dir,
        namespace=settings.kube_namespace,
        kubeconfig=settings.kubeconfig,
        context=settings.kube_context,
        runtime=settings.kserve_runtime,  # type: ignore[arg-type]
        image=settings.serving_image,
        storage_uri=settings.kube_storage_uri,
        tracking_uri=tracking if tracking.startswith(("http://", "https://")) else None,
        min_replicas=settings.kube_min_replicas,
        max_replicas=settings.kube_max_replicas,
        scale_metric=settings.kube_scale_metric,  # type: ignore[arg-type]
        scale_target=settings.kube_scale_target,
        cpu_request=settings.kube_cpu_request,
        cpu_limit=settings.kube_cpu_limit,
        memory_request=settings.kube_memory_request,
        memory_limit=settings.kube_memory_limit,
        ready_timeout=settings.kube_ready_timeout,
        tokens_secret=settings.kube_tokens_secret,
        prediction_log_claim=settings.kube_prediction_log_claim,
    )


def _score_remote(endpoint: Endpoint, rows: list[dict[str, Any]]) -> np.ndarray:
    body = json.dumps({"instances": rows}).encode()
    headers = {"Content-Type": "application/json"}
    token = os.environ.get("GOVML_SERVING_TOKEN")  # when the endpoint requires tokens
    if token:
        headers["Authorization"] = f"Bearer {token}"
    req = urllib.request.Request(
        f"{endpoint.url}/v1/models/{endpoint.model_name}:predict", data=body, headers=headers
    )
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return np.asarray(json.loads(resp.read())["predictions"], dtype="float64")
    except (urllib.error.URLError, OSError, KeyError, ValueError) as exc:
        raise DeploymentError(f"{endpoint.name}: smoke test request failed: {exc}") from None


def smoke_test(endpoint: Endpoint, run_dir: Path, feature_names: list[str]) -> dict[str, Any]:
    """Score test rows through the endpoint; they must equal the pipeline's model exactly."""
    import pandas as pd

    from pipelines.training import load_model

    test = pd.read_parquet(run_dir / "features" / "test.parquet", columns=feature_names)
    sample = test.dropna().head(SMOKE_ROWS)
    if sample.empty:
        raise DeploymentError(f"{endpoint.name}: no complete test rows to check the endpoint with")
    expected = np.asarray(load_model(run_dir / "train" / "model.txt").predict(sample))
    # Python's JSON floats round-trip exactly (pandas' to_json rounds to 10 digits)
    rows = json.loads(json.dumps(sample.to_dict(orient="records"), default=_native))
    got = _score_remote(endpoint, rows)
    if got.shape != expected.shape or not np.array_equal(got, expected):
        worst = float(np.max(np.abs(got - expected))) if got.shape == expected.shape else None
        raise DeploymentError(
            f"{endpoint.name}: the endpoint's scores differ from the evaluated model "
            f"(max difference {worst})"
        )
    return {"rows_checked": len(sample), "max_abs_difference": 0.0}


def _native(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def serve_release(
    settings: Settings, run_dir: Path, state: Any, spec_path: Path | None = None
) -> dict[str, Any]:
    """Deploy the approved version and smoke-test it; the endpoint as a dict."""
    from registry.mlflow_registry import serving_uri

    features = json.loads((run_dir / "features" / "features.json").read_text())["features"]
    release = Release(
        model_name=state.model_name,
        version=str(state.model_version),
        model_uri=serving_uri(
            settings.mlflow_tracking_uri, state.model_name, str(state.model_version)
        ),
        artifact_sha256=state.artifact_sha256,
        approval_request_id=state.id,
        spec_path=str(spec_path) if spec_path else None,
    )
    deployer = deployer_for(settings)
    endpoint = deployer.deploy(release)
    try:
        check = smoke_test(endpoint, run_dir, list(features))
    except DeploymentError:
        deployer.stop(release.name)
        raise
    log.info(
        "%s serving at %s; %d rows scored identically",
        release.name,
        endpoint.url,
        check["rows_checked"],
    )
    return {
        "deployer": endpoint.deployer,
        "endpoint": endpoint.url,
        "deployment": endpoint.name,
        "smoke_test": check,
    }
