"""Monitoring runs in MLflow: each monitoring report logged against the served version."""

from __future__ import annotations

from pathlib import Path

from registry.mlflow_registry import mlflow_client


def log_monitoring(
    tracking_uri: str,
    name: str,
    version: str | None,
    folder: Path,
    metrics: dict[str, float],
    tags: dict[str, str],
    artifact_location: str | None = None,
) -> str:
    """Log one monitoring run (report files, headline metrics) against a served version.

    The run goes to experiment ``<name>_monitoring`` with tags ``govml.model_name`` and
    ``govml.model_version``; the version itself gets ``govml.monitoring.last_run`` and
    ``govml.monitoring.status``, so the MLflow UI shows the latest verdict on the version's
    page. Returns the MLflow run id.
    """
    import math

    import mlflow

    client = mlflow_client(tracking_uri)
    experiment = f"{name}_monitoring"
    if client.get_experiment_by_name(experiment) is None:
        client.create_experiment(
            experiment, artifact_location=artifact_location, tags={"govml.spec": name}
        )
    mlflow.set_experiment(experiment)
    run_tags = {"govml.model_name": name, "govml.model_version": str(version or ""), **tags}
    with mlflow.start_run(run_name=f"{name} v{version} {folder.name}", tags=run_tags) as run:
        finite = {k: float(v) for k, v in metrics.items() if v is not None and math.isfinite(v)}
        if finite:
            mlflow.log_metrics(finite)
        mlflow.log_artifacts(str(folder), artifact_path="monitoring")
        run_id = run.info.run_id
    if version:
        client.set_model_version_tag(name, str(version), "govml.monitoring.last_run", run_id)
        status = tags.get("govml.monitoring.status", "")
        client.set_model_version_tag(name, str(version), "govml.monitoring.status", status)
    return run_id
