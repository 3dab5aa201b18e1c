"""KServe InferenceService manifests: rendering, the real CRD's schema, apply()."""

from __future__ import annotations

import base64
import copy
import dataclasses
import itertools
import os
import subprocess
import textwrap
from pathlib import Path
from typing import Any

import pytest
import yaml

from pipelines.errors import DeploymentError
from serving.control import apply as kube_apply
from serving.control import checks as kube_checks
from serving.control import crd as kube_crd
from serving.control import secret as kube_secret
from serving.control.apply import apply, to_yaml
from serving.control.autoscaling import Resources, Scaling
from serving.control.checks import (
    ANNOTATION_APPROVAL,
    ANNOTATION_SHA256,
    LABEL_MODEL,
    LABEL_VERSION,
)
from serving.control.crd import structural_to_jsonschema, validate_manifest
from serving.control.inference_service import (
    PodOptions,
    ServedModel,
    ServingImage,
    render_inference_service,
)

SHA = "3f" * 32
IMAGE = "registry.example.com/govml/serving:0.1.0"
ROOT = Path(__file__).resolve().parents[2]
SERVING_PYTHON = ROOT / ".venv-serving" / "bin" / "python"


@pytest.fixture(scope="module")
def crd_path() -> Path:
    found = kube_crd.find_crd()
    if found is None:
        tried = ", ".join(str(p) for p in kube_crd.crd_candidates())
        pytest.skip(f"KServe CRD not found (tried {tried}); set {kube_crd.CRD_ENV} to run")
    return found


def render(**overrides: Any) -> dict[str, Any]:
    args: dict[str, Any] = {
        "name": "fraud",
        "namespace": "models",
        "storage_uri": "s3://models/fraud/7",
        "model_version": 7,
        "artifact_sha256": SHA,
        "approval_request": "apr-2026-0042",
    }
    args.update(overrides)
    if args.get("runtime") == "custom":
        args.setdefault("image", IMAGE)
        args.setdefault("tokens_secret", "fraud-v7-tokens")  # never without (see below)
    return render_flat(**args)


def container_env(manifest: dict[str, Any]) -> dict[str, str]:
    """An InferenceService's model server container environment: name -> literal value."""
    container = manifest["spec"]["predictor"]["containers"][0]
    return {e["name"]: e["value"] for e in container["env"] if "value" in e}


def _pick(kind: type, args: dict[str, Any], renamed: dict[str, str] | None = None) -> Any:
    renamed = renamed or {}
    names = {f.name for f in dataclasses.fields(kind)}
    taken = {renamed.get(k, k): args.pop(k) for k in list(args) if renamed.get(k, k) in names}
    return kind(**taken)


def render_flat(name: str, namespace: str, storage_uri: str, **flat: Any) -> dict[str, Any]:
    """``render_inference_service`` from the flat keywords of its inputs' fields."""
    canary = flat.pop("canary_traffic_percent", None)
    model = _pick(ServedModel, {"storage_uri": storage_uri, **flat}, {"model_version": "version"})
    for key in ("model_version", "artifact_sha256", "model_name", "approval_request"):
        flat.pop(key, None)
    parts = {
        "server": _pick(ServingImage, flat),
        "scaling": _pick(Scaling, flat),
        "resources": _pick(Resources, flat),
        "pod": _pick(PodOptions, flat),
    }
    assert not flat, f"unknown render arguments {sorted(flat)}"
    return render_inference_service(name, namespace, model, canary_traffic_percent=canary, **parts)


# --------------------------------------------------------------------------- rendering
COMBINATIONS = list(
    itertools.product(["lightgbm", "custom"], [None, 0, 30, 100], ["concurrency", "cpu", "rps"])
)


@pytest.mark.parametrize(("runtime", "canary", "metric"), COMBINATIONS)
def test_every_combination_validates_against_the_real_crd(
    crd_path: Path, runtime: str, canary: int | None, metric: str
) -> None:
    manifest = render(
        runtime=runtime,
        canary_traffic_percent=canary,
        scale_metric=metric,
        scale_target=70 if metric == "cpu" else 20,
        service_account="govml-serving",
        labels={"team": "fraud-ops"},
        annotations={"example.com/owner": "model-risk"},
    )
    assert validate_manifest(manifest, crd_path) == []
    assert manifest["apiVersion"] == "serving.kserve.io/v1beta1"
    predictor = manifest["spec"]["predictor"]
    assert ("canaryTrafficPercent" in predictor) == (canary is not None)
    if canary is not None:
        assert predictor["canaryTrafficPercent"] == canary
    assert predictor["scaleMetric"] == metric
    assert (predictor["minReplicas"], predictor["maxReplicas"]) == (1, 3)
    assert predictor["serviceAccountName"] == "govml-serving"
    resources = {
        "requests": {"cpu": "500m", "memory": "1Gi"},
        "limits": {"cpu": "1", "memory": "2Gi"},
    }
    if runtime == "lightgbm":
        assert "containers" not in predictor
        assert predictor["model"] == {
            "modelFormat": {"name": "lightgbm", "version": "4"},
            "storageUri": "s3://models/fraud/7",
            "resources": resources,
        }
    else:
        assert "model" not in predictor
        (container,) = predictor["containers"]
        assert container["name"] == "kserve-container" and container["image"] == IMAGE
        assert container["ports"][0]["containerPort"] == 8080
        assert container["resources"] == resources
        assert container["readinessProbe"]["httpGet"] == {"path": "/v1/models/fraud", "port": 8080}


def test_governance_labels_and_annotations() -> None:
    meta = render(labels={"team": "fraud-ops"})["metadata"]
    assert meta["labels"] == {"team": "fraud-ops", LABEL_MODEL: "fraud", LABEL_VERSION: "7"}
    assert meta["annotations"][ANNOTATION_SHA256] == SHA
    assert meta["annotations"][ANNOTATION_APPROVAL] == "apr-2026-0042"
    # 64 hex characters cannot be a label value (63 at most): the SHA is an annotation
    assert len(SHA) > 63 and SHA not in meta["labels"].values()
    pod_labels = render()["spec"]["predictor"]["labels"]
    assert pod_labels == {LABEL_MODEL: "fraud", LABEL_VERSION: "7"}
    assert ANNOTATION_APPROVAL not in render(approval_request=None)["metadata"]["annotations"]


def test_custom_container_wires_the_model_server_arguments() -> None:
    (container,) = render(runtime="custom", model_name="fraud-model")["spec"]["predictor"][
        "containers"
    ]
    env = {e["name"]: e["value"] for e in container["env"] if "value" in e}
    # s3:// is fetched by KServe's storage initializer to /mnt/models
    assert env == {
        "MODEL_NAME": "fraud-model",
        "MODEL_URI": "/mnt/models",
        "EXPECTED_SHA256": SHA,
        "STORAGE_URI": "s3://models/fraud/7",
    }
    assert "--model_uri=$(MODEL_URI)" in container["args"]
    assert "--expected_sha256=$(EXPECTED_SHA256)" in container["args"]
    assert "--model_name=$(MODEL_NAME)" in container["args"]
    assert "--host=0.0.0.0" in container["args"]  # the pod's address, said explicitly
    assert "--tokens=/etc/govml/tokens/tokens.json" in container["args"]
    mlflow = render(
        runtime="custom", storage_uri="models:/fraud/7", env={"MLFLOW_TRACKING_URI": "x"}
    )
    env = container_env(mlflow)
    assert env["MODEL_URI"] == "models:/fraud/7" and "STORAGE_URI" not in env
    assert env["MLFLOW_TRACKING_URI"] == "x"


BAD_INPUTS = [
    ({"name": "Fraud"}, "name: 'Fraud' is not a DNS-1035 label"),
    ({"name": "1fraud"}, "name: '1fraud' is not a DNS-1035 label"),
    ({"name": "fraud_model"}, "name: 'fraud_model' is not a DNS-1035 label"),
    ({"name": "f" * 64}, "name: 'ffff"),
    ({"name": ""}, "name: must be a non-empty string"),
    ({"namespace": "Models"}, "namespace: 'Models' is not a DNS-1123 label"),
    ({"canary_traffic_percent": 150}, "canary_traffic_percent: 150 is outside 0..100"),
    ({"canary_traffic_percent": -1}, "canary_traffic_percent: -1 is outside 0..100"),
    ({"canary_traffic_percent": 12.5}, "canary_traffic_percent: must be a whole number"),
    ({"canary_traffic_percent": True}, "canary_traffic_percent: must be a whole number"),
    ({"min_replicas": 4, "max_replicas": 2}, "min_replicas: 4 is more than max_replicas 2"),
    ({"max_replicas": 0}, "max_replicas: 0 is outside 1.."),
    ({"min_replicas": -1}, "min_replicas: -1 is outside 0.."),
    ({"runtime": "custom", "image": None}, "image: runtime='custom' needs a container image"),
    ({"runtime": "custom", "image": ""}, "image: runtime='custom' needs a container image"),
    (
        {"runtime": "custom", "tokens_secret": None},
        "tokens_secret: required: the project's model server never runs without bearer tokens",
    ),
    ({"image": IMAGE}, "image: only runtime='custom' takes an image"),
    ({"runtime": "onnx"}, "runtime: 'onnx' is not one of"),
    ({"scale_metric": "memory"}, "scale_metric: 'memory' is not one of"),
    ({"scale_metric": "cpu", "scale_target": 150}, "scale_target: 150 is outside 1..100"),
    ({"scale_target": 0}, "scale_target: 0 is outside 1.."),
    ({"artifact_sha256": "ABC"}, "artifact_sha256: must be 64 lower-case hex characters"),
    ({"storage_uri": "models:/fraud/7"}, "storage_uri: 'models:/fraud/7': KServe's storage"),
    ({"storage_uri": ""}, "storage_uri: must be a non-empty URI"),
    ({"model_version": ""}, "model_version: empty"),
    ({"model_version": "v" * 64}, "model_version: 'vvvv"),
    ({"cpu_request": "2", "cpu_limit": "1"}, "cpu_request: '2' is more than cpu_limit '1'"),
    ({"memory_request": "3Gi", "memory_limit": "2048Mi"}, "memory_request: '3Gi' is more than"),
    ({"memory_limit": "2GB"}, "memory_limit: '2GB' is not a Kubernetes quantity"),
    ({"cpu_request": "0"}, "cpu_request: '0' must be greater than zero"),
    ({"service_account": "Bad Account"}, "service_account: 'Bad Account' is not a DNS-1123"),
    ({"labels": {"govml/model": "other"}}, "labels: 'govml/model' is set by the renderer"),
    ({"labels": {"team": "a b"}}, "labels['team']: 'a b' is not a label value"),
    ({"labels": {"bad key!": "x"}}, "labels: key 'bad key!'"),
    ({"runtime": "custom", "env": {"MODEL_URI": "x"}}, "env: 'MODEL_URI' is set by the renderer"),
    ({"annotations": {"note": 3}}, "annotations['note']: annotation values must be strings"),
    ({"model_name": "Fraud Model"}, "model_name: 'Fraud Model' is not a DNS-1123 subdomain"),
]


@pytest.mark.parametrize(("overrides", "message"), BAD_INPUTS)
def test_invalid_inputs_get_a_clear_error_naming_the_field(
    overrides: dict[str, Any], message: str
) -> None:
    with pytest.raises(DeploymentError, match="cannot render InferenceService") as info:
        render(**overrides)
    assert message in str(info.value)


def test_every_bad_input_is_reported_at_once() -> None:
    with pytest.raises(DeploymentError) as info:
        render(name="Bad", canary_traffic_percent=150, min_replicas=5, max_replicas=2)
    text = str(info.value)
    for field in ("name:", "canary_traffic_percent:", "min_replicas:"):
        assert field in text


def test_quantities_compare_across_units() -> None:
    assert kube_checks.parse_quantity("500m") == kube_checks.parse_quantity("0.5")
    assert kube_checks.parse_quantity("1Gi") == 1024**3
    assert kube_checks.parse_quantity("1G") == 10**9
    assert kube_checks.parse_quantity("1e3") == 1000
    render(cpu_request="250m", cpu_limit="0.25", memory_request="1024Mi", memory_limit="1Gi")


# --------------------------------------------------------------------------- the CRD schema
def broken(path: str, value: Any, base: dict[str, Any] | None = None) -> dict[str, Any]:
    manifest = copy.deepcopy(base or render())
    *parents, last = path.split(".")
    node = manifest
    for part in parents:
        node = node[int(part)] if part.isdigit() else node[part]
    node[last] = value
    return manifest


BROKEN = [
    ("spec.predictor.minReplicas", "2", "spec.predictor.minReplicas: '2' is not of type 'integer'"),
    ("spec.predictor.canaryTrafficPercent", "10%", "canaryTrafficPercent: '10%' is not of type"),
    ("spec.predictor.minReplica", 2, "spec.predictor: Additional properties are not allowed"),
    ("spec.predictor.model.storageURI", "s3://x", "spec.predictor.model: Additional properties"),
    ("spec.predictr", {}, "spec: Additional properties are not allowed ('predictr'"),
    ("spec.predictor.scaleMetric", "latency", "scaleMetric: 'latency' is not one of"),
    ("spec.predictor.model.resources.limits.cpu", "lots", "limits.cpu: 'lots' does not match"),
    ("spec.predictor.maxReplicas", 2**31, "maxReplicas: 2147483648 is greater than the maximum"),
    ("metadata.labels.govml/sha", SHA, "metadata.labels.govml/sha: '3f3f"),
    ("metadata.name", "Fraud_Model", "metadata.name: 'Fraud_Model' does not match"),
    ("metadata.nmae", "x", "metadata: Additional properties are not allowed ('nmae'"),
    ("apiVersion", "serving.kserve.io/v1alpha9", "apiVersion: 'serving.kserve.io/v1alpha9' is not"),
    ("kind", "Deployment", "kind: 'Deployment' is not 'InferenceService'"),
]


@pytest.mark.parametrize(("path", "value", "message"), BROKEN)
def test_validate_manifest_catches_broken_manifests(
    crd_path: Path, path: str, value: Any, message: str
) -> None:
    problems = validate_manifest(broken(path, value), crd_path)
    assert any(message in p for p in problems), problems


def test_validate_manifest_catches_custom_container_mistakes(crd_path: Path) -> None:
    base = render(runtime="custom")
    container = "spec.predictor.containers.0"
    env = base["spec"]["predictor"]["containers"][0]["env"]
    duplicate = broken(f"{container}.env", [*env, {"name": "MODEL_URI", "value": "x"}], base)
    assert any(
        "duplicate key {'name': 'MODEL_URI'}" in p for p in validate_manifest(duplicate, crd_path)
    )
    wrong_port = broken(f"{container}.ports", [{"containerPort": "8080"}], base)
    assert any("containerPort" in p for p in validate_manifest(wrong_port, crd_path))
    typo = broken(f"{container}.readinessProbe.httpGet.prot", 8080, base)
    assert any("httpGet: Additional properties" in p for p in validate_manifest(typo, crd_path))
    no_name = copy.deepcopy(base)
    del no_name["spec"]["predictor"]["containers"][0]["name"]
    assert any("'name' is a required property" in p for p in validate_manifest(no_name, crd_path))


def test_the_crd_schema_prunes_unknown_predictor_fields(crd_path: Path) -> None:
    """What the real CRD says (the reason unknown fields are errors in validate_manifest)."""
    schema = kube_crd.served_schema(kube_crd.load_crd(crd_path), "serving.kserve.io/v1beta1")
    predictor = schema["properties"]["spec"]["properties"]["predictor"]
    assert predictor["type"] == "object"
    assert "additionalProperties" not in predictor
    assert not predictor.get("x-kubernetes-preserve-unknown-fields")
    preserving = [
        k for k, v in schema["properties"].items() if v.get("x-kubernetes-preserve-unknown-fields")
    ]
    assert preserving == ["status"]
    limits = predictor["properties"]["model"]["properties"]["resources"]["properties"]["limits"]
    assert limits["additionalProperties"]["x-kubernetes-int-or-string"] is True


def test_structural_schema_translation() -> None:
    from jsonschema import Draft4Validator

    structural = {
        "type": "object",
        "required": ["name", "protocol"],
        "properties": {
            "name": {"type": "string"},
            "protocol": {"type": "string", "default": "TCP"},
            "port": {"x-kubernetes-int-or-string": True},
            "count": {"type": "integer", "format": "int32"},
            "free": {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
            "note": {"type": "string", "nullable": True},
            "tags": {"type": "array", "items": {"type": "string"}, "x-kubernetes-list-type": "set"},
        },
    }
    before = copy.deepcopy(structural)
    schema = structural_to_jsonschema(structural)
    assert structural == before  # the input is not modified
    assert schema["required"] == ["name"]  # a defaulted field is not required
    assert schema["properties"]["port"]["anyOf"] == [{"type": "integer"}, {"type": "string"}]
    assert schema["additionalProperties"] is False
    assert "additionalProperties" not in schema["properties"]["free"]

    def errors(instance: dict[str, Any]) -> list[str]:
        return [e.message for e in Draft4Validator(schema).iter_errors(instance)]

    assert errors({"name": "a", "port": 80, "free": {"any": {"thing": 1}}, "note": None}) == []
    assert errors({"name": "a", "port": "http"}) == []
    assert errors({"name": "a", "port": 1.5}) != []
    assert errors({"name": "a", "count": 2**31}) != []
    assert errors({"name": "a", "typo": 1}) != []
    assert errors({"name": "a", "tags": ["x", "x"]}) == []  # plain Draft 4: no set semantics
    with_sets = kube_crd._validator_class()(schema)
    assert [e.message for e in with_sets.iter_errors({"name": "a", "tags": ["x", "x"]})] == [
        "item 1: duplicate value 'x' in a list of type set"
    ]


def test_the_crd_is_found_through_the_environment_variable_first(
    crd_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    link = tmp_path / "crd.yaml"
    link.symlink_to(crd_path)  # a link, not a copy
    monkeypatch.setenv(kube_crd.CRD_ENV, str(link))
    candidates = kube_crd.crd_candidates()
    assert candidates[0] == link
    assert candidates[1] == ROOT.parent / "shared" / "kserve" / kube_crd.CRD_FILE
    assert kube_crd.find_crd() == link
    assert validate_manifest(render()) == []  # the default path is the same lookup
    monkeypatch.setenv(kube_crd.CRD_ENV, str(tmp_path / "missing.yaml"))
    assert kube_crd.find_crd() not in (None, tmp_path / "missing.yaml")


def test_validate_manifest_without_a_crd_names_where_it_looked(tmp_path: Path) -> None:
    missing = tmp_path / "nothing.yaml"
    with pytest.raises(DeploymentError, match="KServe CRD not found"):
        validate_manifest(render(), missing)


# --------------------------------------------------------------------------- YAML
@pytest.mark.parametrize("runtime", ["lightgbm", "custom"])
def test_to_yaml_round_trips(runtime: str) -> None:
    manifest = render(runtime=runtime, canary_traffic_percent=10)
    text = to_yaml(manifest)
    assert yaml.safe_load(text) == manifest
    assert text.startswith("apiVersion: serving.kserve.io/v1beta1\nkind: InferenceService\n")
    assert "govml/version: '7'" in text  # stays a string, as label values must
    assert "cpu: '1'" in text


# --------------------------------------------------------------------------- apply
class FakeApiException(Exception):
    def __init__(self, status: int, reason: str, message: str = "") -> None:
        super().__init__(f"({status}) {reason}")
        self.status, self.reason = status, reason
        self.body = f'{{"kind":"Status","message":"{message}"}}' if message else None


class FakeCustomObjectsApi:
    """Stands in for kubernetes.client.CustomObjectsApi: a dict of objects, SSA-like patch."""

    def __init__(self, get_error: Exception | None = None) -> None:
        self.objects: dict[tuple[str, str, str, str, str], dict[str, Any]] = {}
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.get_error = get_error
        self.patch_error: Exception | None = None

    def get_namespaced_custom_object(
        self, group: str, version: str, namespace: str, plural: str, name: str, **kwargs: Any
    ) -> dict[str, Any]:
        self.calls.append(("get", {"namespace": namespace, "name": name}))
        if self.get_error is not None:
            raise self.get_error
        key = (group, version, namespace, plural, name)
        if key not in self.objects:
            raise FakeApiException(404, "Not Found")
        return copy.deepcopy(self.objects[key])

    def patch_namespaced_custom_object(
        self,
        group: str,
        version: str,
        namespace: str,
        plural: str,
        name: str,
        body: dict[str, Any],
        **kwargs: Any,
    ) -> dict[str, Any]:
        self.calls.append(("patch", {"body": copy.deepcopy(body), **kwargs}))
        if self.patch_error is not None:
            raise self.patch_error
        assert kwargs["_content_type"] == "application/apply-patch+yaml"
        key = (group, version, namespace, plural, name)
        generation = self.objects.get(key, {}).get("metadata", {}).get("generation", 0)
        stored = copy.deepcopy(body)  # one field manager: the applied config is the object
        stored["metadata"]["generation"] = generation + 1
        if kwargs.get("dry_run") != "All":
            self.objects[key] = stored
        return copy.deepcopy(stored)


def test_apply_creates_then_updates_with_server_side_apply() -> None:
    api = FakeCustomObjectsApi()
    canary = render(model_version=8, artifact_sha256="ab" * 32, canary_traffic_percent=10)
    first = apply(canary, api=api)
    assert (first.action, first.name, first.namespace) == ("created", "fraud", "models")
    assert [c[0] for c in api.calls] == ["get", "patch"]
    patch = api.calls[1][1]
    assert patch["field_manager"] == "govml" and patch["force"] is True
    assert patch["body"] == canary and "dry_run" not in patch
    key = ("serving.kserve.io", "v1beta1", "models", "inferenceservices", "fraud")
    assert api.objects[key]["spec"]["predictor"]["canaryTrafficPercent"] == 10

    promoted = render(model_version=8, artifact_sha256="ab" * 32)  # canary removed
    second = apply(promoted, api=api)
    assert second.action == "configured"
    assert [c[0] for c in api.calls] == ["get", "patch", "get", "patch"]
    stored = api.objects[key]
    assert "canaryTrafficPercent" not in stored["spec"]["predictor"]
    assert stored["metadata"]["generation"] == 2
    assert second.object["metadata"]["labels"][LABEL_VERSION] == "8"


def test_apply_dry_run_changes_nothing() -> None:
    api = FakeCustomObjectsApi()
    result = apply(render(), api=api, dry_run=True)
    assert result.action == "created" and api.objects == {}
    assert api.calls[-1][1]["dry_run"] == "All"


def test_apply_reports_api_errors_clearly() -> None:
    forbidden = FakeApiException(403, "Forbidden", 'inferenceservices is forbidden: User \\"x\\"')
    with pytest.raises(DeploymentError, match="cannot read inferenceservices/fraud .*HTTP 403"):
        apply(render(), api=FakeCustomObjectsApi(get_error=forbidden))
    api = FakeCustomObjectsApi()
    api.patch_error = FakeApiException(422, "Unprocessable Entity", "spec.predictor: invalid")
    with pytest.raises(DeploymentError, match="cannot apply .*HTTP 422.*spec.predictor: invalid"):
        apply(render(), api=api)
    unreachable = FakeCustomObjectsApi(get_error=ConnectionRefusedError("connection refused"))
    with pytest.raises(DeploymentError, match="ConnectionRefusedError: connection refused"):
        apply(render(), api=unreachable)


def test_apply_refuses_what_is_not_an_inference_service() -> None:
    api = FakeCustomObjectsApi()
    with pytest.raises(DeploymentError, match="not an InferenceService"):
        apply({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {}}, api=api)
    no_namespace = render()
    del no_namespace["metadata"]["namespace"]
    with pytest.raises(DeploymentError, match="metadata.namespace"):
        apply(no_namespace, api=api)
    assert api.calls == []


def _kubernetes_importable() -> bool:
    try:
        import kubernetes  # noqa: F401
    except ImportError:
        return False
    return True


def test_apply_without_a_cluster_raises_a_deployment_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "no-such-kubeconfig"))
    if _kubernetes_importable():
        expected = "no Kubernetes cluster configured"
    else:  # this environment (.venv) has no kubernetes client; the serving one does
        expected = "kubernetes Python client is not installed"
    with pytest.raises(DeploymentError, match=expected):
        apply(render())


def run_in_serving_env(
    home: Path, script: str, *args: str, **env: str
) -> subprocess.CompletedProcess[str]:
    """``script`` run by .venv-serving's Python (where the real kubernetes client is), in an
    environment without Kubernetes or govml settings and with ``home`` as HOME; it must
    exit 0."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("KUBE", "GOVML_"))}
    clean.update({"HOME": str(home), "PYTHONPATH": str(ROOT), **env})
    done = subprocess.run(
        [str(SERVING_PYTHON), "-c", script, *args],
        cwd=ROOT,
        env=clean,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    return done


@pytest.mark.skipif(not SERVING_PYTHON.exists(), reason="no .venv-serving here")
def test_apply_without_a_cluster_in_the_serving_environment(tmp_path: Path) -> None:
    """The real kubernetes client (only in .venv-serving), no kubeconfig, not in a pod."""
    script = textwrap.dedent(
        f"""
        from pipelines.errors import DeploymentError
        from serving.control.apply import apply
        from serving.control.inference_service import ServedModel, render_inference_service
        manifest = render_inference_service(
            "fraud", "models", ServedModel("s3://m/fraud/7", "7", "{SHA}")
        )
        for kwargs in ({{}}, {{"kubeconfig": "{tmp_path}/missing.yaml", "context": "prod"}}):
            try:
                apply(manifest, **kwargs)
            except DeploymentError as exc:
                print("DeploymentError:", exc)
        """
    )
    done = run_in_serving_env(tmp_path, script)
    lines = done.stdout.splitlines()
    assert len(lines) == 2, done.stdout + done.stderr
    assert all("no Kubernetes cluster configured" in line for line in lines)
    assert f"{tmp_path}/.kube/config" in lines[0] and "missing.yaml" in lines[1]
    assert "Traceback" not in done.stderr


FAKE_API_SERVER = """
import json, sys, threading
from http.server import ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

from pipelines.errors import DeploymentError
from serving.control.apply import apply
from serving.control.inference_service import ServedModel, render_inference_service
from tests.http_fakes import JsonHandler

requests, store = [], {}


class Handler(JsonHandler):
    def do_GET(self):
        path = urlsplit(self.path).path
        requests.append({"method": "GET", "path": path})
        if path in store:
            self.reply(200, store[path])
        else:
            self.reply(404, {"kind": "Status", "code": 404, "message": "not found"})

    def do_PATCH(self):
        url = urlsplit(self.path)
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        requests.append({
            "method": "PATCH", "path": url.path, "query": parse_qs(url.query),
            "content_type": self.headers["Content-Type"],
            "auth": self.headers.get("Authorization"), "body": body,
        })
        store[url.path] = body
        self.reply(200, body)


server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
threading.Thread(target=server.serve_forever, daemon=True).start()
kubeconfig = sys.argv[1]
with open(kubeconfig, "w") as f:
    f.write(
        "apiVersion: v1\\nkind: Config\\ncurrent-context: fake\\n"
        f"clusters: [{{name: fake, cluster: {{server: 'http://127.0.0.1:{server.server_port}'}}}}]\\n"
        "users: [{name: deployer, user: {token: t0ken}}]\\n"
        "contexts: [{name: fake, context: {cluster: fake, user: deployer}}]\\n"
    )
model = ServedModel("s3://m/f/7", "7", "ab" * 32)
canary = render_inference_service("fraud", "models", model, canary_traffic_percent=10)
full = render_inference_service("fraud", "models", model)
actions = [apply(canary, kubeconfig=kubeconfig).action]
actions.append(apply(full, kubeconfig=kubeconfig, context="fake").action)
server.shutdown()
server.server_close()
try:
    apply(full, kubeconfig=kubeconfig)
except DeploymentError as exc:
    actions.append("DeploymentError: " + str(exc))
print(json.dumps({"actions": actions, "requests": requests}))
"""


@pytest.mark.skipif(not SERVING_PYTHON.exists(), reason="no .venv-serving here")
def test_apply_with_the_real_client_against_a_loopback_api_server(tmp_path: Path) -> None:
    """The real kubernetes client (in .venv-serving) talking to a fake API server on 127.0.0.1."""
    import json

    done = run_in_serving_env(
        tmp_path, FAKE_API_SERVER, str(tmp_path / "kubeconfig"), NO_PROXY="127.0.0.1"
    )
    out = json.loads(done.stdout)
    created, configured, unreachable = out["actions"]
    assert (created, configured) == ("created", "configured")
    assert unreachable.startswith("DeploymentError: cannot read inferenceservices/fraud")
    path = "/apis/serving.kserve.io/v1beta1/namespaces/models/inferenceservices/fraud"
    assert [(r["method"], r["path"]) for r in out["requests"]] == [
        ("GET", path),
        ("PATCH", path),
        ("GET", path),
        ("PATCH", path),
    ]
    first, second = out["requests"][1], out["requests"][3]
    for patch in (first, second):
        assert patch["content_type"] == "application/apply-patch+yaml"
        assert patch["query"]["fieldManager"] == ["govml"]
        assert patch["query"]["force"][0].lower() == "true"
        assert patch["auth"] == "Bearer t0ken"
    assert first["body"]["spec"]["predictor"]["canaryTrafficPercent"] == 10
    assert "canaryTrafficPercent" not in second["body"]["spec"]["predictor"]


def test_the_servers_governance_options_are_mounted_and_accepted_by_the_crd(
    crd_path: Path,
) -> None:
    manifest = render(
        runtime="custom",
        spec_file="specs/fraud.yaml",
        tokens_secret="fraud-endpoint-tokens",
        prediction_log_claim="fraud-predictions",
    )
    assert validate_manifest(manifest, crd_path) == []
    predictor = manifest["spec"]["predictor"]
    container = predictor["containers"][0]
    assert {
        "--model_version=7",
        "--spec=specs/fraud.yaml",
        "--tokens=/etc/govml/tokens/tokens.json",
        "--prediction_log=/var/log/govml/$(POD_NAME)",
    } <= set(container["args"])
    volumes = {v["name"]: v for v in predictor["volumes"]}
    assert volumes["govml-tokens"]["secret"]["secretName"] == "fraud-endpoint-tokens"
    assert volumes["govml-prediction-log"]["persistentVolumeClaim"]["claimName"] == (
        "fraud-predictions"
    )
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    assert mounts["govml-tokens"]["readOnly"] is True
    env = {e["name"]: e for e in container["env"]}
    assert env["GOVML_PREDICTION_LOG_KEY"]["valueFrom"]["secretKeyRef"]["optional"] is True
    assert env["POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"


@pytest.mark.parametrize(
    ("overrides", "needle"),
    [
        ({"runtime": "lightgbm", "spec_file": "specs/fraud.yaml"}, "runtime"),
        ({"runtime": "custom", "spec_file": "specs/fraud.json"}, "spec_file"),
        ({"runtime": "custom", "tokens_secret": "Bad_Name"}, "tokens_secret"),
        ({"runtime": "custom", "prediction_log_claim": "x" * 300}, "prediction_log_claim"),
    ],
)
def test_bad_governance_options_are_named(overrides: dict[str, Any], needle: str) -> None:
    with pytest.raises(Exception, match=needle):
        render(**overrides)


# --------------------------------------------------------------------------- token Secret
def test_a_deployments_token_secret_holds_its_files_base64_encoded() -> None:
    secret = kube_secret.render_tokens_secret(
        kube_secret.tokens_secret_name("fraud-v7"),
        "models",
        tokens_json='[{"name": "govml", "scopes": ["predict"], "sha256": "ab"}]',
        predictor_token="gml_service",
        labels={"govml/deployment": "fraud-v7"},
    )
    assert (secret["apiVersion"], secret["kind"], secret["type"]) == ("v1", "Secret", "Opaque")
    assert secret["metadata"] == {
        "name": "fraud-v7-tokens",
        "namespace": "models",
        "labels": {"govml/deployment": "fraud-v7"},
    }
    decoded = {k: base64.b64decode(v).decode() for k, v in secret["data"].items()}
    assert decoded == {
        "tokens.json": '[{"name": "govml", "scopes": ["predict"], "sha256": "ab"}]',
        "predictor-token": "gml_service",
    }
    with_key = kube_secret.render_tokens_secret(
        "fraud-v7-tokens", "models", tokens_json="[]", predictor_token="t", prediction_log_key="k"
    )
    assert base64.b64decode(with_key["data"]["prediction-log-key"]) == b"k"
    with pytest.raises(DeploymentError) as info:
        kube_secret.render_tokens_secret("Bad_Name", "models", tokens_json="", predictor_token="")
    for field in ("name:", "tokens_json: must be a non-empty string", "predictor_token:"):
        assert field in str(info.value)


class FakeCoreApi:
    """Stands in for kubernetes.client.CoreV1Api: Secrets by name."""

    def __init__(self) -> None:
        self.objects: dict[tuple[str, str], dict[str, Any]] = {}
        self.calls: list[tuple[str, dict[str, Any]]] = []

    def read_namespaced_secret(self, name: str, namespace: str) -> dict[str, Any]:
        if (namespace, name) not in self.objects:
            raise FakeApiException(404, "Not Found")
        return self.objects[(namespace, name)]

    def patch_namespaced_secret(
        self, name: str, namespace: str, body: dict[str, Any], **kwargs: Any
    ) -> dict[str, Any]:
        assert kwargs["_content_type"] == "application/apply-patch+yaml"
        self.calls.append(("patch", {"body": copy.deepcopy(body), **kwargs}))
        self.objects[(namespace, name)] = copy.deepcopy(body)
        return body

    def delete_namespaced_secret(self, name: str, namespace: str) -> None:
        self.calls.append(("delete", {"name": name}))
        if self.objects.pop((namespace, name), None) is None:
            raise FakeApiException(404, "Not Found")


def test_a_token_secret_is_applied_server_side_and_deleted() -> None:
    api = FakeCoreApi()
    secret = kube_secret.render_tokens_secret(
        "fraud-v7-tokens", "models", tokens_json="[]", predictor_token="gml_x"
    )
    assert kube_apply.apply_secret(secret, api).action == "created"
    assert kube_apply.apply_secret(secret, api).action == "configured"
    assert api.calls[0][1]["field_manager"] == "govml" and api.calls[0][1]["force"] is True
    assert kube_apply.delete_secret("fraud-v7-tokens", "models", api) is True
    assert kube_apply.delete_secret("fraud-v7-tokens", "models", api) is False
