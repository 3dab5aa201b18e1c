"""`make up` / `make status` / `make down` start real Airflow and MLflow servers on
loopback, and leave no process behind; the PostgreSQL variant runs all three stores
on the server at 127.0.0.1:5432 (databases created on the fly)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import urllib.request
from pathlib import Path

import psutil
import pytest

from ops.stack import MARKER, stack_id
from pipelines.config import load_settings
from tests.support import AirflowAPI, single_spec_dir, stack_env

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


def _request(url: str, data: dict | None = None, token: str | None = None) -> tuple[int, dict]:
    body = json.dumps(data).encode() if data is not None else None
    req = urllib.request.Request(url, data=body, method="POST" if body else "GET")
    req.add_header("Content-Type", "application/json")
    if token:
        req.add_header("Authorization", f"Bearer {token}")
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
    # MLflow: the tracking server stores an experiment in its backend store.
    code, exp = _request(
        f"{settings.mlflow_url}/api/2.0/mlflow/experiments/create", {"name": "stack-smoke"}
    )
    assert code == 200 and exp["experiment_id"]
    code, got = _request(
        f"{settings.mlflow_url}/api/2.0/mlflow/experiments/get-by-name?experiment_name=stack-smoke"
    )
    assert code == 200 and got["experiment"]["name"] == "stack-smoke"


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
    # registered through the MLflow tracking server of the stack
    code, found = _request(
        f"{settings.mlflow_url}/api/2.0/mlflow/model-versions/search"
        f"?filter=name%3D%27german_credit%27"
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


def _tail_logs(settings) -> str:  # noqa: ANN001
    logs = sorted((settings.airflow_home / "logs").rglob("*.log"))
    return "\n".join(p.read_text(errors="replace")[-1500:] for p in logs[-3:])


def test_make_up_status_down_leaves_nothing(tmp_path: Path) -> None:
    specs = single_spec_dir(ROOT, tmp_path / "specs", "german_credit")
    env = _env(tmp_path, GOVML_SPECS_DIR=str(specs))
    try:
        up = subprocess.run(
            ["make", "-s", "up"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600
        )
        assert up.returncode == 0, up.stdout + up.stderr
        settings = load_settings(env)
        assert settings.airflow_url in up.stdout and settings.mlflow_url in up.stdout
        assert "user 'admin' (admin) password" in up.stdout
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

    names = {k: f"govml_it_{k}_{os.getpid()}" for k in ("airflow", "mlflow", "governance")}
    base = make_url(pg_admin_url)
    urls = {k: base.set(database=v).render_as_string(hide_password=False) for k, v in names.items()}
    env = _env(
        tmp_path,
        GOVML_AIRFLOW_DB_URL=urls["airflow"],
        GOVML_MLFLOW_BACKEND_URL=urls["mlflow"],
        GOVML_GOVERNANCE_URL=urls["governance"],
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
