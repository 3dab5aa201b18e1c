"""`make demo` (``govml demo``) end to end on small data: the fraud lifecycle up to its
approval gate, the four-eyes approvals as the demo's reviewer and validator, the deploy
step with the real local model server, live scores and an explanation; the audit chain
verifies and the server keeps running until `make down`."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import urllib.request
from pathlib import Path

import pytest

from ops import endpoints, stack
from pipelines.config import load_settings
from serving.control.deployers.local import _alive
from tests.support import stack_env

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


def _run_demo(env: dict[str, str], timeout: float) -> subprocess.CompletedProcess:
    """``govml demo`` in a process group of its own: on a timeout the whole group (the demo
    and the lifecycle run it started) is killed, so that nothing deploys a model server
    after the test stopped them."""
    args = [str(ROOT / ".venv" / "bin" / "govml"), "demo", "--rows", "40000"]
    proc = subprocess.Popen(
        args, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True,
    )  # fmt: skip
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"govml demo still running after {timeout:.0f} s:\n{out[-6000:]}{err[-3000:]}")
    return subprocess.CompletedProcess(args, proc.returncode, out, err)


def test_demo_approves_deploys_scores_and_explains(tmp_path: Path) -> None:
    from registry.approvals import list_requests
    from registry.audit import events
    from registry.audit_verify import verify_chain
    from registry.governance import deployments

    # a name in the environment proves nothing: the demo triggers as the stack's operator
    env = stack_env(tmp_path / "var", COLUMNS="160", GOVML_TRIGGERED_BY="demo-operator")
    settings = load_settings(env)
    transformer_pid = None
    try:
        result = _run_demo(env, timeout=900)
        out = result.stdout
        assert result.returncode == 0, out[-6000:] + result.stderr[-3000:]
        assert "demo approvals by reviewer and validator (in a bank these are two people)" in out

        # the approvals went through registry.approvals: roles, four-eyes, audit events
        (request,) = list_requests(settings.governance_url, "fraud")
        assert request.status == "approved" and request.consumed_at is not None
        assert (request.triggered_by, request.trigger_authenticated) == ("operator", True)
        approvers = request.approvers
        assert approvers == ["reviewer", "validator"][: request.required_approvers]
        assert {d.channel for d in request.decisions} == {"demo"}
        granted = events(settings.governance_url, model_name="fraud", kinds=["approval_granted"])
        assert [e.actor for e in granted] == approvers
        (row,) = deployments(settings.governance_url, "fraud")
        assert row["action"] == "deployed" and row["environment"] == "local"
        assert row["actor"] == "govml-lifecycle" and row["details"]["alias"] == "challenger"
        url = row["details"]["endpoint"]

        # the fraud model's aggregates: its feature transformer took traffic only once its
        # state was rebuilt from the run's history (audited), and the deploy step found
        # the offline aggregates and scores for raw test transactions through it
        transformer = row["details"]["transformer"]
        assert row["details"]["feature_store"] == "memory"
        assert row["details"]["smoke_test"]["transformer"]["aggregates_checked"] > 0
        (warmed,) = events(
            settings.governance_url, model_name="fraud", kinds=["features_backfilled"]
        )
        assert warmed.payload["store"] == "memory" and warmed.payload["rows"] > 30000
        assert warmed.payload["history"].endswith("ingest/data.parquet")
        assert "the transformer's aggregates (as offline, exactly) and the score" in out
        assert f"feature endpoint   : {transformer}/v1/models/fraud:predict" in out

        # the scoring table: five rows, each with amount, channel, score and decision
        table = out[out.index("test transactions scored by the live endpoint") :]
        assert re.search(r"amount\s*┃\s*channel\s*┃\s*score\s*┃\s*decision", table)
        scored = re.findall(
            r"│\s*([\d,]+\.\d\d)\s*│\s*(online|card_present)\s*│\s*([01]\.\d{4})\s*│\s*(flag|pass)",
            table,
        )
        assert len(scored) == 5, table[:2000]
        # one explanation: reason codes for a flag, and the SHAP contributions
        assert "explanation of a flagged transaction (:explain)" in out
        assert "reason codes (adverse factors" in out
        assert "TreeSHAP contributions (log-odds), largest first" in out
        assert re.search(r"│ \w+\s*│\s*\S+\s*│\s*[+-]\d+\.\d{4} │", out[out.index("TreeSHAP") :])
        assert f"model endpoint     : {url}/v1/models/fraud:predict" in out
        assert "stop it with: make down" in out
        # the demo scored with the deployment's own token and never showed it
        from ops.deploy import service_token

        token = service_token(settings, "fraud", "1")
        assert token not in out + result.stderr
        assert "bearer token required (loopback only)" in out

        report = verify_chain(settings.governance_url)
        assert report.ok and report.events > 0
        assert f"audit chain        : verified, {report.events} events" in out

        # the server keeps running after the demo and answers with the approved model
        with urllib.request.urlopen(f"{url}/v1/models/fraud", timeout=10) as resp:
            assert json.loads(resp.read())["ready"] is True
        (running,) = [r for r in stack.status(settings) if r.name.startswith("model ")]
        assert running.name == "model fraud-v1" and running.url == url and running.healthy
        assert f"via the feature transformer {transformer}" in running.detail
        assert "NOT running" not in running.detail
        (served,) = endpoints.running(settings)
        transformer_pid = served["transformer"]["supervisor_pid"]
    finally:
        stopped = endpoints.stop_models(settings)
        stack.down(settings)  # `make down`, as the demo says: whatever else it left running
    assert stopped == ["fraud-v1"]
    assert not _alive(transformer_pid)  # the transformer stops with its model server
    assert not [r for r in stack.status(settings) if r.name.startswith("model ")]
