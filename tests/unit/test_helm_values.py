"""The official Airflow chart's values for the KubernetesExecutor (docker/helm/)."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
VALUES = ROOT / "docker" / "helm" / "airflow-values.yaml"


def _dockerfile_env() -> dict[str, str]:
    text = (ROOT / "docker" / "orchestration.Dockerfile").read_text()
    return dict(re.findall(r"(\w+)=(\S+?)(?:\s*\\)?$", text, flags=re.M))


def test_values_run_the_project_image_on_the_kubernetes_executor() -> None:
    values = yaml.safe_load(VALUES.read_text())
    assert values["executor"] == "KubernetesExecutor"
    assert values["airflowVersion"].startswith("3.3")
    lock = (ROOT / "requirements" / "orchestration.lock").read_text()
    assert f"apache-airflow=={values['airflowVersion']}" in lock  # the image's Airflow
    env = _dockerfile_env()
    assert values["config"]["core"]["dags_folder"] == env["AIRFLOW__CORE__DAGS_FOLDER"]
    assert values["uid"] == 10001  # the Dockerfile's user
    assert not values["dags"]["gitSync"]["enabled"] and not values["postgresql"]["enabled"]
    settings = {e["name"]: e["value"] for e in values["env"]}
    assert (
        settings["GOVML_DEPLOYER"] == "kubernetes" and int(settings["GOVML_KUBE_MIN_REPLICAS"]) >= 2
    )
    for section in ("workers", "scheduler", "dagProcessor", "triggerer", "apiServer"):
        resources = values[section]["resources"]
        assert resources["requests"] and resources["limits"], section


def test_no_secret_is_inline() -> None:
    values = yaml.safe_load(VALUES.read_text())
    assert values["data"]["metadataSecretName"] and "metadataConnection" not in values["data"]
    for key in ("fernetKey", "webserverSecretKey", "apiSecretKey", "jwtSecret"):
        assert key not in values, key
    inline = {e["name"] for e in values["env"]}
    assert not inline & {"GOVML_GOVERNANCE_URL", "MLFLOW_TRACKING_URI"}  # from a Secret
    assert {s["envName"] for s in values["secret"]} == {
        "GOVML_GOVERNANCE_URL",
        "MLFLOW_TRACKING_URI",
        "MLFLOW_TRACKING_USERNAME",
        "MLFLOW_TRACKING_PASSWORD",
    }
    assert not re.search(r"postgresql\+\w+://\w+:[^.@]+@", VALUES.read_text().replace("...", ""))


def test_every_pod_reads_the_audit_key_from_a_secret_mount() -> None:
    values = yaml.safe_load(VALUES.read_text())
    settings = {e["name"]: e["value"] for e in values["env"]}
    key_file = Path(settings["GOVML_AUDIT_KEY_FILE"])
    mounts = {m["name"]: m for m in values["volumeMounts"]}
    volumes = {v["name"]: v for v in values["volumes"]}
    mount = next(m for m in mounts.values() if key_file.parent == Path(m["mountPath"]))
    assert mount["readOnly"] is True
    assert volumes[mount["name"]]["secret"]["secretName"] == "govml-audit-key"
    assert settings["GOVML_AUDIT_CHECKPOINTS"].startswith("s3://")
