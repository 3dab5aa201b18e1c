"""The locked registry: MLflow's basic-auth app, its accounts and what each may do.

The embedded stack's MLflow server runs ``mlflow server --app-name basic-auth``. Its
permission store (users, roles, grants) is a database of its own: SQLite under
``$GOVML_VAR_DIR/mlflow/auth/`` by default, PostgreSQL with ``GOVML_MLFLOW_AUTH_DB_URL``.

Accounts (docs/security.md):

- ``govml-admin``: MLflow's administrator. Used only by the stack, at start-up, to
  create the other accounts and their roles (:func:`provision`). No lifecycle code holds
  it: a compromised task cannot create users or grant rights.
- ``govml``: the service account. Role ``govml-service``: MANAGE on every experiment
  and registered model, present and future (the ``*`` pattern). The only account that
  registers versions, writes tags and moves aliases (always through
  :func:`registry.mlflow_registry.set_alias`, which audits each move).
- the people (the Airflow users: reviewers, validators, operators): role
  ``govml-reader``, READ on every experiment and registered model (``*``: models
  registered later too). Their MLflow password is their Airflow password. Anything more
  they hold (a grant they got by creating a model themselves, another role) is taken
  away at every start.
- anybody else: ``default_permission`` is ``NO_PERMISSIONS``, and a request without
  credentials gets 401 (except ``/health`` and the UI's static files).

Credentials are made on first start and kept in mode-0600 files under
``$GOVML_VAR_DIR/mlflow/auth/`` (never printed). Every govml client uses the service
account through MLflow's own variables, ``MLFLOW_TRACKING_USERNAME`` /
``MLFLOW_TRACKING_PASSWORD``: :func:`use_service_account` fills them from the file
unless they are set already (in production from a secret store).
"""

from __future__ import annotations

import json
import logging
import os
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipelines.errors import RegistryError
from pipelines.files import read_json_or_none

log = logging.getLogger(__name__)

ADMIN_ACCOUNT = "govml-admin"
SERVICE_ACCOUNT = "govml"
SERVICE_ROLE = "govml-service"
READER_ROLE = "govml-reader"
WORKSPACE = "default"  # MLflow's workspace when workspaces are off (roles live in one)
RESOURCE_TYPES = ("experiment", "registered_model")
DEFAULT_PERMISSION = "NO_PERMISSIONS"
AUTH_CACHE_SECONDS = 60
USERNAME_ENV, PASSWORD_ENV = "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"


@dataclass(frozen=True)
class Account:
    """A login; the password never shows in a repr or a log line."""

    username: str
    password: str = field(repr=False)


def auth_dir(var_dir: Path) -> Path:
    """Where the permission store's SQLite file, its config and the credentials live."""
    return Path(var_dir) / "mlflow" / "auth"


def service_file(var_dir: Path) -> Path:
    return auth_dir(var_dir) / "service.json"


def admin_file(var_dir: Path) -> Path:
    return auth_dir(var_dir) / "admin.json"


def config_file(var_dir: Path) -> Path:
    return auth_dir(var_dir) / "basic_auth.ini"


def _write_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` (mode 0600) atomically: readers see old or new, whole."""
    path.parent.mkdir(parents=True, exist_ok=True)
    os.chmod(path.parent, 0o700)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    tmp.replace(path)


def _read_json(path: Path) -> dict[str, Any] | None:
    data = read_json_or_none(path, RegistryError, f"cannot read MLflow credentials {path}")
    if data is None:
        return None
    if not isinstance(data, dict) or not data.get("username") or not data.get("password"):
        raise RegistryError(f"{path}: not an MLflow credentials file (username, password)")
    return data


def _password() -> str:
    return secrets.token_urlsafe(24)  # 32 characters; MLflow wants 12 at least


def _ensure(path: Path, username: str, **extra: str) -> dict[str, Any]:
    data = _read_json(path)
    if data is None:
        data = {"username": username, "password": _password(), **extra}
        _write_private(path, json.dumps(data, indent=2))
        log.info("made the MLflow %s credentials in %s", username, path)
    return data


def ensure_service_account(var_dir: Path) -> Account:
    """The service account's credentials, made on first use (0600)."""
    data = _ensure(service_file(var_dir), SERVICE_ACCOUNT)
    return Account(data["username"], data["password"])


def read_service_account(var_dir: Path) -> Account | None:
    """The service account's credentials; None before the stack made them."""
    data = _read_json(service_file(var_dir))
    return None if data is None else Account(data["username"], data["password"])


def ensure_admin_account(var_dir: Path) -> tuple[Account, str]:
    """(the admin account, the Flask secret for the auth app's CSRF tokens), made once."""
    data = _ensure(admin_file(var_dir), ADMIN_ACCOUNT, flask_secret=secrets.token_urlsafe(32))
    if not data.get("flask_secret"):
        data["flask_secret"] = secrets.token_urlsafe(32)
        _write_private(admin_file(var_dir), json.dumps(data, indent=2))
    return Account(data["username"], data["password"]), data["flask_secret"]


def _ini_value(value: str) -> str:
    return value.replace("%", "%%")  # configparser interpolates %; a URL may hold %40


def write_server_config(var_dir: Path, db_url: str) -> Path:
    """Write the basic-auth app's config (0600), making the admin credentials on first use.

    ``db_url``: the permission store (SQLite or PostgreSQL, already created).
    """
    admin, _ = ensure_admin_account(var_dir)
    lines = [
        "[mlflow]",
        f"default_permission = {DEFAULT_PERMISSION}",
        f"database_uri = {_ini_value(db_url)}",
        f"admin_username = {admin.username}",
        # read only while the admin user does not exist yet (the first start)
        f"admin_password = {_ini_value(admin.password)}",
        "authorization_function = mlflow.server.auth:authenticate_request_basic_auth",
        "grant_default_workspace_access = false",
        # a verified login is remembered for a minute (one worker: a password change or
        # a deleted user takes effect at once), so a client's burst of calls costs one
        # PBKDF2 check, not one per call
        f"auth_cache_ttl_seconds = {AUTH_CACHE_SECONDS}",
    ]
    path = config_file(var_dir)
    _write_private(path, "\n".join(lines) + "\n")
    return path


def server_env(var_dir: Path) -> dict[str, str]:
    """The MLflow server's environment for the basic-auth app (its config and CSRF secret,
    once :func:`write_server_config` made them)."""
    env = {"MLFLOW_AUTH_CONFIG_PATH": str(config_file(var_dir))}
    try:
        data = json.loads(admin_file(var_dir).read_text())
    except (OSError, ValueError):
        return env
    if data.get("flask_secret"):
        env["MLFLOW_FLASK_SERVER_SECRET_KEY"] = str(data["flask_secret"])
    return env


# --------------------------------------------------------------------------- clients
_applied: dict[str, str] = {}


def use_service_account(tracking_uri: str, var_dir: Path | None = None) -> bool:
    """Make MLflow's client (this process and its children) log in as the service account.

    Only for a tracking server (``http(s)://``): a database URI used directly needs no
    login (the host account is trusted). Credentials someone else put in the
    environment (``MLFLOW_TRACKING_USERNAME``/``_PASSWORD`` or ``MLFLOW_TRACKING_TOKEN``)
    win. True when the credentials came from the file now.
    """
    if not tracking_uri.startswith(("http://", "https://")):
        return False
    current = os.environ.get(USERNAME_ENV), os.environ.get(PASSWORD_ENV)
    ours = _applied.get(USERNAME_ENV), _applied.get(PASSWORD_ENV)
    if os.environ.get("MLFLOW_TRACKING_TOKEN") or (current[0] and current != ours):
        return False
    if var_dir is None:
        from pipelines.config import load_settings

        var_dir = load_settings().var_dir
    account = read_service_account(var_dir)
    if account is None:
        return False
    os.environ[USERNAME_ENV], os.environ[PASSWORD_ENV] = account.username, account.password
    _applied.update({USERNAME_ENV: account.username, PASSWORD_ENV: account.password})
    return True


# --------------------------------------------------------------------------- provisioning
@dataclass
class ProvisionReport:
    """What :func:`provision` changed (names only, never a password)."""

    created_users: list[str] = field(default_factory=list)
    created_roles: list[str] = field(default_factory=list)
    revoked: list[str] = field(default_factory=list)


class _Admin:
    """The auth app's REST API, as the admin account (not through the environment)."""

    def __init__(self, tracking_uri: str, account: Account) -> None:
        self.base = tracking_uri.rstrip("/")
        self.account = account

    def call(self, method: str, path: str, *, ok_missing: bool = False, **kw: Any) -> Any:
        import requests

        try:
            resp = requests.request(
                method,
                self.base + path,
                auth=(self.account.username, self.account.password),
                timeout=30,
                **kw,
            )
        except requests.RequestException as exc:
            raise RegistryError(f"MLflow at {self.base} does not answer: {exc}") from None
        if resp.status_code == 401:
            raise RegistryError(
                f"MLflow at {self.base} refused the {self.account.username} login: its "
                "permission store was made with another admin password than the one in "
                "the stack's credentials file (restore that file, or start with a new "
                "permission store)"
            )
        if ok_missing and resp.status_code == 404:
            return None
        if not 200 <= resp.status_code < 300:
            raise RegistryError(
                f"MLflow {method} {path} answered {resp.status_code}: {resp.text[:300]}"
            )
        return resp.json() if resp.content else {}


def _ensure_user(api: _Admin, account: Account, report: ProvisionReport) -> None:
    from mlflow.server.auth import routes

    found = api.call("GET", routes.GET_USER, params={"username": account.username}, ok_missing=True)
    if found is None:
        body = {"username": account.username, "password": account.password}
        api.call("POST", routes.CREATE_USER, json=body)
        report.created_users.append(account.username)
        return
    if found["user"].get("is_admin"):
        raise RegistryError(
            f"MLflow user {account.username!r} is an admin; govml expects a plain account "
            "(remove its admin flag)"
        )
    # the file is the truth: a password changed elsewhere is set back
    body = {"username": account.username, "password": account.password}
    api.call("PATCH", routes.UPDATE_USER_PASSWORD, json=body)


def _ensure_role(
    api: _Admin, name: str, permission: str, description: str, report: ProvisionReport
) -> int:
    from mlflow.server.auth import routes

    roles = api.call("GET", routes.LIST_ROLES, params={"workspace": WORKSPACE})["roles"]
    role = next((r for r in roles if r["name"] == name), None)
    if role is None:
        body = {"workspace": WORKSPACE, "name": name, "description": description}
        role = api.call("POST", routes.CREATE_ROLE, json=body)["role"]
        report.created_roles.append(name)
    role_id = int(role["id"])
    grants = api.call("GET", routes.LIST_ROLE_PERMISSIONS, params={"role_id": role_id})
    have = {(g["resource_type"], g["resource_pattern"]): g for g in grants["role_permissions"]}
    for resource_type in RESOURCE_TYPES:
        grant = have.get((resource_type, "*"))
        if grant is None:
            body = {
                "role_id": role_id,
                "resource_type": resource_type,
                "resource_pattern": "*",
                "permission": permission,
            }
            api.call("POST", routes.ADD_ROLE_PERMISSION, json=body)
        elif grant["permission"] != permission:
            body = {"role_permission_id": grant["id"], "permission": permission}
            api.call("PATCH", routes.UPDATE_ROLE_PERMISSION, json=body)
    return role_id


def _only_role(
    api: _Admin, username: str, role_id: int, allowed: set[str], report: ProvisionReport
) -> None:
    """``username`` holds role ``role_id`` and, beyond it, nothing above ``allowed``."""
    from mlflow.server.auth import routes

    roles = api.call("GET", routes.LIST_USER_ROLES, params={"username": username})["roles"]
    if not any(int(r["id"]) == role_id for r in roles):
        api.call("POST", routes.ASSIGN_ROLE, json={"username": username, "role_id": role_id})
    for role in roles:
        rid = int(role["id"])
        if rid == role_id:
            continue
        if not role["name"].startswith("__user_"):
            api.call("DELETE", routes.UNASSIGN_ROLE, json={"username": username, "role_id": rid})
            report.revoked.append(f"{username}: role {role['name']}")
            continue
        for grant in role.get("permissions") or []:
            if grant["permission"] in allowed:
                continue
            body = {
                "username": username,
                "resource_type": grant["resource_type"],
                "resource_id": grant["resource_pattern"],
            }
            api.call("POST", routes.REVOKE_USER_PERMISSION, json=body)
            report.revoked.append(
                f"{username}: {grant['permission']} on {grant['resource_type']} "
                f"{grant['resource_pattern']}"
            )


def provision(tracking_uri: str, var_dir: Path, readers: Mapping[str, str]) -> ProvisionReport:
    """Create or repair the accounts and roles; idempotent (run at every stack start).

    ``readers``: the people (user name -> password) who get READ on everything.
    """
    admin, _ = ensure_admin_account(var_dir)
    service = ensure_service_account(var_dir)
    api = _Admin(tracking_uri, admin)
    report = ProvisionReport()
    if service.username in readers or admin.username in readers:
        raise RegistryError(
            f"an Airflow user is named {service.username!r} or {admin.username!r}: "
            "those names are MLflow's service and admin accounts; rename the user"
        )
    _ensure_user(api, service, report)
    service_role = _ensure_role(
        api, SERVICE_ROLE, "MANAGE", "govml service account: writes the registry", report
    )
    reader_role = _ensure_role(
        api, READER_ROLE, "READ", "people: read every experiment and model", report
    )
    _only_role(api, service.username, service_role, {"READ", "USE", "EDIT", "MANAGE"}, report)
    for username, password in sorted(readers.items()):
        _ensure_user(api, Account(username, password), report)
        _only_role(api, username, reader_role, {"READ"}, report)
    for line in report.revoked:
        log.warning("MLflow: took away %s (only %s may write)", line, service.username)
    return report
