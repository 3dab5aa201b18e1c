"""Attack 7 of issue 21: approvers were too powerful by default.

Reproduced on a fresh embedded stack with the default users: `reviewer` and `validator`
were Airflow admins, so an approver could force a task's state, clear tasks, write
XComs and variables and trigger runs; `govml roles grant ... --by reviewer` gave
another account the approver role; an admin could grant a role to themselves; and
`make up` printed every password.

Attack 1 (the stack half) ends the module: a forged approval in the database and a
forced deploy over the REST API deploy nothing.

Here a real stack (`govml stack up`, default users) runs the German Credit lifecycle to
its approval task (triggered by `operator` with a trigger reason); the reviewer then
tries each of those actions over the REST API against the real waiting run and is
refused with 403, while reading runs and logs and answering the Required Action work.
"""

from __future__ import annotations

import json
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from urllib.parse import quote

import pytest

from ops.approval_form import REASON_FIELD
from tests.airflow_api import AirflowAPI, running_stack
from tests.support import german_credit_stack_env

ROOT = Path(__file__).resolve().parents[2]
GOVML = str(ROOT / ".venv" / "bin" / "govml")
DAG = "german_credit_lifecycle"
TRIGGER_REASON = "retrain: PSI on the age bands"
FORBIDDEN = (403, {"detail": "Forbidden"})
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimpleNamespace]:
    env = german_credit_stack_env(tmp_path_factory.mktemp("privileges"))
    with running_stack(env) as stack:
        yield stack


@pytest.fixture(scope="module")
def waiting(stack: SimpleNamespace) -> SimpleNamespace:
    """A lifecycle run triggered by `operator`, waiting at its approval task."""
    api = stack.api
    run_id = api.trigger(DAG, {"tuning_trials": 0, "reason": TRIGGER_REASON}, user="operator")
    api.wait_awaiting_input(DAG, run_id, "approval", timeout=900)
    return SimpleNamespace(run_id=run_id, path=f"/api/v2/dags/{DAG}/dagRuns/{quote(run_id)}")


def _govml(stack: SimpleNamespace, *args: str, password_of: str) -> subprocess.CompletedProcess:
    env = stack.env | {"GOVML_PASSWORD": stack.api.passwords[password_of]}
    return subprocess.run(
        [GOVML, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )


# --------------------------------------------------------------------------- make up


def test_stack_up_says_where_the_passwords_are_but_prints_none(stack: SimpleNamespace) -> None:
    out = stack.up.stdout + stack.up.stderr
    path = stack.settings.airflow_home / "passwords.json"
    for user, password in stack.api.passwords.items():
        assert password not in out, f"{user}'s password printed by govml stack up"
    assert f"passwords in {path} (mode 0600, this account only);" in out
    assert "users admin (admin), reviewer (approver), validator (approver), operator (op)" in out
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    # the api-server prints generated passwords on first start: the stack makes them
    # first, so its log holds none either
    log = (stack.settings.run_dir / "airflow-api-server.log").read_text(errors="replace")
    assert not any(password in log for password in stack.api.passwords.values())


# --------------------------------------------------------------------------- govml roles


def _grant_refused(stack: SimpleNamespace, user: str, by: str, why: str) -> None:
    """`govml roles grant USER model_risk --by BY`, BY logged in: refused, saying ``why``."""
    done = _govml(stack, "roles", "grant", user, "model_risk", "--by", by, password_of=by)
    assert done.returncode != 0
    assert done.stderr.strip() == f"error: {why}"


def test_an_approver_cannot_grant_roles(stack: SimpleNamespace) -> None:
    _grant_refused(
        stack,
        "mallory",
        "reviewer",
        "reviewer is not an admin user: only admins grant or revoke roles",
    )
    from registry.approvals import role_grants

    assert all(user != "mallory" for user, _, _ in role_grants(stack.settings.governance_url))


def test_an_admin_cannot_grant_a_role_to_themselves(stack: SimpleNamespace) -> None:
    _grant_refused(
        stack,
        "admin",
        "admin",
        "admin cannot grant a role to themselves: another admin must grant it",
    )


def test_an_admin_grants_with_a_password_and_the_grant_is_audited(stack: SimpleNamespace) -> None:
    wrong = subprocess.run(
        [GOVML, "roles", "grant", "carol", "model_risk", "--by", "admin"],
        cwd=ROOT,
        env=stack.env | {"GOVML_PASSWORD": "not-the-password"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert wrong.returncode != 0 and "authentication failed for admin" in wrong.stderr
    done = _govml(
        stack, "roles", "grant", "carol", "model_risk", "--by", "admin", password_of="admin"
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "carol now holds role model_risk"
    from registry.audit import events

    (grant,) = [
        e
        for e in events(stack.settings.governance_url, kinds=["role_granted"])
        if e.payload["user"] == "carol"
    ]
    assert grant.actor == "admin"


# --------------------------------------------------------------------------- Airflow REST


def test_an_approver_reads_runs_and_logs(stack: SimpleNamespace, waiting: SimpleNamespace) -> None:
    api = stack.api
    code, runs = api.call("GET", f"/api/v2/dags/{DAG}/dagRuns", user="reviewer")
    assert code == 200 and waiting.run_id in [r["dag_run_id"] for r in runs["dag_runs"]]
    code, _ = api.call("GET", f"{waiting.path}/taskInstances/train/logs/1", user="reviewer")
    assert code == 200
    code, _ = api.call("GET", f"{waiting.path}/taskInstances/approval/-1/hitlDetails", "reviewer")
    assert code == 200


@pytest.mark.parametrize(
    ("what", "method", "path", "body"),
    [
        ("force a task state", "PATCH", "{run}/taskInstances/approval", {"new_state": "success"}),
        (
            "clear a task",
            "POST",
            f"/api/v2/dags/{DAG}/clearTaskInstances",
            {"dry_run": False, "task_ids": ["deploy"], "dag_run_id": "{run_id}"},
        ),
        (
            "write an XCom",
            "POST",
            "{run}/taskInstances/request_approval/xcomEntries",
            {"key": "forged", "value": {"status": "approved"}},
        ),
        ("mark the run", "PATCH", "{run}", {"state": "success"}),
        ("trigger a run", "POST", f"/api/v2/dags/{DAG}/dagRuns", {"logical_date": None}),
        ("write a variable", "POST", "/api/v2/variables", {"key": "k", "value": "v"}),
        (
            "add a connection",
            "POST",
            "/api/v2/connections",
            {"connection_id": "c", "conn_type": "http"},
        ),
        ("pause the Dag", "PATCH", f"/api/v2/dags/{DAG}", {"is_paused": True}),
    ],
)
def test_an_approver_changes_nothing_but_their_answer(
    stack: SimpleNamespace,
    waiting: SimpleNamespace,
    what: str,
    method: str,
    path: str,
    body: dict,
) -> None:
    path = path.replace("{run}", waiting.path)
    body = json.loads(json.dumps(body).replace("{run_id}", waiting.run_id))
    assert stack.api.call(method, path, body, user="reviewer") == FORBIDDEN, what
    assert stack.api.task_state(DAG, waiting.run_id, "approval") == "awaiting_input"


def test_an_approver_answers_the_required_action(
    stack: SimpleNamespace, waiting: SimpleNamespace
) -> None:
    api = stack.api
    # attack 8: the form's reason does not start with the trigger's reason
    detail = api.hitl(DAG, waiting.run_id, "approval")
    assert detail["params"][REASON_FIELD]["value"] == ""
    assert "reason" not in detail["params"]

    code, body = api.answer(
        DAG, waiting.run_id, "approval", "Approve", "model card reviewed", "reviewer"
    )
    assert code == 200, body
    # German Credit is a high-risk change: the task asks the second approver
    api.wait_awaiting_input(DAG, waiting.run_id, "approval", timeout=360)
    from registry.audit import events

    (granted,) = events(
        stack.settings.governance_url, run_id=waiting.run_id, kinds=["approval_granted"]
    )
    assert granted.actor == "reviewer" and granted.payload["reason"] == "model card reviewed"
    detail = api.hitl(DAG, waiting.run_id, "approval")
    assert detail["body"].startswith("> **1 of 2 approvals so far (reviewer)")
    assert detail["params"][REASON_FIELD]["value"] == ""


# --------------------------------------------------------------------------- attack 8
def test_attack_8_a_refused_rest_answer_is_shown_above_the_form(
    stack: SimpleNamespace, waiting: SimpleNamespace
) -> None:
    """The run's own trigger answers Approve over REST: Airflow takes the answer, the task
    refuses it under the four-eyes rules, and the Required Action then says who was
    refused and why, above its (still empty) form."""
    from registry.audit import events

    api = stack.api
    code, body = api.answer(DAG, waiting.run_id, "approval", "Approve", "my own model", "operator")
    assert code == 200, body  # Airflow accepted the answer; the task decides
    api.wait_awaiting_input(DAG, waiting.run_id, "approval", timeout=360)
    refused = events(
        stack.settings.governance_url, run_id=waiting.run_id, kinds=["approval_refused"]
    )
    assert refused[-1].actor == "operator"
    assert refused[-1].payload["reason"] == (
        "operator triggered this run and cannot approve or reject it (four-eyes)"
    )
    detail = api.hitl(DAG, waiting.run_id, "approval")
    assert detail["body"].startswith(
        "> **Refused: operator's approve: operator triggered this run and cannot approve or "
        "reject it (four-eyes)"
    ), detail["body"][:300]
    assert detail["params"][REASON_FIELD]["value"] == ""


# --------------------------------------------------------------------------- attack 1
def _wait_task(api: AirflowAPI, run_id: str, task: str, states: set[str], timeout: float) -> str:
    import time

    deadline = time.monotonic() + timeout
    state = None
    while time.monotonic() < deadline:
        state = api.task_state(DAG, run_id, task)
        if state in states:
            return state
        time.sleep(api.POLL_S)
    raise AssertionError(f"{task} still {state} after {timeout:.0f} s")


def test_attack_1_a_forged_approval_in_the_database_deploys_nothing(
    stack: SimpleNamespace, waiting: SimpleNamespace
) -> None:
    """Issue 21, attack 1 on the real stack: with one real approval of two, someone with
    write access to the governance database adds the missing approvals as rows, and an
    Airflow admin forces the approval task and clears ``deploy`` over the REST API. The
    deploy step derives approval from the keyed chain and refuses; verify names the rows."""
    from sqlalchemy import text

    from ops.airflow_runs import reason_from_log
    from registry.approvals import get_request
    from registry.audit import events
    from registry.audit_verify import verify_chain
    from registry.store import engine_for
    from tests.security.chain_attacks import drop_append_only

    api, url = stack.api, stack.settings.governance_url
    request = get_request(url, "german_credit", _version(stack, waiting), waiting.run_id)
    assert request.status == "pending" and request.approvers == ["reviewer"]
    with engine_for(url).begin() as conn:
        drop_append_only(conn)
        for user in ("validator", "mallory"):
            conn.execute(
                text(
                    "INSERT INTO approval_decisions (request_id, user_name, decision, reason,"
                    " channel, artifact_sha256, decided_at) VALUES (:r, :u, 'approve', 'ok',"
                    " 'ui', :sha, CURRENT_TIMESTAMP)"
                ),
                {"r": request.id, "u": user, "sha": request.artifact_sha256},
            )
    path = waiting.path
    code, body = api.call(
        "PATCH", f"{path}/taskInstances/approval", {"new_state": "success"}, "admin"
    )
    assert code == 200, body
    code, body = api.call(
        "POST",
        f"/api/v2/dags/{DAG}/clearTaskInstances",
        {"dry_run": False, "task_ids": ["deploy"], "dag_run_id": waiting.run_id},
        "admin",
    )
    assert code == 200, body
    assert _wait_task(api, waiting.run_id, "deploy", {"failed", "success"}, 600) == "failed"
    code, log = api.call("GET", f"{path}/taskInstances/deploy/logs/1?full_content=true", "admin")
    assert code == 200
    version = request.model_version
    decisions = [r.id for r in _decision_rows(url)]
    assert reason_from_log(log["content"]) == (
        f"ApprovalError: german_credit v{version}: deployment refused: the governance store "
        f"was changed outside govml: approval_decisions row {decisions[-2]} is not backed by "
        "the chain: no approval_granted/approval_rejected event backs it (and 1 more)"
    )
    assert not [e for e in events(url, run_id=waiting.run_id) if e.kind == "deployed"]
    assert get_request(url, "german_credit", version).approvers == ["reviewer"]
    report = verify_chain(url)
    assert not report.ok and report.problem is None
    forged = [line for line in report.unbacked if line.startswith("approval_decisions row ")]
    assert len(forged) == 2 and all(
        line.endswith("no approval_granted/approval_rejected event backs it") for line in forged
    )


def _decision_rows(url: str) -> list:  # noqa: ANN202
    from sqlalchemy import select
    from sqlalchemy.orm import Session

    from registry.store import ApprovalDecision, engine_for

    with Session(engine_for(url)) as session:
        return list(session.scalars(select(ApprovalDecision).order_by(ApprovalDecision.id)))


def _version(stack: SimpleNamespace, waiting: SimpleNamespace) -> str:
    from registry.approvals import list_requests

    (request,) = [
        r for r in list_requests(stack.settings.governance_url) if r.run_id == waiting.run_id
    ]
    return request.model_version
