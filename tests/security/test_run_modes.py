"""Attack 11 of issue 21, the `govml run` half: it failed in both documented modes.

With the stack up, the scheduler ran the same task as `dag.test()` ("TI was not in a
state where it could be marked as running"); with the stack down, `champion` and
`register` failed ("When an mlflow-artifacts URI was supplied, the tracking URI must be
a valid http or https URI"). Now, on a real embedded stack: with the stack up `govml run
--as USER` triggers the run through Airflow's REST API as that user and follows it
(failures shown with their reason); with the stack down it runs the DAG here against
the server's own artifacts. (The rollout half: test_rollout_dead_endpoint.py.)
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest

from ops import stack
from pipelines.config import Settings

ROOT = Path(__file__).resolve().parents[2]
DAG = "german_credit_lifecycle"
pytestmark = pytest.mark.slow


class CliStack:
    """The shared German Credit stack (tests/conftest.py) for ``govml run --as operator``,
    up or down."""

    def __init__(self, shared, running: SimpleNamespace) -> None:  # noqa: ANN001
        self.shared = shared  # tests.airflow_api.SharedStack
        self.env = running.env | {"COLUMNS": "160"}
        self.specs = Path(self.env["GOVML_SPECS_DIR"])
        self.settings: Settings = running.settings
        self.api = running.api
        self.env["GOVML_PASSWORD"] = stack.airflow_passwords(self.settings)["operator"]
        self.runs: dict[str, str] = {}  # the run ids of this module's runs, by test

    def govml(self, *args: str, timeout: float = 1200) -> subprocess.CompletedProcess:
        return subprocess.run(
            [str(ROOT / ".venv" / "bin" / "govml"), *args],
            env=self.env, cwd=ROOT, capture_output=True, text=True, timeout=timeout,
        )  # fmt: skip

    def run(self, *args: str) -> tuple[int, str]:
        result = self.govml("run", *args, "--as", "operator")
        return result.returncode, result.stdout + result.stderr


@pytest.fixture(scope="module")
def cli_stack(german_credit_stack) -> Iterator[CliStack]:  # noqa: ANN001
    """The shared stack; the module's last test takes it down (the conftest's stop then
    finds nothing more to stop), and a run left waiting is ended if the stack still runs."""
    life = CliStack(german_credit_stack, german_credit_stack.running())
    life.api.wait_for_dag(DAG)
    yield life
    if german_credit_stack.is_running:
        for run_id in life.runs.values():
            life.api.end_run(DAG, run_id)


def _triggered(output: str) -> str:
    """The run id ``govml run`` triggered in Airflow, from its output."""
    return output.split(f"triggered {DAG} run ", 1)[1].split()[0]


def _row(output: str, stage: str) -> str:
    """A stage's status in the (last) stage table of a ``govml run`` output."""
    rows = [line.split("│") for line in output.splitlines() if line.count("│") == 4]
    return [cells[2].strip() for cells in rows if cells[1].strip() == stage][-1]


def test_govml_run_with_the_stack_up_triggers_in_airflow_and_shows_a_failure(
    cli_stack: CliStack, tmp_path: Path
) -> None:
    empty = tmp_path / "empty.csv"
    empty.write_bytes(b"")
    code, output = cli_stack.run("german_credit", "--data", str(empty))
    assert code == 1, output[-4000:]
    assert "in Airflow as operator" in output
    cli_stack.runs["failure"] = _triggered(output)
    assert _row(output, "ingest") == "FAILED"
    assert "failed stage(s): ingest" in output
    assert f"reason (ingest): DataValidationError: {empty}: data file is empty (0 bytes)" in output


def test_govml_run_with_the_stack_up_follows_the_run_to_its_approval_request(
    cli_stack: CliStack,
) -> None:
    from registry.approvals import list_requests

    code, output = cli_stack.run("german_credit", "--reason", "quarterly refresh")
    assert code == 0, output[-4000:]
    assert _row(output, "request_approval") == "done" and _row(output, "register") == "done"
    run_id = cli_stack.runs["approval"] = _triggered(output)
    api = cli_stack.api
    code, run = api.call("GET", api._run_path(DAG, run_id))
    assert code == 200 and run["state"] == "running", run
    assert run["triggering_user_name"] == "operator" and run["triggered_by"] == "rest_api"
    (request,) = [
        r for r in list_requests(cli_stack.settings.governance_url, "german_credit")
        if r.run_id == run_id
    ]  # fmt: skip
    assert request.triggered_by == "operator" and request.trigger_authenticated
    assert "triggered by operator" in output
    api.wait_awaiting_input(DAG, run_id, "approval", 300)


def test_govml_run_with_the_stack_down_uses_the_servers_artifacts(
    cli_stack: CliStack, tmp_path: Path
) -> None:
    """The version the server registered (``mlflow-artifacts:`` URIs) is the champion a
    run with the stack down downloads; its new version is registered in the experiment
    the server made, where the server finds it again."""
    try:
        _stack_down_run(cli_stack, tmp_path)
    finally:
        cli_stack.shared.stop()  # down, and the MLflow server it started last stopped


def _stack_down_run(cli_stack: CliStack, tmp_path: Path) -> None:
    from ops.lifecycle_runner import tracking_uri
    from registry.approvals import list_requests
    from registry.mlflow_registry import mlflow_client, set_alias

    settings = cli_stack.settings
    (served_run,) = [  # the version the server registered in the test before
        r for r in list_requests(settings.governance_url, "german_credit")
        if r.run_id == cli_stack.runs["approval"]
    ]  # fmt: skip
    stopped = cli_stack.govml("stack", "down", timeout=300)
    assert stopped.returncode == 0, stopped.stderr
    backend = tracking_uri(settings)  # the server is down: its backend store
    assert backend.startswith("sqlite:")
    set_alias(
        backend, "german_credit", "champion", served_run.model_version, actor="test",
        reason="a champion", governance_url=settings.governance_url,
    )  # fmt: skip
    versions = mlflow_client(backend).search_model_versions("name = 'german_credit'")
    next_version = str(max(int(v.version) for v in versions) + 1)
    code, output = cli_stack.run("german_credit")
    assert code == 0, output[-4000:]
    assert "mlflow-artifacts" not in output
    assert _row(output, "champion") == "done" and _row(output, "register") == "done"
    run_dir = Path(output.split("run folder   : ")[1].split()[0])
    metrics = json.loads((run_dir / "evaluate" / "metrics.json").read_text())
    assert "champion" in metrics  # compared with the server-registered champion
    registered = json.loads((run_dir / "register" / "register.json").read_text())
    assert registered["version"] == next_version
    request = json.loads((run_dir / "approval" / "request.json").read_text())
    assert request["triggered_by"] == "operator" and request["trigger_authenticated"]

    # a spec given by path (outside the specs folder) runs too, and says why it failed
    copy = tmp_path / "german_credit_copy.yaml"
    copy.write_text((cli_stack.specs / "german_credit.yaml").read_text().replace(
        "name: german_credit", "name: german_credit_copy", 1))  # fmt: skip
    empty = tmp_path / "empty.csv"
    empty.write_bytes(b"")
    code, output = cli_stack.run(str(copy), "--data", str(empty))
    assert code == 1 and "failed stage(s): ingest" in output, output[-4000:]
    assert f"reason: DataValidationError: {empty}: data file is empty (0 bytes)" in output
    assert _row(output, "ingest") == "FAILED" and _row(output, "train") == "not run"

    # the tracking server finds the version the stack-down run wrote (asked as the
    # service account, in the stack's environment)
    started = cli_stack.govml("stack", "up", "--only", "mlflow")
    assert started.returncode == 0, started.stderr[-3000:]
    served = subprocess.run(
        [sys.executable, "-c", "from pipelines.config import load_settings as s; "
         "from registry.mlflow_registry import artifact_sha256_of as h; "
         f"print(h(s().mlflow_tracking_uri, 'german_credit', '{next_version}'))"],
        env=cli_stack.env, cwd=ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert served.stdout.strip() == registered["artifact_sha256"], served.stderr[-3000:]
