"""The DAG's approval task: the form it writes, how each answer is handled and what
the next Required Action shows above its form.

The operator is driven directly with the events Airflow resumes it with (a human
response, or the scheduler's timeout event). The governance store is real (SQLite) and
so is the model registry (MLflow on a SQLite store with a registered version whose
artifact is a file in the test's folder): the task hashes the artifact again at each
answer and mirrors decisions as model-version tags. Only Airflow's hand-over of the
Required Action (``upsert_hitl_detail``, a call to the task supervisor) is captured;
what Airflow's API then serves is decorated by ops.approval_notes, applied here to the
JSON Airflow serves for such a Required Action.
The full path through a running Airflow and a browser is in tests/e2e/test_approval_ui.py.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from airflow.sdk import DAG, Param
from airflow.sdk.definitions.param import process_params
from airflow.sdk.exceptions import AirflowFailException, TaskAwaitingInput

from dags.govml_airflow.approval_gate import GovernedApprovalOperator
from ops.approval_form import REASON_FIELD, answer_body, form_params
from ops.approval_notes import decorate
from pipelines.artifacts import sha256_file
from pipelines.spec import load_spec
from registry import approvals, audit

ROOT = Path(__file__).resolve().parents[2]
SPEC = load_spec(ROOT / "specs" / "german_credit.yaml")
RUN_ID = "manual__2026-11-28"


@pytest.fixture(scope="module")
def registry_uri(tmp_path_factory: pytest.TempPathFactory) -> str:
    """One MLflow store (SQLite) for the module: creating its schema takes seconds."""
    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"
    MlflowClient(tracking_uri=uri, registry_uri=uri).create_registered_model(SPEC.name)
    return uri


def _register(tracking_uri: str, folder: Path) -> str:
    """A new registered version of the spec's model whose artifact is ``folder``."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    return client.create_model_version(SPEC.name, source=str(folder)).version


def _gate(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tracking_uri: str, risk: list[str]
) -> SimpleNamespace:
    url = f"sqlite:///{tmp_path / 'governance.db'}"
    artifact = tmp_path / "artifact" / "model"
    artifact.mkdir(parents=True)
    (artifact / "model.txt").write_text("tree\nversion=v4\n")
    version = _register(tracking_uri, artifact)
    for user in ("reviewer", "validator", "alice"):
        approvals.grant_role(url, user, "model_risk", granted_by="test-admin")
    state = approvals.request_approval(
        url,
        SPEC,
        model_version=version,
        artifact_sha256=sha256_file(artifact / "model.txt"),
        origin=approvals.RunOrigin(
            run_id=RUN_ID, dag_id="german_credit_lifecycle", triggered_by="alice", author=None
        ),
        risk_reasons=risk,
    )
    op = GovernedApprovalOperator(task_id="approval", response_timeout=dt.timedelta(hours=24))
    settings = SimpleNamespace(
        governance_url=url, mlflow_tracking_uri=tracking_uri, mlflow_url="http://mlflow"
    )
    monkeypatch.setattr(op, "_settings", lambda: settings)
    written: list[dict[str, Any]] = []
    monkeypatch.setattr(
        "airflow.sdk.execution_time.hitl.upsert_hitl_detail", lambda **kw: written.append(kw)
    )
    context = {
        "ti": SimpleNamespace(xcom_pull=lambda task_ids: state.to_dict()),
        "task_instance": SimpleNamespace(id="0199-ti"),
    }
    return SimpleNamespace(
        op=op,
        url=url,
        tracking_uri=tracking_uri,
        version=version,
        artifact=artifact / "model.txt",
        context=context,
        written=written,
    )


@pytest.fixture
def gate(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, registry_uri: str) -> SimpleNamespace:
    return _gate(tmp_path, monkeypatch, registry_uri, risk=[])


@pytest.fixture
def high_risk_gate(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, registry_uri: str
) -> SimpleNamespace:
    return _gate(tmp_path, monkeypatch, registry_uri, risk=["proxy for a protected attribute"])


def _answer(user: str, option: str, reason: str = "looked at the evidence") -> dict[str, Any]:
    return answer_body(option, reason) | {
        "responded_at": dt.datetime.now(dt.UTC),
        "responded_by_user": {"id": user, "name": user},
        "timedout": False,
    }


def _ask(gate) -> dict[str, Any]:  # noqa: ANN001
    """Run the task: the Required Action it writes."""
    with pytest.raises(TaskAwaitingInput):
        gate.op.execute(gate.context)
    return gate.written[-1]


def _answered(gate, event: dict[str, Any]) -> None:  # noqa: ANN001
    """An answer that does not settle the request: the task asks again."""
    with pytest.raises(TaskAwaitingInput):
        gate.op.execute_complete(gate.context, event)


def _served(gate) -> dict[str, Any]:  # noqa: ANN001
    """The Required Action as Airflow's API serves it: the first ask's subject and text
    (Airflow never rewrites them), with the notes the API server adds."""
    first = gate.written[0]
    detail = {
        "subject": first["subject"],
        "body": first["body"],
        "params": first["params"],
        "options": first["options"],
        "response_received": False,
        "task_instance": {
            "dag_id": "german_credit_lifecycle",
            "dag_run_id": RUN_ID,
            "task_id": "approval",
            "operator": "GovernedApprovalOperator",
        },
    }
    return decorate(detail, gate.url)


def _tags(gate) -> dict[str, str]:  # noqa: ANN001
    from registry.mlflow_registry import version_tags

    return version_tags(gate.tracking_uri, SPEC.name, gate.version)


# ---------------------------------------------------------------------------- the form


def test_the_reason_field_starts_empty_whatever_the_run_conf_says() -> None:
    # a lifecycle DAG has a `reason` param (why the run was triggered); Airflow overlays
    # the run's conf onto the task's params at run time
    with DAG(
        "lifecycle", schedule=None, params={"reason": Param(None, type=["null", "string"])}
    ) as dag:
        op = GovernedApprovalOperator(task_id="approval", response_timeout=dt.timedelta(hours=1))
    conf = {"reason": "retrain: drift on amount", REASON_FIELD: "pre-filled"}
    process_params(dag, op, conf, suppress_exception=False)
    assert op.serialized_params == form_params()
    assert op.serialized_params[REASON_FIELD]["value"] == ""
    assert op.serialized_params[REASON_FIELD]["schema"]["minLength"] == 1


def test_a_fresh_required_action_has_an_empty_reason_and_no_note(gate) -> None:  # noqa: ANN001
    written = _ask(gate)
    assert written["params"][REASON_FIELD]["value"] == ""
    assert written["options"] == ["Approve", "Reject"]
    assert written["subject"] == f"Approve german_credit version {gate.version} for deployment?"
    assert written["body"].startswith("Model **german_credit**")
    assert "Refused" not in written["body"]


# ---------------------------------------------------------------------------- answers


def test_a_valid_approval_completes_the_task(gate) -> None:  # noqa: ANN001
    result = gate.op.execute_complete(gate.context, _answer("reviewer", "Approve"))
    assert result["status"] == "approved" and result["approvers"] == ["reviewer"]
    tags = _tags(gate)
    assert tags["govml.approval.status"] == "approved"
    assert tags["govml.approval.approve.reviewer"].endswith("via ui: looked at the evidence")


def test_a_refused_self_approval_is_shown_above_the_form(gate) -> None:  # noqa: ANN001
    _ask(gate)
    _answered(gate, _answer("alice", "Approve"))
    assert approvals.get_request(gate.url, SPEC.name, gate.version).status == "pending"
    (refused,) = audit.events(gate.url, kinds=["approval_refused"])
    assert refused.actor == "alice" and "alice triggered this run" in refused.payload["reason"]
    served = _served(gate)
    assert served["subject"].endswith("for deployment? (alice's approve refused)")
    assert served["body"].splitlines()[0] == (
        "> **Refused: alice's approve: alice triggered this run and cannot approve or reject "
        "it (four-eyes)**"
    )
    assert served["params"][REASON_FIELD]["value"] == ""
    # the re-ask clears the answer only: a new form, the reason empty again
    assert gate.written[-1]["params"][REASON_FIELD]["value"] == ""


def test_an_answer_without_a_reason_is_refused_and_shown(gate) -> None:  # noqa: ANN001
    _ask(gate)
    _answered(gate, _answer("reviewer", "Approve", "   "))
    assert approvals.get_request(gate.url, SPEC.name, gate.version).approvers == []
    assert not audit.events(gate.url, kinds=["approval_granted"])
    assert _served(gate)["body"].startswith("> **Refused: reviewer's approve: a reason")


def test_an_artifact_changed_after_the_request_is_refused(gate) -> None:  # noqa: ANN001
    _ask(gate)
    gate.artifact.write_text("tree\nversion=v4\nswapped=1\n")  # the registry's file changed
    _answered(gate, _answer("reviewer", "Approve"))
    assert approvals.get_request(gate.url, SPEC.name, gate.version).status == "pending"
    (refused,) = audit.events(gate.url, kinds=["approval_refused"])
    assert refused.actor == "reviewer"
    assert "is not the one submitted for approval" in refused.payload["reason"]
    first = _served(gate)["body"].splitlines()[0]
    assert first.startswith("> **Refused: reviewer's approve: the artifact ")


def test_an_artifact_the_registry_cannot_give_again_is_refused_and_shown(gate) -> None:  # noqa: ANN001
    _ask(gate)
    gate.artifact.unlink()  # the registry cannot hand the file out now
    _answered(gate, _answer("reviewer", "Approve"))
    assert approvals.get_request(gate.url, SPEC.name, gate.version).status == "pending"
    (refused,) = audit.events(gate.url, kinds=["approval_refused"])
    assert refused.actor == "reviewer"
    assert refused.payload["reason"].startswith("cannot hash the registered artifact again: ")
    first = _served(gate)["body"].splitlines()[0]
    assert first.startswith("> **Refused: reviewer's approve: cannot hash the registered")


def test_a_partial_approval_asks_the_next_approver_and_says_so(high_risk_gate) -> None:  # noqa: ANN001
    gate = high_risk_gate
    _ask(gate)
    _answered(gate, _answer("reviewer", "Approve"))
    assert _tags(gate)["govml.approval.status"] == "pending"
    served = _served(gate)
    assert served["body"].startswith("> **1 of 2 approvals so far (reviewer)")
    assert served["subject"].endswith("for deployment?")
    result = gate.op.execute_complete(gate.context, _answer("validator", "Approve"))
    assert result["status"] == "approved" and result["approvers"] == ["reviewer", "validator"]


def test_an_answered_or_foreign_required_action_is_served_as_it_is(gate) -> None:  # noqa: ANN001
    _ask(gate)
    _answered(gate, _answer("alice", "Approve"))
    served = _served(gate)
    assert decorate(served | {"response_received": True}, gate.url) == served | {
        "response_received": True
    }
    other = served | {"task_instance": served["task_instance"] | {"operator": "HITLOperator"}}
    assert decorate(other, gate.url) == other


def test_a_rejection_stops_the_run_with_the_reason(gate) -> None:  # noqa: ANN001
    with pytest.raises(AirflowFailException, match="rejected by reviewer: PSI too high"):
        gate.op.execute_complete(gate.context, _answer("reviewer", "Reject", "PSI too high"))
    assert approvals.get_request(gate.url, SPEC.name, gate.version).status == "rejected"
    assert _tags(gate)["govml.approval.status"] == "rejected"


def approve_in_cli(gate: SimpleNamespace, user: str, reason: str) -> None:
    """``user`` approves the gate's version through the CLI channel."""
    approvals.decide(
        gate.url,
        SPEC.name,
        gate.version,
        approvals.Review(user=user, decision="approve", reason=reason, channel="cli"),
    )


def test_no_answer_within_the_timeout_is_a_rejection(gate) -> None:  # noqa: ANN001
    event = {"error": "The Human-in-the-loop response timeout has passed", "error_type": "timeout"}
    with pytest.raises(AirflowFailException, match="counts as a rejection"):
        gate.op.execute_complete(gate.context, event)
    assert approvals.get_request(gate.url, SPEC.name, gate.version).status == "expired"
    assert audit.events(gate.url, kinds=["approval_expired"])


def test_a_cli_decision_woken_task_does_not_count_twice(gate) -> None:  # noqa: ANN001
    approve_in_cli(gate, "reviewer", "looked at the evidence")
    result = gate.op.execute_complete(gate.context, _answer("reviewer", "Approve"))
    assert result["status"] == "approved"
    assert [d["channel"] for d in result["decisions"]] == ["cli"]


def test_an_approval_completed_elsewhere_is_honoured_even_at_the_timeout(gate) -> None:  # noqa: ANN001
    # the CLI recorded the decision but could not wake the task; the next resume
    # (here: the scheduler's timeout event) must not turn an approval into a rejection
    approve_in_cli(gate, "validator", "ok")
    event = {"error": "The Human-in-the-loop response timeout has passed", "error_type": "timeout"}
    result = gate.op.execute_complete(gate.context, event)
    assert result["status"] == "approved" and result["approvers"] == ["validator"]
    assert approvals.get_request(gate.url, SPEC.name, gate.version).status == "approved"


def test_a_request_decided_between_two_tries_is_not_asked_again(gate) -> None:  # noqa: ANN001
    approve_in_cli(gate, "validator", "ok")
    result = gate.op.execute(gate.context)
    assert result["status"] == "approved" and gate.written == []
