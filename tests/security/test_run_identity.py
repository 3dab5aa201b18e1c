"""Attack 5: ``govml run`` took its trigger from ``GOVML_TRIGGERED_BY`` or the OS user, so
anyone could pose as someone else, then approve their own change.

Against real components: the governance store and its audit chain, Airflow's metadata
database and ``dag.test()`` (stack down), and a real embedded stack (Airflow's API
server and login, the scheduler; stack up). The trigger recorded on the approval request
is the user whose password was checked, whatever the environment says; a ``dag.test()``
run without an authenticated trigger (even one replaying another run's trigger event)
is recorded as unauthenticated and cannot be approved; a wrong password is refused in
one line before anything runs.
"""

from __future__ import annotations

import datetime as dt
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from ops import stack
from pipelines.config import load_settings
from registry.databases import normalise_url
from tests.airflow_api import AirflowAPI
from tests.support import german_credit_stack_env, prepare_stores, seed_airflow_db

ROOT = Path(__file__).resolve().parents[2]
GOVML = ROOT / ".venv" / "bin" / "govml"
MODEL = "german_credit"
DAG_ID = f"{MODEL}_lifecycle"
IMPOSTOR = {"GOVML_TRIGGERED_BY": "reviewer", "USER": "reviewer", "LOGNAME": "reviewer"}
NOT_PROVEN = "was not authenticated, so its version cannot be approved for deployment"
pytestmark = pytest.mark.slow


def _govml(env: dict[str, str], *args: str, timeout: float = 900) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(GOVML), *args], env={**env, "COLUMNS": "160"}, cwd=ROOT, capture_output=True,
        text=True, timeout=timeout,
    )  # fmt: skip


def _decide(settings, version: str, user: str):  # noqa: ANN001, ANN202
    from registry.approvals import Review, decide

    return decide(
        settings.governance_url,
        MODEL,
        version,
        Review(
            user=user, decision="approve", reason="gates, fairness and SHAP reviewed", channel="cli"
        ),
    )


def _request(settings, run_id: str):  # noqa: ANN001, ANN202
    from registry.approvals import list_requests

    (request,) = [r for r in list_requests(settings.governance_url, MODEL) if r.run_id == run_id]
    return request


def _trigger_events(settings) -> list:  # noqa: ANN001
    from registry.audit import events

    return events(settings.governance_url, kinds=["run_triggered"])


def _stack_folder(base: Path) -> tuple[dict[str, str], Any, Path]:
    """An isolated stack's environment in ``base`` (:func:`german_credit_stack_env`), its
    Airflow metadata DB seeded: the environment, its settings, the specs folder."""
    env = german_credit_stack_env(base)
    settings = load_settings(env)
    seed_airflow_db(settings)
    return env, settings, Path(env["GOVML_SPECS_DIR"])


# --------------------------------------------------------------------------- stack down
@pytest.fixture(scope="module")
def down(tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    """An embedded stack's stores, no servers: ``govml run`` uses ``dag.test()``."""
    env, settings, specs = _stack_folder(tmp_path_factory.mktemp("identity-down"))
    prepare_stores(env)  # as `govml run` prepares them (Airflow's migrated metadata DB)
    password = stack.airflow_passwords(settings)["operator"]
    return SimpleNamespace(env=env, settings=settings, password=password, specs=specs)


def _wrong_password_refused(stack: SimpleNamespace, why: str) -> None:
    """`govml run` as operator with a wrong password: exit 5, one line."""
    result = _govml({**stack.env, "GOVML_PASSWORD": "not-it"}, "run", MODEL, "--as", "operator")
    assert result.returncode == 5
    assert result.stderr == f"error: authentication failed for operator{why}\n"


def test_a_wrong_password_is_refused_in_one_line_before_anything_runs(
    down: SimpleNamespace,
) -> None:
    _wrong_password_refused(down, "")
    assert not (down.settings.runs_dir / MODEL).exists()  # no run started


def test_the_environment_names_nobody_the_run_records_its_authenticated_user(
    down: SimpleNamespace,
) -> None:
    env = {**down.env, **IMPOSTOR, "GOVML_PASSWORD": down.password}
    result = _govml(env, "run", MODEL, "--as", "operator")
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    assert "triggered by operator" in result.stdout
    (event,) = _trigger_events(down.settings)
    assert event.actor == "operator" and event.payload["dag_id"] == DAG_ID
    assert event.payload["authenticated_by"] == "password-file"
    request = _request(down.settings, event.run_id)
    assert request.triggered_by == "operator" and request.trigger_authenticated
    # four-eyes holds against the real trigger; the name in the environment is no one's
    from pipelines.errors import ApprovalError

    with pytest.raises(ApprovalError, match="operator triggered this run and cannot approve"):
        _decide(down.settings, request.model_version, "operator")
    assert _decide(down.settings, request.model_version, "reviewer").status == "pending"


def test_a_dag_test_run_without_its_own_trigger_event_cannot_be_approved(
    down: SimpleNamespace,
) -> None:
    """``ops.local_run`` straight, with the environment naming the reviewer, and a valid
    ``run_triggered`` event for the same run id recorded by another process (a replay):
    the run's trigger is unauthenticated."""
    from ops.identity import authenticate_user
    from ops.local_run import lifecycle_run_id, record_run_trigger
    from pipelines.errors import ApprovalError

    settings = down.settings
    run_after = dt.datetime(2026, 11, 3, 9, tzinfo=dt.UTC)
    run_id = lifecycle_run_id(run_after)
    operator = authenticate_user(settings, "operator", down.password)
    record_run_trigger(settings, operator, DAG_ID, run_id, MODEL)  # its secret stays here
    env = {**down.env, **stack.airflow_env(settings), **IMPOSTOR}
    env["MLFLOW_TRACKING_URI"] = normalise_url(settings.mlflow_backend_url)  # no server
    result = subprocess.run(
        [sys.executable, "-m", "dags.govml_airflow.run_dag", str(down.specs / f"{MODEL}.yaml"),
         "--run-after", run_after.isoformat()],
        env=env, cwd=ROOT, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    request = _request(settings, run_id)
    assert request.trigger_authenticated is False and request.triggered_by is None
    from registry.audit import events

    (why,) = events(settings.governance_url, run_id=run_id, kinds=["retrain_triggered"])
    assert why.actor == "unauthenticated" and why.payload["trigger_authenticated"] is False
    for user in ("reviewer", "validator"):  # neither approval counts
        with pytest.raises(ApprovalError, match=NOT_PROVEN):
            _decide(settings, request.model_version, user)


def test_a_rollout_run_without_an_authenticated_trigger_does_not_start(
    down: SimpleNamespace,
) -> None:
    """The rollout DAG moves live traffic: its ``start`` task refuses a ``dag.test()`` run
    whose trigger only the environment names."""
    from ops.run_summary import read_summary

    settings = down.settings
    env = {**down.env, **stack.airflow_env(settings), **IMPOSTOR}
    env["MLFLOW_TRACKING_URI"] = normalise_url(settings.mlflow_backend_url)
    result = subprocess.run(
        [sys.executable, "-m", "dags.govml_airflow.run_dag", str(down.specs / f"{MODEL}.yaml"),
         "--dag", "rollout", "--conf", '{"version": "1"}',
         "--run-after", "2026-11-03T10:00:00+00:00"],
        env=env, cwd=ROOT, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    output = result.stdout + result.stderr
    assert result.returncode == 1, output[-4000:]
    assert read_summary(output)["tasks"]["start"] == "failed"
    assert (
        f"AirflowFailException: {MODEL}_rollout: the rollout's trigger is not authenticated"
        in output
    )
    from registry.audit import events

    moved = [e for e in events(settings.governance_url, model_name=MODEL)
             if (e.payload or {}).get("rollout_event")]  # fmt: skip
    assert moved == []  # nothing was routed


# --------------------------------------------------------------------------- stack up
@pytest.fixture(scope="module")
def up(german_credit_stack) -> Iterator[SimpleNamespace]:  # noqa: ANN001
    """The shared German Credit stack (tests/conftest.py); the run the module leaves
    waiting at its approval is ended afterwards (the DAG runs one run at a time)."""
    running = german_credit_stack.running()
    running.api.wait_for_dag(DAG_ID)
    before = _run_ids(running.api)
    yield SimpleNamespace(env=running.env, settings=running.settings, api=running.api,
                          before=before)  # fmt: skip
    for run_id in _run_ids(running.api) - before:
        running.api.end_run(DAG_ID, run_id)


def _run_ids(api: AirflowAPI) -> set[str]:
    code, runs = api.call("GET", f"/api/v2/dags/{DAG_ID}/dagRuns?limit=100")
    assert code == 200, runs
    return {r["dag_run_id"] for r in runs["dag_runs"]}  # type: ignore[index]


def test_with_the_stack_up_a_wrong_password_is_refused_by_airflows_login(
    up: SimpleNamespace,
) -> None:
    _wrong_password_refused(up, " (Airflow answered 401)")
    assert _run_ids(up.api) == up.before  # no run started


def test_with_the_stack_up_airflow_records_the_user_who_logged_in(up: SimpleNamespace) -> None:
    env = {**up.env, **IMPOSTOR, "GOVML_PASSWORD": up.api.passwords["operator"]}
    result = _govml(env, "run", MODEL, "--as", "operator")
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    code, runs = up.api.call("GET", f"/api/v2/dags/{DAG_ID}/dagRuns?limit=100")
    (run,) = [r for r in runs["dag_runs"] if r["dag_run_id"] not in up.before]
    assert run["triggered_by"] == "rest_api" and run["triggering_user_name"] == "operator"
    assert f"triggered {DAG_ID} run {run['dag_run_id']} in Airflow as operator" in output
    request = _request(up.settings, run["dag_run_id"])
    assert request.triggered_by == "operator" and request.trigger_authenticated
    # Airflow's login proved it, not a dag.test: no trigger event of its own
    assert [e for e in _trigger_events(up.settings) if e.run_id == run["dag_run_id"]] == []
