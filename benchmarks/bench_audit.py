"""What the keyed audit chain costs: appends, full verification, and governance decisions
that fold approval state from the verified chain, at growing chain lengths.

Peers in the same run: the same chain verified as a plain SHA-256 chain (links and
hashes only, as before issue 21), so the cost of the HMAC check and of folding state
from the chain is visible beside it. SQLite (the embedded default) and PostgreSQL
(when it answers on 127.0.0.1:5432).

``python benchmarks/bench_audit.py [--sizes 1000,10000,100000] [--json PATH]``
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from common import write_result  # noqa: E402

from tests.support import PG_ADMIN_URL, pg_unavailable  # noqa: E402


def _bulk(url: str, n: int) -> None:
    """``n`` signed events written in one transaction with the chain's own formulas."""
    from sqlalchemy import insert
    from sqlalchemy.orm import Session

    from registry import audit, audit_keys
    from registry.store import AuditEvent, engine_for

    ring = audit.keyring_for(url)
    key = ring.keys[ring.active]
    start = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    prev, rows = audit.GENESIS, []
    for seq in range(1, n + 1):
        at = start + dt.timedelta(seconds=seq)
        payload = {"name": "roc_auc", "status": "pass", "value": 0.9, "i": seq}
        body = {
            "seq": seq,
            "occurred_at": audit.iso_utc(at),
            "kind": "gate_result",
            "actor": "govml-lifecycle",
            "model_name": "fraud",
            "model_version": None,
            "run_id": f"run-{seq // 20}",
            "payload": payload,
        }
        digest = audit.event_hash(prev, body)
        rows.append(
            {
                "seq": seq,
                "occurred_at": at,
                "kind": "gate_result",
                "actor": "govml-lifecycle",
                "model_name": "fraud",
                "model_version": None,
                "run_id": body["run_id"],
                "payload": audit.canonical_json(payload),
                "prev_hash": prev,
                "hash": digest,
                "key_id": ring.active,
                "mac": audit_keys.mac(key, audit.mac_message(digest)),
            }
        )
        prev = digest
    with Session(engine_for(url)) as session, session.begin():
        for i in range(0, len(rows), 5000):
            session.execute(insert(AuditEvent), rows[i : i + 5000])


def _timed(func, repeat: int = 3) -> float:  # noqa: ANN001
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        func()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def _unkeyed(url: str) -> None:
    """The chain checked as a plain SHA-256 chain (links and hashes, no MACs)."""
    from registry import audit_verify

    rows = audit_verify._read(url)  # noqa: SLF001 (the benchmark's peer path)
    for row in rows:
        row.mac = None
        row.key_id = None
    assert audit_verify._find_problem(rows, None) is None  # noqa: SLF001


def _measure(url: str, n: int) -> dict[str, float]:
    from pipelines.spec import load_spec
    from registry import approvals, audit
    from registry.audit_verify import verify_chain

    _bulk(url, n)
    spec = load_spec(ROOT / "specs" / "german_credit.yaml")
    approvals.grant_role(url, "reviewer", "model_risk", granted_by="admin")
    started = time.perf_counter()
    appends = 50
    for i in range(appends):
        audit.append_event(url, "drift_alarm", actor="monitor", payload={"i": i})
    append_ms = (time.perf_counter() - started) / appends * 1000
    result = {
        "events": n,
        "append_ms": append_ms,
        "verify_s": _timed(lambda: verify_chain(url, with_index=False)),
        "unkeyed_s": _timed(lambda: _unkeyed(url)),
        "state_s": _timed(lambda: approvals.governance_state(url)),
    }
    version = 0

    def request_and_decide() -> None:
        nonlocal version
        version += 1
        approvals.request_approval(
            url,
            spec,
            model_version=str(version),
            artifact_sha256="a" * 64,
            origin=approvals.RunOrigin(
                run_id=f"bench-{version}", dag_id=None, triggered_by="operator", author=None
            ),
            risk_reasons=[],
        )
        approvals.decide(
            url,
            spec.name,
            str(version),
            approvals.Review(user="reviewer", decision="approve", reason="bench", channel="cli"),
        )

    result["decide_s"] = _timed(request_and_decide) / 2  # two governance actions
    return result


def _pg_url() -> str | None:
    """A new database's URL on the test PostgreSQL server; None without one (SQLite only)."""
    from sqlalchemy.engine import make_url

    if pg_unavailable(PG_ADMIN_URL) is not None:
        return None
    database = f"govml_bench_{uuid.uuid4().hex[:8]}"
    return make_url(PG_ADMIN_URL).set(database=database).render_as_string(hide_password=False)


def _drop(url: str) -> None:
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    from registry.store import dispose_engines

    dispose_engines()
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{make_url(url).database}" WITH (FORCE)'))
    admin.dispose()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", default="1000,10000,100000")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["GOVML_AUDIT_KEY_FILE"] = str(Path(tmp) / "keys" / "audit-keys.json")
        os.environ["GOVML_AUDIT_CHECKPOINTS"] = f"file:{Path(tmp) / 'checkpoints.jsonl'}"
        for n in sizes:
            rows.append(("SQLite", _measure(f"sqlite:///{Path(tmp) / f'gov-{n}.db'}", n)))
            pg = _pg_url()
            if pg is not None:
                try:
                    rows.append(("PostgreSQL", _measure(pg, n)))
                finally:
                    _drop(pg)
    lines = [
        "| store | events | append (ms) | verify: keyed (s) | verify: hash-only peer (s) "
        "| fold approval state (s) | one governance action (s) |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for store, r in rows:
        lines.append(
            f"| {store} | {r['events']:,} | {r['append_ms']:.2f} | {r['verify_s']:.3f} | "
            f"{r['unkeyed_s']:.3f} | {r['state_s']:.3f} | {r['decide_s']:.3f} |"
        )
    markdown = "\n".join(lines) + (
        "\n\nA governance action (open a request and record a decision: the figure is one "
        "of them) checks every event's link and sequence number, re-hashes and MAC-checks the "
        "events approval state is folded from (and the newest), compares the newest "
        "checkpoint, and folds the state, under the chain's lock; its cost grows linearly "
        "with the chain. `verify: keyed` is `govml audit verify` (every event re-hashed and "
        "MAC-checked) without the index-row check; the hash-only peer is the same walk "
        "without MACs, as the chain was verified before issue 21.\n"
    )
    print(markdown)
    if args.json:
        write_result(
            args.json,
            {
                "title": "Audit chain: keyed verification and chain-derived approvals",
                "command": "python benchmarks/bench_audit.py",
                "markdown": markdown,
                "results": [{"store": s, **r} for s, r in rows],
            },
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
