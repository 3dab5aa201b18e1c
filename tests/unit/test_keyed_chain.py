"""The audit chain's key and checkpoints: key file, rotation, sinks, upgrade of a keyless store."""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from registry import audit, audit_keys, checkpoints
from registry.audit_verify import anchor, load_verified, rotate_key, verify_chain
from registry.store import dispose_engines, engine_for, upgrade
from tests.security.chain_attacks import append_forged, drop_append_only
from tests.support import free_port


@pytest.fixture
def url(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    monkeypatch.delenv("GOVML_AUDIT_KEY_FILE", raising=False)
    monkeypatch.delenv("GOVML_AUDIT_CHECKPOINTS", raising=False)
    yield f"sqlite:///{tmp_path / 'governance.db'}"
    dispose_engines()


def _events(url: str, n: int, start: int = 0) -> None:
    for i in range(start, start + n):
        audit.append_event(url, "gate_result", actor="pipeline", payload={"i": i})


# --------------------------------------------------------------------------- the key
def test_the_first_event_creates_a_private_keyring_beside_the_store(
    url: str, tmp_path: Path
) -> None:
    record = audit.append_event(url, "drift_alarm", actor="monitor")
    path = tmp_path / "keys" / "audit-keys.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    ring = audit_keys.load(path)
    assert ring is not None and record.key_id == ring.active and record.mac
    assert audit_keys.mac(ring.keys[ring.active], "govml-audit-v1\n" + record.hash) == record.mac
    secret = ring.keys[ring.active].hex()
    with engine_for(url).connect() as conn:  # the database holds no key material
        dump = " ".join(
            str(v) for row in conn.execute(text("SELECT * FROM audit_events")) for v in row
        )
    assert secret not in dump


def test_a_missing_or_readable_key_file_is_refused(url: str, tmp_path: Path) -> None:
    _events(url, 2)
    path = tmp_path / "keys" / "audit-keys.json"
    path.chmod(0o644)
    with pytest.raises(audit_keys.AuditKeyError, match="readable by others .* chmod 600 it"):
        audit.append_event(url, "drift_alarm", actor="monitor")
    path.chmod(0o600)
    path.rename(tmp_path / "elsewhere.json")
    with pytest.raises(audit.AuditError) as missing:
        audit.append_event(url, "drift_alarm", actor="monitor")
    assert str(missing.value) == (
        f"the audit key file {path} is missing, but the chain holds events signed with key "
        f"{audit.events(url)[0].key_id} (from seq 1): restore the keyring (GOVML_AUDIT_KEY_FILE)"
    )
    with pytest.raises(audit.AuditError, match="its events are signed but the key file"):
        verify_chain(url)
    assert len(audit.events(url)) == 2  # nothing was written with a new key


def test_the_key_file_can_live_elsewhere(
    url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret_mount = tmp_path / "secret" / "audit-keys.json"
    monkeypatch.setenv("GOVML_AUDIT_KEY_FILE", str(secret_mount))
    _events(url, 2)
    assert secret_mount.is_file() and not (tmp_path / "keys").exists()
    assert verify_chain(url).ok


# --------------------------------------------------------------------------- rotation
def test_rotation_switches_keys_in_the_chain_and_retires_the_old_one(
    url: str, tmp_path: Path
) -> None:
    _events(url, 3)
    old, new = rotate_key(url, actor="admin")
    assert old != new
    _events(url, 2, start=3)
    stored = audit.events(url)
    rotated = next(e for e in stored if e.kind == "audit_key_rotated")
    assert rotated.key_id == old and rotated.payload == {
        "new_key_id": new,
        "previous_key_id": old,
    }
    assert [e.key_id for e in stored if e.seq > rotated.seq] == [new, new]
    ring = audit_keys.load(tmp_path / "keys" / "audit-keys.json")
    assert ring is not None and ring.active == new and old in ring.keys
    assert verify_chain(url).ok

    # the retired key cannot sign anything new
    with engine_for(url).begin() as conn:
        drop_append_only(conn)
        seq = append_forged(
            conn,
            "role_granted",
            "admin",
            {"user": "x", "role": "y"},
            key=ring.keys[old],
            key_id=old,
        )
    report = verify_chain(url)
    assert report.first_bad_seq == seq
    assert report.problem == (
        f"event seq {seq} is signed with key {old}, but the chain's key at that point is {new} "
        "(forged with another or a retired key)"
    )


def test_a_rotation_interrupted_before_activation_loses_nothing(url: str, tmp_path: Path) -> None:
    _events(url, 2)
    path = tmp_path / "keys" / "audit-keys.json"
    _ring, new = audit_keys.add_key(path)
    audit.append_event(
        url,
        "audit_key_rotated",
        actor="admin",
        payload={"previous_key_id": audit.events(url)[0].key_id, "new_key_id": new},
    )
    # the process died here: the file still names the old key as active
    record = audit.append_event(url, "drift_alarm", actor="monitor")
    assert record.key_id == new  # the chain decides which key signs next
    assert verify_chain(url).ok


# --------------------------------------------------------------------------- checkpoints
def test_anchor_writes_a_signed_checkpoint_once_per_new_head(url: str, tmp_path: Path) -> None:
    assert anchor(url, actor="test") is None  # an empty chain has nothing to vouch for
    _events(url, 3)
    first = anchor(url, actor="test", reason="after deployment")
    assert first is not None and (first.seq, first.events) == (3, 3)
    assert anchor(url, actor="test") is None  # only the checkpoint's own event since
    _events(url, 1, start=3)
    second = anchor(url, actor="test")
    assert second is not None and second.seq == 5
    path = checkpoints.default_file(url)
    assert path.parent == tmp_path / "audit" and stat.S_IMODE(path.stat().st_mode) == 0o600
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert [c["seq"] for c in lines] == [3, 5]
    event = audit.events(url, kinds=["audit_checkpoint"])[0]
    assert event.payload["seq"] == 3 and event.payload["sinks"] == [f"file:{path}"]
    report = verify_chain(url)
    assert report.ok and report.checkpoints == (f"file:{path}: seq 5 at {second.at} ok",)


def test_a_forged_checkpoint_is_reported(url: str) -> None:
    _events(url, 3)
    cp = anchor(url, actor="test")
    assert cp is not None
    path = checkpoints.default_file(url)
    forged = json.loads(path.read_text().splitlines()[-1]) | {"seq": 9, "hash": "0" * 64}
    with path.open("a") as handle:
        handle.write(json.dumps(forged) + "\n")
    report = verify_chain(url)
    assert not report.ok
    assert report.problem.endswith(
        "is not authentic: its MAC does not match (key " + cp.key_id + ")"
    )
    with pytest.raises(audit.AuditError, match="governance actions are refused"):
        load_verified(url)


def test_checkpoints_in_an_mlflow_run(url: str, tmp_path: Path, monkeypatch) -> None:  # noqa: ANN001
    from mlflow import MlflowClient

    tracking = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("GOVML_AUDIT_CHECKPOINTS", f"mlflow:{tracking}")
    artifacts = tmp_path / "artifacts"
    MlflowClient(tracking).create_experiment(
        checkpoints.MLFLOW_EXPERIMENT, artifact_location=artifacts.as_uri()
    )
    _events(url, 2)
    cp = anchor(url, actor="test")
    assert cp is not None
    sink = checkpoints.sinks_for(url)[0]
    assert sink.name == f"mlflow:{tracking}"
    assert sink.latest() == cp
    _events(url, 1, start=2)
    later = anchor(url, actor="test")
    assert later is not None and sink.latest() == later
    assert verify_chain(url).ok
    assert len(list(artifacts.rglob("*.json"))) == 2  # one artifact per checkpoint


@pytest.fixture
def s3(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A real S3 endpoint on loopback (moto's server), with a bucket that has Object Lock."""
    import boto3
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    for name, value in {
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
    }.items():
        monkeypatch.setenv(name, value)
    boto3.client("s3").create_bucket(Bucket="audit", ObjectLockEnabledForBucket=True)
    yield "audit"
    server.stop()


def test_checkpoints_in_an_object_lock_bucket_cannot_be_deleted(
    url: str, s3: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import boto3

    monkeypatch.setenv("GOVML_AUDIT_CHECKPOINTS", f"s3://{s3}/governance?retention_days=30")
    _events(url, 2)
    cp = anchor(url, actor="test")
    assert cp is not None
    client = boto3.client("s3")
    listed = client.list_object_versions(Bucket=s3, Prefix="governance/")["Versions"]
    assert [v["Key"] for v in listed] == [f"governance/{cp.seq:012d}-{cp.hash[:16]}.json"]
    head = client.head_object(Bucket=s3, Key=listed[0]["Key"])
    assert head["ObjectLockMode"] == "COMPLIANCE"
    assert head["ObjectLockRetainUntilDate"] > dt.datetime.now(dt.UTC) + dt.timedelta(days=29)
    with pytest.raises(Exception, match="AccessDenied"):  # noqa: PT011 (botocore's ClientError)
        client.delete_object(Bucket=s3, Key=listed[0]["Key"], VersionId=listed[0]["VersionId"])
    assert checkpoints.sinks_for(url)[0].latest() == cp
    # a truncation after it is named through the bucket's checkpoint
    with engine_for(url).begin() as conn:
        drop_append_only(conn)
        conn.execute(text("DELETE FROM audit_events WHERE seq >= 2"))
    report = verify_chain(url)
    assert report.first_bad_seq == 2 and "truncated after a checkpoint" in report.problem


def test_an_unreadable_sink_is_reported_not_ignored(
    url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GOVML_AUDIT_CHECKPOINTS", "s3://audit/x")
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    _events(url, 1)
    report = verify_chain(url)
    assert not report.ok
    assert report.checkpoints[0].startswith("s3://audit/x/: UNREADABLE (cannot read checkpoints")


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("relative/path.jsonl", "is not a sink (use file:/ABSOLUTE/PATH"),
        ("s3://", "names no bucket"),
        ("s3://b/p?retention_days=x", "retention_days must be a number"),
        ("s3://b/p?retention_days=0", "retention_days must be at least 1"),
    ],
)
def test_bad_sink_settings_get_one_clear_line(url: str, spec: str, message: str) -> None:
    with pytest.raises(checkpoints.CheckpointError, match=re.escape(message)):
        checkpoints.sinks_for(url, spec)


# --------------------------------------------------------------------------- upgrade
def test_a_keyless_store_is_upgraded_and_its_rows_backed(url: str, tmp_path: Path) -> None:
    """A 0002 store with unsigned events and mutable rows: 0003 keeps and indexes them."""
    upgrade(url, "0002_governance")
    raw = create_engine(url)
    at = "2026-11-30 10:00:00.000000"
    with raw.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO role_grants (user_name, role, granted_by, granted_at) "
                "VALUES ('ana', 'model_risk', 'admin', :at)"
            ),
            {"at": at},
        )
        append_forged(conn, "role_granted", "admin", {"user": "ana", "role": "model_risk"})
        conn.execute(
            text(
                "INSERT INTO approval_requests (model_name, model_version, artifact_sha256,"
                " run_id, triggered_by, approver_roles, required_approvers, risk_reasons, status,"
                " requested_at,"
                " respond_by, valid_for_seconds) VALUES ('fraud', '3', :sha, 'run-1', 'operator',"
                " '[\"model_risk\"]', 1, '[]', 'pending', :at, '2099-01-01 00:00:00.000000',"
                " 86400)"
            ),
            {"sha": "a" * 64, "at": at},
        )
        append_forged(
            conn,
            "approval_requested",
            "operator",
            {
                "request_id": 1,
                "artifact_sha256": "a" * 64,
                "required_approvers": 1,
                "approver_roles": ["model_risk"],
                "risk_reasons": [],
                "triggered_by": "operator",
                "author": None,
                "respond_by": "2099-01-01T00:00:00+00:00",
            },
            model_name="fraud",
            model_version="3",
            run_id="run-1",
        )
    raw.dispose()
    dispose_engines()
    engine_for(url)  # migrates to head
    with engine_for(url).connect() as conn:
        seqs = conn.execute(text("SELECT audit_seq FROM approval_requests")).scalars().all()
        roles = conn.execute(text("SELECT user_name, action, audit_seq FROM role_changes")).all()
    assert seqs == [2] and [tuple(r) for r in roles] == [("ana", "grant", 1)]
    record = audit.append_event(url, "drift_alarm", actor="monitor")
    assert record.seq == 3 and record.mac  # the first signed event vouches for 1-2
    report = verify_chain(url)
    assert report.ok and report.keyed_from == 3, report
    assert audit.events(url)[0].mac is None
    # an unsigned event after the keyed one is a forgery
    with engine_for(url).begin() as conn:
        drop_append_only(conn)
        append_forged(conn, "drift_alarm", "monitor", {})
    assert verify_chain(url).first_bad_seq == 4
    assert os.environ.get("GOVML_AUDIT_KEY_FILE") is None


# --------------------------------------------------------------------------- the fast check
def test_governance_reads_refuse_a_rewrite_of_any_event(url: str) -> None:
    """Governance reads re-hash only the events they fold (and the newest): a consistent
    rewrite of any other event still changes the newest event's hash, so it is refused."""
    from registry import approvals
    from tests.security.chain_attacks import rewrite_from

    _events(url, 3)
    approvals.grant_role(url, "ana", "model_risk", granted_by="admin")
    _events(url, 3, start=3)
    with engine_for(url).begin() as conn:
        drop_append_only(conn)
        rewrite_from(conn, 2, {"i": 99})
    with pytest.raises(audit.AuditError, match="audit chain broken at seq 2: event seq 2 is not"):
        approvals.roles_of(url, "ana")
    with engine_for(url).begin() as conn:
        conn.execute(text("DELETE FROM audit_events WHERE seq >= 2"))
        append_forged(conn, "gate_result", "pipeline", {"i": 1})
    with pytest.raises(audit.AuditError, match="audit chain broken at seq 2: event seq 2 is not"):
        approvals.roles_of(url, "ana")


# --------------------------------------------------------------------------- the CLI
def test_cli_rotate_key_needs_a_proven_admin(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from ops.cli import main

    for name in ("GOVML_GOVERNANCE_URL", "AIRFLOW_HOME", "GOVML_AIRFLOW_USERS"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("GOVML_VAR_DIR", str(tmp_path / "var"))
    monkeypatch.setenv("GOVML_AIRFLOW_PORT", str(free_port()))  # no Airflow: the password file
    passwords = tmp_path / "var" / "airflow" / "passwords.json"
    passwords.parent.mkdir(parents=True)
    passwords.write_text(json.dumps({"admin": "s3cret", "reviewer": "r3view"}))
    passwords.chmod(0o600)
    (tmp_path / "pw").write_text("s3cret")
    url = f"sqlite:///{tmp_path / 'var' / 'governance.db'}"
    _events(url, 2)
    assert main(["audit", "rotate-key", "--by", "reviewer", "--password-file", str(passwords)]) != 0
    assert "reviewer is not an admin user: only admins rotate the audit key" in (
        capsys.readouterr().err
    )
    (tmp_path / "wrong").write_text("guess")
    assert (
        main(["audit", "rotate-key", "--by", "admin", "--password-file", str(tmp_path / "wrong")])
        != 0
    )
    assert "authentication failed for admin" in capsys.readouterr().err
    assert (
        main(["audit", "rotate-key", "--by", "admin", "--password-file", str(tmp_path / "pw")]) == 0
    )
    out = capsys.readouterr().out
    assert out.startswith("audit key rotated: ") and "s3cret" not in out
    rotated = audit.events(url, kinds=["audit_key_rotated"])
    assert len(rotated) == 1 and rotated[0].actor == "admin"
    assert main(["audit", "verify"]) == 0
