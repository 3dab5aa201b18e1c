"""`make up` / `make status` / `make down` start real Airflow and MLflow servers on
loopback, and leave no process behind; the PostgreSQL variant runs all three stores
on the server at 127.0.0.1:5432 (databases created on the fly)."""

from __future__ import annotations

import base64
import json
import os
import socket
import subprocess
import urllib.request
from pathlib import Path

import psutil
import pytest

from ops.stack_processes import MARKER, stack_id
from pipelines.config import load_settings
from tests.airflow_api import AirflowAPI
from tests.support import german_credit_stack_env, stack_env

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    return stack_env(tmp_path / "var", **extra)


def _stack_processes(env: dict[str, str]) -> list[psutil.Process]:
    marker = stack_id(load_settings(env))
    found = []
    for proc in psutil.process_iter():
        try:
            if proc.environ().get(MARKER) == marker:
                found.append(proc)
        except psutil.Error:
            continue
    return found


def _request(
    url: str,
    data: dict | None = None,
    token: str | None = None,
    login: tuple[str, str] | None = None,
) -> tuple[int, dict]:
    body = json.dumps(data).encode() if data is not None else None
    req = urllib.request.Request(url, data=body, method="POST" if body else "GET")
    req.add_header("Content-Type", "application/json")
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    if login:
        basic = base64.b64encode(f"{login[0]}:{login[1]}".encode()).decode()
        req.add_header("Authorization", f"Basic {basic}")
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, json.loads(resp.read() or b"{}")
    except urllib.error.HTTPError as err:
        return err.code, {}


def _check_services(env: dict[str, str]) -> None:
    settings = load_settings(env)
    # Airflow: log in with the generated password, then use the REST API.
    passwords = json.loads((settings.airflow_home / "passwords.json").read_text())
    code, _ = _request(f"{settings.airflow_url}/api/v2/dags")
    assert code == 401, "the API must refuse anonymous calls"
    code, body = _request(
        f"{settings.airflow_url}/auth/token",
        {"username": "admin", "password": passwords["admin"]},
    )
    assert code in (200, 201), code
    code, dags = _request(f"{settings.airflow_url}/api/v2/dags", token=body["access_token"])
    assert code == 200 and "dags" in dags
    code, health = _request(f"{settings.airflow_url}/api/v2/monitor/health")
    assert health["scheduler"]["status"] == "healthy"
    assert health["triggerer"]["status"] == "healthy"
    assert health["dag_processor"]["status"] == "healthy"
    # MLflow: locked (basic-auth app); the service account stores an experiment in the
    # backend store, a reviewer reads it, nobody anonymous does either
    create = f"{settings.mlflow_url}/api/2.0/mlflow/experiments/create"
    assert _request(create, {"name": "stack-smoke"})[0] == 401
    code, exp = _request(create, {"name": "stack-smoke"}, login=_service_login(settings))
    assert code == 200 and exp["experiment_id"]
    read = f"{settings.mlflow_url}/api/2.0/mlflow/experiments/get-by-name"
    read += "?experiment_name=stack-smoke"
    assert _request(read)[0] == 401
    code, got = _request(read, login=("reviewer", passwords["reviewer"]))
    assert code == 200 and got["experiment"]["name"] == "stack-smoke"
    with urllib.request.urlopen(f"{settings.mlflow_url}/health", timeout=30) as resp:
        assert resp.status == 200  # open: the stack's health check


def _service_login(settings) -> tuple[str, str]:  # noqa: ANN001
    from registry.mlflow_auth import read_service_account

    account = read_service_account(settings.var_dir)
    assert account is not None
    return account.username, account.password


def _trigger_lifecycle_over_rest(env: dict[str, str]) -> None:
    """The scheduler and LocalExecutor run the German Credit lifecycle, triggered via REST,
    through registration up to the human approval gate (answered in tests/e2e)."""
    settings = load_settings(env)
    api = AirflowAPI(settings)
    dag = "german_credit_lifecycle"
    run_id = api.trigger(dag, {"tuning_trials": 0}, user="operator")
    try:
        api.wait_awaiting_input(dag, run_id, "approval", timeout=600)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{_tail_logs(settings)}") from None
    for task in ("ingest", "validate_data", "train", "gates", "register", "request_approval"):
        assert api.task_state(dag, run_id, task) == "success", task
    # the task processes were forked with the lifecycle's libraries imported
    from dags.govml_airflow.executor import PRELOADED_MODULES

    scheduler_log = (settings.run_dir / "airflow-scheduler.log").read_text(errors="replace")
    assert f"preloaded {len(PRELOADED_MODULES)} module(s) for the task processes" in scheduler_log
    assert "not preloaded" not in scheduler_log
    # registered through the locked MLflow tracking server of the stack by the Airflow
    # tasks, as the service account (from its 0600 file); a reviewer reads it
    passwords = json.loads((settings.airflow_home / "passwords.json").read_text())
    code, found = _request(
        f"{settings.mlflow_url}/api/2.0/mlflow/model-versions/search"
        f"?filter=name%3D%27german_credit%27",
        login=("reviewer", passwords["reviewer"]),
    )
    assert code == 200
    ours = [
        v
        for v in found["model_versions"]
        if {"key": "govml.lifecycle_run_id", "value": run_id} in v.get("tags", [])
    ]
    assert len(ours) == 1, found
    tags = {t["key"]: t["value"] for t in ours[0]["tags"]}
    assert tags["govml.approval.status"] == "pending"
    from registry.audit import events

    (moved,) = events(settings.governance_url, model_name="german_credit", kinds=["alias_moved"])
    assert moved.payload["alias"] == "candidate" and moved.payload["account"] == "govml"
    assert moved.payload["to_version"] == ours[0]["version"]


def _tail_logs(settings) -> str:  # noqa: ANN001
    logs = sorted((settings.airflow_home / "logs").rglob("*.log"))
    return "\n".join(p.read_text(errors="replace")[-1500:] for p in logs[-3:])


def test_make_up_status_down_leaves_nothing(tmp_path: Path) -> None:
    env = german_credit_stack_env(tmp_path)
    try:
        up = subprocess.run(
            ["make", "-s", "up"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600
        )
        assert up.returncode == 0, up.stdout + up.stderr
        settings = load_settings(env)
        assert settings.airflow_url in up.stdout and settings.mlflow_url in up.stdout
        passwords = json.loads((settings.airflow_home / "passwords.json").read_text())
        service = _service_login(settings)[1]
        assert not [p for p in [*passwords.values(), service] if p in up.stdout + up.stderr]
        # a fresh stack has no approved version to serve: one note, and `up` succeeds
        assert "model: no approved, deployed model version to serve" in up.stdout
        status = subprocess.run(
            ["make", "-s", "status"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
        )
        assert status.returncode == 0, status.stdout + status.stderr
        for name in (
            "mlflow",
            "airflow-api-server",
            "airflow-scheduler",
            "airflow-dag-processor",
            "airflow-triggerer",
        ):
            line = next(ln for ln in status.stdout.splitlines() if ln.startswith(name))
            assert "running" in line and "healthy" in line and "NOT" not in line, line
        for log_name in ("mlflow.log", "airflow-scheduler.log", "airflow-api-server.pid"):
            assert (settings.run_dir / log_name).exists()
        _check_services(env)
        _trigger_lifecycle_over_rest(env)
        assert len(_stack_processes(env)) >= 5
    finally:
        down = subprocess.run(
            ["make", "-s", "down"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
        )
    assert down.returncode == 0, down.stdout + down.stderr
    assert _stack_processes(env) == []
    assert not list(load_settings(env).run_dir.glob("*.pid"))
    after = subprocess.run(
        ["make", "-s", "status"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    assert after.stdout.count("stopped") == 5


def test_port_in_use_is_a_clear_error(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        env = _env(tmp_path, GOVML_MLFLOW_PORT=str(port))
        result = subprocess.run(
            [str(ROOT / ".venv/bin/govml"), "stack", "up", "--only", "mlflow"],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert result.returncode != 0
    assert f"port {port} is already in use" in result.stderr
    assert "Traceback" not in result.stderr
    assert _stack_processes(env) == []


@pytest.mark.postgres
def test_stack_on_postgresql(tmp_path: Path, pg_admin_url: str) -> None:
    from sqlalchemy import create_engine, inspect, text
    from sqlalchemy.engine import make_url

    stores = ("airflow", "mlflow", "governance", "mlflow_auth")
    names = {k: f"govml_it_{k}_{os.getpid()}" for k in stores}
    base = make_url(pg_admin_url)
    urls = {k: base.set(database=v).render_as_string(hide_password=False) for k, v in names.items()}
    env = _env(
        tmp_path,
        GOVML_AIRFLOW_DB_URL=urls["airflow"],
        GOVML_MLFLOW_BACKEND_URL=urls["mlflow"],
        GOVML_GOVERNANCE_URL=urls["governance"],
        GOVML_MLFLOW_AUTH_DB_URL=urls["mlflow_auth"],
    )
    govml = str(ROOT / ".venv/bin/govml")
    try:
        up = subprocess.run(
            [govml, "stack", "up"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=900
        )
        assert up.returncode == 0, up.stdout + up.stderr
        _check_services(env)
        for key in ("airflow", "mlflow"):
            engine = create_engine(urls[key])
            tables = set(inspect(engine).get_table_names())
            engine.dispose()
            assert ("dag_run" in tables) if key == "airflow" else ("experiments" in tables)
        engine = create_engine(urls["mlflow_auth"])  # MLflow's users, roles and grants
        with engine.connect() as conn:
            users = {r[0] for r in conn.execute(text("SELECT username FROM users"))}
        engine.dispose()
        assert {"govml-admin", "govml", "reviewer", "validator"} <= users
        assert not (load_settings(env).var_dir / "mlflow" / "auth" / "basic_auth.db").exists()
        engine = create_engine(urls["governance"])
        with engine.connect() as conn:
            assert conn.execute(text("SELECT current_database()")).scalar() == names["governance"]
        engine.dispose()
    finally:
        subprocess.run(
            [govml, "stack", "down"], cwd=ROOT, env=env, capture_output=True, timeout=300
        )
        admin = create_engine(pg_admin_url, isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            for name in names.values():
                conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()
    assert _stack_processes(env) == []
