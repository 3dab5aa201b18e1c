"""Proven identities for the command line: who runs a command, checked, never assumed.

A command that records a person (``govml run --as``, ``approve``, ``rollout``,
``retrain``, ``roles``) first proves who they are: their password
(:func:`password_for`: ``GOVML_PASSWORD``, ``--password-file`` or a prompt) is checked
by the Airflow API server's login when the stack runs, which also hands back the
user's API token (:func:`authenticate_user`); with the stack down it is checked against
the embedded stack's password file, the one Airflow's login reads (mode 0600, the host
account's). A name from the environment (``GOVML_TRIGGERED_BY``, ``$USER``) is never
an identity.
"""

from __future__ import annotations

import getpass
import hmac
import json
import os
import pwd
import sys
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipelines.config import Settings
from pipelines.errors import ApprovalError, ConfigError

AIRFLOW_LOGIN = "airflow-login"  # the API server checked the password (POST /auth/token)
PASSWORD_FILE = "password-file"  # checked against the stack's password file (stack down)


@dataclass(frozen=True)
class Identity:
    """A user whose password was checked, how, and their Airflow API token (stack up)."""

    user: str
    method: str
    token: str | None = None

    def __repr__(self) -> str:  # the token stays out of logs and tracebacks
        return f"Identity(user={self.user!r}, method={self.method!r})"


def password_for(user: str, password_file: str | os.PathLike[str] | None = None) -> str:
    """USER's password: ``--password-file``, else ``GOVML_PASSWORD``, else a prompt."""
    if password_file:
        try:
            return Path(password_file).read_text().strip()
        except OSError as exc:
            raise ConfigError(f"--password-file {password_file}: {exc.strerror}") from None
    if os.environ.get("GOVML_PASSWORD"):
        return os.environ["GOVML_PASSWORD"]
    if sys.stdin.isatty():
        return getpass.getpass(f"password for {user}: ")
    raise ApprovalError(
        f"no password for {user}: set GOVML_PASSWORD, use --password-file, or run in a terminal"
    )


def http_json(
    method: str, url: str, body: dict | None = None, token: str | None = None, timeout: float = 10
) -> tuple[int, Any]:
    """One JSON call; (HTTP status, parsed body). Connection errors raise ``OSError``."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method)
    request.add_header("Content-Type", "application/json")
    request.add_header("Accept", "application/json")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310
            raw = response.read()
            return response.status, json.loads(raw) if raw else None
    except urllib.error.HTTPError as exc:
        raw = exc.read()
        try:
            return exc.code, json.loads(raw)
        except ValueError:
            return exc.code, raw.decode(errors="replace")


def airflow_up(settings: Settings) -> bool:
    """Whether the stack's Airflow API server answers its health check."""
    from ops.stack_processes import http_ok

    return http_ok(f"{settings.airflow_url}/api/v2/monitor/health", timeout=2.0)[0]


def authenticate_user(settings: Settings, user: str, password: str) -> Identity:
    """Check USER's password (Airflow's login when it runs, else the password file)."""
    if not user or not user.strip():
        raise ApprovalError("a user name is needed (--as USER)")
    if airflow_up(settings):
        try:
            status, body = http_json(
                "POST",
                f"{settings.airflow_url}/auth/token",
                {"username": user, "password": password},
            )
        except OSError as exc:
            raise ApprovalError(f"cannot reach Airflow to authenticate {user}: {exc}") from None
        if status in (200, 201) and isinstance(body, dict) and body.get("access_token"):
            return Identity(user, AIRFLOW_LOGIN, str(body["access_token"]))
        raise ApprovalError(f"authentication failed for {user} (Airflow answered {status})")
    path = settings.airflow_home / "passwords.json"
    try:
        known = json.loads(path.read_text())
    except (OSError, ValueError):
        raise ApprovalError(
            f"cannot authenticate {user}: Airflow is not running and {path} is not readable"
        ) from None
    expected = known.get(user) if isinstance(known, dict) else None
    if not isinstance(expected, str) or not hmac.compare_digest(
        expected.encode(), password.encode()
    ):
        raise ApprovalError(f"authentication failed for {user}")
    return Identity(user, PASSWORD_FILE)


def require_admin(
    settings: Settings, user: str, password_file: str | os.PathLike[str] | None, action: str
) -> Identity:
    """USER, proven by password, holds the Airflow role ``admin``; else one clear refusal."""
    if dict(settings.airflow_users).get(user) != "admin":
        raise ApprovalError(f"{user} is not an admin user: only admins {action}")
    return authenticate_user(settings, user, password_for(user, password_file))


def host_account() -> str:
    """The host account running this process, as ``host:NAME``: from the process's uid,
    never from the environment (``$USER`` can say anything)."""
    return f"host:{pwd.getpwuid(os.geteuid()).pw_name}"
