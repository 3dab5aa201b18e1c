"""The one place that reads settings: every URL, port and path of the stack.

Defaults give the embedded stack (SQLite files and local folders under ``var/``
in the project root, services on 127.0.0.1). Any value can be overridden by the
environment variable named beside it, for example
``GOVML_GOVERNANCE_URL=postgresql+psycopg://user@db/governance``.

| setting | variable | default |
| --- | --- | --- |
| project root | ``GOVML_HOME`` | the checkout this file lives in |
| state folder ($VAR) | ``GOVML_VAR_DIR`` | ``$GOVML_HOME/var`` |
| generated data | ``GOVML_DATA_DIR`` | ``$GOVML_VAR_DIR/data`` |
| lifecycle run folders | ``GOVML_RUNS_DIR`` | ``$GOVML_VAR_DIR/runs`` |
| pid files and service logs | ``GOVML_RUN_DIR`` | ``$GOVML_VAR_DIR/run`` |
| model specs | ``GOVML_SPECS_DIR`` | ``$GOVML_HOME/specs`` |
| Airflow home | ``AIRFLOW_HOME`` | ``$GOVML_VAR_DIR/airflow`` |
| Airflow metadata DB | ``GOVML_AIRFLOW_DB_URL`` | ``sqlite:///$AIRFLOW_HOME/airflow.db`` |
| Airflow API/UI | ``GOVML_AIRFLOW_HOST`` / ``GOVML_AIRFLOW_PORT`` | ``127.0.0.1`` / ``8080`` |
| Airflow users | ``GOVML_AIRFLOW_USERS`` | ``admin:admin,reviewer:approver,`` ... (1) |
| approver roles at stack start | ``GOVML_APPROVER_ROLES`` | ``reviewer:model_risk,...`` (2) |
| MLflow backend store | ``GOVML_MLFLOW_BACKEND_URL`` | ``sqlite:///$VAR/mlflow/mlflow.db`` |
| MLflow artifacts | ``GOVML_MLFLOW_ARTIFACTS`` | ``$GOVML_VAR_DIR/mlflow/artifacts`` |
| MLflow server | ``GOVML_MLFLOW_HOST`` / ``GOVML_MLFLOW_PORT`` | ``127.0.0.1`` / ``5000`` |
| MLflow tracking URI | ``MLFLOW_TRACKING_URI`` | ``http://$MLFLOW_HOST:$MLFLOW_PORT`` |
| MLflow permission store | ``GOVML_MLFLOW_AUTH_DB_URL`` | ``sqlite:///$VAR/mlflow/auth/...`` (9) |
| governance store | ``GOVML_GOVERNANCE_URL`` | ``sqlite:///$GOVML_VAR_DIR/governance.db`` |
| audit chain key (keyring, 0600) | ``GOVML_AUDIT_KEY_FILE`` | ``$VAR/keys/audit-keys.json`` (10) |
| audit checkpoints | ``GOVML_AUDIT_CHECKPOINTS`` | ``$VAR/audit/checkpoints-*.jsonl`` (10) |
| model server | ``GOVML_SERVING_HOST`` / ``GOVML_SERVING_PORT`` | ``127.0.0.1`` / ``8090`` |
| servers' listening address | ``GOVML_SERVING_BIND_HOST`` | ``127.0.0.1`` (8) |
| deployer, its state | ``GOVML_DEPLOYER`` / ``GOVML_SERVING_DIR`` | ``local`` / ``$VAR/serving`` |
| serving env's Python | ``GOVML_SERVING_PYTHON`` | ``.venv-serving/bin/python`` |
| Kubernetes cluster | ``GOVML_KUBECONFIG`` / ``GOVML_KUBE_CONTEXT`` | none (3) |
| Kubernetes namespace | ``GOVML_KUBE_NAMESPACE`` | ``govml`` |
| KServe runtime | ``GOVML_KSERVE_RUNTIME`` | ``custom`` (the project's image) |
| model-server image | ``GOVML_SERVING_IMAGE`` | ``govml-serving:latest`` |
| model location seen by the cluster | ``GOVML_KUBE_STORAGE_URI`` | the release's URI (4) |
| MLflow as the pods reach it | ``GOVML_KUBE_MLFLOW_TRACKING_URI`` | ``$MLFLOW_TRACKING_URI`` |
| replicas | ``GOVML_KUBE_MIN_REPLICAS`` / ``GOVML_KUBE_MAX_REPLICAS`` | 2 / 3 |
| autoscaling | ``GOVML_KUBE_SCALE_METRIC`` / ``GOVML_KUBE_SCALE_TARGET`` | concurrency / 8 |
| CPU | ``GOVML_KUBE_CPU_REQUEST`` / ``GOVML_KUBE_CPU_LIMIT`` | 1 / 1 |
| memory | ``GOVML_KUBE_MEMORY_REQUEST`` / ``GOVML_KUBE_MEMORY_LIMIT`` | 1Gi / 2Gi |
| InferenceService readiness wait | ``GOVML_KUBE_READY_TIMEOUT`` (seconds) | 600 |
| endpoint tokens | ``GOVML_KUBE_TOKENS_SECRET`` | not used: a Secret per deployment (8) |
| prediction log volume (PVC) | ``GOVML_KUBE_PREDICTION_LOG_CLAIM`` | none (no log) |
| Airflow executor | ``GOVML_AIRFLOW_EXECUTOR`` | ``LocalExecutor`` (or ``CeleryExecutor``) (6) |
| Celery broker | ``GOVML_CELERY_BROKER_URL`` | ``redis://127.0.0.1:6379/0`` |
| Celery result backend | ``GOVML_CELERY_RESULT_BACKEND`` | the metadata DB (6) |
| Celery workers (``make up``) | ``GOVML_CELERY_WORKERS`` | 2 |
| tasks at once per worker | ``GOVML_CELERY_CONCURRENCY`` | 2 |
| transformer's feature store | ``GOVML_FEATURE_STORE`` | ``memory`` (or ``redis://``) (7) |
| feature store as the pods reach it | ``GOVML_KUBE_FEATURE_STORE`` | ``$GOVML_FEATURE_STORE`` |
| Secret holding ``feature-key`` | ``GOVML_KUBE_FEATURE_KEY_SECRET`` | none (7) |
| compute backend of the heavy stages | ``GOVML_COMPUTE_BACKEND`` | the spec's ``compute.backend`` |
| Dask scheduler address | ``GOVML_DASK_SCHEDULER`` | the spec's ``compute.scheduler`` (5) |

(1) ``admin:admin,reviewer:approver,validator:approver,operator:op``: Airflow's roles
(``viewer``, ``user``, ``op``, ``admin``) plus ``approver``: read and answer Required
Actions, nothing else (``dags.govml_airflow.auth``; docs/approvals.md).
(2) ``reviewer:model_risk,validator:model_risk``: approver roles (``govml roles``)
granted in the governance store when the stack starts; each grant is audited.
(3) Without ``GOVML_KUBECONFIG``, ``$KUBECONFIG``, ``~/.kube/config`` or an in-cluster
service account, the ``kubernetes`` deployer writes the validated manifest and stops.
(4) A template such as ``s3://models/{model}/{version}`` (also ``{name}``): where the
cluster fetches a version the registry keeps in a local folder.
(5) ``tcp://host:8786``; setting it implies the ``dask`` backend. Without any address
the ``dask`` backend starts a ``LocalCluster``.
(6) The CeleryExecutor needs a PostgreSQL metadata DB (``GOVML_AIRFLOW_DB_URL``); the
result backend defaults to it (``db+postgresql://...``).
(7) Specs with windowed aggregates get a feature transformer in front of the model
server. ``memory``: each transformer keeps its own state, warmed up from the run's
ingested history while it starts; ``redis://``: the deploy step backfills the store
first (``GOVML_FEATURE_KEY`` required). Kubernetes needs Redis and the key's Secret.
(8) Servers are closed by default (docs/security.md): loopback unless
``GOVML_SERVING_BIND_HOST`` names another address (logged as a warning), and bearer
tokens always, made per deployment (``tokens.json`` in its folder; on Kubernetes the
Secret ``<model>-v<N>-tokens``); ``govml serving token`` adds and revokes clients.
(9) The MLflow server runs MLflow's basic-auth app (docs/security.md): users, roles and
grants live in this database (SQLite or PostgreSQL); the accounts' credentials in
``$VAR/mlflow/auth/`` (mode 0600). Clients log in with ``MLFLOW_TRACKING_USERNAME`` /
``MLFLOW_TRACKING_PASSWORD`` (default: the ``govml`` service account's file).
(10) The audit chain's HMAC key lives outside the database (docs/approvals.md): by default
beside a SQLite governance store (``<its folder>/keys/``), else in ``$VAR/keys/``; in
Kubernetes a mounted Secret. Checkpoints: comma-separated ``file:/PATH``,
``s3://BUCKET/PREFIX`` (Object Lock, COMPLIANCE mode) and ``mlflow[:URI]``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from pipelines.errors import ConfigError

PROJECT_ROOT = Path(__file__).resolve().parent.parent

_DB_SCHEMES = ("sqlite", "postgresql", "postgresql+psycopg", "postgresql+psycopg2")


@dataclass(frozen=True)
class Settings:
    """Resolved settings; build with :func:`load_settings`."""

    home: Path
    var_dir: Path
    data_dir: Path
    runs_dir: Path
    run_dir: Path
    specs_dir: Path
    airflow_home: Path
    airflow_db_url: str
    airflow_host: str
    airflow_port: int
    airflow_users: tuple[tuple[str, str], ...]
    approver_roles: tuple[tuple[str, str], ...]
    mlflow_backend_url: str
    mlflow_artifacts: Path
    mlflow_host: str
    mlflow_port: int
    mlflow_tracking_uri: str
    governance_url: str
    serving_host: str
    serving_port: int
    deployer: str
    serving_dir: Path
    serving_python: Path
    kubeconfig: Path | None = None
    kube_context: str | None = None
    kube_namespace: str = "govml"
    kserve_runtime: str = "custom"
    serving_image: str = "govml-serving:latest"
    serving_bind_host: str = "127.0.0.1"
    audit_key_file: Path | None = None  # None: beside the governance store (registry.audit_keys)
    audit_checkpoints: str = ""  # "": the default file sink (registry.checkpoints)
    mlflow_auth_db_url: str = ""  # load_settings: $VAR/mlflow/auth/basic_auth.db
    kube_storage_uri: str | None = None
    kube_tracking_uri: str | None = None
    kube_min_replicas: int = 2
    kube_max_replicas: int = 3
    kube_scale_metric: str = "concurrency"
    kube_scale_target: int = 8
    kube_cpu_request: str = "1"
    kube_cpu_limit: str = "1"
    kube_memory_request: str = "1Gi"
    kube_memory_limit: str = "2Gi"
    kube_ready_timeout: float = 600.0
    kube_tokens_secret: str | None = None
    kube_prediction_log_claim: str | None = None
    compute_backend: str | None = None
    dask_scheduler: str | None = None
    airflow_executor: str = "LocalExecutor"
    celery_broker_url: str = "redis://127.0.0.1:6379/0"
    celery_result_backend: str | None = None
    celery_workers: int = 2
    celery_concurrency: int = 2
    feature_store: str = "memory"
    kube_feature_store: str | None = None
    kube_feature_key_secret: str | None = None

    @property
    def airflow_url(self) -> str:
        return f"http://{self.airflow_host}:{self.airflow_port}"

    @property
    def mlflow_url(self) -> str:
        return f"http://{self.mlflow_host}:{self.mlflow_port}"

    @property
    def serving_url(self) -> str:
        return f"http://{self.serving_host}:{self.serving_port}"

    @property
    def database_urls(self) -> dict[str, str]:
        """The stores, by name (``mlflow_auth``: the MLflow server's permission store)."""
        return {
            "airflow": self.airflow_db_url,
            "mlflow": self.mlflow_backend_url,
            "governance": self.governance_url,
            "mlflow_auth": self.mlflow_auth_db_url,
        }


def _path(env: Mapping[str, str], name: str, default: Path) -> Path:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    return Path(raw).expanduser().resolve()


def _whole(env: Mapping[str, str], name: str, what: str) -> tuple[str, int] | None:
    """``(raw, value)`` of a whole-number variable; None when it is unset or empty."""
    raw = env.get(name)
    if raw is None or raw == "":
        return None
    try:
        return raw, int(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r}: not {what}") from None


def _port(env: Mapping[str, str], name: str, default: int) -> int:
    parsed = _whole(env, name, "a port number")
    if parsed is None:
        return default
    raw, port = parsed
    if not 1 <= port <= 65535:
        raise ConfigError(f"{name}={raw!r}: a port must be between 1 and 65535")
    return port


def _db_url(env: Mapping[str, str], name: str, default: str) -> str:
    raw = env.get(name) or default
    scheme = urlsplit(raw).scheme
    if scheme not in _DB_SCHEMES:
        raise ConfigError(
            f"{name}={raw!r}: unsupported database URL scheme {scheme!r} "
            f"(use one of {', '.join(_DB_SCHEMES)})"
        )
    return raw


# Airflow's simple auth manager roles, and govml's approver (dags.govml_airflow.auth)
AIRFLOW_ROLES = ("viewer", "approver", "user", "op", "admin")


def _users(env: Mapping[str, str], name: str, default: str) -> tuple[tuple[str, str], ...]:
    raw = env.get(name) or default
    users: list[tuple[str, str]] = []
    for item in raw.split(","):
        user, sep, role = item.strip().partition(":")
        if not sep or not user or role not in AIRFLOW_ROLES:
            raise ConfigError(
                f"{name}: {item.strip()!r} must be USER:ROLE with ROLE one of "
                + ", ".join(AIRFLOW_ROLES)
            )
        users.append((user, role))
    return tuple(users)


def _choice(env: Mapping[str, str], name: str, default: str, allowed: tuple[str, ...]) -> str:
    value = env.get(name) or default
    if value not in allowed:
        raise ConfigError(f"{name}={value!r}: must be one of {', '.join(allowed)}")
    return value


def _pairs(env: Mapping[str, str], name: str, default: str) -> tuple[tuple[str, str], ...]:
    raw = env.get(name, default)
    pairs: list[tuple[str, str]] = []
    for item in filter(None, (part.strip() for part in raw.split(","))):
        user, sep, role = item.partition(":")
        if not sep or not user.strip() or not role.strip():
            raise ConfigError(f"{name}: {item!r} must be USER:ROLE")
        pairs.append((user.strip(), role.strip()))
    return tuple(pairs)


def _int(env: Mapping[str, str], name: str, default: int, low: int = 0) -> int:
    parsed = _whole(env, name, "a whole number")
    if parsed is None:
        return default
    raw, value = parsed
    if value < low:
        raise ConfigError(f"{name}={raw!r}: must be at least {low}")
    return value


def _optional_path(env: Mapping[str, str], name: str) -> Path | None:
    raw = env.get(name)
    return Path(raw).expanduser().resolve() if raw else None


def load_settings(environ: Mapping[str, str] | None = None) -> Settings:
    """Read settings from ``environ`` (default: ``os.environ``) over the defaults."""
    env = os.environ if environ is None else environ
    home = _path(env, "GOVML_HOME", PROJECT_ROOT)
    var_dir = _path(env, "GOVML_VAR_DIR", home / "var")
    airflow_home = _path(env, "AIRFLOW_HOME", var_dir / "airflow")
    mlflow_host = env.get("GOVML_MLFLOW_HOST") or "127.0.0.1"
    mlflow_port = _port(env, "GOVML_MLFLOW_PORT", 5000)
    return Settings(
        home=home,
        var_dir=var_dir,
        data_dir=_path(env, "GOVML_DATA_DIR", var_dir / "data"),
        runs_dir=_path(env, "GOVML_RUNS_DIR", var_dir / "runs"),
        run_dir=_path(env, "GOVML_RUN_DIR", var_dir / "run"),
        specs_dir=_path(env, "GOVML_SPECS_DIR", home / "specs"),
        airflow_home=airflow_home,
        **_airflow(env, airflow_home),
        mlflow_backend_url=_db_url(
            env, "GOVML_MLFLOW_BACKEND_URL", f"sqlite:///{var_dir / 'mlflow' / 'mlflow.db'}"
        ),
        mlflow_artifacts=_path(env, "GOVML_MLFLOW_ARTIFACTS", var_dir / "mlflow" / "artifacts"),
        mlflow_host=mlflow_host,
        mlflow_port=mlflow_port,
        mlflow_tracking_uri=env.get("MLFLOW_TRACKING_URI") or f"http://{mlflow_host}:{mlflow_port}",
        governance_url=_db_url(
            env, "GOVML_GOVERNANCE_URL", f"sqlite:///{var_dir / 'governance.db'}"
        ),
        audit_key_file=_optional_path(env, "GOVML_AUDIT_KEY_FILE"),
        audit_checkpoints=env.get("GOVML_AUDIT_CHECKPOINTS") or "",
        serving_host=env.get("GOVML_SERVING_HOST") or "127.0.0.1",
        serving_port=_port(env, "GOVML_SERVING_PORT", 8090),
        deployer=_choice(env, "GOVML_DEPLOYER", "local", ("local", "kubernetes")),
        serving_dir=_path(env, "GOVML_SERVING_DIR", var_dir / "serving"),
        serving_python=_path(
            env, "GOVML_SERVING_PYTHON", home / ".venv-serving" / "bin" / "python"
        ),
        kubeconfig=_optional_path(env, "GOVML_KUBECONFIG"),
        kube_context=env.get("GOVML_KUBE_CONTEXT") or None,
        kube_namespace=env.get("GOVML_KUBE_NAMESPACE") or "govml",
        kserve_runtime=_choice(env, "GOVML_KSERVE_RUNTIME", "custom", ("custom", "lightgbm")),
        serving_image=env.get("GOVML_SERVING_IMAGE") or "govml-serving:latest",
        serving_bind_host=env.get("GOVML_SERVING_BIND_HOST") or "127.0.0.1",
        mlflow_auth_db_url=_db_url(
            env,
            "GOVML_MLFLOW_AUTH_DB_URL",
            f"sqlite:///{var_dir / 'mlflow' / 'auth' / 'basic_auth.db'}",
        ),
        **_kube_deployment(env),
        compute_backend=(
            _choice(env, "GOVML_COMPUTE_BACKEND", "local", ("local", "dask"))
            if env.get("GOVML_COMPUTE_BACKEND")
            else None
        ),
        dask_scheduler=env.get("GOVML_DASK_SCHEDULER") or None,
        feature_store=_feature_store(env, "GOVML_FEATURE_STORE") or "memory",
        kube_feature_store=_feature_store(env, "GOVML_KUBE_FEATURE_STORE"),
        kube_feature_key_secret=env.get("GOVML_KUBE_FEATURE_KEY_SECRET") or None,
        **_executor(env),
    )


def _airflow(env: Mapping[str, str], airflow_home: Path) -> dict[str, object]:
    """Airflow's metadata database, web server and users."""
    return {
        "airflow_db_url": _db_url(
            env, "GOVML_AIRFLOW_DB_URL", f"sqlite:///{airflow_home / 'airflow.db'}"
        ),
        "airflow_host": env.get("GOVML_AIRFLOW_HOST") or "127.0.0.1",
        "airflow_port": _port(env, "GOVML_AIRFLOW_PORT", 8080),
        "airflow_users": _users(
            env,
            "GOVML_AIRFLOW_USERS",
            "admin:admin,reviewer:approver,validator:approver,operator:op",
        ),
        "approver_roles": _pairs(
            env, "GOVML_APPROVER_ROLES", "reviewer:model_risk,validator:model_risk"
        ),
    }


def _kube_deployment(env: Mapping[str, str]) -> dict[str, object]:
    """How the Kubernetes deployer sizes, scales and wires a model's service."""
    return {
        "kube_storage_uri": env.get("GOVML_KUBE_STORAGE_URI") or None,
        "kube_tokens_secret": env.get("GOVML_KUBE_TOKENS_SECRET") or None,
        "kube_prediction_log_claim": env.get("GOVML_KUBE_PREDICTION_LOG_CLAIM") or None,
        "kube_tracking_uri": env.get("GOVML_KUBE_MLFLOW_TRACKING_URI") or None,
        # hot standby: two replicas at least (and a disruption budget); one CPU each and
        # 8 concurrent requests per replica: the serving benchmark's p99 stays ~2.5 ms there
        "kube_min_replicas": _int(env, "GOVML_KUBE_MIN_REPLICAS", 2),
        "kube_max_replicas": _int(env, "GOVML_KUBE_MAX_REPLICAS", 3, low=1),
        "kube_scale_metric": _choice(
            env, "GOVML_KUBE_SCALE_METRIC", "concurrency", ("concurrency", "cpu", "rps")
        ),
        "kube_scale_target": _int(env, "GOVML_KUBE_SCALE_TARGET", 8, low=1),
        "kube_cpu_request": env.get("GOVML_KUBE_CPU_REQUEST") or "1",
        "kube_cpu_limit": env.get("GOVML_KUBE_CPU_LIMIT") or "1",
        "kube_memory_request": env.get("GOVML_KUBE_MEMORY_REQUEST") or "1Gi",
        "kube_memory_limit": env.get("GOVML_KUBE_MEMORY_LIMIT") or "2Gi",
        "kube_ready_timeout": float(_int(env, "GOVML_KUBE_READY_TIMEOUT", 600, low=1)),
    }


def _feature_store(env: Mapping[str, str], name: str) -> str | None:
    value = env.get(name) or None
    if value not in (None, "memory") and urlsplit(value).scheme not in ("redis", "rediss", "unix"):
        raise ConfigError(f"{name}={value!r}: use memory or a redis:// URL")
    return value


def _executor(env: Mapping[str, str]) -> dict[str, object]:
    """The Airflow executor and, for Celery, its broker, result backend and workers."""
    executor = _choice(
        env, "GOVML_AIRFLOW_EXECUTOR", "LocalExecutor", ("LocalExecutor", "CeleryExecutor")
    )
    broker = env.get("GOVML_CELERY_BROKER_URL") or "redis://127.0.0.1:6379/0"
    if urlsplit(broker).scheme not in ("redis", "rediss", "amqp", "amqps", "pyamqp"):
        raise ConfigError(
            f"GOVML_CELERY_BROKER_URL={broker!r}: use a redis:// or amqp:// (RabbitMQ) URL"
        )
    return {
        "airflow_executor": executor,
        "celery_broker_url": broker,
        "celery_result_backend": env.get("GOVML_CELERY_RESULT_BACKEND") or None,
        "celery_workers": _int(env, "GOVML_CELERY_WORKERS", 2, low=1),
        "celery_concurrency": _int(env, "GOVML_CELERY_CONCURRENCY", 2, low=1),
    }
