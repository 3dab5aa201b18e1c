"""The only module that talks to MLflow's registry: register candidates, find the champion.

(MLflow's auth app, its accounts and roles: :mod:`registry.mlflow_auth`.)

Conventions (MLflow 3): one registered model per spec (named like the spec), one
experiment per spec (``<spec>_lifecycle``), aliases not stages (``candidate``,
``challenger``, ``champion``), gate results, the artifact SHA-256 and the lifecycle
run id as model-version tags, the model card as the version's description.

The registry is locked (docs/security.md): against a tracking server every call logs in
as the ``govml`` service account (:func:`registry.mlflow_auth.use_service_account`), and
every alias move goes through :func:`set_alias`, which records it in the audit chain.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from pipelines import artifacts
from pipelines.errors import RegistryError
from pipelines.spec import ModelSpec
from registry.mlflow_auth import USERNAME_ENV, use_service_account

log = logging.getLogger(__name__)

RUN_TAG = "govml.lifecycle_run_id"
CANDIDATE, CHALLENGER, CHAMPION = "candidate", "challenger", "champion"
ALIASES = (CHAMPION, CHALLENGER, CANDIDATE)
SERVICE_ACTOR = "govml"  # who moves an alias when the caller names nobody
REGISTER_ACTOR = "govml-lifecycle"


@dataclass(frozen=True)
class RegisterResult:
    model_name: str
    version: str
    run_id: str
    alias: str
    artifact_sha256: str
    model_uri: str
    created: bool

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def artifact_location_for(tracking_uri: str, artifacts: Path) -> str | None:
    """Where new experiments keep artifacts when MLflow is used without its server.

    A tracking server (``http://``) decides itself (it proxies the artifact store); a
    database URI used directly needs an explicit location.
    """
    if tracking_uri.startswith(("http://", "https://", "databricks")):
        return None
    return artifacts.resolve().as_uri()


def mlflow_client(tracking_uri: str):  # noqa: ANN202 (mlflow is imported lazily)
    """The MLflow client of ``tracking_uri`` (tracking and registry), logged in as the
    service account on the locked registry."""
    import mlflow
    from mlflow import MlflowClient

    use_service_account(tracking_uri)  # the locked registry: log in as the service account
    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_registry_uri(tracking_uri)
    return MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)


def find_model_file(folder: Path) -> Path:
    found = artifacts.find_model_file(folder)
    if found is None:
        raise RegistryError(f"no LightGBM model file under {folder}")
    return found


def version_by_alias(tracking_uri: str, name: str, alias: str):  # noqa: ANN201
    """The model version holding ``alias``, or None."""
    from mlflow.exceptions import MlflowException

    client = mlflow_client(tracking_uri)
    try:
        return client.get_model_version_by_alias(name, alias)
    except MlflowException:
        return None


def fetch_champion(tracking_uri: str, name: str, dest: Path) -> dict[str, Path] | None:
    """Download the champion's model file and data profile; None without a champion."""
    import mlflow.artifacts

    version = version_by_alias(tracking_uri, name, CHAMPION)  # also sets the registry URI
    if version is None:
        return None
    dest.mkdir(parents=True, exist_ok=True)
    model_dir = Path(
        mlflow.artifacts.download_artifacts(
            artifact_uri=f"models:/{name}@{CHAMPION}",
            dst_path=str(dest / "model"),
            tracking_uri=tracking_uri,
        )
    )
    found: dict[str, Path] = {"model": find_model_file(model_dir)}
    try:
        profile = mlflow.artifacts.download_artifacts(
            run_id=version.run_id,
            artifact_path="validate_data/profile.json",
            dst_path=str(dest),
            tracking_uri=tracking_uri,
        )
        found["profile"] = Path(profile)
    except Exception:  # noqa: BLE001 (an older champion may have no profile)
        log.warning("champion %s v%s has no data profile", name, version.version)
    found["version"] = Path(str(version.version))
    return found


def _existing_version(client, name: str, run_id: str):  # noqa: ANN001, ANN202
    from mlflow.exceptions import MlflowException

    try:
        versions = client.search_model_versions(f"name = '{name}'")
    except MlflowException:
        return None
    for version in versions:
        if (version.tags or {}).get(RUN_TAG) == run_id:
            return version
    return None


def _gate_tags(gates: dict[str, Any]) -> dict[str, str]:
    tags = {
        "gates.passed": str(bool(gates.get("passed"))).lower(),
        "gates.high_risk": str(bool(gates.get("high_risk"))).lower(),
    }
    for check in gates.get("checks", []):
        value = check.get("value")
        shown = f"{value:.4f}" if isinstance(value, float) else str(value)
        threshold = check.get("threshold")
        limit = f"{threshold:.4f}" if isinstance(threshold, float) else str(threshold)
        tags[f"gate.{check['name']}"] = f"{check['status']}: {shown} {check.get('op', '')} {limit}"
    return tags


def register(
    spec: ModelSpec,
    run_dir: Path,
    lifecycle_run_id: str,
    tracking_uri: str,
    out_dir: Path,
    spec_sha256: str | None = None,
    artifact_location: str | None = None,
) -> RegisterResult:
    """Log the run to MLflow and register the model as version with alias ``candidate``.

    Idempotent: when a version of this model already carries the lifecycle run id,
    it is returned (tags, description and alias refreshed) and nothing new is created.

    The run reaches MLflow in bulk (:func:`registry.mlflow_run.log_lifecycle_run`), and
    the version's tags with the version itself.

    Long because: the two ways through (already registered, new version) end in the same
    :func:`_finish`, and read best side by side.
    """
    import mlflow
    import mlflow.artifacts

    from registry.mlflow_run import log_lifecycle_run, remember_pip_requirements

    client = mlflow_client(tracking_uri)
    registration = _Registration(tracking_uri, spec, run_dir, lifecycle_run_id, out_dir)
    name = spec.name
    gates = json.loads((run_dir / "gates" / "gates.json").read_text())
    if not gates.get("passed"):
        raise RegistryError(
            f"{name}: gates did not pass; refusing to register run {lifecycle_run_id}"
        )
    existing = _existing_version(client, name, lifecycle_run_id)
    if existing is not None:
        log.info(
            "%s: run %s already registered as version %s", name, lifecycle_run_id, existing.version
        )
        sha = existing.tags.get("artifact_sha256", "")
        return _finish(
            client,
            registration,
            existing,
            created=False,
            artifact_sha256=sha,
            tags=_version_tags(spec, gates, lifecycle_run_id, sha),
        )

    _use_lifecycle_experiment(client, name, lifecycle_run_id, artifact_location)
    run_id, info = log_lifecycle_run(
        spec,
        run_dir,
        lifecycle_run_id,
        spec_sha256,
        tags={RUN_TAG: lifecycle_run_id, "govml.spec": name},
    )

    with tempfile.TemporaryDirectory() as tmp:
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=info.model_uri, dst_path=tmp))
        artifact_sha256 = artifacts.sha256_file(find_model_file(local))
        remember_pip_requirements(local)
    version = mlflow.register_model(
        info.model_uri,
        name,
        tags=_version_tags(spec, gates, lifecycle_run_id, artifact_sha256),
    )
    return _finish(
        client,
        registration,
        version,
        created=True,
        artifact_sha256=artifact_sha256,
        mlflow_run_id=run_id,
    )


def _use_lifecycle_experiment(
    client,  # noqa: ANN001
    name: str,
    lifecycle_run_id: str,
    artifact_location: str | None,
) -> None:
    """Make ``<name>_lifecycle`` the active experiment (created if new), and mark deleted
    any half-finished earlier attempt to log the same lifecycle run."""
    import mlflow

    experiment = f"{name}_lifecycle"
    if client.get_experiment_by_name(experiment) is None:
        client.create_experiment(
            experiment, artifact_location=artifact_location, tags={"govml.spec": name}
        )
    mlflow.set_experiment(experiment)
    for stale in mlflow.search_runs(
        experiment_names=[experiment],
        filter_string=f"tags.`{RUN_TAG}` = '{lifecycle_run_id}'",
        output_format="list",
    ):
        client.delete_run(stale.info.run_id)


def _version_tags(
    spec: ModelSpec, gates: dict[str, Any], lifecycle_run_id: str, artifact_sha256: str
) -> dict[str, str]:
    """Every tag govml gives a registered version at registration."""
    return _gate_tags(gates) | {
        RUN_TAG: lifecycle_run_id,
        "artifact_sha256": artifact_sha256,
        "use_case": spec.use_case,
        "owner": spec.owner,
    }


@dataclass(frozen=True)
class _Registration:
    """One :func:`register` call: where, which model, which lifecycle run, which folder."""

    tracking_uri: str
    spec: ModelSpec
    run_dir: Path
    lifecycle_run_id: str
    out_dir: Path


def _finish(
    client,  # noqa: ANN001
    registration: _Registration,
    version,  # noqa: ANN001
    *,
    created: bool,
    artifact_sha256: str,
    mlflow_run_id: str | None = None,
    tags: dict[str, str] | None = None,
) -> RegisterResult:
    """The version's description and ``tags`` (none: given with the version when it was
    created), the ``candidate`` alias, and ``out_dir/register.json``."""
    from registry.model_card import render_model_card

    tracking_uri, spec, run_dir = registration.tracking_uri, registration.spec, registration.run_dir
    lifecycle_run_id, out_dir = registration.lifecycle_run_id, registration.out_dir

    name = spec.name
    markdown, _ = render_model_card(spec, run_dir, lifecycle_run_id, version=str(version.version))
    client.update_model_version(name, version.version, description=markdown)
    for key, value in (tags or {}).items():
        client.set_model_version_tag(name, version.version, key, value)
    set_alias(
        tracking_uri,
        name,
        CANDIDATE,
        str(version.version),
        actor=REGISTER_ACTOR,
        reason=f"passed the automatic gates in lifecycle run {lifecycle_run_id}",
        artifact_sha256=artifact_sha256,
    )
    result = RegisterResult(
        model_name=name,
        version=str(version.version),
        run_id=mlflow_run_id or version.run_id,
        alias=CANDIDATE,
        artifact_sha256=artifact_sha256,
        model_uri=f"models:/{name}/{version.version}",
        created=created,
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    payload = {k: v for k, v in result.to_dict().items() if k != "created"}
    tmp = out_dir / "register.json.tmp"
    tmp.write_text(json.dumps(payload, indent=2, sort_keys=True))
    tmp.replace(out_dir / "register.json")
    return result


def registered_models(tracking_uri: str) -> list[str]:
    """The names of every registered model, sorted."""
    from mlflow.exceptions import MlflowException

    try:
        return sorted(m.name for m in mlflow_client(tracking_uri).search_registered_models())
    except MlflowException as exc:
        first = (str(exc.message).strip().splitlines() or [""])[0]
        raise RegistryError(f"cannot list MLflow's models at {tracking_uri}: {first}") from None


def aliases(tracking_uri: str, name: str) -> dict[str, str]:
    """The model's aliases as MLflow shows them now (alias -> version); {} for no model."""
    from mlflow.exceptions import MlflowException

    try:
        model = mlflow_client(tracking_uri).get_registered_model(name)
    except MlflowException as exc:
        if not_found(exc):
            return {}
        raise RegistryError(f"cannot read model {name!r} from MLflow: {exc}") from None
    return {alias: str(version) for alias, version in (model.aliases or {}).items()}


def _account(tracking_uri: str) -> str:
    """Who MLflow saw make a change: the login, or the host account on a database URI."""
    if tracking_uri.startswith(("http://", "https://")):
        return os.environ.get(USERNAME_ENV) or "(anonymous)"
    return "(backend store, host account)"


def set_alias(
    tracking_uri: str,
    name: str,
    alias: str,
    version: str,
    *,
    actor: str = SERVICE_ACTOR,
    reason: str = "",
    artifact_sha256: str | None = None,
    governance_url: str | None = None,
) -> bool:
    """Move ``alias`` of model ``name`` to ``version``: the one way govml moves an alias.

    Each move is an ``alias_moved`` audit event (alias, from_version, to_version, the
    version's artifact SHA-256, reason, the account that moved it): the registry's alias
    history, which MLflow itself forgets, and what :mod:`registry.reconcile` holds MLflow
    to. The event is written after MLflow took the move, so a failure in between leaves
    an unaudited alias that the reconciler reports, never an event for a move that did
    not happen. ``artifact_sha256``: the version's SHA-256 when the caller has just
    computed it (else it is computed from the registry now). ``governance_url``: default
    the configured store. False when the alias was there already (nothing recorded).
    """
    from registry import audit

    if alias not in ALIASES:
        raise RegistryError(f"unknown alias {alias!r} (govml moves {', '.join(ALIASES)})")
    version = str(version)
    previous = aliases(tracking_uri, name).get(alias)
    if previous == version:
        return False
    sha = artifact_sha256 or artifact_sha256_of(tracking_uri, name, version)
    mlflow_client(tracking_uri).set_registered_model_alias(name, alias, version)
    if governance_url is None:
        from pipelines.config import load_settings

        governance_url = load_settings().governance_url
    audit.append_event(
        governance_url,
        "alias_moved",
        actor=actor,
        payload={
            "alias": alias,
            "from_version": previous,
            "to_version": version,
            "artifact_sha256": sha,
            "reason": reason,
            "account": _account(tracking_uri),
        },
        model_name=name,
        model_version=version,
    )
    log.info("%s: alias %s moved from v%s to v%s by %s", name, alias, previous, version, actor)
    return True


def tag_version(tracking_uri: str, name: str, version: str, tags: dict[str, str]) -> None:
    """Set model-version tags (approval decisions, deployment state)."""
    client = mlflow_client(tracking_uri)
    for key, value in tags.items():
        client.set_model_version_tag(name, str(version), key, str(value))


def version_tags(tracking_uri: str, name: str, version: str) -> dict[str, str]:
    return dict(mlflow_client(tracking_uri).get_model_version(name, str(version)).tags or {})


def artifact_sha256_of(tracking_uri: str, name: str, version: str) -> str:
    """SHA-256 of a registered version's model file, downloaded from the registry now."""
    import mlflow.artifacts
    from mlflow.exceptions import MlflowException

    mlflow_client(tracking_uri)  # sets the registry URI that resolves models:/ URIs
    with tempfile.TemporaryDirectory() as tmp:
        try:
            local = Path(
                mlflow.artifacts.download_artifacts(
                    artifact_uri=f"models:/{name}/{version}",
                    dst_path=tmp,
                    tracking_uri=tracking_uri,
                )
            )
        except MlflowException as exc:
            raise RegistryError(f"cannot download {name} version {version}: {exc}") from None
        return artifacts.sha256_file(find_model_file(local))


def not_found(exc: Exception) -> bool:
    """Whether an MLflow error means the model or version does not exist."""
    return getattr(exc, "error_code", "") == "RESOURCE_DOES_NOT_EXIST"


def serving_uri(
    tracking_uri: str, name: str, version: str, artifacts_root: Path | None = None
) -> str:
    """Where a model server should load a version from.

    A local artifact store gives its folder (a server needs no registry access, and no
    registry login): a ``file:`` location, or an ``mlflow-artifacts:`` one that the
    tracking server keeps in ``artifacts_root`` on this host (default: the configured
    ``GOVML_MLFLOW_ARTIFACTS``). Any other store gives ``models:/NAME/VERSION``
    (resolved by the server through ``MLFLOW_TRACKING_URI``, with a login that can read
    the registry). The model server checks the file's SHA-256 either way.
    """
    from urllib.parse import unquote, urlparse

    uri = mlflow_client(tracking_uri).get_model_version_download_uri(name, str(version))
    parsed = urlparse(uri)
    if parsed.scheme == "file":
        return unquote(parsed.path)
    if parsed.scheme == "" and Path(uri).exists():
        return uri
    if parsed.scheme == "mlflow-artifacts":
        if artifacts_root is None:
            from pipelines.config import load_settings

            artifacts_root = load_settings().mlflow_artifacts
        local = Path(artifacts_root) / unquote(parsed.path).lstrip("/")
        if local.is_dir() and local.resolve().is_relative_to(Path(artifacts_root).resolve()):
            return str(local)
    return f"models:/{name}/{version}"
