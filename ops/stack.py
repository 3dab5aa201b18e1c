"""The embedded stack: Airflow and MLflow as supervised local processes.

``up`` prepares the stores (creating PostgreSQL databases if missing), migrates
Airflow's metadata database and starts each service in its own process group with
a pid file and a log in the run folder (``GOVML_RUN_DIR``). Every process carries a
``GOVML_STACK_ID`` marker in its environment, so ``down`` finds and stops all of
them, including children that left their parent's process group.

Once Airflow and MLflow are healthy, ``up`` starts the model server of each model's
approved champion (or, without a champion, its most recently deployed approved
version) with the configured deployer (:mod:`ops.endpoints`); ``status`` lists the
running model servers with their URLs and ``down`` stops them first.

MLflow runs locked (docs/security.md): with its basic-auth app and a permission store
of its own (``GOVML_MLFLOW_AUTH_DB_URL``); ``up`` writes its config and, once it
answers, provisions the ``govml`` service account and the people's read-only logins.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import psutil

from ops.stack_processes import (
    Service,
    base_env,
    http_ok,
    log_file,
    log_tail,
    marked_processes,
    pid_alive,
    pid_file,
    read_pid,
    start_service,
    wait_healthy,
)
from pipelines.config import Settings
from pipelines.errors import StackError
from registry.databases import ensure_database, normalise_url

log = logging.getLogger(__name__)

# Airflow's simple auth manager with the `approver` role (docs/approvals.md)
AUTH_MANAGER = "dags.govml_airflow.auth.GovmlAuthManager"
# the LocalExecutor, its task processes forked with the lifecycle's libraries imported
LOCAL_EXECUTOR = "dags.govml_airflow.executor.PreloadingLocalExecutor"
# Airflow's Celery configuration, its workers preloading the same libraries
CELERY_CONFIG = "dags.govml_airflow.celery_config.CELERY_CONFIG"


@dataclass(frozen=True)
class ServiceStatus:
    name: str
    pid: int | None
    running: bool
    healthy: bool | None
    url: str | None
    detail: str = ""


def _bin(name: str) -> str:
    """An executable of the running environment (``.venv/bin/airflow``...)."""
    candidate = Path(sys.executable).parent / name
    return str(candidate) if candidate.exists() else name


def _airflow_secrets(settings: Settings) -> dict[str, str]:
    """JWT and API secrets shared by every Airflow component, made once, kept 0600."""
    path = settings.airflow_home / "govml-secrets.json"
    if path.exists():
        return json.loads(path.read_text())
    path.parent.mkdir(parents=True, exist_ok=True)
    values = {"jwt_secret": secrets.token_urlsafe(32), "api_secret": secrets.token_urlsafe(32)}
    _write_private(path, json.dumps(values))
    return values


def _write_private(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)


def passwords_file(settings: Settings) -> Path:
    """The Airflow users' password file (0600, readable by the host account only)."""
    return settings.airflow_home / "passwords.json"


def airflow_passwords(settings: Settings) -> dict[str, str]:
    """Passwords of the local Airflow users, generated on first use and kept 0600."""
    path = passwords_file(settings)
    current: dict[str, str] = json.loads(path.read_text()) if path.exists() else {}
    changed = False
    for user, _role in settings.airflow_users:
        if user not in current:
            current[user] = secrets.token_urlsafe(12)
            changed = True
    if changed or not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        _write_private(path, json.dumps(current, indent=2, sort_keys=True))
    return current


def openlineage_file(settings: Settings) -> Path:
    """Where the OpenLineage provider's file transport appends its events (JSON lines)."""
    return settings.var_dir / "openlineage" / "events.jsonl"


def _celery_env(settings: Settings, db_url: str) -> dict[str, str]:
    """The CeleryExecutor's settings (it needs a PostgreSQL metadata database)."""
    if not db_url.startswith("postgresql"):
        raise StackError(
            "GOVML_AIRFLOW_EXECUTOR=CeleryExecutor needs a PostgreSQL metadata database: "
            "set GOVML_AIRFLOW_DB_URL=postgresql+psycopg://... (SQLite cannot be shared "
            "by separate workers)"
        )
    extra: dict[str, str] = {}
    extra["AIRFLOW__CELERY__BROKER_URL"] = settings.celery_broker_url
    extra["AIRFLOW__CELERY__WORKER_CONCURRENCY"] = str(settings.celery_concurrency)
    extra["AIRFLOW__CELERY__CELERY_CONFIG_OPTIONS"] = CELERY_CONFIG
    if settings.celery_result_backend:
        extra["AIRFLOW__CELERY__RESULT_BACKEND"] = settings.celery_result_backend
    # (without one, Airflow uses the metadata database: db+postgresql...)
    return extra


def airflow_env(settings: Settings) -> dict[str, str]:
    """Environment variables that configure every Airflow component and CLI call."""
    sec = _airflow_secrets(settings)
    extra: dict[str, str] = {}
    db_url = normalise_url(settings.airflow_db_url)
    if db_url.startswith("postgresql+psycopg://"):
        # Airflow's API server also needs an async driver: psycopg 3 is both.
        extra["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN_ASYNC"] = db_url.replace(
            "postgresql+psycopg://", "postgresql+psycopg_async://", 1
        )
    if settings.airflow_executor == "CeleryExecutor":
        extra |= _celery_env(settings, db_url)
    users = ",".join(f"{u}:{r}" for u, r in settings.airflow_users)
    return {
        "AIRFLOW_HOME": str(settings.airflow_home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(settings.home / "dags"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__EXECUTOR": (
            LOCAL_EXECUTOR if settings.airflow_executor == "LocalExecutor" else "CeleryExecutor"
        ),
        "AIRFLOW__CORE__HOSTNAME_CALLABLE": "ops.workers.hostname",
        "AIRFLOW__CORE__PARALLELISM": "4",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": db_url,
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{settings.airflow_url}/execution/",
        "AIRFLOW__API__HOST": settings.airflow_host,
        "AIRFLOW__API__PORT": str(settings.airflow_port),
        "AIRFLOW__API__BASE_URL": settings.airflow_url,
        "AIRFLOW__API__WORKERS": "1",
        "AIRFLOW__API__SECRET_KEY": sec["api_secret"],
        "AIRFLOW__API_AUTH__JWT_SECRET": sec["jwt_secret"],
        # the simple auth manager's users plus the least-privilege `approver` role
        "AIRFLOW__CORE__AUTH_MANAGER": AUTH_MANAGER,
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "False",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": users,
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(passwords_file(settings)),
        "AIRFLOW__LOGGING__BASE_LOG_FOLDER": str(settings.airflow_home / "logs"),
        "AIRFLOW__SCHEDULER__ENABLE_HEALTH_CHECK": "False",
        "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
        "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "30",
        "AIRFLOW__OPENLINEAGE__NAMESPACE": "govml",
        # emit from a bounded thread, not a fork per event: forking a task process that
        # holds a large frame costs time, and a forked emitter could outlive its parent
        "AIRFLOW__OPENLINEAGE__EXECUTE_IN_THREAD": "True",
        "AIRFLOW__OPENLINEAGE__TRANSPORT": json.dumps(
            {"type": "file", "log_file_path": str(openlineage_file(settings)), "append": True}
        ),
        "MLFLOW_TRACKING_URI": settings.mlflow_tracking_uri,
        "GOVML_HOME": str(settings.home),
        "GOVML_VAR_DIR": str(settings.var_dir),
        "GOVML_GOVERNANCE_URL": settings.governance_url,
    } | extra


def services(settings: Settings) -> list[Service]:
    """The stack's processes, in start order."""
    airflow = _bin("airflow")
    af_env = airflow_env(settings)
    return [
        mlflow_service(settings),
        Service(
            "airflow-api-server",
            [
                airflow,
                "api-server",
                "--host",
                settings.airflow_host,
                "--port",
                str(settings.airflow_port),
            ],
            url=settings.airflow_url,
            health_url=f"{settings.airflow_url}/api/v2/monitor/health",
            port=settings.airflow_port,
            env=af_env,
        ),
        Service("airflow-scheduler", [airflow, "scheduler"], env=af_env),
        Service("airflow-dag-processor", [airflow, "dag-processor"], env=af_env),
        Service("airflow-triggerer", [airflow, "triggerer"], env=af_env),
        *celery_workers(settings, airflow, af_env),
    ]


# --------------------------------------------------------------------------- MLflow (locked)
def mlflow_service(settings: Settings) -> Service:
    """The tracking server with MLflow's basic-auth app: no anonymous access (docs/security.md).

    Its permission store is ``GOVML_MLFLOW_AUTH_DB_URL``; :func:`prepare_mlflow_auth`
    writes its config before it starts, :func:`provision_mlflow` sets up the accounts
    once it answers.
    """
    from registry.mlflow_auth import server_env

    argv = [
        _bin("mlflow"),
        "server",
        "--app-name",
        "basic-auth",
        "--backend-store-uri",
        normalise_url(settings.mlflow_backend_url),
        "--artifacts-destination",
        str(settings.mlflow_artifacts),
        "--host",
        settings.mlflow_host,
        "--port",
        str(settings.mlflow_port),
        "--workers",
        "1",
    ]
    env = {
        "MLFLOW_TRACKING_URI": settings.mlflow_tracking_uri,
        # MLflow's job runner (a supervisor and seven Huey consumers, each importing
        # MLflow: about 28 s of CPU at every start) runs GenAI jobs (scorers, prompt
        # optimisation) that nothing here uses: off, as in docker/compose.yaml
        "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
    } | server_env(settings.var_dir)
    return Service(
        "mlflow",
        argv,
        url=settings.mlflow_url,
        health_url=f"{settings.mlflow_url}/health",
        port=settings.mlflow_port,
        env=env,
    )


def prepare_mlflow_auth(settings: Settings) -> None:
    """Create the permission store's database and write the auth app's config (0600)."""
    from registry.mlflow_auth import write_server_config

    ensure_database(settings.mlflow_auth_db_url)
    write_server_config(settings.var_dir, normalise_url(settings.mlflow_auth_db_url))


def provision_mlflow(settings: Settings) -> None:
    """The service account (writes) and the people (the Airflow users: read), idempotent."""
    from registry.mlflow_auth import provision

    report = provision(settings.mlflow_url, settings.var_dir, airflow_passwords(settings))
    for name in report.created_users:
        log.info("MLflow: created user %s", name)


def celery_workers(settings: Settings, airflow: str, af_env: dict[str, str]) -> list[Service]:
    """With the CeleryExecutor, ``celery_workers`` workers, each with its own name."""
    if settings.airflow_executor != "CeleryExecutor":
        return []
    workers = []
    for i in range(1, settings.celery_workers + 1):
        name = f"worker{i}"
        argv = [airflow, "celery", "worker", "--celery-hostname", f"{name}@%h"]
        env = af_env | {"GOVML_WORKER_NAME": name}
        workers.append(Service(f"airflow-celery-{name}", argv, env=env))
    return workers


def bootstrap_governance(settings: Settings) -> None:
    """Migrate the governance store; grant the configured approver roles (audited)."""
    from registry.approvals import grant_role
    from registry.store import engine_for

    engine_for(settings.governance_url)
    for user, role in settings.approver_roles:
        if grant_role(settings.governance_url, user, role, granted_by="stack-bootstrap"):
            log.info("granted approver role %s to %s", role, user)


def prepare_stores(settings: Settings) -> None:
    """Create folders and PostgreSQL databases, then migrate Airflow's database."""
    for path in (
        settings.run_dir,
        settings.airflow_home,
        settings.mlflow_artifacts,
        settings.data_dir,
        settings.runs_dir,
        openlineage_file(settings).parent,
    ):
        path.mkdir(parents=True, exist_ok=True)
    for url in settings.database_urls.values():
        ensure_database(url)
    bootstrap_governance(settings)
    airflow_passwords(settings)
    env = base_env(settings) | airflow_env(settings)
    migrate_log = log_file(settings, "airflow-db-migrate")
    with migrate_log.open("w") as out:
        result = subprocess.run(
            [_bin("airflow"), "db", "migrate"],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            timeout=900,
            check=False,
        )
    if result.returncode != 0:
        raise StackError(
            f"airflow db migrate failed (exit {result.returncode}); see {migrate_log}:\n"
            + log_tail(migrate_log)
        )


def up(
    settings: Settings,
    only: list[str] | None = None,
    report: Callable[[str], None] | None = None,
) -> list[ServiceStatus]:
    """Start the stack (or the named services) and wait until each is healthy.

    The whole stack (``only`` None) then serves the approved champions; ``report``
    gets one line per model (default: the log).
    """
    settings.run_dir.mkdir(parents=True, exist_ok=True)
    mlflow = only is None or "mlflow" in only
    if mlflow:
        prepare_mlflow_auth(settings)
    chosen = [s for s in services(settings) if only is None or s.name in only]
    if any(s.name.startswith("airflow") for s in chosen):
        prepare_stores(settings)
    else:
        settings.mlflow_artifacts.mkdir(parents=True, exist_ok=True)
        ensure_database(settings.mlflow_backend_url)
    try:
        for svc in chosen:
            start_service(settings, svc)
        for svc in chosen:
            wait_healthy(settings, svc)
        if mlflow:
            provision_mlflow(settings)
        # the non-HTTP components: give them a moment to fail on bad config
        time.sleep(2.0)
        for svc in chosen:
            wait_healthy(settings, svc, timeout=0)
    except BaseException:
        down(settings)
        raise
    if only is None:
        from ops.endpoints import serve_models

        for served in serve_models(settings):
            (report or log.info)(served.note)
            for line in served.details:
                (report or log.info)(f"  {line}")
    return status(settings)


def down(settings: Settings, grace: float = 10.0) -> int:
    """Stop every process of the stack, model servers first; return how many were stopped."""
    from ops.endpoints import stop_models

    try:
        models = len(stop_models(settings))
    except Exception as exc:  # noqa: BLE001 (the services must still be stopped)
        log.warning("could not stop the model servers: %s", exc)
        models = 0
    victims: dict[int, psutil.Process] = {}
    groups: set[int] = set()
    for svc in services(settings):
        pid = read_pid(settings, svc.name)
        if pid_alive(pid):
            assert pid is not None
            with contextlib.suppress(psutil.Error):
                proc = psutil.Process(pid)
                victims[pid] = proc
                for child in proc.children(recursive=True):
                    victims[child.pid] = child
            with contextlib.suppress(OSError):
                groups.add(os.getpgid(pid))
    for proc in marked_processes(settings):
        victims.setdefault(proc.pid, proc)
    for pgid in groups:
        with contextlib.suppress(OSError):
            os.killpg(pgid, signal.SIGTERM)
    for proc in victims.values():
        with contextlib.suppress(psutil.Error):
            proc.terminate()
    _, alive = psutil.wait_procs(list(victims.values()), timeout=grace)
    for pgid in groups:
        with contextlib.suppress(OSError):
            os.killpg(pgid, signal.SIGKILL)
    for proc in alive:
        with contextlib.suppress(psutil.Error):
            proc.kill()
    psutil.wait_procs(alive, timeout=5)
    # a child forked while we were stopping its parent
    for proc in marked_processes(settings):
        with contextlib.suppress(psutil.Error):
            proc.kill()
    for svc in services(settings):
        pid_file(settings, svc.name).unlink(missing_ok=True)
    return len(victims) + models


def status(settings: Settings) -> list[ServiceStatus]:
    """Each service: pid, whether it runs, whether it answers, and its URL."""
    result = []
    airflow_health: dict[str, dict[str, str]] = {}
    api_pid = read_pid(settings, "airflow-api-server")
    if pid_alive(api_pid):
        ok, body = http_ok(f"{settings.airflow_url}/api/v2/monitor/health")
        if ok:
            with contextlib.suppress(ValueError):
                airflow_health = json.loads(body)
    component = {
        "airflow-scheduler": "scheduler",
        "airflow-dag-processor": "dag_processor",
        "airflow-triggerer": "triggerer",
        "airflow-api-server": "metadatabase",
    }
    for svc in services(settings):
        pid = read_pid(settings, svc.name)
        running = pid_alive(pid)
        healthy: bool | None = None
        detail = ""
        if running and svc.health_url:
            healthy, body = http_ok(svc.health_url)
            detail = "" if healthy else body[:120]
        if running and svc.name in component and airflow_health:
            state = airflow_health.get(component[svc.name], {}).get("status")
            if state:
                detail = f"{component[svc.name]}: {state}"
                if svc.health_url is None:
                    healthy = state == "healthy"
        result.append(
            ServiceStatus(svc.name, pid if running else None, running, healthy, svc.url, detail)
        )
    return result + model_status(settings)


MODEL_PREFIX = "model "


def model_status(settings: Settings) -> list[ServiceStatus]:
    """The running model servers (``model <name>-v<version>``), ready or not, with URLs."""
    from ops.endpoints import running

    rows = []
    try:
        servers = running(settings)
    except Exception as exc:  # noqa: BLE001 (status must always answer)
        log.warning("cannot read the model servers' state: %s", exc)
        return []
    for server in servers:
        url = str(server["url"])
        ready, _ = http_ok(f"{url}/v2/health/ready")
        detail = (
            f"POST /v1/models/{server.get('model_name')}:predict, "
            f"sha256 {str(server.get('artifact_sha256', ''))[:12]}"
        )
        if server.get("restarts"):
            detail += f", {server['restarts']} restart(s)"
        detail += (  # closed by default: a client needs a token of this deployment
            f", token: govml serving token new {server.get('model_name')} "
            f"{server.get('version')} NAME --scope predict"
        )
        transformer = server.get("transformer") or {}
        if transformer.get("url"):
            state = "" if transformer.get("running") else " (NOT running)"
            detail += f"; raw transactions via the feature transformer {transformer['url']}{state}"
        rows.append(
            ServiceStatus(
                MODEL_PREFIX + server["name"],
                server.get("supervisor_pid"),
                True,
                ready,
                url,
                detail,
            )
        )
    return rows
