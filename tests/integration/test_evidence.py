"""The evidence pack (``govml audit export``) of a version that went through the whole
governed lifecycle: a real German Credit DAG run (MLflow registry, governance store),
two model-risk approvals, the release as challenger; then the pack must prove it,
and must say so loudly when somebody changed the audit trail afterwards."""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import html
import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote

import pytest

from ops import stack
from ops.cli.evidence import add_export_parser
from pipelines.config import Settings, load_settings
from pipelines.errors import GovMLError, RegistryError
from tests.support import stack_env

ROOT = Path(__file__).resolve().parents[2]
MODEL = "german_credit"
TRIGGERED_BY = "operator"  # proven by its password (run_dag --as)
APPROVERS = ("bob", "carol")
DEPLOYER = "ops-dave"
VALIDATOR = "val-erin"
pytestmark = pytest.mark.slow


@dataclass(frozen=True)
class Released:
    """A version released by the lifecycle, in an isolated stack."""

    settings: Settings
    version: str
    run_id: str
    reasons: dict[str, str]
    release: dict


def _reason(user: str) -> str:
    return f"{user}: gates, fairness & SHAP reviewed <no objections>"


def _run_lifecycle(var_dir: Path) -> tuple[Settings, str]:
    """Prepare the stores and run the German Credit DAG up to the approval request."""
    env = stack_env(var_dir)
    settings = load_settings(env)
    env.update(stack.airflow_env(settings))
    env["MLFLOW_TRACKING_URI"] = f"sqlite:///{var_dir / 'mlflow' / 'mlflow.db'}"
    env["GOVML_GOVERNANCE_URL"] = settings.governance_url
    saved = dict(os.environ)
    try:
        os.environ.update(env)
        stack.prepare_stores(settings)
    finally:
        os.environ.clear()
        os.environ.update(saved)
    env["GOVML_PASSWORD"] = stack.airflow_passwords(settings)[TRIGGERED_BY]
    run_after = dt.datetime(2026, 11, 2, 9, tzinfo=dt.UTC)
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "dags.govml_airflow.run_dag",
            str(ROOT / "specs" / f"{MODEL}.yaml"),
            "--run-after",
            run_after.isoformat(),
            "--as",
            TRIGGERED_BY,
        ],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    return load_settings(env), f"manual__{run_after.isoformat()}"


@pytest.fixture(scope="module")
def released(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Released]:
    import mlflow

    from registry import approvals, governance

    settings, run_id = _run_lifecycle(tmp_path_factory.mktemp("evidence") / "var")
    url = settings.governance_url
    (request,) = approvals.list_requests(url, MODEL)
    assert request.status == "pending" and request.triggered_by == TRIGGERED_BY
    version = request.model_version
    reasons = {}
    for user in APPROVERS[: max(request.required_approvers, 1)]:
        approvals.grant_role(url, user, "model_risk", granted_by="admin")
        reasons[user] = _reason(user)
        state = approvals.decide(
            url,
            MODEL,
            version,
            approvals.Review(user=user, decision="approve", reason=reasons[user], channel="cli"),
        )
    assert state.status == "approved"
    # A deploy task has MLFLOW_TRACKING_URI in its environment; artifact_sha256_of resolves
    # models:/ URIs through MLflow's process-wide registry URI, so give it the same here.
    mlflow.set_tracking_uri(settings.mlflow_tracking_uri)
    mlflow.set_registry_uri(settings.mlflow_tracking_uri)
    from ops.deploy import deployer_for, serve_release
    from pipelines.runs import safe_run_id

    run_dir = settings.runs_dir / MODEL / safe_run_id(run_id)
    release = governance.release_approved(
        url,
        settings.mlflow_tracking_uri,
        MODEL,
        version,
        actor=DEPLOYER,
        run_id=run_id,
        serve=lambda state: serve_release(
            settings, run_dir, state, spec_path=ROOT / "specs" / f"{MODEL}.yaml"
        ),
    )
    try:
        yield Released(settings, version, run_id, reasons, release)
    finally:
        deployer_for(settings).stop(f"german-credit-v{version}")


def _cli(argv: list[str], settings: Settings) -> int:
    """``govml audit export ...`` as ``ops.cli.main`` runs it (one-line errors)."""
    parser = argparse.ArgumentParser(prog="govml")
    sub = parser.add_subparsers(dest="command", required=True)
    audit = sub.add_parser("audit")
    add_export_parser(audit.add_subparsers(dest="action", required=True))
    args = parser.parse_args(argv)
    try:
        return int(args.func(args, settings))
    except GovMLError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code


def _all_files(folder: Path) -> dict[str, Path]:
    return {p.relative_to(folder).as_posix(): p for p in folder.rglob("*") if p.is_file()}


def _check_manifest(folder: Path) -> dict:
    """Every file is listed with its true SHA-256 and size; pack_sha256 recomputes."""
    manifest = json.loads((folder / "manifest.json").read_text())
    files = _all_files(folder)
    assert set(manifest["files"]) == set(files) - {"manifest.json"}
    lines = []
    for rel, entry in manifest["files"].items():
        data = files[rel].read_bytes()
        assert entry["sha256"] == hashlib.sha256(data).hexdigest(), rel
        assert entry["size"] == len(data), rel
        lines.append(f"{rel} {entry['sha256']}\n")
    recomputed = hashlib.sha256("".join(sorted(lines)).encode()).hexdigest()
    assert manifest["pack_sha256"] == recomputed
    return manifest


def _event_hash_ok(event: dict) -> bool:
    from registry.audit import event_hash

    body = {k: event[k] for k in ("seq", "occurred_at", "kind", "actor", "model_name")}
    body |= {k: event[k] for k in ("model_version", "run_id", "payload")}
    return event_hash(event["prev_hash"], body) == event["hash"]


def test_export_writes_a_verifiable_self_contained_pack(released: Released, tmp_path: Path) -> None:
    from registry.audit import events
    from registry.audit_verify import verify_chain
    from registry.evidence import export_evidence
    from registry.lineage import lineage_for_run

    url = released.settings.governance_url
    out = tmp_path / "pack"
    out.mkdir()  # an existing empty folder is fine
    head_before = verify_chain(url)
    result = export_evidence(released.settings, MODEL, released.version, out, actor=VALIDATOR)

    assert result.chain_ok and result.out_dir == out and result.files == len(_all_files(out))
    for name in ("index.html", "evidence.json", "manifest.json", "lineage.json", "gates.json"):
        assert (out / name).is_file(), name
    for name in ("approvals.json", "deployments.json", "audit_segment.json"):
        assert (out / name).is_file(), name
    manifest = _check_manifest(out)
    assert manifest["pack_sha256"] == result.pack_sha256

    page = (out / "index.html").read_text()
    evidence = json.loads((out / "evidence.json").read_text())
    # self-contained: no scripts or stylesheets, and every link is relative and resolves
    assert "<script" not in page and "<link" not in page and "@import" not in page
    targets = re.findall(r'(?:href|src)="([^"]+)"', page)
    assert "data_validation/data_docs/index.html" in targets
    assert re.search(r'<img [^>]*src="explain/shap_summary\.png"', page)
    for target in targets:
        if target.startswith("#"):
            continue
        assert not re.match(r"^([a-z]+:|/)", target), target
        assert (out / unquote(html.unescape(target))).is_file(), target
    assert (out / "explain" / "shap_summary.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for folder in ("data_validation", "fairness", "explain", "gates", "model_card", "evaluate"):
        assert any((out / folder).iterdir()), folder
    assert (out / "model_card" / "model_card.html").is_file()

    # headline and lineage
    assert evidence["status"]["stage"] == "challenger"
    assert {"candidate", "challenger"} <= set(evidence["status"]["aliases"])
    assert evidence["status"]["approval"] == "approved"
    stored = {e.kind: e for e in lineage_for_run(url, released.run_id)}
    lineage = json.loads((out / "lineage.json").read_text())
    assert lineage["datasets"][0]["sha256"] == stored["dataset"].sha256
    assert lineage["code_version"] == stored["code"].details["version"]
    assert evidence["data_validation"]["passed"] is True
    assert evidence["gates"]["passed"] is True and evidence["gates"]["checks"]
    assert all(c["ok"] for c in evidence["cross_checks"]), evidence["cross_checks"]

    # approvals: who, why, and the four-eyes facts
    (request,) = json.loads((out / "approvals.json").read_text())["requests"]
    assert request["status"] == "approved" and request["triggered_by"] == TRIGGERED_BY
    decided = {d["user"]: d for d in request["decisions"]}
    assert set(decided) == set(released.reasons)
    for user, reason in released.reasons.items():
        assert decided[user]["reason"] == reason and decided[user]["decision"] == "approve"
        assert html.escape(reason, quote=False) in page
        assert reason not in page  # escaped, never raw markup
    # the deployment
    (deployed,) = json.loads((out / "deployments.json").read_text())["deployments"]
    assert deployed["action"] == "deployed" and deployed["actor"] == DEPLOYER
    assert deployed["details"]["alias"] == "challenger" and DEPLOYER in page

    # the audit segment: the whole story, in chain order, every hash rechecks
    segment = json.loads((out / "audit_segment.json").read_text())
    kinds = [e["kind"] for e in segment["events"]]
    story = [
        "data_validated",
        "gate_result",
        "model_registered",
        "approval_requested",
        "approval_granted",
        "deployed",
    ]
    positions = [kinds.index(kind) for kind in story]
    assert positions == sorted(positions), kinds
    seqs = [e["seq"] for e in segment["events"]]
    assert seqs == sorted(set(seqs))
    assert all(_event_hash_ok(event) for event in segment["events"])
    for before, event in zip(segment["events"], segment["events"][1:], strict=False):
        if event["seq"] == before["seq"] + 1:
            assert event["prev_hash"] == before["hash"], event["seq"]
    assert segment["chain"]["ok"] and evidence["chain"]["state"] == "OK"
    assert evidence["chain"]["head_hash"] == head_before.head_hash
    assert "Audit chain OK" in page and head_before.head_hash in page

    # the export is itself audited
    exported = events(url, model_name=MODEL, kinds=["evidence_exported"])[-1]
    assert exported.actor == VALIDATOR and exported.model_version == released.version
    assert exported.seq == head_before.head_seq + 1
    assert exported.payload["pack_sha256"] == result.pack_sha256
    assert exported.payload["out_dir"] == str(out) and exported.payload["files"] == result.files
    assert verify_chain(url).ok


def test_export_refuses_a_non_empty_folder_and_an_unknown_version(
    released: Released, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from registry.audit import events

    url = released.settings.governance_url
    exports_before = len(events(url, kinds=["evidence_exported"]))
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("keep me")
    argv = ["audit", "export", MODEL, released.version, "--out", str(busy)]
    assert _cli(argv, released.settings) == RegistryError.exit_code
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "not empty" in err and str(busy) in err
    assert [p.name for p in busy.iterdir()] == ["notes.txt"]
    assert (busy / "notes.txt").read_text() == "keep me"

    fresh = tmp_path / "fresh"
    argv = ["audit", "export", MODEL, "99", "--out", str(fresh)]
    assert _cli(argv, released.settings) == RegistryError.exit_code
    err = capsys.readouterr().err.strip()
    assert err == f"error: {MODEL} has no version '99' (versions: {released.version})"
    argv = ["audit", "export", "no_such_model", "1", "--out", str(fresh)]
    assert _cli(argv, released.settings) == RegistryError.exit_code
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no registered model named 'no_such_model'" in err
    assert not fresh.exists()
    assert not list(tmp_path.glob(".*partial*"))  # no half-written pack left behind
    assert len(events(url, kinds=["evidence_exported"])) == exports_before


def test_reports_missing_in_mlflow_come_from_the_run_folder(
    released: Released, tmp_path: Path
) -> None:
    import shutil
    from urllib.parse import urlsplit

    from mlflow import MlflowClient

    from registry.evidence import export_evidence
    from registry.mlflow_evidence import version_record

    uri = released.settings.mlflow_tracking_uri
    run_id = version_record(uri, MODEL, released.version)["run_id"]
    run = MlflowClient(tracking_uri=uri).get_run(run_id)
    store = Path(urlsplit(run.info.artifact_uri).path)
    for stage in ("fairness", "explain"):
        shutil.rmtree(store / stage)

    out = tmp_path / "pack"
    export_evidence(released.settings, MODEL, released.version, out, actor=VALIDATOR)
    _check_manifest(out)
    reports = json.loads((out / "evidence.json").read_text())["reports"]
    assert reports["fairness"]["source"] == reports["explain"]["source"] == "run folder"
    assert reports["gates"]["source"] == "mlflow"
    assert (out / "fairness" / "fairness.json").is_file()
    assert (out / "explain" / "shap_summary.png").is_file()
    assert not list(out.rglob("*.parquet"))  # data (reason codes) never leaves the run folder
    assert 'src="explain/shap_summary.png"' in (out / "index.html").read_text()


def test_the_deploy_step_serves_exactly_the_approved_version(released: Released) -> None:
    """The deploy step started the version's model server (local deployer), which loaded
    the approved artifact and scored the run's test rows exactly like the pipeline."""
    import urllib.request

    import pandas as pd

    from ops.deploy import service_token
    from pipelines.runs import safe_run_id
    from pipelines.training import load_model
    from registry.governance import deployments

    endpoint = released.release["endpoint"]
    assert endpoint and endpoint.startswith("http://127.0.0.1:")
    (row,) = deployments(released.settings.governance_url, MODEL, released.version)
    assert row["environment"] == "local"
    assert row["details"]["smoke_test"]["rows_checked"] > 0
    run_dir = released.settings.runs_dir / MODEL / safe_run_id(released.run_id)
    names = json.loads((run_dir / "features" / "features.json").read_text())["features"]
    sample = pd.read_parquet(run_dir / "features" / "test.parquet", columns=names).dropna()
    sample = sample.tail(5)
    body = json.dumps({"instances": sample.to_dict(orient="records")}).encode()
    token = service_token(released.settings, MODEL, released.version)
    req = urllib.request.Request(
        f"{endpoint}/v1/models/{MODEL}:predict",
        data=body,
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {token}"},
    )
    with urllib.request.urlopen(req, timeout=30) as resp:
        answer = json.loads(resp.read())
    expected = load_model(run_dir / "train" / "model.txt").predict(sample)
    assert answer["predictions"] == expected.tolist()
    assert answer["model_sha256"] == row["artifact_sha256"]


def test_tags_claiming_an_approval_the_chain_does_not_hold_are_flagged(
    released: Released, tmp_path: Path
) -> None:
    """Attack 1's evidence-pack half: MLflow tags are a mirror; the chain is the record."""
    from mlflow import MlflowClient

    from registry.evidence import export_evidence
    from registry.mlflow_registry import tag_version

    tracking = released.settings.mlflow_tracking_uri
    tag_version(tracking, MODEL, released.version, {"govml.approval.approve.mallory": "lgtm"})
    try:
        out = tmp_path / "pack-forged-tags"
        export_evidence(released.settings, MODEL, released.version, out, actor=VALIDATOR)
        evidence = json.loads((out / "evidence.json").read_text())
        (check,) = [
            c
            for c in evidence["cross_checks"]
            if c["check"].startswith("the version's approval tags")
        ]
        assert check["ok"] is False
        assert check["detail"] == (
            "tags name mallory as an approver: no such approval in the audit chain"
        )
    finally:
        MlflowClient(tracking).delete_model_version_tag(
            MODEL, released.version, "govml.approval.approve.mallory"
        )


def test_a_tampered_audit_row_makes_the_pack_say_broken(
    released: Released, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Runs last in this module: it breaks the module's audit chain on purpose."""
    from sqlalchemy import create_engine, text

    from registry.audit import canonical_json, events

    url = released.settings.governance_url
    assert url.startswith("sqlite:")
    granted = events(url, model_name=MODEL, kinds=["approval_granted"])[0]
    forged = dict(granted.payload, reason="approved without review")
    engine = create_engine(url)
    with engine.begin() as conn:
        # the migrations' append-only triggers (registry/migrations/versions/)
        conn.execute(text("DROP TRIGGER IF EXISTS audit_events_no_update"))
        conn.execute(
            text("UPDATE audit_events SET payload = :payload WHERE seq = :seq"),
            {"payload": canonical_json(forged), "seq": granted.seq},
        )
    engine.dispose()

    out = tmp_path / "pack-after-tamper"
    argv = ["audit", "export", MODEL, released.version, "--out", str(out)]  # as the host account
    assert _cli(argv, released.settings) == RegistryError.exit_code
    captured = capsys.readouterr()
    assert str(out / "index.html") in captured.out
    assert f"BROKEN at seq {granted.seq}" in captured.err and str(out) in captured.err
    assert len(captured.err.strip().splitlines()) == 1

    _check_manifest(out)  # the pack itself is still complete and consistent
    evidence = json.loads((out / "evidence.json").read_text())
    assert evidence["chain"]["ok"] is False
    assert evidence["chain"]["first_bad_seq"] == granted.seq
    assert evidence["chain"]["state"] == f"BROKEN at seq {granted.seq}"
    assert "modified" in evidence["chain"]["problem"]
    segment = json.loads((out / "audit_segment.json").read_text())
    forged_row = next(e for e in segment["events"] if e["seq"] == granted.seq)
    assert forged_row["hash_ok"] is False and not _event_hash_ok(forged_row)
    assert segment["segment_bad_seqs"] == [granted.seq]
    page = (out / "index.html").read_text()
    banner = re.search(r'<div class="banner broken" id="chain-state">(.*?)</div>', page, re.S)
    assert banner and f"AUDIT CHAIN BROKEN at seq {granted.seq}" in banner.group(1)
    assert page.index("AUDIT CHAIN BROKEN") < page.index('id="summary"')  # above everything

    exported = events(url, model_name=MODEL, kinds=["evidence_exported"])[-1]
    assert exported.payload["chain_ok"] is False and exported.payload["out_dir"] == str(out)
    assert exported.actor.startswith("host:")  # the uid's account, never $USER
