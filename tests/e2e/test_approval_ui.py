"""The human approval gate in a real browser against `make up`'s Airflow.

The German Credit lifecycle is triggered over REST by `operator`; it stops at the
`approval` task (a Required Action). German Credit is a high-risk change (proxy
warnings on protected attributes), so it needs two distinct approvers:

* approve: `reviewer` (an Airflow `approver`: reads, answers Required Actions, nothing
  else) finds the Reason field empty, cannot answer without a reason, approves in the
  Required Actions page (Chromium); the task asks again, saying so above the form;
  `validator` approves with `govml approve` (authenticated, answers the same Required
  Action); the run goes on to `deploy`, which releases exactly that version as
  `challenger`, and the browser shows the deploy task succeeded.
* refusals: `operator` (who triggered the run, with a trigger reason) tries to approve
  in the browser and is refused: the next Required Action says who was refused and why
  above its form; an answer without a reason is refused likewise; the registered
  model file is swapped after the request, and the reviewer's approval in the browser is
  refused because the artifact no longer matches; `reviewer` rejects in the browser with
  a reason; the run stops, the reason is recorded, nothing is deployed.
"""

from __future__ import annotations

import subprocess
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from ops.approval_form import REASON_FIELD

ROOT = Path(__file__).resolve().parents[2]
GOVML = str(ROOT / ".venv" / "bin" / "govml")
DAG = "german_credit_lifecycle"
REASON = f"#element_{REASON_FIELD}"
pytestmark = pytest.mark.slow


def _login(browser, stack: SimpleNamespace, user: str):  # noqa: ANN001, ANN202
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    page.goto(stack.settings.airflow_url, wait_until="networkidle")
    page.fill("input[name=username]", user)
    page.fill("input[name=password]", stack.api.passwords[user])
    page.click("button[type=submit]")
    page.wait_for_url(f"{stack.settings.airflow_url}/**", timeout=30_000)
    page.get_by_role("link", name="Dags").first.wait_for(timeout=30_000)
    return context, page


def _open_action(browser, stack: SimpleNamespace, user: str, run_id: str):  # noqa: ANN001, ANN202
    """Log in as ``user`` and open the run's pending action from Browse -> Required Actions."""
    context, page = _login(browser, stack, user)
    page.goto(f"{stack.settings.airflow_url}/required_actions", wait_until="networkidle")
    row = page.locator("tr", has_text=run_id)
    row.get_by_role("link", name="Approve german_credit").first.click(timeout=30_000)
    page.get_by_text("neither may decide", exact=False).first.wait_for(timeout=30_000)
    page.locator(REASON).wait_for(timeout=30_000)
    return context, page


@dataclass(frozen=True)
class Gate:
    """A lifecycle run waiting at its approval task, answered in the browser; the
    screenshots go to ``shots``."""

    browser: Any
    stack: SimpleNamespace
    run_id: str
    shots: Path

    def decide(self, user: str, option: str, reason: str, shot: str) -> None:
        """``user`` answers the pending action with ``option`` and ``reason``; the form
        starts with an empty reason and cannot be answered without one."""
        context, page = _open_action(self.browser, self.stack, user, self.run_id)
        try:
            assert page.locator(REASON).input_value() == "", "the Reason field starts empty"
            answer = page.get_by_test_id(f"hitl-option-{option}")
            assert answer.is_disabled(), "the reason is required before answering"
            page.locator(REASON).fill(reason)
            answer.click()
            page.get_by_text("approval response successful", exact=False).wait_for(timeout=30_000)
            page.screenshot(path=str(self.shots / shot), full_page=True)
        finally:
            context.close()

    def refusal_shown(self, text: str, shot: str) -> None:
        """The run's next Required Action shows ``text`` above its form, the reason empty."""
        self.stack.api.wait_awaiting_input(DAG, self.run_id, "approval", timeout=360)
        context, page = _open_action(self.browser, self.stack, "reviewer", self.run_id)
        try:
            note = page.get_by_text(text, exact=False).first
            note.wait_for(timeout=30_000)
            field = page.locator(REASON)
            assert note.bounding_box()["y"] < field.bounding_box()["y"], "shown above the form"
            assert field.input_value() == ""
            page.screenshot(path=str(self.shots / shot), full_page=True)
        finally:
            context.close()


def _swap_registered_artifact(stack: SimpleNamespace, sha256: str, since: float) -> list[Path]:
    """Change the registry's stored model file(s) of this run's version (an attacker with
    the host account, or anonymous writes to MLflow before issue 21)."""
    from pipelines.artifacts import MODEL_FILES, sha256_file

    hits = [
        p
        for p in stack.settings.mlflow_artifacts.rglob("*")
        if p.name in MODEL_FILES and p.stat().st_mtime >= since and sha256_file(p) == sha256
    ]
    assert hits, f"no registered model file with sha256 {sha256} under the MLflow artifacts"
    for path in hits:
        path.write_bytes(path.read_bytes() + b"\n")
    return hits


def _task_logs(stack: SimpleNamespace, run_id: str, task: str) -> str:
    """The task's log lines (for a failure message)."""
    logs = [
        p
        for p in (stack.settings.airflow_home / "logs").rglob("attempt=*.log")
        if f"run_id={run_id}" in str(p) and f"task_id={task}" in str(p)
    ]
    return "\n".join(p.read_text(errors="replace")[-3000:] for p in logs)


def _request(stack: SimpleNamespace, run_id: str):  # noqa: ANN202
    from registry.approvals import list_requests

    found = list_requests(stack.settings.governance_url, "german_credit")
    ours = [r for r in found if r.run_id == run_id]
    assert len(ours) == 1, found
    return ours[0]


def _until_recorded(stack: SimpleNamespace, run_id: str, kinds: int) -> None:
    """Until the approval task processed the answer: a new event, then waiting again."""
    import time

    from registry.audit import events

    deadline = time.monotonic() + 360
    while time.monotonic() < deadline:
        if len(events(stack.settings.governance_url, run_id=run_id)) >= kinds:
            return
        time.sleep(stack.api.POLL_S)
    state = stack.api.task_state(DAG, run_id, "approval")
    raise AssertionError(
        f"no decision recorded for {run_id} (approval task {state}):\n"
        + _task_logs(stack, run_id, "approval")[-4000:]
        + "\n--- scheduler ---\n"
        + _tail(stack.settings.run_dir / "airflow-scheduler.log")
    )


def _tail(path: Path, chars: int = 3000) -> str:
    try:
        return path.read_text(errors="replace")[-chars:]
    except OSError:
        return f"({path} not readable)"


def _count(stack: SimpleNamespace, run_id: str) -> int:
    from registry.audit import events

    return len(events(stack.settings.governance_url, run_id=run_id))


def test_approvers_approve_and_the_run_deploys_that_version(
    browser,  # noqa: ANN001
    stack: SimpleNamespace,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    api = stack.api
    run_id = api.trigger(DAG, {"tuning_trials": 0}, user="operator")
    api.wait_awaiting_input(DAG, run_id, "approval", timeout=600)
    request = _request(stack, run_id)
    assert request.triggered_by == "operator" and request.required_approvers == 2
    assert request.risk_reasons, "German Credit's proxy warnings make it high-risk"

    before = _count(stack, run_id)
    gate = Gate(browser, stack, run_id, tmp_path)
    gate.decide("reviewer", "Approve", "model card and SHAP reviewed", "reviewer-approves.png")
    _until_recorded(stack, run_id, before + 1)
    api.wait_awaiting_input(DAG, run_id, "approval", timeout=360)  # asks the second approver
    assert api.hitl(DAG, run_id, "approval")["body"].startswith(
        "> **1 of 2 approvals so far (reviewer): a second, different approver is needed.**"
    )
    assert api.task_state(DAG, run_id, "deploy") is None  # not started
    assert _request(stack, run_id).approvers == ["reviewer"]

    cli = subprocess.run(
        [
            GOVML,
            "approve",
            "german_credit",
            request.model_version,
            "--as",
            "validator",
            "--reason",
            "independent validation done",
        ],
        cwd=ROOT,
        env=stack.env | {"GOVML_PASSWORD": api.passwords["validator"]},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert cli.returncode == 0, cli.stdout + cli.stderr
    assert "request" in cli.stdout and "approved (2/2 approvals)" in cli.stdout
    assert "answered the Required Action" in cli.stdout

    state = api.wait_run(DAG, run_id, timeout=420)
    assert state == "success", _task_logs(stack, run_id, "deploy")
    assert api.task_state(DAG, run_id, "deploy") == "success"
    final = _request(stack, run_id)
    assert final.status == "approved" and final.consumed_at is not None
    assert [(d.user, d.channel) for d in final.decisions] == [
        ("reviewer", "ui"),
        ("validator", "cli"),
    ]

    from registry.governance import deployments

    (deployed,) = deployments(stack.settings.governance_url, "german_credit", final.model_version)
    endpoint = deployed["details"]["endpoint"]
    assert deployed["environment"] == "local" and deployed["details"]["smoke_test"]["rows_checked"]
    with urllib.request.urlopen(f"{endpoint}/v2/models/german_credit/ready", timeout=10) as r:
        assert r.status == 200  # the approved version is being served

    from registry.mlflow_registry import version_by_alias, version_tags

    # the locked registry: the reviewer reads it with their own login
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "reviewer")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", api.passwords["reviewer"])
    uri = stack.settings.mlflow_tracking_uri
    assert version_by_alias(uri, "german_credit", "challenger").version == final.model_version
    tags = version_tags(uri, "german_credit", final.model_version)
    assert tags["govml.approval.status"] == "approved"
    assert tags["govml.approval.approvers"] == "reviewer,validator"

    # the reviewer sees the run continue to the deploy step in the UI
    context, page = _login(browser, stack, "reviewer")
    try:
        page.goto(
            f"{stack.settings.airflow_url}/dags/{DAG}/runs/{run_id}/tasks/deploy",
            wait_until="networkidle",
        )
        page.get_by_text("Success", exact=True).first.wait_for(timeout=30_000)
        page.screenshot(path=str(tmp_path / "deploy-succeeded.png"), full_page=True)
    finally:
        context.close()
    verify = subprocess.run(
        [GOVML, "audit", "verify"], cwd=ROOT, env=stack.env, capture_output=True, text=True
    )
    assert verify.returncode == 0 and "chain ok" in verify.stdout, verify.stdout + verify.stderr


def test_refused_answers_are_shown_above_the_form_and_a_rejection_stops_the_run(
    browser,  # noqa: ANN001
    stack: SimpleNamespace,
    tmp_path: Path,
) -> None:
    import time

    from registry.audit import events

    api = stack.api
    started = time.time()
    conf = {"tuning_trials": 0, "reason": "retrain: PSI on the age bands"}
    run_id = api.trigger(DAG, conf, user="operator")
    api.wait_awaiting_input(DAG, run_id, "approval", timeout=600)
    url = stack.settings.governance_url
    gate = Gate(browser, stack, run_id, tmp_path)

    # whoever triggered the run cannot approve it; the Reason field did not start with
    # the trigger's reason, and the refusal is shown above the next form
    gate.decide("operator", "Approve", "looks fine to me", "self.png")
    gate.refusal_shown(
        "Refused: operator's approve: operator triggered this run and cannot approve",
        "self-refused.png",
    )
    refused = events(url, run_id=run_id, kinds=["approval_refused"])
    assert refused[-1].actor == "operator"
    assert "triggered this run" in refused[-1].payload["reason"]

    # an answer without a reason (over REST: the form does not allow it) is refused
    code, body = api.answer(DAG, run_id, "approval", "Approve", " ", "reviewer")
    assert code == 200, body
    gate.refusal_shown("Refused: reviewer's approve: a reason", "no-reason-refused.png")

    # the registered model file changes after the request: the reviewer's approval in
    # the browser is checked against the artifact as the registry holds it now
    request = _request(stack, run_id)
    _swap_registered_artifact(stack, request.artifact_sha256, since=started)
    gate.decide("reviewer", "Approve", "model card reviewed", "swapped.png")
    gate.refusal_shown("Refused: reviewer's approve: the artifact", "swapped-refused.png")
    last = events(url, run_id=run_id, kinds=["approval_refused"])[-1]
    assert last.actor == "reviewer"
    assert "is not the one submitted for approval" in last.payload["reason"]
    assert not events(url, run_id=run_id, kinds=["approval_granted"]), "no approval recorded"
    assert _request(stack, run_id).approvers == []

    gate.decide("reviewer", "Reject", "PSI on the age bands is unexplained", "reviewer-rejects.png")
    assert api.wait_run(DAG, run_id, timeout=300) == "failed"
    assert api.task_state(DAG, run_id, "approval") == "failed"
    assert api.task_state(DAG, run_id, "deploy") in ("upstream_failed", None)
    final = _request(stack, run_id)
    assert final.status == "rejected"
    assert final.decisions[-1].reason == "PSI on the age bands is unexplained"
    from registry.governance import deployments

    assert all(
        d["model_version"] != final.model_version
        for d in deployments(stack.settings.governance_url, "german_credit")
    )
    # the reason is in the task's log for whoever opens the failed run
    text = _task_logs(stack, run_id, "approval")
    assert "rejected by reviewer: PSI on the age bands is unexplained" in text
