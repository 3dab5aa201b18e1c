"""Objects into the cluster: server-side apply of InferenceServices, Secrets and
PodDisruptionBudgets, deletion, the Kubernetes API clients, and YAML for ``kubectl apply``.

The Kubernetes client is imported lazily (only the serving environment has it); a
missing cluster is a :class:`DeploymentError` that says what to set.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import yaml

from pipelines.errors import DeploymentError
from serving.control.inference_service import GROUP, KIND, PLURAL

FIELD_MANAGER = "govml"
APPLY_PATCH = "application/apply-patch+yaml"


def to_yaml(manifest: Mapping[str, Any]) -> str:
    """The manifest as YAML, keys in the rendered order (``kubectl apply -f`` ready)."""
    return yaml.safe_dump(dict(manifest), sort_keys=False, default_flow_style=False)


class CustomObjectsApiLike(Protocol):
    """The part of ``kubernetes.client.CustomObjectsApi`` that ``apply`` uses."""

    def get_namespaced_custom_object(
        self, group: str, version: str, namespace: str, plural: str, name: str, **kwargs: Any
    ) -> Any: ...

    def patch_namespaced_custom_object(
        self,
        group: str,
        version: str,
        namespace: str,
        plural: str,
        name: str,
        body: Any,
        **kwargs: Any,
    ) -> Any: ...


@dataclass(frozen=True)
class ApplyResult:
    action: Literal["created", "configured"]
    name: str
    namespace: str
    object: dict[str, Any] = field(repr=False)


def apply(
    manifest: Mapping[str, Any],
    kubeconfig: str | os.PathLike[str] | None = None,
    context: str | None = None,
    *,
    api: CustomObjectsApiLike | None = None,
    field_manager: str = FIELD_MANAGER,
    dry_run: bool = False,
) -> ApplyResult:
    """Create or update the InferenceService with server-side apply.

    Server-side apply (one PATCH, ``force``) both creates and updates, and removes the
    fields an earlier apply by ``field_manager`` set and this manifest leaves out (e.g.
    ``canaryTrafficPercent`` on promotion), which a merge patch would keep. A GET first
    tells ``created`` from ``configured``. ``api`` replaces the cluster client (tests);
    otherwise the cluster comes from ``kubeconfig``/``context``, $KUBECONFIG,
    ``~/.kube/config`` or the in-cluster service account, and a missing one raises
    :class:`DeploymentError`.
    """
    name, namespace, group, version = _identity(manifest)
    client = api if api is not None else custom_objects_api(kubeconfig, context)
    where = f"{PLURAL}/{name} in namespace {namespace}"
    try:
        client.get_namespaced_custom_object(group, version, namespace, PLURAL, name)
        exists = True
    except Exception as exc:  # noqa: BLE001 (ApiException, urllib3 errors: all reported)
        if getattr(exc, "status", None) != 404:
            raise DeploymentError(f"cannot read {where}: {api_error(exc)}") from None
        exists = False
    kwargs: dict[str, Any] = {
        "field_manager": field_manager,
        "force": True,
        "_content_type": APPLY_PATCH,
    }
    if dry_run:
        kwargs["dry_run"] = "All"
    try:
        result = client.patch_namespaced_custom_object(
            group, version, namespace, PLURAL, name, dict(manifest), **kwargs
        )
    except Exception as exc:  # noqa: BLE001
        raise DeploymentError(f"cannot apply {where}: {api_error(exc)}") from None
    action: Literal["created", "configured"] = "configured" if exists else "created"
    return ApplyResult(action, name, namespace, dict(result) if isinstance(result, Mapping) else {})


def _identity(manifest: Mapping[str, Any]) -> tuple[str, str, str, str]:
    meta = manifest.get("metadata") or {}
    name, namespace = meta.get("name"), meta.get("namespace")
    api_version = manifest.get("apiVersion")
    if manifest.get("kind") != KIND or not isinstance(api_version, str) or "/" not in api_version:
        raise DeploymentError(
            f"apply: not an {KIND} manifest ({api_version!r}, {manifest.get('kind')!r})"
        )
    if not name or not namespace:
        raise DeploymentError("apply: the manifest needs metadata.name and metadata.namespace")
    group, version = api_version.split("/", 1)
    if group != GROUP:
        raise DeploymentError(f"apply: apiVersion {api_version!r} is not in group {GROUP}")
    return str(name), str(namespace), group, version


def _api_client(kubeconfig: str | os.PathLike[str] | None, context: str | None) -> Any:
    """A Kubernetes ApiClient: in-cluster, or from a kubeconfig; a clear error otherwise."""
    try:
        from kubernetes import client, config
    except ImportError:
        raise DeploymentError(
            "cannot apply: the kubernetes Python client is not installed in this environment "
            "(the serving environment, .venv-serving, has it)"
        ) from None
    in_cluster = bool(os.environ.get("KUBERNETES_SERVICE_HOST"))
    if kubeconfig is None and context is None and in_cluster:
        try:
            configuration = client.Configuration()
            config.load_incluster_config(client_configuration=configuration)
            return client.ApiClient(configuration)
        except Exception as exc:  # noqa: BLE001 (fall back to a kubeconfig below)
            in_cluster_error = str(exc)
    else:
        in_cluster_error = "not in a cluster (KUBERNETES_SERVICE_HOST unset)"
    path = str(kubeconfig) if kubeconfig else os.environ.get("KUBECONFIG") or "~/.kube/config"
    path = os.path.expanduser(path)
    try:
        return config.new_client_from_config(config_file=path, context=context)
    except Exception as exc:  # noqa: BLE001 (ConfigException, YAML and OS errors alike)
        raise DeploymentError(
            f"no Kubernetes cluster configured: kubeconfig {path}: {exc}; in-cluster: "
            f"{in_cluster_error}. Set KUBECONFIG or pass kubeconfig= (and context=)"
        ) from None


def custom_objects_api(kubeconfig: str | os.PathLike[str] | None, context: str | None) -> Any:
    from kubernetes import client

    return client.CustomObjectsApi(_api_client(kubeconfig, context))


def core_api(kubeconfig: str | os.PathLike[str] | None, context: str | None) -> Any:
    """A ``kubernetes.client.CoreV1Api`` (Secrets) for the configured cluster."""
    from kubernetes import client

    return client.CoreV1Api(_api_client(kubeconfig, context))


def policy_api(kubeconfig: str | os.PathLike[str] | None, context: str | None) -> Any:
    from kubernetes import client

    return client.PolicyV1Api(_api_client(kubeconfig, context))


def apply_pod_disruption_budget(
    manifest: Mapping[str, Any], api: Any, field_manager: str = FIELD_MANAGER
) -> ApplyResult:
    """Create or update a PodDisruptionBudget with server-side apply (like :func:`apply`)."""
    return _apply_namespaced(
        manifest,
        "poddisruptionbudgets",
        api.read_namespaced_pod_disruption_budget,
        api.patch_namespaced_pod_disruption_budget,
        field_manager,
    )


def _apply_namespaced(
    manifest: Mapping[str, Any],
    plural: str,
    read: Any,
    patch: Any,
    field_manager: str,
) -> ApplyResult:
    """Server-side apply of one namespaced core object through the client's ``read`` and
    ``patch`` calls; "created" when it did not exist before."""
    meta = manifest["metadata"]
    name, namespace = meta["name"], meta["namespace"]
    where = f"{plural}/{name} in namespace {namespace}"
    try:
        read(name, namespace)
        exists = True
    except Exception as exc:  # noqa: BLE001
        if getattr(exc, "status", None) != 404:
            raise DeploymentError(f"cannot read {where}: {api_error(exc)}") from None
        exists = False
    try:
        result = patch(
            name, namespace, dict(manifest), field_manager=field_manager, force=True,
            _content_type=APPLY_PATCH,
        )  # fmt: skip
    except Exception as exc:  # noqa: BLE001
        raise DeploymentError(f"cannot apply {where}: {api_error(exc)}") from None
    action: Literal["created", "configured"] = "configured" if exists else "created"
    body = result.to_dict() if hasattr(result, "to_dict") else result
    return ApplyResult(action, name, namespace, dict(body) if isinstance(body, Mapping) else {})


def apply_secret(
    manifest: Mapping[str, Any], api: Any, field_manager: str = FIELD_MANAGER
) -> ApplyResult:
    """Create or update a Secret with server-side apply (like :func:`apply`); errors
    name the Secret, never its values (and the result carries none of them)."""
    result = _apply_namespaced(
        manifest, "secrets", api.read_namespaced_secret, api.patch_namespaced_secret, field_manager
    )
    return ApplyResult(result.action, result.name, result.namespace, {})


def delete_secret(name: str, namespace: str, api: Any) -> bool:
    """Delete a Secret; True if there was one."""
    try:
        api.delete_namespaced_secret(name, namespace)
    except Exception as exc:  # noqa: BLE001
        if getattr(exc, "status", None) == 404:
            return False
        raise DeploymentError(
            f"cannot delete secrets/{name} in namespace {namespace}: {api_error(exc)}"
        ) from None
    return True


def api_error(exc: Exception) -> str:
    status, reason = getattr(exc, "status", None), getattr(exc, "reason", None)
    body = getattr(exc, "body", None)
    message = None
    if body:
        try:
            message = json.loads(body).get("message")
        except (ValueError, TypeError, AttributeError):
            message = str(body)[:300]
    if status is not None:
        return f"HTTP {status} {reason or ''}".rstrip() + (f": {message}" if message else "")
    return f"{type(exc).__name__}: {exc}"
