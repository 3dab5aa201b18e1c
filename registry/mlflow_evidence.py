"""Read-only evidence from the MLflow registry: a registered version as plain data, a
run's artifact folder (for :mod:`registry.evidence`)."""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Any

from pipelines.errors import RegistryError
from registry.mlflow_registry import mlflow_client, not_found

log = logging.getLogger("registry.mlflow_registry")  # the registry's log, as before


def version_record(tracking_uri: str, name: str, version: str) -> dict[str, Any]:
    """A registered version as plain data (tags, description, aliases, MLflow run).

    Raises :class:`RegistryError` naming the model or version when MLflow does not
    know it, and the versions that do exist.
    """
    from mlflow.exceptions import MlflowException

    client = mlflow_client(tracking_uri)
    try:
        model = client.get_registered_model(name)
    except MlflowException as exc:
        if not_found(exc):
            raise RegistryError(f"no registered model named {name!r} in MLflow") from None
        raise RegistryError(f"cannot read model {name!r} from MLflow: {exc}") from None
    try:
        found = client.get_model_version(name, str(version))
    except MlflowException as exc:
        if not not_found(exc) and getattr(exc, "error_code", "") != "INVALID_PARAMETER_VALUE":
            raise RegistryError(
                f"cannot read {name} version {version} from MLflow: {exc}"
            ) from None
        known = sorted(
            (str(v.version) for v in client.search_model_versions(f"name = '{name}'")),
            key=lambda v: (len(v), v),
        )
        raise RegistryError(
            f"{name} has no version {version!r} (versions: {', '.join(known) or 'none'})"
        ) from None
    aliases = sorted(a for a, v in (model.aliases or {}).items() if str(v) == str(found.version))
    return {
        "name": name,
        "version": str(found.version),
        "run_id": found.run_id,
        "source": found.source,
        "status": found.status,
        "user_id": found.user_id or None,
        "created_ms": found.creation_timestamp,
        "updated_ms": found.last_updated_timestamp,
        "description": found.description or "",
        "tags": dict(found.tags or {}),
        "aliases": aliases,
    }


def download_run_folder(
    tracking_uri: str, run_id: str, artifact_path: str, dest: Path
) -> Path | None:
    """Download one artifact folder of an MLflow run to ``dest``; None when it has none."""
    import mlflow.artifacts
    from mlflow.exceptions import MlflowException

    mlflow_client(tracking_uri)
    with tempfile.TemporaryDirectory(dir=dest.parent) as tmp:
        try:
            local = Path(
                mlflow.artifacts.download_artifacts(
                    run_id=run_id,
                    artifact_path=artifact_path,
                    dst_path=tmp,
                    tracking_uri=tracking_uri,
                )
            )
        except (MlflowException, OSError) as exc:
            log.info("run %s has no artifacts under %s: %s", run_id, artifact_path, exc)
            return None
        if not local.is_dir() or not any(local.iterdir()):
            return None
        local.replace(dest)
    return dest
