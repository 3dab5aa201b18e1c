"""``govml audit``: verify the keyed audit chain, anchor it, show its head, list events."""

from __future__ import annotations

import argparse
import json
from typing import Any

from ops.cli.common import Commands, positive_int
from pipelines.config import Settings


def cmd_audit_verify(args: argparse.Namespace, settings: Settings) -> int:
    from registry.audit import AuditError
    from registry.audit_verify import verify_chain

    report = verify_chain(settings.governance_url, anchor=args.anchor)
    for line in report.checkpoints:
        print(f"checkpoint   {line}")
    for line in report.unbacked:
        print(f"NOT BACKED   {line}")
    if report.problem is not None:
        where = f" at seq {report.first_bad_seq}" if report.first_bad_seq is not None else ""
        raise AuditError(f"chain BROKEN{where}: {report.problem}")
    if report.unbacked:
        raise AuditError(
            f"{len(report.unbacked)} governance table row(s) are not backed by the audit "
            f"chain (first: {report.unbacked[0]})"
        )
    anchored = ", anchor found" if report.anchor_ok else ""
    signed = (
        f"signed from seq {report.keyed_from}"
        if report.keyed_from is not None
        else "NO signed event yet"
    )
    print(
        f"chain ok: {report.events} events ({signed}), head seq {report.head_seq} "
        f"hash {report.head_hash}{anchored}"
    )
    return 0


def cmd_audit_anchor(args: argparse.Namespace, settings: Settings) -> int:
    from registry.audit_verify import anchor

    checkpoint = anchor(settings.governance_url, actor="govml-audit", reason=args.reason or "")
    if checkpoint is None:
        print("nothing new since the last checkpoint")
        return 0
    print(
        f"checkpoint of seq {checkpoint.seq} ({checkpoint.events} events, hash "
        f"{checkpoint.hash}) signed with key {checkpoint.key_id}"
    )
    return 0


def cmd_audit_rotate_key(args: argparse.Namespace, settings: Settings) -> int:
    from ops.identity import require_admin
    from registry.audit_verify import rotate_key

    admin = require_admin(settings, args.by, args.password_file, "rotate the audit key")
    old, new = rotate_key(settings.governance_url, actor=admin.user)
    print(f"audit key rotated: {old} -> {new}; new events are signed with {new}")
    return 0


def cmd_audit_head(args: argparse.Namespace, settings: Settings) -> int:
    from registry.audit import head

    seq, digest = head(settings.governance_url)
    print(f"{seq} {digest}")
    return 0


def _model(record: Any) -> str:
    if record.model_name is None:
        return "-"
    if record.model_version is None:
        return str(record.model_name)
    return f"{record.model_name}:{record.model_version}"


def cmd_audit_log(args: argparse.Namespace, settings: Settings) -> int:
    from registry.audit import canonical_json, events, iso_utc

    records = events(
        settings.governance_url,
        model_name=args.model,
        model_version=args.version,
        run_id=args.run,
        kinds=args.kind or None,
    )
    if args.limit:
        records = records[-args.limit :]
    if args.json:
        print(json.dumps([r.as_dict() for r in records], indent=2, ensure_ascii=False))
        return 0
    if not records:
        print("no audit events")
        return 0
    for r in records:
        print(
            f"{r.seq:>6}  {iso_utc(r.occurred_at)}  {r.kind:<18} {r.actor:<16} "
            f"{_model(r):<24} {canonical_json(r.payload)}"
        )
    return 0


def add_audit_commands(sub: Commands) -> Commands:
    """Add ``govml audit ...``; returns its commands so more actions can be added."""
    audit_sub = sub.group("audit", "the keyed audit chain: verify, anchor, head, log")
    p = audit_sub.add(
        "verify", cmd_audit_verify, "check every link of the chain; non-zero if broken"
    )
    p.add_argument(
        "--anchor",
        metavar="HASH",
        help="a head hash (or 'SEQ HASH') recorded earlier that must still be in the chain",
    )
    p = audit_sub.add(
        "anchor", cmd_audit_anchor, "write a signed checkpoint of the head to every checkpoint sink"
    )
    p.add_argument("--reason", default="", help="why (recorded with the checkpoint event)")
    p = audit_sub.add(
        "rotate-key",
        cmd_audit_rotate_key,
        "sign new events with a new audit key (admins; old keys kept)",
    )
    p.add_argument("--by", required=True, help="the admin who rotates (password checked)")
    p.add_argument("--password-file", default=None, help="file holding the admin's password")
    audit_sub.add("head", cmd_audit_head, "print the newest event as 'SEQ HASH' (an anchor)")
    p = audit_sub.add("log", cmd_audit_log, "list audit events, oldest first")
    p.add_argument("--model", help="only this model name")
    p.add_argument("--version", help="only this model version")
    p.add_argument("--run", help="only this lifecycle run id")
    p.add_argument("--kind", action="append", help="only this event kind (repeatable)")
    p.add_argument("--limit", type=positive_int, help="only the newest N events")
    p.add_argument("--json", action="store_true", help="print a JSON array")
    return audit_sub
