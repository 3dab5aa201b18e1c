"""Deployers: put an approved model version behind an endpoint (local processes, Kubernetes).

Every deployer takes a :class:`Release` (which version, from where, with which approved
artifact SHA-256) and returns an :class:`Endpoint`; the model server itself refuses an
artifact whose SHA-256 differs from the release's.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from serving.token_files import deployment_name


@dataclass(frozen=True)
class Release:
    model_name: str
    version: str
    model_uri: str
    artifact_sha256: str
    approval_request_id: int | None = None
    spec_path: str | None = None  # strict input, decisions, prediction log per the spec
    # a spec with windowed aggregates: the feature transformer in front of the server,
    # its store ("memory" or a redis:// URL) and, for memory, the history it warms up from
    feature_store: str | None = None
    history: str | None = None

    @property
    def name(self) -> str:
        """The deployment's name (:func:`deployment_name`)."""
        return deployment_name(self.model_name, self.version)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Endpoint:
    name: str
    model_name: str
    version: str
    url: str
    artifact_sha256: str
    deployer: str
    details: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
