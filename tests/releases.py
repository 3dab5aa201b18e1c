"""Registering, approving and releasing model versions in the tests as the lifecycle
does: a booster logged and registered in MLflow, ``alice`` and ``bob`` holding the approver
role, a run requesting approval of a version, the two approving it (four eyes, as many as
its spec asks), and the deploy step recording the deployment."""

from __future__ import annotations

from pathlib import Path
from typing import Any

APPROVERS = ("alice", "bob")


def register_booster(
    settings: Any, booster: Any, model: str, experiment: str, run_name: str | None = None
) -> str:
    """Log ``booster`` in a run of ``experiment`` (made in the stack's artifact store if
    new) on the stack's MLflow server and register it as a version of ``model``: the
    version number."""
    import mlflow

    from registry.mlflow_registry import artifact_location_for

    uri = settings.mlflow_tracking_uri
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    client = mlflow.MlflowClient(uri, uri)
    if client.get_experiment_by_name(experiment) is None:
        client.create_experiment(
            experiment, artifact_location=artifact_location_for(uri, settings.mlflow_artifacts)
        )
    mlflow.set_experiment(experiment)
    with mlflow.start_run(run_name=run_name):
        info = log_lightgbm(booster)
    return str(mlflow.register_model(info.model_uri, model).version)


# What MLflow inferred as a LightGBM model's pip requirements in this session.
_LIGHTGBM_REQUIREMENTS: list[str] = []


def log_lightgbm(booster: Any) -> Any:
    """``mlflow.lightgbm.log_model(booster, name="model")`` in the active run: its model
    info. MLflow infers a model's pip requirements by loading it in a child Python
    process (seconds each time); the answer depends only on the installed packages, so
    it is inferred once a session and passed on, as the lifecycle's registration does."""
    import tempfile

    import mlflow.lightgbm

    if not _LIGHTGBM_REQUIREMENTS:
        with tempfile.TemporaryDirectory() as tmp:
            mlflow.lightgbm.save_model(booster, f"{tmp}/model")
            lines = Path(tmp, "model", "requirements.txt").read_text().splitlines()
        _LIGHTGBM_REQUIREMENTS.extend(
            line.strip() for line in lines if line.strip() and not line.startswith(("-", "#"))
        )
    return mlflow.lightgbm.log_model(
        booster, name="model", pip_requirements=list(_LIGHTGBM_REQUIREMENTS)
    )


def grant_approvers(url: str) -> None:
    """Grant :data:`APPROVERS` the ``model_risk`` role in the governance store ``url``."""
    from registry import approvals

    for user in APPROVERS:
        approvals.grant_role(url, user, "model_risk", granted_by="admin")


def approve(
    url: str,
    spec: Any,
    version: str,
    sha256: str,
    run_id: str | None = None,
    reason: str = "ok",
    **decide: Any,
) -> Any:
    """Version ``version`` of ``spec.name`` (artifact ``sha256``) requested for approval by
    run ``run_id`` (``run-<version>`` by default) and approved by :data:`APPROVERS`, one
    after the other until approved, with ``reason`` (``decide``: more arguments of
    ``approvals.decide``): the approved request's state."""
    from registry import approvals

    approvals.request_approval(
        url,
        spec,
        model_version=version,
        artifact_sha256=sha256,
        origin=approvals.RunOrigin(
            run_id=run_id or f"run-{version}", dag_id=None, triggered_by="dev", author="dev"
        ),
        risk_reasons=[],
    )
    for user in APPROVERS:
        review = approvals.Review(user=user, decision="approve", reason=reason, channel="cli")
        state = approvals.decide(url, spec.name, version, review, **decide)
        if state.status == "approved":
            break
    assert state.status == "approved", state
    return state


def record_deployed(url: str, state: Any, details: dict[str, Any] | None) -> None:
    """The deploy step's record of the approved ``state``, in environment ``local``."""
    from registry import governance

    governance.record_deployment(
        url, state, environment="local", action="deployed", actor="govml-lifecycle",
        details=details, consume=True,
    )  # fmt: skip


def deploy_locally(settings: Any, state: Any, sha256: str, spec_path: Path) -> str:
    """The approved version of ``state`` served by the local deployer (a real model server
    from the registry's artifact): its endpoint URL."""
    from ops.deploy import deployer_for
    from registry.mlflow_registry import serving_uri
    from serving.control.deployers import Release

    name, version = state.model_name, state.model_version
    uri = serving_uri(settings.mlflow_tracking_uri, name, version)
    release = Release(name, version, uri, sha256, state.id, str(spec_path))
    return deployer_for(settings).deploy(release).url


def stop_deployments(settings: Any) -> None:
    """Stop every model server the local deployer of ``settings`` runs."""
    from ops.deploy import deployer_for

    deployer = deployer_for(settings)
    for name in deployer.deployed():
        deployer.stop(name)
