"""The ``kubernetes`` deployer: one KServe ``InferenceService`` per deployed version.

Same interface as :class:`serving.control.deployers.local.LocalDeployer` (``deploy``,
``status``, ``stop``, ``deployed``); where and how it deploys is a
:class:`~serving.control.deployers.target.DeploymentTarget`. With two or more minimum
replicas (the default: a hot standby) each version also gets a PodDisruptionBudget
(``maxUnavailable: 1``), so drains and upgrades evict its pods one at a time. ``deploy``
renders the version's InferenceService
(:func:`serving.control.inference_service.render_inference_service`), checks it against
the real KServe CRD schema and refuses, naming every bad field, when it does not fit;
writes it to
``<state root>/<model>-v<version>/inferenceservice.yaml``; then, when a cluster is
configured, applies it (server-side apply) and waits until its ``Ready`` condition is
true for the applied generation, and returns the InferenceService's status URL.

Without a cluster (no kubeconfig, no in-cluster service account) ``deploy`` fails with
a :class:`DeploymentError` that says what to set and where the validated manifest is,
so an operator can ``kubectl apply -f`` it.

Tokens: every deployment gets its own Secret ``<model>-v<N>-tokens``
(:func:`serving.control.secret.render_tokens_secret`), applied before its InferenceService,
which always mounts it: the servers never run open. Its source of truth is the
deployment's state folder (``tokens.json`` and ``service.token``, mode 0600, as for the
local deployer); ``secret.yaml`` (0600) beside the manifest is what ``kubectl apply``
needs without a cluster configured here. ``govml serving token`` edits the folder's
``tokens.json`` and re-applies the Secret (:meth:`KubernetesDeployer.publish_tokens`);
the kubelet then updates the mounted file (within its sync period, about a minute)
and the servers pick it up within a second of that. KServe's built-in LightGBM
runtime checks no token, so this deployer refuses it.

Where the model comes from: ``storageUri`` is the release's model URI when the cluster
can fetch it (``s3://``, ``gs://``, ``pvc://``..., or ``models:/`` for the project's own
server image, which resolves it through ``MLFLOW_TRACKING_URI``). A local folder (the
embedded stack's artifact store) means nothing inside a cluster: ``storage_uri`` (a
template such as ``s3://models/{model}/{version}``) says where the operator put it. The
project's server image (``runtime="custom"``, the default) refuses any file whose
SHA-256 is not the approved one, wherever it came from.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

from pipelines.errors import DeploymentError, GovMLError
from serving.control import apply as kube
from serving.control.autoscaling import render_pod_disruption_budget
from serving.control.checks import LABEL_MODEL
from serving.control.crd import validate_manifest
from serving.control.deployers import Endpoint, Release
from serving.control.deployers.kserve_status import describe, is_ready, not_found, status_of
from serving.control.deployers.target import (
    DeploymentTarget,
    KubeClients,
    cluster_configured,
)
from serving.control.feature_transformer import add_feature_transformer
from serving.control.inference_service import (
    GROUP,
    PLURAL,
    STORAGE_SCHEMES,
    VERSION,
    PodOptions,
    ServedModel,
    ServingImage,
    render_inference_service,
)
from serving.control.secret import render_tokens_secret, tokens_secret_name
from serving.token_files import DeploymentTokens, deployment_tokens, provision, read_token

log = logging.getLogger(__name__)

MANIFEST_FILE = "inferenceservice.yaml"
PDB_FILE = "poddisruptionbudget.yaml"
SECRET_FILE = "secret.yaml"
OPEN_RUNTIME = (
    "GOVML_KSERVE_RUNTIME=lightgbm: KServe's LightGBM server checks no bearer token, so "
    "its endpoint would answer anyone; use the project's image (GOVML_KSERVE_RUNTIME=custom)"
)
MLFLOW_SCHEMES = ("models:/", "runs:/")
NO_CLUSTER_HINT = (
    "set GOVML_KUBECONFIG (and GOVML_KUBE_CONTEXT) or KUBECONFIG, or run inside a cluster"
)


def _served_name(model_name: str) -> str:
    """The name the model answers to: a DNS-1123 subdomain (``german_credit`` -> ``-``)."""
    return model_name.replace("_", "-").lower()


class KubernetesDeployer:
    """Model versions as KServe InferenceServices (production's deployment target)."""

    kind = "kubernetes"

    def __init__(
        self,
        state_root: Path,
        target: DeploymentTarget | None = None,
        *,
        clients: KubeClients | None = None,
        env: Mapping[str, str] | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.state_root = Path(state_root)
        self.target = target or DeploymentTarget()
        clients = clients or KubeClients()
        self._api = clients.custom_objects
        self._policy_api = clients.policy
        self._core_api = clients.core
        self.env = dict(os.environ if env is None else env)
        self.clock = clock
        self.sleep = sleep

    @property
    def namespace(self) -> str:
        return self.target.cluster.namespace

    # ------------------------------------------------------------------ helpers
    def _dir(self, name: str) -> Path:
        return self.state_root / name

    def manifest_path(self, name: str) -> Path:
        return self._dir(name) / MANIFEST_FILE

    def _where(self) -> tuple[str | os.PathLike[str] | None, str | None]:
        return self.target.cluster.kubeconfig, self.target.cluster.context

    def cluster(self) -> tuple[bool, str]:
        if self._api is not None:
            return True, "the given API client"
        return cluster_configured(self.target.cluster.kubeconfig, self.env)

    def api(self) -> kube.CustomObjectsApiLike:
        if self._api is None:
            self._api = kube.custom_objects_api(*self._where())
        return self._api

    def policy_api(self) -> Any:
        if self._policy_api is None:
            self._policy_api = kube.policy_api(*self._where())
        return self._policy_api

    def core_api(self) -> Any:
        if self._core_api is None:
            self._core_api = kube.core_api(*self._where())
        return self._core_api

    # ------------------------------------------------------------------ tokens
    def tokens(self, name: str) -> DeploymentTokens:
        """The deployment's token files in its state folder (the Secret's source)."""
        return deployment_tokens(self._dir(name))

    def render_tokens_secret(self, name: str) -> dict[str, Any]:
        """The deployment's token Secret from its state folder (made on first use)."""
        try:
            files = provision(self._dir(name))
            tokens_json = files.tokens.read_text(encoding="utf-8")
            predictor_token = read_token(files.service_token)
        except (GovMLError, OSError) as exc:
            raise DeploymentError(f"{name}: its token files: {exc}") from None
        return render_tokens_secret(
            tokens_secret_name(name),
            self.namespace,
            tokens_json=tokens_json,
            predictor_token=predictor_token,
            prediction_log_key=self.env.get("GOVML_PREDICTION_LOG_KEY") or None,
            labels={"govml/deployment": name},
        )

    def _write_secret(self, name: str, secret: Mapping[str, Any]) -> Path:
        path = self._dir(name) / SECRET_FILE
        fd = os.open(path, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(kube.to_yaml(secret))
        os.chmod(path, 0o600)
        return path

    def publish_tokens(self, name: str) -> str:
        """Re-render the deployment's Secret from its folder and apply it; where it went."""
        secret = self.render_tokens_secret(name)
        path = self._write_secret(name, secret)
        if not self.cluster()[0]:
            return f"no cluster configured: kubectl apply -f {path}"
        result = kube.apply_secret(secret, self.core_api())
        return f"secrets/{result.name} {result.action} in namespace {self.namespace}"

    def render_disruption_budget(self, release: Release) -> dict[str, Any] | None:
        """The hot-standby budget when the version runs at least two replicas."""
        if self.target.scaling.min_replicas < 2:
            return None
        return render_pod_disruption_budget(
            release.name, self.namespace, min_replicas=self.target.scaling.min_replicas,
            model_name=_served_name(release.model_name), model_version=str(release.version),
        )  # fmt: skip

    def _storage_uri(self, release: Release) -> str:
        template = self.target.sources.storage_uri
        if template:
            try:
                return template.format(
                    model=release.model_name, version=release.version, name=release.name
                )
            except (KeyError, IndexError, ValueError) as exc:
                raise DeploymentError(
                    f"GOVML_KUBE_STORAGE_URI {template!r}: bad template ({exc}); "
                    "use the placeholders {model}, {version}, {name}"
                ) from None
        uri = release.model_uri
        if uri.startswith(STORAGE_SCHEMES) or uri.startswith(MLFLOW_SCHEMES):
            return uri
        raise DeploymentError(
            f"{release.name}: the model is in {uri!r}, which a Kubernetes cluster cannot read; "
            "copy it to object storage and set GOVML_KUBE_STORAGE_URI "
            "(e.g. s3://models/{model}/{version}); the server checks its SHA-256"
        )

    def _server(self, release: Release) -> ServingImage:
        """The project's own server image with the release's strict input (the spec, as
        the image holds it under ``specs/``), bearer tokens and the prediction log."""
        server = self.target.server
        if server.runtime != "custom":
            raise DeploymentError(OPEN_RUNTIME)
        return replace(
            server,
            spec_file=f"specs/{Path(release.spec_path).name}" if release.spec_path else None,
            tokens_secret=tokens_secret_name(release.name),
        )

    def render(
        self,
        release: Release,
        *,
        name: str | None = None,
        canary_traffic_percent: int | None = None,
    ) -> dict[str, Any]:
        """The release's InferenceService, checked against the KServe CRD; refuses otherwise.

        ``name``/``canary_traffic_percent``: see :meth:`render_rollout_step`.
        """
        storage_uri = self._storage_uri(release)
        env: dict[str, str] = {}
        tracking_uri = self.target.sources.tracking_uri
        if self.target.server.runtime == "custom" and storage_uri.startswith(MLFLOW_SCHEMES):
            if not tracking_uri:
                raise DeploymentError(
                    f"{release.name}: {storage_uri} is resolved by the model server through "
                    "MLflow; set GOVML_KUBE_MLFLOW_TRACKING_URI to the tracking server as "
                    "the pods reach it"
                )
            env["MLFLOW_TRACKING_URI"] = tracking_uri
        approval = release.approval_request_id
        model = ServedModel(
            storage_uri=storage_uri,
            version=release.version,
            artifact_sha256=release.artifact_sha256,
            model_name=_served_name(release.model_name),
            approval_request=str(approval) if approval is not None else None,
        )
        manifest = render_inference_service(
            name or release.name,
            self.namespace,
            model,
            server=self._server(release),
            scaling=self.target.scaling,
            resources=self.target.resources,
            pod=PodOptions(env=env or None),
            canary_traffic_percent=canary_traffic_percent,
        )
        if release.feature_store:
            self._add_transformer(release, manifest)
        problems = validate_manifest(manifest, self.target.cluster.crd_path)
        if problems:
            raise DeploymentError(
                f"{release.name}: the InferenceService does not fit the KServe CRD "
                f"schema, refused: {'; '.join(problems)}"
            )
        return manifest

    def _add_transformer(self, release: Release, manifest: dict[str, Any]) -> None:
        """A spec with windowed aggregates: the feature transformer on the shared Redis
        state (the deploy step has backfilled it; the pods reach it at
        ``GOVML_KUBE_FEATURE_STORE``)."""
        sources, image = self.target.sources, self.target.server.image
        store = sources.feature_store or release.feature_store or ""
        if not store.startswith(("redis://", "rediss://")):
            raise DeploymentError(
                f"{release.name}: the feature transformer's replicas need a shared store: "
                "set GOVML_FEATURE_STORE (and GOVML_KUBE_FEATURE_STORE as the pods reach "
                "it) to a redis:// URL"
            )
        if not sources.feature_key_secret:
            raise DeploymentError(
                f"{release.name}: set GOVML_KUBE_FEATURE_KEY_SECRET to a Secret whose "
                "feature-key is the GOVML_FEATURE_KEY the backfill used"
            )
        if self.target.server.runtime != "custom" or not image or not release.spec_path:
            raise DeploymentError(
                f"{release.name}: the feature transformer runs the project's image "
                "(GOVML_KSERVE_RUNTIME=custom) with the model's spec"
            )
        add_feature_transformer(
            manifest,
            image=image,
            spec_file=f"specs/{Path(release.spec_path).name}",
            feature_store=store,
            feature_key_secret=sources.feature_key_secret,
            tokens_secret=tokens_secret_name(release.name),
        )

    def render_rollout_step(self, release: Release, percent: int) -> dict[str, Any]:
        """A rollout step as KServe does canaries: the model's one InferenceService
        (named after the model, the stable endpoint) updated to the challenger, whose new
        revision takes ``canaryTrafficPercent`` of the traffic while the previous ready
        revision (the champion) keeps the rest; 100 promotes it (no canary field), 0 sends
        everything back to the champion (a rollback). Shadow mirroring has no
        InferenceService field: in Kubernetes the gateway does it in front of KServe."""
        if not isinstance(percent, int) or not 0 <= percent <= 100:
            raise DeploymentError(f"rollout step: expected a percentage 0..100, got {percent!r}")
        return self.render(
            release,
            name=_served_name(release.model_name),
            canary_traffic_percent=None if percent == 100 else percent,
        )

    def write_manifest(self, release: Release, manifest: Mapping[str, Any]) -> Path:
        folder = self._dir(release.name)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "release.json").write_text(json.dumps(release.to_dict(), indent=2))
        path = folder / MANIFEST_FILE
        path.write_text(kube.to_yaml(manifest))
        return path

    def _get(self, name: str) -> dict[str, Any] | None:
        try:
            obj = self.api().get_namespaced_custom_object(
                GROUP, VERSION, self.namespace, PLURAL, name
            )
        except Exception as exc:  # noqa: BLE001 (ApiException, urllib3 errors: all reported)
            if not_found(exc):
                return None
            raise DeploymentError(
                f"cannot read {PLURAL}/{name} in namespace {self.namespace}: {kube.api_error(exc)}"
            ) from None
        return dict(obj) if isinstance(obj, Mapping) else {}

    def _wait_ready(self, name: str, generation: int | None) -> dict[str, Any]:
        """Poll until Ready is True for ``generation``; fail on a load failure or timeout."""
        timeout = self.target.cluster.ready_timeout
        deadline = self.clock() + timeout
        last: dict[str, Any] = {}
        while True:
            obj = self._get(name)
            if obj is not None:
                last = obj
                if is_ready(name, obj, generation):
                    return obj
            if self.clock() >= deadline:
                raise DeploymentError(
                    f"{name}: InferenceService not Ready within {timeout:.0f} s "
                    f"in namespace {self.namespace}: {describe(last)}"
                )
            self.sleep(self.target.cluster.poll_interval)

    # ------------------------------------------------------------------ interface
    def deploy(self, release: Release) -> Endpoint:
        """Apply the release's InferenceService and return once it is Ready."""
        manifest = self.render(release)
        path = self.write_manifest(release, manifest)
        secret = self.render_tokens_secret(release.name)
        secret_path = self._write_secret(release.name, secret)
        budget = self.render_disruption_budget(release)
        if budget is not None:
            (self._dir(release.name) / PDB_FILE).write_text(kube.to_yaml(budget))
        configured, how = self.cluster()
        if not configured:
            raise DeploymentError(
                f"no Kubernetes cluster configured: {NO_CLUSTER_HINT} ({how}). The validated "
                f"InferenceService for {release.name} is in {path}: kubectl apply -f "
                f"{secret_path} -f {path}"
            )
        try:
            api = self.api()
            kube.apply_secret(secret, self.core_api())
        except DeploymentError as exc:
            raise DeploymentError(f"{exc}. The validated manifest is in {path}") from None
        result = kube.apply(manifest, api=api)
        generation = (result.object.get("metadata") or {}).get("generation")
        log.info("%s %s in namespace %s (%s)", release.name, result.action, self.namespace, how)
        try:
            obj = self._wait_ready(release.name, generation)
        except DeploymentError:
            if result.action == "created":  # leave nothing half-deployed that we made
                self.stop(release.name)
            raise
        if budget is not None:
            kube.apply_pod_disruption_budget(budget, self.policy_api())
            log.info("%s: disruption budget maxUnavailable 1 applied", release.name)
        status = obj.get("status") or {}
        url = str(status["url"]).rstrip("/")
        endpoint = {
            "url": url,
            "namespace": self.namespace,
            "action": result.action,
            "generation": generation,
            "artifact_sha256": release.artifact_sha256,
            "manifest": str(path),
            "deployed_at": time.time(),
        }
        (self._dir(release.name) / "endpoint.json").write_text(json.dumps(endpoint, indent=2))
        log.info("%s serving at %s", release.name, url)
        return Endpoint(
            name=release.name,
            model_name=_served_name(release.model_name),
            version=release.version,
            url=url,
            artifact_sha256=release.artifact_sha256,
            deployer=self.kind,
            details={
                **{k: v for k, v in endpoint.items() if k != "url"},
                "token_file": str(self.tokens(release.name).service_token),
            },
        )

    def status(self, name: str) -> dict[str, Any]:
        path = self.manifest_path(name)
        base: dict[str, Any] = {"manifest": str(path) if path.exists() else None}
        configured, how = self.cluster()
        if not configured:
            return {**base, "running": False, "cluster": False, "detail": how}
        obj = self._get(name)
        if obj is None:
            return {**base, "running": False, "cluster": True, "exists": False}
        return {**base, **status_of(obj)}

    def stop(self, name: str) -> bool:
        """Delete the InferenceService; True if there was one."""
        (self._dir(name) / "endpoint.json").unlink(missing_ok=True)
        if not self.cluster()[0]:
            return False
        try:
            self.api().delete_namespaced_custom_object(  # type: ignore[attr-defined]
                GROUP, VERSION, self.namespace, PLURAL, name
            )
        except Exception as exc:  # noqa: BLE001
            if not_found(exc):
                return False
            raise DeploymentError(
                f"cannot delete {PLURAL}/{name} in namespace {self.namespace}: "
                f"{kube.api_error(exc)}"
            ) from None
        self._delete_budget(name)
        kube.delete_secret(tokens_secret_name(name), self.namespace, self.core_api())
        log.info("%s deleted from namespace %s", name, self.namespace)
        return True

    def _delete_budget(self, name: str) -> None:
        if not (self._dir(name) / PDB_FILE).exists():
            return
        try:
            self.policy_api().delete_namespaced_pod_disruption_budget(name, self.namespace)
        except Exception as exc:  # noqa: BLE001
            if not not_found(exc):
                raise DeploymentError(
                    f"cannot delete poddisruptionbudgets/{name} in namespace "
                    f"{self.namespace}: {kube.api_error(exc)}"
                ) from None

    def deployed(self) -> list[str]:
        """The InferenceServices this project made in the namespace (label ``govml/model``)."""
        if not self.cluster()[0]:
            return []
        try:
            found = self.api().list_namespaced_custom_object(  # type: ignore[attr-defined]
                GROUP,
                VERSION,
                self.namespace,
                PLURAL,
                label_selector=LABEL_MODEL,
            )
        except Exception as exc:  # noqa: BLE001
            raise DeploymentError(
                f"cannot list {PLURAL} in namespace {self.namespace}: {kube.api_error(exc)}"
            ) from None
        items = found.get("items", []) if isinstance(found, Mapping) else []
        return sorted(str(i["metadata"]["name"]) for i in items)
