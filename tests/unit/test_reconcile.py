"""The locked registry's pieces that need no MLflow server: the evidence pack's check of
approval tags against the chain, the recorded endpoint of a version, the chain's view
of which versions are in service, and the credentials files and client login.

(The reconciler against a real basic-auth MLflow server: tests/security/
test_locked_registry.py; make up's serving and endpoints: tests/integration/
test_stack_endpoints.py.)
"""

from __future__ import annotations

import configparser
import os
from pathlib import Path

import pytest

from pipelines.spec import load_spec
from registry import approvals, audit, governance, mlflow_auth
from registry.evidence_audit import tag_claims_without_chain
from registry.reconcile import (
    active_versions,
    record_endpoint,
    recorded_endpoint,
)

ROOT = Path(__file__).resolve().parents[2]
SPEC = load_spec(ROOT / "specs" / "german_credit.yaml")  # one approver, model_risk
SHA = "a" * 64


@pytest.fixture
def url(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'governance.db'}"
    for user in ("reviewer", "validator"):
        approvals.grant_role(url, user, "model_risk", granted_by="test-admin")
    return url


def _approved(url: str, version: str = "3") -> approvals.ApprovalState:
    approvals.request_approval(
        url,
        SPEC,
        model_version=version,
        artifact_sha256=SHA,
        origin=approvals.RunOrigin(
            run_id=f"run-{version}", dag_id=None, triggered_by="operator", author="alice"
        ),
        risk_reasons=[],
    )
    return approvals.decide(
        url,
        SPEC.name,
        version,
        approvals.Review(user="reviewer", decision="approve", reason="ok", channel="cli"),
    )


# --------------------------------------------------------------------------- approval tags
def test_tags_that_mirror_the_chain_claim_nothing_more(url: str) -> None:
    state = _approved(url)
    tags = state.mlflow_tags() | {"artifact_sha256": SHA}
    assert tag_claims_without_chain(tags, [state]) == []


def test_forged_approval_tags_are_each_named(url: str) -> None:
    approvals.request_approval(
        url,
        SPEC,
        model_version="4",
        artifact_sha256=SHA,
        origin=approvals.RunOrigin(
            run_id="run-4", dag_id=None, triggered_by="operator", author="alice"
        ),
        risk_reasons=[],
    )
    pending = approvals.get_request(url, SPEC.name, "4")
    forged = {
        "govml.approval.request_id": str(pending.id),
        "govml.approval.status": "approved",
        "govml.approval.approvers": "mallory,reviewer",
        "govml.approval.approve.eve": "2026-11-02T09:00:00+00:00 via cli: fine",
        "artifact_sha256": "b" * 64,
    }
    assert tag_claims_without_chain(forged, [pending]) == [
        "tag govml.approval.status=approved: the audit chain holds pending for this version",
        "tags name eve as an approver: no such approval in the audit chain",
        "tags name mallory as an approver: no such approval in the audit chain",
        "tags name reviewer as an approver: no such approval in the audit chain",
    ]
    assert tag_claims_without_chain({"govml.approval.request_id": "99"}, [pending]) == [
        "tag govml.approval.request_id=99: the audit chain has no such approval request "
        "for this version"
    ]
    assert tag_claims_without_chain({"govml.approval.status": "approved"}, []) == [
        "tag govml.approval.status=approved: the audit chain holds no request for this version"
    ]


def test_an_artifact_tag_other_than_the_approved_one_is_named(url: str) -> None:
    state = _approved(url)
    tags = state.mlflow_tags() | {"artifact_sha256": "c" * 64}
    assert tag_claims_without_chain(tags, [state]) == [
        "tag artifact_sha256=cccccccccccc: the approval in the audit chain is for aaaaaaaaaaaa"
    ]


# --------------------------------------------------------------------------- endpoints
def test_the_recorded_endpoint_follows_the_live_one(url: str) -> None:
    state = _approved(url)
    governance.record_deployment(
        url, state, environment="local", action="deployed", actor="govml-lifecycle",
        details={"endpoint": "http://127.0.0.1:9001", "transformer": {"url": None}},
        consume=True,
    )  # fmt: skip
    assert recorded_endpoint(url, SPEC.name, "3") == {
        "url": "http://127.0.0.1:9001",
        "transformer": None,
    }
    assert recorded_endpoint(url, SPEC.name, "9") is None  # never deployed
    assert not record_endpoint(url, SPEC.name, "3", "http://127.0.0.1:9001", reason="same")
    assert record_endpoint(url, SPEC.name, "3", "http://127.0.0.1:9002", reason="make up")
    assert recorded_endpoint(url, SPEC.name, "3")["url"] == "http://127.0.0.1:9002"
    assert record_endpoint(url, SPEC.name, "3", None, reason="gone")
    assert recorded_endpoint(url, SPEC.name, "3") == {"url": None, "transformer": None}
    assert not record_endpoint(url, SPEC.name, "9", None, reason="never served")
    moves = audit.events(url, model_name=SPEC.name, kinds=["endpoint_reconciled"])
    assert [(e.payload["from_url"], e.payload["to_url"]) for e in moves] == [
        ("http://127.0.0.1:9001", "http://127.0.0.1:9002"),
        ("http://127.0.0.1:9002", None),
    ]
    assert {e.actor for e in moves} == {"govml-reconciler"}


def test_versions_in_service_are_read_from_the_deployment_history(url: str) -> None:
    history = {"1": ["deployed", "promoted"], "2": ["deployed"], "3": ["deployed", "rolled_back"]}
    history["4"] = ["deployed", "canary"]
    for version, actions in history.items():
        state = _approved(url, version)
        for i, action in enumerate(actions):
            governance.record_deployment(
                url, state, environment="local", action=action, actor="govml-lifecycle",
                consume=i == 0,
            )  # fmt: skip
    assert active_versions(url, SPEC.name) == ["4", "2", "1"]  # 3 was rolled back


# --------------------------------------------------------------------------- credentials
def test_credentials_are_private_and_the_config_survives_a_percent_in_a_url(
    tmp_path: Path,
) -> None:
    var = tmp_path / "var"
    db = "postgresql+psycopg://govml:p%40ss@db.internal/mlflow_auth"
    path = mlflow_auth.write_server_config(var, db)
    folder = mlflow_auth.auth_dir(var)
    assert folder.stat().st_mode & 0o777 == 0o700
    for name in ("admin.json", "basic_auth.ini"):
        assert (folder / name).stat().st_mode & 0o777 == 0o600
    config = configparser.ConfigParser()  # MLflow reads it this way (with interpolation)
    config.read(path)
    assert config["mlflow"]["database_uri"] == db
    assert config["mlflow"]["default_permission"] == "NO_PERMISSIONS"
    admin, secret = mlflow_auth.ensure_admin_account(var)
    assert config["mlflow"]["admin_username"] == admin.username == "govml-admin"
    assert admin.password not in repr(admin)
    assert mlflow_auth.server_env(var) == {
        "MLFLOW_AUTH_CONFIG_PATH": str(path),
        "MLFLOW_FLASK_SERVER_SECRET_KEY": secret,
    }
    again = mlflow_auth.write_server_config(var, db)  # made once: the same secrets
    assert again == path and mlflow_auth.ensure_admin_account(var) == (admin, secret)


def test_clients_log_in_as_the_service_account_unless_told_otherwise(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    var = tmp_path / "var"
    for name in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(mlflow_auth, "_applied", {})
    server = "http://127.0.0.1:5999"
    assert not mlflow_auth.use_service_account(server, var)  # no file yet: nothing to use
    account = mlflow_auth.ensure_service_account(var)
    assert (mlflow_auth.service_file(var).stat().st_mode & 0o777) == 0o600
    assert not mlflow_auth.use_service_account("sqlite:///mlflow.db", var)  # no server, no login
    assert "MLFLOW_TRACKING_USERNAME" not in os.environ
    assert mlflow_auth.use_service_account(server, var)
    assert os.environ["MLFLOW_TRACKING_USERNAME"] == "govml" == account.username
    assert os.environ["MLFLOW_TRACKING_PASSWORD"] == account.password
    # credentials someone put in the environment (a secret store) win
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "ci-bot")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "from-the-vault")
    assert not mlflow_auth.use_service_account(server, var)
    assert os.environ["MLFLOW_TRACKING_USERNAME"] == "ci-bot"
