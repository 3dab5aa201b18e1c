"""``govml rollout``: status, start, step, pause, resume, rollback, approve, promote.

Every action but ``status`` is recorded in the audit trail with the person's identity,
proven like ``govml approve`` proves it (the Airflow password, or the embedded stack's
password file); ``step`` runs one controller evaluation as ``rollout-controller``. The
go for 100 % (``approve``) needs one of the spec's approver roles.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from ops.cli.common import (
    Commands,
    acting_user,
    add_identity_arguments,
    load_model_spec,
)
from pipelines.config import Settings
from pipelines.errors import ApprovalError


def _print(event: Any) -> None:
    detail = f" {json.dumps(event.detail, sort_keys=True)}" if event.detail else ""
    print(
        f"{event.model} v{event.version}: {event.kind} at {event.percent}% by {event.actor}{detail}"
    )


def cmd_status(args: argparse.Namespace, settings: Settings) -> int:
    from serving.control.routes import controller

    status = controller(settings, load_model_spec(args.model, settings)).status()
    print(json.dumps(status, indent=2, sort_keys=True, default=str))
    return 0


def cmd_start(args: argparse.Namespace, settings: Settings) -> int:
    from ops.rollout import start

    spec = load_model_spec(args.model, settings)
    _print(start(settings, spec, args.version, acting_user(args, settings)))
    return 0


def cmd_step(args: argparse.Namespace, settings: Settings) -> int:
    from ops.rollout import evaluate

    _print(evaluate(settings, load_model_spec(args.model, settings)))
    return 0


def cmd_act(args: argparse.Namespace, settings: Settings) -> int:
    from ops.rollout import act, promote_first
    from registry.approvals import roles_of

    spec = load_model_spec(args.model, settings)
    user = acting_user(args, settings)
    if args.action == "approve" and not roles_of(settings.governance_url, user) & set(
        spec.approval.roles
    ):
        raise ApprovalError(
            f"{user} holds none of {spec.name}'s approver roles {spec.approval.roles}: "
            "the go for 100% is theirs"
        )
    if args.action == "promote" and getattr(args, "version", None):
        _print(promote_first(settings, spec, args.version, user))
        return 0
    reason = (getattr(args, "reason", None) or "").strip()
    if args.action in ("pause", "rollback") and not reason:
        raise ApprovalError("--reason must not be empty: the audit trail records why")
    _print(act(settings, spec, args.action, user, reason))
    return 0


def add_rollout_commands(sub: Commands) -> None:
    verbs = sub.group("rollout", "shadow, canary steps, promotion and rollback", metavar=None)
    p = verbs.add("status", cmd_status, "where a model's rollout stands")
    p.add_argument("model")
    p = verbs.add("start", cmd_start, "shadow a deployed version behind the champion")
    p.add_argument("model")
    p.add_argument("--version", required=True)
    add_identity_arguments(p)
    p = verbs.add("step", cmd_step, "evaluate the guardrails now: advance, hold or roll back")
    p.add_argument("model")
    for action, text in (
        ("pause", "stop automatic steps (routes stay as they are)"),
        ("resume", "resume automatic steps (the bake time starts again)"),
        ("rollback", "send all traffic back to the champion"),
        ("approve", "the go for 100%% (an approver role of the spec)"),
        ("promote", "make the challenger the champion (or --version: the first champion)"),
    ):
        p = verbs.add(action, cmd_act, text, action=action)
        p.add_argument("model")
        add_identity_arguments(p)
        if action in ("pause", "rollback"):
            p.add_argument("--reason", required=True, help="why (recorded in the audit trail)")
        if action == "promote":
            p.add_argument("--version", default=None, help="the first champion of a new model")
