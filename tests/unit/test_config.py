"""Settings: embedded defaults, environment overrides, clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipelines.config import PROJECT_ROOT, load_settings
from pipelines.errors import ConfigError


def test_defaults_are_the_embedded_stack() -> None:
    s = load_settings({})
    assert s.feature_store == "memory" and s.kube_feature_store is None
    assert s.home == PROJECT_ROOT
    assert s.var_dir == PROJECT_ROOT / "var"
    assert s.airflow_home == PROJECT_ROOT / "var" / "airflow"
    assert s.airflow_db_url == f"sqlite:///{PROJECT_ROOT}/var/airflow/airflow.db"
    assert s.mlflow_backend_url.startswith("sqlite:///")
    assert s.governance_url == f"sqlite:///{PROJECT_ROOT}/var/governance.db"
    assert s.airflow_url == "http://127.0.0.1:8080"
    assert s.mlflow_tracking_uri == "http://127.0.0.1:5000"
    assert ("admin", "admin") in s.airflow_users


def test_environment_overrides(tmp_path: Path) -> None:
    env = {
        "GOVML_VAR_DIR": str(tmp_path),
        "GOVML_AIRFLOW_PORT": "18080",
        "GOVML_MLFLOW_PORT": "15000",
        "GOVML_GOVERNANCE_URL": "postgresql+psycopg://u@db:5432/governance",
        "GOVML_AIRFLOW_USERS": "alice:admin,bob:op",
    }
    s = load_settings(env)
    assert s.airflow_home == tmp_path / "airflow"
    assert s.run_dir == tmp_path / "run"
    assert s.airflow_url == "http://127.0.0.1:18080"
    assert s.mlflow_tracking_uri == "http://127.0.0.1:15000"
    assert s.governance_url.endswith("/governance")
    assert s.airflow_users == (("alice", "admin"), ("bob", "op"))
    assert s.database_urls["governance"] == env["GOVML_GOVERNANCE_URL"]


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"GOVML_AIRFLOW_PORT": "eighty"}, "GOVML_AIRFLOW_PORT='eighty': not a port number"),
        ({"GOVML_MLFLOW_PORT": "70000"}, "between 1 and 65535"),
        ({"GOVML_GOVERNANCE_URL": "mysql://x/y"}, "unsupported database URL scheme 'mysql'"),
        ({"GOVML_AIRFLOW_USERS": "alice"}, "must be USER:ROLE"),
        ({"GOVML_AIRFLOW_USERS": "alice:superuser"}, "must be USER:ROLE"),
        ({"GOVML_DEPLOYER": "docker"}, "GOVML_DEPLOYER='docker': must be one of local"),
        ({"GOVML_KUBE_MAX_REPLICAS": "0"}, "GOVML_KUBE_MAX_REPLICAS='0': must be at least 1"),
        ({"GOVML_KUBE_SCALE_TARGET": "ten"}, "GOVML_KUBE_SCALE_TARGET='ten': not a whole"),
        ({"GOVML_KSERVE_RUNTIME": "onnx"}, "GOVML_KSERVE_RUNTIME='onnx': must be one of"),
        ({"GOVML_FEATURE_STORE": "memcached://x"}, "GOVML_FEATURE_STORE='memcached://x': use"),
    ],
)
def test_bad_settings_name_the_variable(env: dict[str, str], expected: str) -> None:
    with pytest.raises(ConfigError, match=expected):
        load_settings(env)
