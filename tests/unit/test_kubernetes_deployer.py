"""The kubernetes deployer: render, check against the real KServe CRD, apply, wait for
Ready, stop. The Kubernetes API server is the one thing faked (no cluster here): a
CustomObjectsApi stand-in that stores objects and plays KServe's status updates."""

from __future__ import annotations

import base64
import copy
import dataclasses
import hashlib
import json
import stat
from pathlib import Path
from typing import Any

import pytest
import yaml

from pipelines.config import load_settings
from pipelines.errors import DeploymentError
from serving.auth import TokenStore
from serving.control import autoscaling as kube_autoscaling
from serving.control import checks as kube_checks
from serving.control import crd as kube_crd
from serving.control import feature_transformer
from serving.control.autoscaling import Resources, Scaling
from serving.control.deployers import Release
from serving.control.deployers.kubernetes import KubernetesDeployer
from serving.control.deployers.target import (
    Cluster,
    DeploymentTarget,
    KubeClients,
    PodSources,
    cluster_configured,
)
from serving.control.inference_service import ServingImage
from serving.token_files import add_client, read_token
from serving.token_records import TokenRecord
from tests.unit.test_manifests import (
    FakeApiException,
    FakeCoreApi,
    FakeCustomObjectsApi,
    container_env,
)

SHA = "5e" * 32
URL = "http://fraud-v7.models.example.com"


@pytest.fixture(scope="module")
def crd_path() -> Path:
    found = kube_crd.find_crd()
    if found is None:
        pytest.skip(f"KServe CRD not found; set {kube_crd.CRD_ENV} to run")
    return found


class FakeKServe(FakeCustomObjectsApi):
    """The API server plus KServe's controller: Ready after ``ready_after`` reads."""

    def __init__(self, ready_after: int | None = 2, url: str = URL) -> None:
        super().__init__()
        self.ready_after = ready_after
        self.url = url
        self.reads = 0
        self.failure: dict[str, Any] | None = None

    def get_namespaced_custom_object(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        obj = super().get_namespaced_custom_object(*args, **kwargs)
        self.reads += 1
        generation = obj["metadata"]["generation"]
        ready = self.ready_after is not None and self.reads >= self.ready_after
        status: dict[str, Any] = {
            "observedGeneration": generation if ready else generation - 1,
            "conditions": [
                {"type": "PredictorReady", "status": "True" if ready else "Unknown"},
                {
                    "type": "Ready",
                    "status": "True" if ready else "False",
                    **({} if ready else {"reason": "RevisionMissing", "message": "pulling"}),
                },
            ],
        }
        if ready:
            status["url"] = self.url
        if self.failure is not None:
            status["modelStatus"] = self.failure
            status["observedGeneration"] = generation
        obj["status"] = status
        return obj

    def delete_namespaced_custom_object(
        self, group: str, version: str, namespace: str, plural: str, name: str, **kwargs: Any
    ) -> dict[str, Any]:
        self.calls.append(("delete", {"namespace": namespace, "name": name}))
        key = (group, version, namespace, plural, name)
        if key not in self.objects:
            raise FakeApiException(404, "Not Found")
        return self.objects.pop(key)

    def list_namespaced_custom_object(
        self, group: str, version: str, namespace: str, plural: str, **kwargs: Any
    ) -> dict[str, Any]:
        self.calls.append(("list", dict(kwargs)))
        selector = kwargs.get("label_selector")
        items = [
            copy.deepcopy(obj)
            for (g, v, ns, p, _), obj in self.objects.items()
            if (g, v, ns, p) == (group, version, namespace, plural)
            and (selector is None or selector in obj["metadata"].get("labels", {}))
        ]
        return {"items": items}


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


class FakePolicyApi:
    """Stands in for kubernetes.client.PolicyV1Api: PodDisruptionBudgets by name."""

    def __init__(self) -> None:
        self.objects: dict[tuple[str, str], dict[str, Any]] = {}
        self.calls: list[tuple[str, dict[str, Any]]] = []

    def read_namespaced_pod_disruption_budget(self, name: str, namespace: str) -> dict:
        if (namespace, name) not in self.objects:
            raise FakeApiException(404, "Not Found")
        return self.objects[(namespace, name)]

    def patch_namespaced_pod_disruption_budget(
        self, name: str, namespace: str, body: dict, **kwargs: Any
    ) -> dict:
        self.calls.append(("patch", {"body": copy.deepcopy(body), **kwargs}))
        self.objects[(namespace, name)] = copy.deepcopy(body)
        return body

    def delete_namespaced_pod_disruption_budget(self, name: str, namespace: str) -> None:
        self.calls.append(("delete", {"namespace": namespace, "name": name}))
        if self.objects.pop((namespace, name), None) is None:
            raise FakeApiException(404, "Not Found")


def release(**overrides: Any) -> Release:
    values: dict[str, Any] = {
        "model_name": "fraud",
        "version": "7",
        "model_uri": "/var/mlflow/artifacts/1/models/m-abc/artifacts",  # a local folder
        "artifact_sha256": SHA,
        "approval_request_id": 42,
    }
    values.update(overrides)
    return Release(**values)


def deployer(tmp_path: Path, crd: Path, api: Any = None, **kwargs: Any) -> KubernetesDeployer:
    clock = FakeClock()
    options: dict[str, Any] = {
        "namespace": "models",
        "storage_uri": "s3://models/{model}/{version}",
        "crd_path": crd,
        "api": api,
        "policy_api": FakePolicyApi() if api is not None else None,
        "core_api": FakeCoreApi() if api is not None else None,
        "env": {"HOME": str(tmp_path / "home")},  # no kubeconfig, not in a cluster
        "clock": clock,
        "sleep": clock.sleep,
        "poll_interval": 5.0,
        "ready_timeout": 60.0,
    }
    options.update(kwargs)
    return KubernetesDeployer(
        tmp_path / "serving",
        DeploymentTarget(
            cluster=_pick(Cluster, options),
            server=_pick(ServingImage, options, custom=True),
            sources=_pick(PodSources, options),
            scaling=_pick(Scaling, options),
            resources=_pick(Resources, options),
        ),
        clients=KubeClients(options.pop("api"), options.pop("policy_api"), options.pop("core_api")),
        **options,  # env, clock, sleep
    )


def _pick(kind: type, options: dict[str, Any], custom: bool = False) -> Any:
    """The fields of ``kind`` out of the flat options (the server: the project's image)."""
    names = {f.name for f in dataclasses.fields(kind)}
    base = {"runtime": "custom", "image": "govml-serving:latest"} if custom else {}
    return kind(**{**base, **{k: options.pop(k) for k in list(options) if k in names}})


def test_deploy_applies_the_validated_manifest_and_returns_the_status_url(
    tmp_path: Path, crd_path: Path
) -> None:
    api = FakeKServe(ready_after=3)
    dep = deployer(tmp_path, crd_path, api, min_replicas=2, max_replicas=6, cpu_limit="2")
    endpoint = dep.deploy(release())
    assert endpoint.url == URL and endpoint.deployer == "kubernetes"
    assert endpoint.model_name == "fraud" and endpoint.version == "7"
    assert endpoint.details["action"] == "created" and endpoint.details["namespace"] == "models"
    patches = [body for kind, body in api.calls if kind == "patch"]
    assert len(patches) == 1
    applied = patches[0]["body"]
    # exactly the manifest written for operators, and it fits the real CRD
    written = yaml.safe_load(dep.manifest_path("fraud-v7").read_text())
    assert applied == written
    assert kube_crd.validate_manifest(applied, crd_path) == []
    assert patches[0]["field_manager"] == "govml" and patches[0]["force"] is True
    assert applied["metadata"]["name"] == "fraud-v7"
    assert applied["metadata"]["namespace"] == "models"
    assert applied["metadata"]["annotations"][kube_checks.ANNOTATION_SHA256] == SHA
    assert applied["metadata"]["annotations"][kube_checks.ANNOTATION_APPROVAL] == "42"
    predictor = applied["spec"]["predictor"]
    assert (predictor["minReplicas"], predictor["maxReplicas"]) == (2, 6)
    (container,) = predictor["containers"]
    assert container["image"] == "govml-serving:latest"
    assert container["resources"]["limits"]["cpu"] == "2"
    env = {e["name"]: e["value"] for e in container["env"] if "value" in e}
    assert env["STORAGE_URI"] == "s3://models/fraud/7"  # the template, filled in
    assert env["EXPECTED_SHA256"] == SHA  # the server refuses any other file
    # polled until Ready: two reads not ready (one sleep each), then ready
    assert api.reads == 3 and dep.clock.sleeps == [5.0, 5.0]  # type: ignore[attr-defined]
    assert dep.status("fraud-v7")["running"] is True
    assert dep.status("fraud-v7")["url"] == URL


def test_every_deployment_gets_its_own_token_secret_applied_first(
    tmp_path: Path, crd_path: Path
) -> None:
    api = FakeKServe(ready_after=1)
    dep = deployer(tmp_path, crd_path, api)
    endpoint = dep.deploy(release())
    core = dep._core_api
    ((kind, patch),) = core.calls
    secret = patch["body"]
    assert kind == "patch" and secret["metadata"]["name"] == "fraud-v7-tokens"
    assert secret == yaml.safe_load((dep._dir("fraud-v7") / "secret.yaml").read_text())
    assert stat.S_IMODE((dep._dir("fraud-v7") / "secret.yaml").stat().st_mode) == 0o600
    service = read_token(endpoint.details["token_file"])
    decoded = {k: base64.b64decode(v).decode() for k, v in secret["data"].items()}
    assert decoded["predictor-token"] == service  # the transformer's token for its predictor
    records = TokenStore([TokenRecord(**r) for r in json.loads(decoded["tokens.json"])])
    assert records.check(f"Bearer {service}", "predict") == "govml"
    predictor = next(b for k, b in api.calls if k == "patch")["body"]["spec"]["predictor"]
    volumes = {v["name"]: v for v in predictor["volumes"]}
    assert volumes["govml-tokens"]["secret"] == {"secretName": "fraud-v7-tokens", "optional": False}
    assert "--host=0.0.0.0" in predictor["containers"][0]["args"]
    # a client added later reaches the cluster as a new version of the same Secret
    bank = add_client(dep.tokens("fraud-v7").tokens, "core-banking", ["predict"])
    published = dep.publish_tokens("fraud-v7")
    assert published == "secrets/fraud-v7-tokens configured in namespace models"
    republished = core.objects[("models", "fraud-v7-tokens")]
    text = base64.b64decode(republished["data"]["tokens.json"]).decode()
    assert hashlib.sha256(bank.encode()).hexdigest() in text and bank not in text
    assert dep.stop("fraud-v7") is True
    assert ("models", "fraud-v7-tokens") not in core.objects


def test_kserves_lightgbm_runtime_is_refused_it_checks_no_token(
    tmp_path: Path, crd_path: Path
) -> None:
    with pytest.raises(DeploymentError, match="KServe's LightGBM server checks no bearer token"):
        deployer(tmp_path, crd_path, runtime="lightgbm").render(release())
    from ops.deploy import deployer_for

    settings = load_settings(
        {"GOVML_VAR_DIR": str(tmp_path), "GOVML_DEPLOYER": "kubernetes",
         "GOVML_KUBE_TOKENS_SECRET": "shared-tokens"}
    )  # fmt: skip
    with pytest.raises(DeploymentError, match="GOVML_KUBE_TOKENS_SECRET is not used any more"):
        deployer_for(settings)


def test_a_hot_standby_gets_a_disruption_budget_applied_and_removed_with_it(
    tmp_path: Path, crd_path: Path
) -> None:
    api = FakeKServe(ready_after=1)
    dep = deployer(tmp_path, crd_path, api, min_replicas=2, max_replicas=6)
    dep.deploy(release())
    policy = dep._policy_api
    (patch,) = [body for kind, body in policy.calls if kind == "patch"]
    budget = patch["body"]
    assert budget == yaml.safe_load((dep._dir("fraud-v7") / "poddisruptionbudget.yaml").read_text())
    assert budget["apiVersion"] == "policy/v1" and budget["kind"] == "PodDisruptionBudget"
    assert budget["metadata"] == {
        "name": "fraud-v7", "namespace": "models",
        "labels": {kube_checks.LABEL_MODEL: "fraud", kube_checks.LABEL_VERSION: "7"},
    }  # fmt: skip
    # pods one at a time; the selector is the label KServe gives the service's pods
    assert budget["spec"] == {
        "maxUnavailable": 1,
        "selector": {"matchLabels": {"serving.kserve.io/inferenceservice": "fraud-v7"}},
    }
    assert patch["field_manager"] == "govml" and patch["force"] is True
    assert dep.stop("fraud-v7") is True
    assert ("delete", {"namespace": "models", "name": "fraud-v7"}) in policy.calls
    single = deployer(tmp_path / "one", crd_path, FakeKServe(ready_after=1), min_replicas=1)
    single.deploy(release())
    assert single._policy_api.calls == []  # one replica: no budget that blocks drains
    with pytest.raises(DeploymentError, match="min_replicas.*at least 2 replicas"):
        kube_autoscaling.render_pod_disruption_budget("fraud-v7", "models", min_replicas=1)
    with pytest.raises(DeploymentError, match="namespace"):
        kube_autoscaling.render_pod_disruption_budget("fraud-v7", "Bad_NS", min_replicas=2)


@pytest.fixture
def fraud_v7(tmp_path: Path, crd_path: Path) -> tuple[FakeKServe, KubernetesDeployer]:
    """A deployer on a fake cluster whose services are Ready at the first read, with
    fraud v7 (:func:`release`) deployed."""
    api = FakeKServe(ready_after=1)
    dep = deployer(tmp_path, crd_path, api)
    dep.deploy(release())
    return api, dep


def test_a_ready_condition_of_an_older_generation_is_not_enough(
    fraud_v7: tuple[FakeKServe, KubernetesDeployer],
) -> None:
    api, dep = fraud_v7
    # redeploy (generation 2): the controller reports generation 1 Ready for two reads
    api.reads = 0
    api.ready_after = 3
    endpoint = dep.deploy(release())
    assert endpoint.details["action"] == "configured" and endpoint.details["generation"] == 2
    assert api.reads == 3


def test_not_ready_in_time_is_an_error_and_a_created_service_is_removed(
    tmp_path: Path, crd_path: Path
) -> None:
    api = FakeKServe(ready_after=None)
    dep = deployer(tmp_path, crd_path, api, ready_timeout=30.0)
    with pytest.raises(DeploymentError, match="not Ready within 30 s") as info:
        dep.deploy(release())
    assert "Ready=False (RevisionMissing: pulling)" in str(info.value)
    assert ("delete", {"namespace": "models", "name": "fraud-v7"}) in api.calls
    assert api.objects == {}
    assert dep.manifest_path("fraud-v7").exists()


def test_a_model_kserve_cannot_load_fails_at_once(tmp_path: Path, crd_path: Path) -> None:
    api = FakeKServe(ready_after=None)
    api.failure = {
        "transitionStatus": "BlockedByFailedLoad",
        "lastFailureInfo": {"reason": "ModelLoadFailed", "message": "sha256 does not match"},
    }
    dep = deployer(tmp_path, crd_path, api)
    with pytest.raises(DeploymentError, match="BlockedByFailedLoad: ModelLoadFailed sha256"):
        dep.deploy(release())
    assert api.reads == 1


def test_without_a_cluster_the_validated_manifest_is_left_for_kubectl(
    tmp_path: Path, crd_path: Path
) -> None:
    dep = deployer(tmp_path, crd_path, api=None)
    with pytest.raises(DeploymentError) as info:
        dep.deploy(release())
    text = str(info.value)
    assert text.startswith("no Kubernetes cluster configured: set GOVML_KUBECONFIG")
    path = dep.manifest_path("fraud-v7")
    assert f"kubectl apply -f {dep._dir('fraud-v7') / 'secret.yaml'} -f {path}" in text
    manifest = yaml.safe_load(path.read_text())
    assert kube_crd.validate_manifest(manifest, crd_path) == []
    assert manifest["metadata"]["labels"][kube_checks.LABEL_VERSION] == "7"
    assert dep.status("fraud-v7") == {
        "manifest": str(path),
        "running": False,
        "cluster": False,
        "detail": f"no kubeconfig ({tmp_path / 'home' / '.kube' / 'config'} is absent) "
        "and not in a cluster",
    }
    assert dep.stop("fraud-v7") is False and dep.deployed() == []


def test_a_configured_kubeconfig_without_a_usable_client_names_the_manifest(
    tmp_path: Path, crd_path: Path
) -> None:
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text("apiVersion: v1\nkind: Config\nclusters: []\ncontexts: []\n")
    dep = deployer(tmp_path, crd_path, api=None, kubeconfig=kubeconfig)
    assert dep.cluster() == (True, f"kubeconfig {kubeconfig}")
    with pytest.raises(DeploymentError, match="The validated manifest is in .*inferenceservice"):
        dep.deploy(release())


def test_stop_deletes_the_inference_service_and_deployed_lists_ours(
    fraud_v7: tuple[FakeKServe, KubernetesDeployer],
) -> None:
    api, dep = fraud_v7
    dep.deploy(release(version="8", artifact_sha256="ab" * 32))
    assert dep.deployed() == ["fraud-v7", "fraud-v8"]
    assert ("list", {"label_selector": kube_checks.LABEL_MODEL}) in api.calls
    assert dep.stop("fraud-v7") is True
    assert ("delete", {"namespace": "models", "name": "fraud-v7"}) in api.calls
    assert dep.deployed() == ["fraud-v8"]
    assert dep.stop("fraud-v7") is False  # already gone (404)
    assert dep.status("fraud-v7")["exists"] is False


def test_a_manifest_the_crd_does_not_accept_is_refused_naming_the_field(
    tmp_path: Path, crd_path: Path
) -> None:
    """An older KServe CRD without ``scaleMetric``: the API server would drop the field."""
    crd = yaml.safe_load(crd_path.read_text())
    for version in crd["spec"]["versions"]:
        predictor = version["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"][
            "predictor"
        ]
        predictor["properties"].pop("scaleMetric")
    old = tmp_path / "old-crd.yaml"
    old.write_text(yaml.safe_dump(crd))
    api = FakeKServe()
    dep = deployer(tmp_path, old, api)
    with pytest.raises(DeploymentError, match="does not fit the KServe CRD schema") as info:
        dep.deploy(release())
    assert "spec.predictor: Additional properties are not allowed ('scaleMetric'" in str(info.value)
    assert api.calls == []  # nothing applied
    assert not dep.manifest_path("fraud-v7").exists()


def test_bad_settings_are_named_before_anything_is_applied(tmp_path: Path, crd_path: Path) -> None:
    api = FakeKServe()
    with pytest.raises(DeploymentError, match="cannot render .*cpu_request: '2' is more than"):
        deployer(tmp_path, crd_path, api, cpu_request="2", cpu_limit="1").deploy(release())
    with pytest.raises(DeploymentError, match="a Kubernetes cluster cannot read"):
        deployer(tmp_path, crd_path, api, storage_uri=None).deploy(release())
    with pytest.raises(DeploymentError, match="GOVML_KUBE_MLFLOW_TRACKING_URI"):
        deployer(tmp_path, crd_path, api, storage_uri=None).deploy(
            release(model_uri="models:/fraud/7")
        )
    assert api.calls == []


def test_mlflow_uris_are_resolved_by_the_server_and_names_become_dns_labels(
    tmp_path: Path, crd_path: Path
) -> None:
    api = FakeKServe(ready_after=1, url="http://german-credit-v3.models.example.com")
    dep = deployer(
        tmp_path, crd_path, api, storage_uri=None, tracking_uri="http://mlflow.internal:5000"
    )
    endpoint = dep.deploy(
        release(model_name="german_credit", version="3", model_uri="models:/german_credit/3")
    )
    assert endpoint.name == "german-credit-v3" and endpoint.model_name == "german-credit"
    env = container_env(next(b for k, b in api.calls if k == "patch")["body"])
    assert env["MODEL_URI"] == "models:/german_credit/3" and "STORAGE_URI" not in env
    assert env["MLFLOW_TRACKING_URI"] == "http://mlflow.internal:5000"


def test_cluster_detection(tmp_path: Path) -> None:
    home = tmp_path / "home"
    assert cluster_configured(None, {"HOME": str(home)})[0] is False
    assert cluster_configured(None, {"HOME": str(home), "KUBERNETES_SERVICE_HOST": "10.0.0.1"})[0]
    assert cluster_configured(tmp_path / "missing", {})[1].endswith("does not exist")
    (home / ".kube").mkdir(parents=True)
    (home / ".kube" / "config").write_text("{}")
    assert cluster_configured(None, {"HOME": str(home)}) == (
        True,
        f"kubeconfig {home / '.kube' / 'config'}",
    )


def test_govml_deployer_kubernetes_builds_it_from_the_settings(tmp_path: Path) -> None:
    from ops.deploy import deployer_for

    settings = load_settings(
        {
            "GOVML_VAR_DIR": str(tmp_path),
            "GOVML_DEPLOYER": "kubernetes",
            "GOVML_KUBE_NAMESPACE": "risk-models",
            "GOVML_KUBE_MAX_REPLICAS": "8",
            "GOVML_KUBE_SCALE_METRIC": "rps",
            "GOVML_KUBE_MEMORY_LIMIT": "4Gi",
            "GOVML_KUBECONFIG": str(tmp_path / "kubeconfig"),
            "GOVML_KUBE_CONTEXT": "prod",
            "GOVML_SERVING_IMAGE": "registry.bank/govml/serving:1.2",
            "MLFLOW_TRACKING_URI": "http://mlflow.internal:5000",
        }
    )
    dep = deployer_for(settings)
    assert isinstance(dep, KubernetesDeployer)
    target = dep.target
    assert dep.namespace == "risk-models" and target.cluster.context == "prod"
    assert target.cluster.kubeconfig == tmp_path / "kubeconfig"
    assert target.scaling == Scaling(
        min_replicas=2,  # hot standby by default
        max_replicas=8,
        scale_metric="rps",
        scale_target=8,
    )
    assert target.resources.cpu_request == "1"  # one CPU a replica, as benchmarked
    assert target.resources.memory_limit == "4Gi"
    assert target.server.image.endswith("serving:1.2")
    assert target.sources.tracking_uri == "http://mlflow.internal:5000"
    assert dep.state_root == tmp_path / "serving"
    # the embedded stack's loopback MLflow is no address for pods: not passed on
    local = load_settings({"GOVML_VAR_DIR": str(tmp_path), "GOVML_DEPLOYER": "kubernetes"})
    assert deployer_for(local).target.sources.tracking_uri is None
    explicit = load_settings(
        {
            "GOVML_DEPLOYER": "kubernetes",
            "GOVML_KUBE_MLFLOW_TRACKING_URI": "http://mlflow.govml.svc:5000",
        }
    )
    sources = deployer_for(explicit).target.sources
    assert sources.tracking_uri == "http://mlflow.govml.svc:5000"


def test_the_served_version_gets_its_spec_tokens_and_prediction_log(
    tmp_path: Path, crd_path: Path
) -> None:
    kube = deployer(tmp_path, crd_path, prediction_log_claim="fraud-predictions")
    manifest = kube.render(release(spec_path="/work/main/specs/fraud.yaml"))
    args = manifest["spec"]["predictor"]["containers"][0]["args"]
    assert "--spec=specs/fraud.yaml" in args  # the server image holds specs/
    assert "--tokens=/etc/govml/tokens/tokens.json" in args
    assert any(a.startswith("--prediction_log=") for a in args)
    plain = deployer(tmp_path / "other", crd_path).render(release())
    plain_args = plain["spec"]["predictor"]["containers"][0]["args"]
    assert not any(a.startswith(("--spec", "--prediction_log")) for a in plain_args)
    assert "--tokens=/etc/govml/tokens/tokens.json" in plain_args  # never without tokens


def test_every_rollout_step_renders_as_a_kserve_canary_the_crd_accepts(
    tmp_path: Path, crd_path: Path
) -> None:
    kube = deployer(tmp_path, crd_path)
    challenger = release(version="8", spec_path="/work/main/specs/fraud.yaml")
    for percent in (0, 5, 25, 50, 100):
        manifest = kube.render_rollout_step(challenger, percent)
        assert manifest["metadata"]["name"] == "fraud"  # the model's stable endpoint
        predictor = manifest["spec"]["predictor"]
        if percent == 100:  # promoted: the new revision takes everything
            assert "canaryTrafficPercent" not in predictor
        else:
            assert predictor["canaryTrafficPercent"] == percent
        assert manifest["metadata"]["labels"]["govml/version"] == "8"
    with pytest.raises(DeploymentError, match="0..100"):
        kube.render_rollout_step(challenger, 120)


def test_a_spec_with_aggregates_gets_the_feature_transformer_the_crd_accepts(
    tmp_path: Path, crd_path: Path
) -> None:
    kube = deployer(
        tmp_path,
        crd_path,
        feature_store="redis://redis.govml.svc:6379/0",
        feature_key_secret="fraud-feature-key",
    )
    manifest = kube.render(
        release(spec_path="/work/main/specs/fraud.yaml", feature_store="redis://127.0.0.1:6379/0")
    )
    assert kube_crd.validate_manifest(manifest, crd_path) == []
    transformer = manifest["spec"]["transformer"]
    (container,) = transformer["containers"]
    assert container["command"] == ["python", "-m", "serving.transformer"]
    assert "--spec=specs/fraud.yaml" in container["args"]
    assert "--feature_store=$(GOVML_FEATURE_STORE)" in container["args"]
    assert "--tokens=/etc/govml/tokens/tokens.json" in container["args"]
    env = {e["name"]: e for e in container["env"]}
    # the pods' Redis, not the deploy task's; the key from the Secret, never inline
    assert env["GOVML_FEATURE_STORE"]["value"] == "redis://redis.govml.svc:6379/0"
    assert env["GOVML_FEATURE_KEY"]["valueFrom"]["secretKeyRef"] == {
        "name": "fraud-feature-key",
        "key": "feature-key",
    }
    assert env["GOVML_PREDICTOR_TOKEN"]["valueFrom"]["secretKeyRef"]["name"] == ("fraud-v7-tokens")
    assert "--host=0.0.0.0" in container["args"]
    predictor = manifest["spec"]["predictor"]
    for key in ("minReplicas", "maxReplicas", "scaleMetric", "scaleTarget"):
        assert transformer[key] == predictor[key]
    assert container["resources"] == predictor["containers"][0]["resources"]
    # a release without a feature store has no transformer
    assert (
        "transformer" not in kube.render(release(spec_path="/work/main/specs/fraud.yaml"))["spec"]
    )


def test_the_feature_transformer_needs_redis_and_the_key_secret_on_kubernetes(
    tmp_path: Path, crd_path: Path
) -> None:
    with_features = release(spec_path="/work/main/specs/fraud.yaml", feature_store="memory")
    with pytest.raises(DeploymentError, match="shared store: set GOVML_FEATURE_STORE"):
        deployer(tmp_path, crd_path, feature_key_secret="k").render(with_features)
    redis_release = release(spec_path="/work/main/specs/fraud.yaml", feature_store="redis://r:6379")
    with pytest.raises(DeploymentError, match="GOVML_KUBE_FEATURE_KEY_SECRET"):
        deployer(tmp_path, crd_path).render(redis_release)
    with pytest.raises(DeploymentError, match="feature_key_secret"):
        feature_transformer.add_feature_transformer(
            deployer(tmp_path, crd_path).render(release()),
            image="govml-serving:1",
            spec_file="specs/fraud.yaml",
            feature_store="redis://r:6379",
            feature_key_secret="Not_A_Name",
            tokens_secret="fraud-v7-tokens",
        )
