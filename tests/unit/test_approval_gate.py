"""The DAG's approval task: how each answer from the Required Action is handled.

The operator is driven directly with the events Airflow resumes it with (a human
response, or the scheduler's timeout event); the governance store is real (SQLite),
MLflow tagging is captured instead of sent. The full path through a running Airflow
and a browser is in tests/e2e/test_approval_ui.py.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from airflow.sdk.exceptions import AirflowFailException

from ops.approval_gate import GovernedApprovalOperator
from pipelines.spec import load_spec
from registry import approvals, audit

ROOT = Path(__file__).resolve().parents[2]
SPEC = load_spec(ROOT / "specs" / "german_credit.yaml")


class AskedAgain(Exception):
    def __init__(self, note: str | None) -> None:
        super().__init__(note)
        self.note = note


@pytest.fixture
def gate(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):  # noqa: ANN201
    url = f"sqlite:///{tmp_path / 'governance.db'}"
    for user in ("reviewer", "validator", "alice"):
        approvals.grant_role(url, user, "model_risk", granted_by="test-admin")
    state = approvals.request_approval(
        url,
        SPEC,
        model_version="3",
        artifact_sha256="e" * 64,
        run_id="manual__2026-11-28",
        dag_id="german_credit_lifecycle",
        triggered_by="alice",
        author=None,
        risk_reasons=[],
    )
    op = GovernedApprovalOperator(task_id="approval", response_timeout=dt.timedelta(hours=24))
    mirrored: list[dict[str, str]] = []
    monkeypatch.setattr(
        op,
        "_settings",
        lambda: SimpleNamespace(
            governance_url=url, mlflow_tracking_uri="unused", mlflow_url="http://mlflow"
        ),
    )
    monkeypatch.setattr(op, "_mirror", lambda s: mirrored.append(s.mlflow_tags()))

    def ask(context: Any, request: dict[str, Any], note: str | None = None) -> None:
        raise AskedAgain(note)

    monkeypatch.setattr(op, "_ask", ask)
    context = {"ti": SimpleNamespace(xcom_pull=lambda task_ids: state.to_dict())}
    return SimpleNamespace(op=op, url=url, context=context, mirrored=mirrored)


def _answer(user: str, option: str, reason: str = "looked at the evidence") -> dict[str, Any]:
    return {
        "chosen_options": [option],
        "params_input": {"reason": reason},
        "responded_at": dt.datetime.now(dt.UTC),
        "responded_by_user": {"id": user, "name": user},
        "timedout": False,
    }


def test_a_valid_approval_completes_the_task(gate) -> None:  # noqa: ANN001
    result = gate.op.execute_complete(gate.context, _answer("reviewer", "Approve"))
    assert result["status"] == "approved" and result["approvers"] == ["reviewer"]
    assert gate.mirrored[-1]["govml.approval.status"] == "approved"
    assert gate.mirrored[-1]["govml.approval.approve.reviewer"].endswith(
        "via ui: looked at the evidence"
    )


def test_self_approval_in_the_ui_is_refused_and_asked_again(gate) -> None:  # noqa: ANN001
    with pytest.raises(AskedAgain, match="alice triggered this run"):
        gate.op.execute_complete(gate.context, _answer("alice", "Approve"))
    assert approvals.get_request(gate.url, SPEC.name, "3").status == "pending"


def test_a_rejection_stops_the_run_with_the_reason(gate) -> None:  # noqa: ANN001
    with pytest.raises(AirflowFailException, match="rejected by reviewer: PSI too high"):
        gate.op.execute_complete(gate.context, _answer("reviewer", "Reject", "PSI too high"))
    assert approvals.get_request(gate.url, SPEC.name, "3").status == "rejected"
    assert gate.mirrored[-1]["govml.approval.status"] == "rejected"


def test_no_answer_within_the_timeout_is_a_rejection(gate) -> None:  # noqa: ANN001
    event = {"error": "The Human-in-the-loop response timeout has passed", "error_type": "timeout"}
    with pytest.raises(AirflowFailException, match="counts as a rejection"):
        gate.op.execute_complete(gate.context, event)
    assert approvals.get_request(gate.url, SPEC.name, "3").status == "expired"
    assert audit.events(gate.url, kinds=["approval_expired"])


def test_an_answer_without_a_reason_is_refused(gate) -> None:  # noqa: ANN001
    with pytest.raises(AskedAgain, match="reason"):
        gate.op.execute_complete(gate.context, _answer("reviewer", "Approve", ""))


def test_a_cli_decision_woken_task_does_not_count_twice(gate) -> None:  # noqa: ANN001
    approvals.decide(
        gate.url,
        SPEC.name,
        "3",
        user="reviewer",
        decision="approve",
        reason="looked at the evidence",
        channel="cli",
    )
    result = gate.op.execute_complete(gate.context, _answer("reviewer", "Approve"))
    assert result["status"] == "approved"
    assert [d["channel"] for d in result["decisions"]] == ["cli"]


def test_an_approval_completed_elsewhere_is_honoured_even_at_the_timeout(gate) -> None:  # noqa: ANN001
    # the CLI recorded the decision but could not wake the task; the next resume
    # (here: the scheduler's timeout event) must not turn an approval into a rejection
    approvals.decide(
        gate.url, SPEC.name, "3", user="validator", decision="approve", reason="ok", channel="cli"
    )
    event = {"error": "The Human-in-the-loop response timeout has passed", "error_type": "timeout"}
    result = gate.op.execute_complete(gate.context, event)
    assert result["status"] == "approved" and result["approvers"] == ["validator"]
    assert approvals.get_request(gate.url, SPEC.name, "3").status == "approved"
