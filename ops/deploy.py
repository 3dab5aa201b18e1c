"""The lifecycle's deploy step: serve an approved version and prove it answers correctly.

Called by the DAG's ``deploy`` task through :func:`registry.governance.release_approved`
(which checks the approval first and records the deployment after): starts the
version's model server with the configured deployer (``local``: a supervised process
from the serving environment), loading the version from the registry's artifact
store with the approved artifact SHA-256 (the server refuses any other file); or, with
``GOVML_DEPLOYER=kubernetes``, applies the version's KServe InferenceService and waits
until it is Ready. It then scores rows of the run's out-of-time test set through the
endpoint and requires exactly the scores of the model file the pipeline evaluated.

A spec with windowed aggregates (the fraud model's card/customer/terminal behaviour)
is served behind the feature transformer. Before that version takes traffic its online
state is rebuilt from the run's ingested history: the transformer's in-process store
loads it while starting (``GOVML_FEATURE_STORE=memory``, the default), or the deploy
step backfills the Redis namespace first (``redis://...``); either way the warm-up is
recorded in the audit trail (``features_backfilled``). The smoke test then sends raw
test transactions through the transformer and requires, for each, exactly the offline
aggregates of the feature table and the evaluated model's score.

Every call to a deployed server carries that deployment's own bearer token (the
project's client ``govml``, ``service.token`` in the deployment's folder, never
printed): :func:`service_token`.
"""

from __future__ import annotations

import json
import logging
import os
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np

from pipelines.config import Settings
from pipelines.errors import DeploymentError
from serving.control.deployers import Endpoint, Release

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
    from serving.control.deployers.local import LocalDeployer

    # model servers read the version from the artifact folder (serving_uri) and never
    # write to the registry: they get no registry credentials
    secrets = ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN")
    env = {k: v for k, v in os.environ.items() if k not in secrets}
    env["MLFLOW_TRACKING_URI"] = settings.mlflow_tracking_uri
    env.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    return LocalDeployer(
        settings.serving_dir,
        settings.serving_python,
        host=settings.serving_bind_host,
        env=env,
        ready_timeout=300,
    )


def service_token(settings: Settings, model: str, version: str) -> str:
    """The project's own bearer token for a deployed version (its ``service.token``);
    DeploymentError when the version has none (it was never deployed here)."""
    from pipelines.errors import ConfigError
    from serving.token_files import deployment_name, deployment_tokens, read_token

    files = deployment_tokens(settings.serving_dir / deployment_name(model, str(version)))
    try:
        return read_token(files.service_token)
    except ConfigError as exc:
        raise DeploymentError(f"{model} v{version}: no token to call it with: {exc}") from None


def endpoint_token(endpoint: Endpoint) -> str:
    """The project's own bearer token for an endpoint a deployer returned."""
    from pipelines.errors import ConfigError
    from serving.token_files import read_token

    path = endpoint.details.get("token_file")
    if not path:
        raise DeploymentError(f"{endpoint.name}: the deployer gave no token file")
    try:
        return read_token(path)
    except ConfigError as exc:
        raise DeploymentError(f"{endpoint.name}: no token to call it with: {exc}") from None


def _kubernetes_deployer(settings: Settings):  # noqa: ANN202
    from serving.control.deployers.kubernetes import KubernetesDeployer
    from serving.control.deployers.target import DeploymentTarget

    return KubernetesDeployer(settings.serving_dir, DeploymentTarget.from_settings(settings))


def _score_remote(endpoint: Endpoint, rows: list[dict[str, Any]]) -> np.ndarray:
    url = f"{endpoint.url}/v1/models/{endpoint.model_name}:predict"
    try:
        answer = post_json(url, {"instances": rows}, endpoint_token(endpoint))
        return np.asarray(answer["predictions"], dtype="float64")
    except (DeploymentError, KeyError, TypeError, ValueError) as exc:
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


def post_json(url: str, body: Any, token: str) -> dict[str, Any]:
    """POST a JSON body to a model endpoint with a bearer token; the JSON answer, or
    DeploymentError naming the URL and what went wrong (never the token)."""
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {token}"}
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        detail = exc.read().decode("utf-8", "replace")[:300]
        raise DeploymentError(f"POST {url}: HTTP {exc.code}: {detail}") from None
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise DeploymentError(f"POST {url}: {exc}") from None


def raw_transactions(spec: Any, history: Path, ids: list[Any]) -> list[dict[str, Any]]:
    """The history's rows with these ids as the bank's systems send them (JSON, ISO
    times), in the order of ``ids``."""
    import pandas as pd

    from pipelines.features_online import OnlineFeatures
    from serving.transactions import TransactionSchema

    fields = list(TransactionSchema(spec, OnlineFeatures(spec)).fields)
    id_column, time_column = spec.data.id_column, spec.data.time_column
    frame = pd.read_parquet(history, columns=fields, filters=[(id_column, "in", ids)])
    frame = frame.set_index(id_column, drop=False).loc[ids]
    part = frame[fields].astype(object)
    rows = part.where(part.notna(), None).to_dict("records")
    for row, moment in zip(rows, frame[time_column], strict=True):
        row[time_column] = pd.Timestamp(moment).isoformat()
    return json.loads(json.dumps(rows, default=_native))


def smoke_test_transformer(
    url: str, model: str, spec: Any, run_dir: Path, history: Path, token: str
) -> dict[str, Any]:
    """Raw test transactions through the transformer: each must get exactly the offline
    aggregates of the run's feature table and the evaluated model's score. They are in
    the warm-up history already, so the store records nothing new (same ids)."""
    import pandas as pd

    from pipelines.training import load_model

    names = [a.name for a in spec.features.aggregates]
    features = json.loads((run_dir / "features" / "features.json").read_text())["features"]
    test = pd.read_parquet(run_dir / "features" / "test.parquet")
    sample = test.tail(SMOKE_ROWS)
    ids = sample[spec.data.id_column].tolist()
    answer = post_json(
        f"{url}/v1/models/{model}:predict",
        {"instances": raw_transactions(spec, history, ids)},
        token,
    )
    got = answer.get("aggregates")
    if not isinstance(got, list) or len(got) != len(sample):
        raise DeploymentError(f"{url}: the transformer answered no aggregates per row")
    for index, (row, want) in enumerate(zip(got, sample[names].to_dict("records"), strict=True)):
        for name in names:
            value, expected = row.get(name), want[name]
            same = value is None if pd.isna(expected) else value == float(expected)
            if not same:
                raise DeploymentError(
                    f"transformer: transaction {ids[index]!r}, {name} = {value!r} online "
                    f"but {expected!r} offline"
                )
    model_file = load_model(run_dir / "train" / "model.txt")
    expected_scores = np.asarray(model_file.predict(sample[list(features)]))
    scores = np.asarray(answer.get("predictions", []), dtype="float64")
    if scores.shape != expected_scores.shape or not np.array_equal(scores, expected_scores):
        raise DeploymentError("transformer: scores differ from the evaluated model's")
    return {"rows_checked": len(sample), "aggregates_checked": len(sample) * len(names)}


def warm_up_features(
    settings: Settings, spec: Any, run_dir: Path, model: str, version: str, run_id: str | None
) -> tuple[str, Path]:
    """Rebuild the version's online state from the run's history (Redis: backfill now;
    memory: the transformer loads it while starting); audited. (store, history)"""
    import pyarrow.parquet as pq

    from pipelines.ingest import DATA_FILE
    from registry.audit import append_event

    history = run_dir / "ingest" / DATA_FILE
    if not history.is_file():
        raise DeploymentError(f"{model} v{version}: no ingested history at {history} to warm up")
    store = settings.feature_store
    if store == "memory":
        payload: dict[str, Any] = {
            "store": "memory",
            "history": str(history),
            "rows": pq.ParquetFile(history).metadata.num_rows,
            "by": "the transformer, while it starts",
        }
    else:
        from ops.feature_backfill import backfill

        result = backfill(spec, history, store)
        payload = {"store": _safe_store(store), **result.to_dict()}
    append_event(
        settings.governance_url,
        "features_backfilled",
        actor="govml-deploy",
        payload=payload,
        model_name=model,
        model_version=version,
        run_id=run_id,
    )
    return store, history


def _safe_store(url: str) -> str:
    from serving.feature_store import safe_url

    return safe_url(url)


def _warm_features(
    settings: Settings, run_dir: Path, state: Any, spec_path: Path | None
) -> tuple[Any, str | None, Path | None]:
    """(spec, feature store, history) of the release: a spec with aggregate features
    gets its online features warmed up before the version serves."""
    if spec_path is None:
        return None, None, None
    from pipelines.spec import load_spec

    spec = load_spec(spec_path)
    if not spec.features.aggregates:
        return spec, None, None
    store, history = warm_up_features(
        settings, spec, run_dir, state.model_name, str(state.model_version), state.run_id
    )
    return spec, store, history


def serve_release(
    settings: Settings, run_dir: Path, state: Any, spec_path: Path | None = None
) -> dict[str, Any]:
    """Deploy the approved version and smoke-test it; the endpoint as a dict."""
    from registry.mlflow_registry import serving_uri

    features = json.loads((run_dir / "features" / "features.json").read_text())["features"]
    spec, store, history = _warm_features(settings, run_dir, state, spec_path)
    release = Release(
        model_name=state.model_name,
        version=str(state.model_version),
        model_uri=serving_uri(
            settings.mlflow_tracking_uri, state.model_name, str(state.model_version)
        ),
        artifact_sha256=state.artifact_sha256,
        approval_request_id=state.id,
        spec_path=str(spec_path) if spec_path else None,
        feature_store=store,
        history=str(history) if history and store == "memory" else None,
    )
    deployer = deployer_for(settings)
    endpoint = deployer.deploy(release)
    transformer = endpoint.details.get("transformer") or {}
    try:
        check = smoke_test(endpoint, run_dir, list(features))
        if transformer.get("url") and spec is not None and history is not None:
            check["transformer"] = smoke_test_transformer(
                transformer["url"],
                release.model_name,
                spec,
                run_dir,
                history,
                endpoint_token(endpoint),
            )
    except DeploymentError:
        deployer.stop(release.name)
        raise
    log.info(
        "%s serving at %s; %d rows scored identically",
        release.name,
        endpoint.url,
        check["rows_checked"],
    )
    served: dict[str, Any] = {
        "deployer": endpoint.deployer,
        "endpoint": endpoint.url,
        "deployment": endpoint.name,
        "smoke_test": check,
    }
    if transformer.get("url"):
        served["transformer"] = transformer["url"]
        served["feature_store"] = _safe_store(store or "memory")
    return served
