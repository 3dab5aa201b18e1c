"""ApprovalNotesMiddleware: pending approval Required Actions served by Airflow's API
with the notes from the audit trail on top; everything else passes untouched.

The middleware runs around a small ASGI app standing where Airflow's routes are (the
real API server is in tests/security/test_airflow_privileges.py and the browser test);
the governance store is real (SQLite)."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest
from starlette.applications import Starlette
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.testclient import TestClient

from ops.approval_notes import ApprovalNotesMiddleware
from pipelines.errors import ApprovalError
from pipelines.spec import load_spec
from registry import approvals

ROOT = Path(__file__).resolve().parents[2]
SPEC = load_spec(ROOT / "specs" / "german_credit.yaml")
RUN = "manual__2026-12-01T10:00:00+00:00"
DAG = "german_credit_lifecycle"
BASE = f"/api/v2/dags/{DAG}/dagRuns/{RUN}"


def _detail(operator: str = "GovernedApprovalOperator") -> dict:
    return {
        "subject": "Approve german_credit version 7 for deployment?",
        "body": "Model **german_credit** version **7** ...",
        "response_received": False,
        "task_instance": {
            "dag_id": DAG,
            "dag_run_id": RUN,
            "task_id": "approval",
            "operator": operator,
        },
    }


async def _one(request):  # noqa: ANN001, ANN202
    return JSONResponse(_detail())


async def _many(request):  # noqa: ANN001, ANN202
    return JSONResponse({"hitl_details": [_detail(), _detail("HITLOperator")], "total_entries": 2})


async def _gzipped(request):  # noqa: ANN001, ANN202
    body = gzip.compress(json.dumps(_detail()).encode())
    return Response(body, media_type="application/json", headers={"content-encoding": "gzip"})


@pytest.fixture
def client(tmp_path: Path) -> TestClient:
    url = f"sqlite:///{tmp_path / 'governance.db'}"
    approvals.grant_role(url, "reviewer", "model_risk", granted_by="test-admin")
    approvals.request_approval(
        url,
        SPEC,
        model_version="7",
        artifact_sha256="a" * 64,
        origin=approvals.RunOrigin(run_id=RUN, dag_id=DAG, triggered_by="operator", author=None),
        risk_reasons=[],
    )
    with pytest.raises(ApprovalError):
        approvals.decide(
            url,
            SPEC.name,
            "7",
            approvals.Review(user="operator", decision="approve", reason="mine", channel="ui"),
            run_id=RUN,
        )
    app = Starlette(
        routes=[
            Route(f"{BASE}/taskInstances/approval/-1/hitlDetails", _one, methods=["GET", "PATCH"]),
            Route(f"{BASE}/taskInstances/approval/-1/hitlDetails/tries/2", _one),
            Route(f"{BASE}/hitlDetails", _many),
            Route("/api/v2/dags/{dag}/dagRuns/{run}/taskInstances/gz/-1/hitlDetails", _gzipped),
            Route("/api/v2/other", _one),
        ]
    )
    return TestClient(ApprovalNotesMiddleware(app, governance_url=url))


REFUSED = (
    "> **Refused: operator's approve: operator triggered this run and cannot approve or "
    "reject it (four-eyes)**"
)


def test_a_pending_required_action_is_served_with_the_refusal_on_top(client) -> None:  # noqa: ANN001
    answer = client.get(f"{BASE}/taskInstances/approval/-1/hitlDetails")
    assert answer.status_code == 200
    assert int(answer.headers["content-length"]) == len(answer.content)
    detail = answer.json()
    assert detail["body"].splitlines()[0] == REFUSED
    assert detail["body"].endswith("Model **german_credit** version **7** ...")
    assert detail["subject"].endswith("(operator's approve refused)")


def test_the_page_of_the_current_try_too(client) -> None:  # noqa: ANN001
    # the task's Required Action tab reads the current try's detail
    detail = client.get(f"{BASE}/taskInstances/approval/-1/hitlDetails/tries/2").json()
    assert detail["body"].splitlines()[0] == REFUSED


def test_the_required_actions_list_too_but_only_for_approval_tasks(client) -> None:  # noqa: ANN001
    mine, other = client.get(f"{BASE}/hitlDetails").json()["hitl_details"]
    assert mine["body"].startswith(REFUSED)
    assert other == _detail("HITLOperator")


def test_everything_else_passes_untouched(client) -> None:  # noqa: ANN001
    assert client.patch(f"{BASE}/taskInstances/approval/-1/hitlDetails").json() == _detail()
    assert client.get("/api/v2/other").json() == _detail()
    gz = client.get(f"/api/v2/dags/{DAG}/dagRuns/{RUN}/taskInstances/gz/-1/hitlDetails")
    assert gz.json() == _detail()  # compressed by an outer middleware: left alone


def test_an_unreadable_store_leaves_airflows_answer_as_it_was(tmp_path: Path) -> None:
    app = Starlette(routes=[Route(f"{BASE}/hitlDetails", _many)])
    broken = TestClient(
        ApprovalNotesMiddleware(app, governance_url=f"sqlite:///{tmp_path}/no/such/dir/g.db")
    )
    answer = broken.get(f"{BASE}/hitlDetails")
    assert answer.status_code == 200
    assert json.loads(answer.content)["hitl_details"][0] == _detail()
