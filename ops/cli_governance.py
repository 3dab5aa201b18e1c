"""``govml approve|reject|approvals|roles``: model-risk reviewers' commands.

``approve MODEL VERSION --as USER --reason TEXT`` proves who USER is first: the
password (``GOVML_PASSWORD``, ``--password-file`` or a prompt) is checked by the
Airflow API server's login when the stack runs, else against the same users'
password file. The decision goes through the same four-eyes checks as the UI and is
recorded in the governance store and as MLflow tags. When the version's lifecycle
run is waiting at its approval task, the CLI also answers that Required Action as
USER, so the run goes on (or stops) at once.
"""

from __future__ import annotations

import argparse
import getpass
import hmac
import json
import logging
import os
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from pipelines.config import Settings
from pipelines.errors import ApprovalError, ConfigError

log = logging.getLogger(__name__)

APPROVAL_TASK = "approval"


# --------------------------------------------------------------------------- identity


def _password(args: argparse.Namespace, user: str) -> str:
    if args.password_file:
        try:
            return Path(args.password_file).read_text().strip()
        except OSError as exc:
            raise ConfigError(f"--password-file {args.password_file}: {exc.strerror}") from None
    if os.environ.get("GOVML_PASSWORD"):
        return os.environ["GOVML_PASSWORD"]
    if sys.stdin.isatty():
        return getpass.getpass(f"password for {user}: ")
    raise ApprovalError(
        f"no password for {user}: set GOVML_PASSWORD, use --password-file, or run in a terminal"
    )


def _http_json(
    method: str, url: str, body: dict | None = None, token: str | None = None, timeout: float = 10
) -> tuple[int, Any]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method)
    request.add_header("Content-Type", "application/json")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            raw = response.read()
            return response.status, json.loads(raw) if raw else None
    except urllib.error.HTTPError as exc:
        raw = exc.read()
        try:
            return exc.code, json.loads(raw)
        except ValueError:
            return exc.code, raw.decode(errors="replace")


def _airflow_up(settings: Settings) -> bool:
    from ops.stack import http_ok

    return http_ok(f"{settings.airflow_url}/api/v2/monitor/health", timeout=2.0)[0]


def authenticate(settings: Settings, user: str, password: str) -> str | None:
    """Check USER's password; returns an Airflow API token when the api-server runs."""
    if _airflow_up(settings):
        try:
            status, body = _http_json(
                "POST",
                f"{settings.airflow_url}/auth/token",
                {"username": user, "password": password},
            )
        except OSError as exc:
            raise ApprovalError(f"cannot reach Airflow to authenticate {user}: {exc}") from None
        if status in (200, 201) and isinstance(body, dict) and body.get("access_token"):
            return str(body["access_token"])
        raise ApprovalError(f"authentication failed for {user} (Airflow answered {status})")
    path = settings.airflow_home / "passwords.json"
    try:
        known = json.loads(path.read_text())
    except (OSError, ValueError):
        raise ApprovalError(
            f"cannot authenticate {user}: Airflow is not running and {path} is not readable"
        ) from None
    expected = known.get(user)
    if not isinstance(expected, str) or not hmac.compare_digest(expected, password):
        raise ApprovalError(f"authentication failed for {user}")
    return None


def _answer_waiting_task(
    settings: Settings, token: str, state: Any, decision: str, reason: str
) -> str:
    """Answer the run's pending Required Action as the reviewer; a short status text."""
    if not state.dag_id:
        return "no Airflow run to notify"
    base = (
        f"{settings.airflow_url}/api/v2/dags/{state.dag_id}/dagRuns/"
        f"{urllib.request.quote(state.run_id, safe='')}/taskInstances/{APPROVAL_TASK}/-1"
    )
    status, ti = _http_json("GET", base, token=token)
    if status != 200 or not isinstance(ti, dict) or ti.get("state") != "awaiting_input":
        return "the lifecycle run is not waiting at its approval task"
    status, body = _http_json(
        "PATCH",
        f"{base}/hitlDetails",
        {
            "chosen_options": ["Approve" if decision == "approve" else "Reject"],
            "params_input": {"reason": reason},
        },
        token=token,
    )
    if status == 200:
        return f"answered the Required Action of run {state.run_id}"
    return f"could not answer the Required Action (HTTP {status}: {body})"


# --------------------------------------------------------------------------- commands


def cmd_decide(args: argparse.Namespace, settings: Settings) -> int:
    from registry.approvals import decide, get_request
    from registry.mlflow_registry import artifact_sha256_of, tag_version

    decision = args.decision
    reason = (args.reason or "").strip()
    if not reason:
        raise ApprovalError("--reason must not be empty: the audit trail records why")
    request = get_request(settings.governance_url, args.model, args.version)
    token = authenticate(settings, args.user, _password(args, args.user))
    sha = artifact_sha256_of(settings.mlflow_tracking_uri, args.model, args.version)
    state = decide(
        settings.governance_url,
        args.model,
        args.version,
        user=args.user,
        decision=decision,
        reason=reason,
        channel="cli",
        run_id=request.run_id,
        artifact_sha256=sha,
    )
    tag_version(
        settings.mlflow_tracking_uri, state.model_name, state.model_version, state.mlflow_tags()
    )
    print(
        f"{state.model_name} v{state.model_version}: {decision} by {args.user} recorded; "
        f"request {state.id} is {state.status} "
        f"({len(state.approvers)}/{state.required_approvers} approvals)"
    )
    if token is not None:
        print(_answer_waiting_task(settings, token, state, decision, reason))
    return 0


def _print_state(state: Any) -> None:
    print(
        f"#{state.id} {state.model_name} v{state.model_version} {state.status:<8} "
        f"{len(state.approvers)}/{state.required_approvers} approvals  run {state.run_id}  "
        f"respond by {state.respond_by}"
    )
    for reason in state.risk_reasons:
        print(f"    high risk: {reason}")
    for d in state.decisions:
        print(f"    {d.decided_at} {d.user} {d.decision} via {d.channel}: {d.reason}")


def cmd_approvals_list(args: argparse.Namespace, settings: Settings) -> int:
    from registry.approvals import list_requests

    states = list_requests(settings.governance_url, args.model, args.status)
    if args.json:
        print(json.dumps([s.to_dict() for s in states], indent=2))
        return 0
    if not states:
        print("no approval requests")
    for state in states:
        _print_state(state)
    return 0


def _authenticate_admin(args: argparse.Namespace, settings: Settings) -> None:
    """Only an Airflow admin, proving who they are, may change approver roles."""
    roles = dict(settings.airflow_users)
    if roles.get(args.by) != "admin":
        raise ApprovalError(f"{args.by} is not an admin user: only admins grant or revoke roles")
    authenticate(settings, args.by, _password(args, args.by))


def cmd_roles_grant(args: argparse.Namespace, settings: Settings) -> int:
    from registry.approvals import grant_role

    _authenticate_admin(args, settings)
    new = grant_role(settings.governance_url, args.user, args.role, args.by)
    print(f"{args.user} {'now holds' if new else 'already holds'} role {args.role}")
    return 0


def cmd_roles_revoke(args: argparse.Namespace, settings: Settings) -> int:
    from registry.approvals import revoke_role

    _authenticate_admin(args, settings)
    gone = revoke_role(settings.governance_url, args.user, args.role, args.by)
    print(f"{args.user} {'no longer holds' if gone else 'did not hold'} role {args.role}")
    return 0


def cmd_roles_list(args: argparse.Namespace, settings: Settings) -> int:
    from registry.approvals import role_grants

    rows = role_grants(settings.governance_url)
    if not rows:
        print("no roles granted")
    for user, role, by in rows:
        print(f"{user:<20} {role:<20} granted by {by}")
    return 0


def add_governance_commands(sub: Any) -> None:
    for decision, verb in (("approve", "approve"), ("reject", "reject")):
        p = sub.add_parser(verb, help=f"{verb} a registered model version (four-eyes rules apply)")
        p.add_argument("model", help="registered model name (the spec name)")
        p.add_argument("version", help="model version number")
        p.add_argument("--as", dest="user", required=True, help="your user name")
        p.add_argument("--reason", required=True, help="why (recorded in the audit trail)")
        p.add_argument(
            "--password-file", default=None, help="file holding your password (else GOVML_PASSWORD)"
        )
        p.set_defaults(func=cmd_decide, decision=decision)

    approvals = sub.add_parser("approvals", help="approval requests and their decisions")
    approvals_sub = approvals.add_subparsers(dest="action", required=True, metavar="ACTION")
    p = approvals_sub.add_parser("list", help="list approval requests")
    p.add_argument("--model", default=None)
    p.add_argument(
        "--status", default=None, choices=["pending", "approved", "rejected", "expired", "void"]
    )
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_approvals_list)

    roles = sub.add_parser("roles", help="approver roles (who may approve which models)")
    roles_sub = roles.add_subparsers(dest="action", required=True, metavar="ACTION")
    for action, func, help_text in (
        ("grant", cmd_roles_grant, "give a user an approver role"),
        ("revoke", cmd_roles_revoke, "take an approver role away"),
    ):
        p = roles_sub.add_parser(action, help=help_text)
        p.add_argument("user")
        p.add_argument("role")
        p.add_argument("--by", required=True, help="the admin who grants/revokes (recorded)")
        p.add_argument("--password-file", default=None, help="file holding the admin's password")
        p.set_defaults(func=func)
    p = roles_sub.add_parser("list", help="list role grants")
    p.set_defaults(func=cmd_roles_list)
