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
import json
import logging
import urllib.request
from typing import Any

from ops.approval_form import APPROVE, REJECT, answer_body
from ops.cli.common import Commands, authenticate
from ops.identity import http_json, require_admin
from pipelines.config import Settings
from pipelines.errors import ApprovalError
from registry.approval_state import ApprovalStatus

log = logging.getLogger(__name__)

APPROVAL_TASK = "approval"


# --------------------------------------------------------------------------- identity


def _token(args: argparse.Namespace, settings: Settings, user: str) -> str | None:
    """USER proven by password (:mod:`ops.identity`); their Airflow API token (stack up)."""
    return authenticate(args, settings, user).token


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
    status, ti = http_json("GET", base, token=token)
    if status != 200 or not isinstance(ti, dict) or ti.get("state") != "awaiting_input":
        return "the lifecycle run is not waiting at its approval task"
    status, body = http_json(
        "PATCH",
        f"{base}/hitlDetails",
        answer_body(APPROVE if decision == "approve" else REJECT, reason),
        token=token,
    )
    if status == 200:
        return f"answered the Required Action of run {state.run_id}"
    return f"could not answer the Required Action (HTTP {status}: {body})"


# --------------------------------------------------------------------------- commands


def cmd_decide(args: argparse.Namespace, settings: Settings) -> int:
    from registry.approvals import Review, decide, get_request
    from registry.mlflow_registry import artifact_sha256_of, tag_version

    decision = args.decision
    reason = (args.reason or "").strip()
    if not reason:
        raise ApprovalError("--reason must not be empty: the audit trail records why")
    request = get_request(settings.governance_url, args.model, args.version)
    token = _token(args, settings, args.user)
    sha = artifact_sha256_of(settings.mlflow_tracking_uri, args.model, args.version)
    state = decide(
        settings.governance_url,
        args.model,
        args.version,
        Review(user=args.user, decision=decision, reason=reason, channel="cli"),
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
    require_admin(settings, args.by, args.password_file, "grant or revoke roles")


def cmd_roles_grant(args: argparse.Namespace, settings: Settings) -> int:
    from registry.approvals import grant_role

    if args.user == args.by:
        raise ApprovalError(
            f"{args.by} cannot grant a role to themselves: another admin must grant it"
        )
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


def add_governance_commands(sub: Commands) -> None:
    for decision, verb in (("approve", "approve"), ("reject", "reject")):
        p = sub.add(
            verb,
            cmd_decide,
            f"{verb} a registered model version (four-eyes rules apply)",
            decision=decision,
        )
        p.add_argument("model", help="registered model name (the spec name)")
        p.add_argument("version", help="model version number")
        p.add_argument("--as", dest="user", required=True, help="your user name")
        p.add_argument("--reason", required=True, help="why (recorded in the audit trail)")
        p.add_argument(
            "--password-file", default=None, help="file holding your password (else GOVML_PASSWORD)"
        )

    verbs = sub.group("approvals", "approval requests and their decisions")
    p = verbs.add("list", cmd_approvals_list, "list approval requests")
    p.add_argument("--model", default=None)
    p.add_argument("--status", default=None, choices=[status.value for status in ApprovalStatus])
    p.add_argument("--json", action="store_true", help="print JSON")

    verbs = sub.group("roles", "approver roles (who may approve which models)")
    for action, func, help_text in (
        ("grant", cmd_roles_grant, "give a user an approver role"),
        ("revoke", cmd_roles_revoke, "take an approver role away"),
    ):
        p = verbs.add(action, func, help_text)
        p.add_argument("user")
        p.add_argument("role")
        p.add_argument("--by", required=True, help="the admin who grants/revokes (recorded)")
        p.add_argument("--password-file", default=None, help="file holding the admin's password")
    verbs.add("list", cmd_roles_list, "list role grants")
