"""Where and how the ``kubernetes`` deployer puts a model version: a frozen
:class:`DeploymentTarget` (the cluster, the server image, what the pods reach, scaling
and resources), built from the settings in one place (:meth:`DeploymentTarget.from_settings`),
and whether a cluster is configured at all."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from pipelines.config import Settings
from pipelines.errors import DeploymentError
from serving.control.apply import CustomObjectsApiLike
from serving.control.autoscaling import Resources, Scaling
from serving.control.inference_service import ServingImage


def cluster_configured(
    kubeconfig: str | os.PathLike[str] | None, env: Mapping[str, str] | None = None
) -> tuple[bool, str]:
    """Whether a cluster is configured, and how (or what was looked at)."""
    env = os.environ if env is None else env
    if kubeconfig:
        path = Path(kubeconfig).expanduser()
        if path.is_file():
            return True, f"kubeconfig {path}"
        return False, f"GOVML_KUBECONFIG {path} does not exist"
    if env.get("KUBERNETES_SERVICE_HOST"):
        return True, "in-cluster service account"
    if env.get("KUBECONFIG"):
        found = [p for p in env["KUBECONFIG"].split(os.pathsep) if p and Path(p).is_file()]
        if found:
            return True, f"KUBECONFIG {found[0]}"
        return False, f"KUBECONFIG={env['KUBECONFIG']} names no existing file"
    home = Path(env.get("HOME") or Path.home()) / ".kube" / "config"
    if home.is_file():
        return True, f"kubeconfig {home}"
    return False, f"no kubeconfig ({home} is absent) and not in a cluster"


@dataclass(frozen=True)
class Cluster:
    """Which cluster and namespace, and how long to wait for a version to be Ready.
    ``crd_path``: the KServe CRD manifests are checked against (default: found)."""

    namespace: str = "govml"
    kubeconfig: str | os.PathLike[str] | None = None
    context: str | None = None
    crd_path: str | os.PathLike[str] | None = None
    ready_timeout: float = 600.0
    poll_interval: float = 5.0


@dataclass(frozen=True)
class PodSources:
    """What the pods reach, as they reach it: ``storage_uri``, a template such as
    ``s3://models/{model}/{version}`` (placeholders ``{model}``, ``{version}``, ``{name}``)
    for where the operator put the model; the MLflow tracking server (``models:/`` URIs);
    the feature transformer's Redis store and the Secret holding its key."""

    storage_uri: str | None = None
    tracking_uri: str | None = None
    feature_store: str | None = None
    feature_key_secret: str | None = None


@dataclass(frozen=True)
class DeploymentTarget:
    """Where and how a model version is deployed on Kubernetes; built from the
    settings by :meth:`from_settings` (``GOVML_KUBE_*``, ``GOVML_SERVING_IMAGE``...)."""

    cluster: Cluster = field(default_factory=Cluster)
    server: ServingImage = ServingImage(runtime="custom", image="govml-serving:latest")
    sources: PodSources = field(default_factory=PodSources)
    scaling: Scaling = field(default_factory=Scaling)
    resources: Resources = field(default_factory=Resources)

    @classmethod
    def from_settings(cls, settings: Settings) -> DeploymentTarget:
        """The target the settings describe (``GOVML_DEPLOYER=kubernetes``)."""
        if settings.kube_tokens_secret:
            raise DeploymentError(
                "GOVML_KUBE_TOKENS_SECRET is not used any more: every deployment gets its own "
                "Secret <model>-v<N>-tokens (clients: govml serving token); unset it"
            )
        tracking = settings.kube_tracking_uri or settings.mlflow_tracking_uri
        host = urlsplit(tracking).hostname or ""
        if not settings.kube_tracking_uri and (
            host in ("localhost", "") or host.startswith("127.")
        ):
            tracking = ""  # pods cannot reach this machine's loopback: ask for the real one
        return cls(
            cluster=Cluster(
                namespace=settings.kube_namespace,
                kubeconfig=settings.kubeconfig,
                context=settings.kube_context,
                ready_timeout=settings.kube_ready_timeout,
            ),
            server=ServingImage(
                runtime=settings.kserve_runtime,  # type: ignore[arg-type]
                image=settings.serving_image,
                prediction_log_claim=settings.kube_prediction_log_claim,
            ),
            sources=PodSources(
                storage_uri=settings.kube_storage_uri,
                tracking_uri=tracking if tracking.startswith(("http://", "https://")) else None,
                feature_store=settings.kube_feature_store or settings.feature_store,
                feature_key_secret=settings.kube_feature_key_secret,
            ),
            scaling=Scaling(
                min_replicas=settings.kube_min_replicas,
                max_replicas=settings.kube_max_replicas,
                scale_metric=settings.kube_scale_metric,  # type: ignore[arg-type]
                scale_target=settings.kube_scale_target,
            ),
            resources=Resources(
                cpu_request=settings.kube_cpu_request,
                cpu_limit=settings.kube_cpu_limit,
                memory_request=settings.kube_memory_request,
                memory_limit=settings.kube_memory_limit,
            ),
        )


@dataclass(frozen=True)
class KubeClients:
    """Kubernetes API clients to use instead of the configured cluster's (tests): the
    custom objects (InferenceServices), policy (PodDisruptionBudgets) and core (Secrets)."""

    custom_objects: CustomObjectsApiLike | None = None
    policy: Any = None
    core: Any = None
