"""The audit side of an evidence pack: the version's approvals and deployments from the
verified chain, its audit segment with each event's hash checked, and the cross-checks
a validator would otherwise do by hand."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping, Sequence
from typing import Any

from pipelines.errors import RegistryError
from registry.approval_state import ApprovalStatus
from registry.audit import event_hash, events, iso_utc
from registry.audit_verify import verify_chain

log = logging.getLogger(__name__)


AUDIT_HASH_METHOD = (
    'hash = sha256(prev_hash + "\\n" + canonical_json(body)), body = {seq, occurred_at, '
    "kind, actor, model_name, model_version, run_id, payload}; canonical JSON has sorted "
    "keys, no spaces, UTF-8 kept; each event's prev_hash is the hash of event seq - 1 "
    "(64 zeros for seq 1); mac = HMAC-SHA-256(audit key, 'govml-audit-v1\\n' + hash) "
    "with the key named by key_id, which is not in the pack: `govml audit verify` checks "
    "the MACs and the signed checkpoints where the key is held"
)


def chain_state(
    url: str, model: str, version: str
) -> tuple[list[Any], list[dict[str, Any]], str | None]:
    """(approval states, deployments) of the version from the verified chain, or why not."""
    from registry.approvals import list_requests
    from registry.audit import AuditError
    from registry.governance import deployments

    try:
        states = [s for s in list_requests(url, model) if s.model_version == str(version)]
        return states, deployments(url, model, version), None
    except AuditError as exc:
        log.error("%s", exc)
        return [], [], str(exc)


def audit_segment(url: str, model: str, version: str, run_id: str | None) -> dict[str, Any]:
    try:
        stored = events(url, model_name=model)
        unreadable = None
    except ValueError as exc:  # a payload rewritten into something that is not JSON
        stored, unreadable = [], f"the audit events cannot be read: {exc}"
        log.error("%s", unreadable)
    records = [
        r
        for r in stored
        if r.model_version == str(version) or (run_id is not None and r.run_id == run_id)
    ]
    chain = verify_chain(url)  # after reading: the verified head covers every listed event
    by_seq = {r.seq: r for r in records}
    rows = []
    for r in records:
        body = {
            "seq": r.seq,
            "occurred_at": iso_utc(r.occurred_at),
            "kind": r.kind,
            "actor": r.actor,
            "model_name": r.model_name,
            "model_version": r.model_version,
            "run_id": r.run_id,
            "payload": r.payload,
        }
        before = by_seq.get(r.seq - 1)
        row = r.as_dict()
        row["hash_ok"] = event_hash(r.prev_hash, body) == r.hash
        # the link to the previous event, when that event is in the segment too
        row["link_ok"] = None if before is None else r.prev_hash == before.hash
        rows.append(row)
    bad = [r["seq"] for r in rows if not r["hash_ok"] or r["link_ok"] is False]
    return {
        "model_name": model,
        "model_version": str(version),
        "lifecycle_run_id": run_id,
        "hash_method": AUDIT_HASH_METHOD,
        "chain": dataclasses.asdict(chain),
        "events": rows,
        "segment_bad_seqs": bad,
        "unreadable": unreadable,
    }


def _check(name: str, ok: bool | None, detail: str) -> dict[str, Any]:
    return {"check": name, "ok": ok, "detail": detail}


def _artifact_checks(
    tracking_uri: str, model: str, version: str, tagged: str | None, segment: dict[str, Any]
) -> list[dict[str, Any]]:
    """The registry's artifact and the registration event against the tagged SHA-256."""
    from registry.mlflow_registry import artifact_sha256_of

    name = "registry artifact hashes to the tagged artifact_sha256"
    try:
        now = artifact_sha256_of(tracking_uri, model, version)
        checks = [_check(name, now == tagged, f"now {now}, tag {tagged}")]
    except RegistryError as exc:
        checks = [_check(name, None, str(exc))]
    registered = [e for e in segment["events"] if e["kind"] == "model_registered"]
    if registered:
        logged = registered[-1]["payload"].get("artifact_sha256")
        checks.append(
            _check(
                "audit trail registered the tagged artifact",
                logged == tagged,
                f"model_registered event seq {registered[-1]['seq']}: {logged}",
            )
        )
    return checks


def _chain_checks(segment: dict[str, Any]) -> list[dict[str, Any]]:
    """The whole chain verifies, and this version's segment re-hashes."""
    chain = segment["chain"]
    bad = segment["segment_bad_seqs"]
    events = f"{len(segment['events'])} events"
    return [
        _check(
            "audit chain verifies end to end (links, hashes, MACs, checkpoints, index rows)",
            bool(chain["ok"]),
            _chain_detail(chain),
        ),
        _check(
            "every event of this version's segment re-hashes to its stored hash",
            not bad and not segment["unreadable"],
            segment["unreadable"] or ("bad seqs: " + ", ".join(map(str, bad)) if bad else events),
        ),
    ]


def cross_checks(
    tracking_uri: str,
    model: str,
    version: str,
    tags: dict[str, str],
    states: list[Any],
    deployments: list[dict[str, Any]],
    segment: dict[str, Any],
    chain_error: str | None,
) -> list[dict[str, Any]]:
    """Facts a validator would check by hand, checked once at export time."""
    approvals = [s.to_dict() for s in states]
    tagged = tags.get("artifact_sha256")
    checks = _artifact_checks(tracking_uri, model, version, tagged, segment)
    checks.append(
        _check(
            "approvals and deployments are derived from the verified audit chain",
            chain_error is None,
            chain_error or f"{len(approvals)} request(s), {len(deployments)} deployment action(s)",
        )
    )
    claims = tag_claims_without_chain(tags, states) if chain_error is None else []
    checks.append(
        _check(
            "the version's approval tags claim nothing the audit chain does not hold",
            None if chain_error else not claims,
            "; ".join(claims) or "tags agree with the chain",
        )
    )
    checks += [
        _check(
            f"approval request {request['id']} is for the tagged artifact",
            request.get("artifact_sha256") == tagged,
            str(request.get("artifact_sha256")),
        )
        for request in approvals
    ]
    checks += [
        _check(
            f"{row['action']} ({row['environment']}) at {row['occurred_at']} used the tagged "
            "artifact",
            row.get("artifact_sha256") == tagged,
            str(row.get("artifact_sha256")),
        )
        for row in deployments
    ]
    return checks + _chain_checks(segment)


def _chain_detail(chain: dict[str, Any]) -> str:
    if chain["problem"]:
        return f"BROKEN at seq {chain['first_bad_seq']}: {chain['problem']}"
    if chain["unbacked"]:
        return f"{len(chain['unbacked'])} table row(s) not backed: {chain['unbacked'][0]}"
    return f"{chain['events']} events, head seq {chain['head_seq']}"


def chain_state_line(chain: dict[str, Any]) -> str:
    if chain["ok"]:
        return "OK"
    if chain["problem"]:
        return f"BROKEN at seq {chain['first_bad_seq']}"
    return "ROWS NOT BACKED by the chain"


# --------------------------------------------------------------------------- evidence
def tag_claims_without_chain(tags: Mapping[str, str], states: Sequence[Any]) -> list[str]:
    """Each approval a version's MLflow tags claim that the chain does not hold.

    ``tags``: the version's tags; ``states``: the chain's approval requests of that
    version (``registry.approvals.list_requests`` filtered to it). One line per claim:
    an ``approved`` status, a request id, approvers or an approved artifact SHA-256 the
    chain does not back. Tags are a mirror for the MLflow UI; the chain is the record.
    """
    problems: list[str] = []
    by_id = {str(s.id): s for s in states}
    claimed_id = tags.get("govml.approval.request_id")
    request = by_id.get(claimed_id) if claimed_id else None
    if claimed_id and request is None:
        problems.append(
            f"tag govml.approval.request_id={claimed_id}: the audit chain has no such "
            "approval request for this version"
        )
    approved = [s for s in states if s.status == ApprovalStatus.APPROVED]
    if request is None:
        request = approved[-1] if approved else (states[-1] if states else None)
    status = tags.get("govml.approval.status")
    if status == ApprovalStatus.APPROVED and (
        request is None or request.status != ApprovalStatus.APPROVED
    ):
        held = request.status if request is not None else "no request"
        problems.append(
            f"tag govml.approval.status=approved: the audit chain holds {held} for this version"
        )
    real = set(request.approvers) if request is not None else set()
    claimed = {u for u in (tags.get("govml.approval.approvers") or "").split(",") if u}
    claimed |= {
        key.removeprefix("govml.approval.approve.")
        for key in tags
        if key.startswith("govml.approval.approve.")
    }
    for user in sorted(claimed - real):
        problems.append(f"tags name {user} as an approver: no such approval in the audit chain")
    sha = tags.get("artifact_sha256")
    approved_sha = (
        request.artifact_sha256 if request and request.status == ApprovalStatus.APPROVED else None
    )
    if sha and approved_sha and sha != approved_sha:
        problems.append(
            f"tag artifact_sha256={sha[:12]}: the approval in the audit chain is for "
            f"{approved_sha[:12]}"
        )
    return problems
