"""MLflow without its server: the backend store used directly, by the host account.

``govml run`` with the stack down (and ``govml monitor``, the demo) use MLflow's
backend store itself, the same database the tracking server serves. Experiments and
model versions the server created keep their artifacts as ``mlflow-artifacts:/PATH``
URIs, which MLflow resolves only through a tracking server ("When an mlflow-artifacts
URI was supplied, the tracking URI must be a valid http or https URI"). The server
stores such an artifact at ``<--artifacts-destination>/PATH``;
:func:`serve_proxied_artifacts_from` makes this process read and write those files
there directly, as the server would.

This bypasses the server's authentication on purpose: the backend store and the
artifact folder belong to the host account, which the embedded stack trusts (see the
README's security model). Nothing changes for a tracking server URI.
"""

from __future__ import annotations

import logging
import posixpath
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from pipelines.errors import RegistryError

log = logging.getLogger(__name__)

PROXIED_SCHEME = "mlflow-artifacts"


def local_path_of(uri: str, destination: Path) -> Path:
    """Where the tracking server keeps the artifact ``mlflow-artifacts:[//HOST]/PATH``."""
    parsed = urlparse(uri)
    if parsed.scheme != PROXIED_SCHEME:
        raise RegistryError(f"{uri!r} is not an {PROXIED_SCHEME}: URI")
    relative = posixpath.normpath(parsed.path.lstrip("/") or ".")
    if relative == ".." or relative.startswith("../") or posixpath.isabs(relative):
        raise RegistryError(f"{uri!r} points outside the artifact store")
    root = destination.resolve()
    return root if relative == "." else root / relative


def serve_proxied_artifacts_from(destination: Path) -> None:
    """Resolve ``mlflow-artifacts:`` URIs in this process to files under ``destination``.

    ``destination`` is the tracking server's ``--artifacts-destination`` (the stack's
    ``GOVML_MLFLOW_ARTIFACTS``). MLflow's artifact repositories are a registry by URI
    scheme (plugins register theirs the same way); this resolves the scheme's URIs in
    the local store for this process, whenever its tracking URI is not a server's.
    """
    import mlflow
    from mlflow.store.artifact.artifact_repository_registry import (
        get_registered_artifact_repositories,
    )
    from mlflow.store.artifact.local_artifact_repo import LocalArtifactRepository
    from mlflow.store.artifact.mlflow_artifacts_repo import MlflowArtifactsRepository

    root = Path(destination)

    def repository(
        artifact_uri: str, tracking_uri: str | None = None, registry_uri: str | None = None
    ) -> Any:
        if (tracking_uri or mlflow.get_tracking_uri()).startswith(("http://", "https://")):
            # a tracking server is in use after all: it serves its artifacts itself
            return MlflowArtifactsRepository(
                artifact_uri, tracking_uri=tracking_uri, registry_uri=registry_uri
            )
        return LocalArtifactRepository(
            local_path_of(artifact_uri, root).as_uri(),
            tracking_uri=tracking_uri,
            registry_uri=registry_uri,
        )

    get_registered_artifact_repositories()[PROXIED_SCHEME] = repository
    log.debug("%s: URIs resolve to %s (no tracking server)", PROXIED_SCHEME, root)
