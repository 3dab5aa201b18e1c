"""Airflow on the CeleryExecutor: `make up` with a PostgreSQL metadata database and a
Redis broker (both on 127.0.0.1, as in CI) starts two named Celery workers; the German
Credit lifecycle DAG, triggered over REST, runs on them up to its human approval gate,
its tasks spread over both workers."""

from __future__ import annotations

import os
import socket
import subprocess
import uuid
from pathlib import Path

import pytest

from pipelines.config import load_settings
from tests.airflow_api import AirflowAPI
from tests.support import german_credit_stack_env

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


def _redis_answers() -> bool:
    try:
        with socket.create_connection(("127.0.0.1", 6379), timeout=1) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


@pytest.fixture
def broker() -> str:
    if not _redis_answers():
        if os.environ.get("CI") == "true":
            pytest.fail("Redis must answer on 127.0.0.1:6379 in CI")
        pytest.skip("no Redis on 127.0.0.1:6379")
    return f"redis://127.0.0.1:6379/{uuid.uuid4().int % 14 + 2}"  # a db of its own


def _make(target: str, env: dict[str, str], timeout: int) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["make", "-s", target], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout
    )


def test_the_lifecycle_runs_on_two_celery_workers(
    tmp_path: Path, pg_database: str, broker: str
) -> None:
    env = german_credit_stack_env(
        tmp_path,
        GOVML_AIRFLOW_EXECUTOR="CeleryExecutor",
        GOVML_AIRFLOW_DB_URL=pg_database,
        GOVML_CELERY_BROKER_URL=broker,
        GOVML_CELERY_CONCURRENCY="1",  # one task at a time each: parallel tasks must spread
    )
    settings = load_settings(env)
    try:
        up = _make("up", env, 600)
        assert up.returncode == 0, up.stdout + up.stderr
        status = _make("status", env, 120)
        for worker in ("airflow-celery-worker1", "airflow-celery-worker2"):
            line = next(ln for ln in status.stdout.splitlines() if ln.startswith(worker))
            assert "running" in line, line
        api = AirflowAPI(settings)
        code, health = api.call("GET", "/api/v2/monitor/health", user="")
        assert health["metadatabase"]["status"] == "healthy"  # type: ignore[index]
        dag = "german_credit_lifecycle"
        run_id = api.trigger(dag, {"tuning_trials": 0}, user="operator")
        api.wait_awaiting_input(dag, run_id, "approval", timeout=600)
        code, body = api.call(
            "GET", f"{api._run_path(dag, run_id)}/taskInstances?limit=100", user="operator"
        )
        assert code == 200, body
        done = {t["task_id"]: t for t in body["task_instances"] if t["state"] == "success"}  # type: ignore[index]
        for task in ("trigger", "ingest", "validate_data", "train", "gates", "register"):
            assert task in done, sorted(done)
        hosts = {t["hostname"] for t in done.values()}
        assert hosts == {"worker1", "worker2"}, {k: t["hostname"] for k, t in done.items()}
        from dags.govml_airflow.executor import PRELOADED_MODULES

        for worker in ("airflow-celery-worker1", "airflow-celery-worker2"):
            log = (settings.run_dir / f"{worker}.log").read_text(errors="replace")
            assert f"preloaded {len(PRELOADED_MODULES)} module(s)" in log, log[-3000:]
    finally:
        down = _make("down", env, 300)
    assert down.returncode == 0, down.stdout + down.stderr
    after = _make("status", env, 120)
    workers = [ln for ln in after.stdout.splitlines() if ln.startswith("airflow-celery-worker")]
    assert len(workers) == 2 and all("stopped" in ln for ln in workers), after.stdout
