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

import pytest

from ops import stack
from pipelines.config import Settings, load_settings
from tests.support import german_credit_stack_env, seed_airflow_db

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


class CliStack:
    """An isolated embedded stack for ``govml run --as operator``, up or down."""

    def __init__(self, root: Path) -> None:
        self.env = german_credit_stack_env(root, COLUMNS="160")
        self.specs = Path(self.env["GOVML_SPECS_DIR"])
        self.settings: Settings = load_settings(self.env)
        self.env["GOVML_PASSWORD"] = stack.airflow_passwords(self.settings)["operator"]

    def govml(self, *args: str, timeout: float = 1200) -> subprocess.CompletedProcess:
        return subprocess.run(
            [str(ROOT / ".venv" / "bin" / "govml"), *args],
            env=self.env, cwd=ROOT, capture_output=True, text=True, timeout=timeout,
        )  # fmt: skip

    def run(self, *args: str) -> tuple[int, str]:
        result = self.govml("run", *args, "--as", "operator")
        return result.returncode, result.stdout + result.stderr


@pytest.fixture(scope="module")
def cli_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CliStack]:
    life = CliStack(tmp_path_factory.mktemp("govml-run"))
    seed_airflow_db(life.settings)
    started = life.govml("stack", "up")
    try:
        assert started.returncode == 0, started.stdout[-3000:] + started.stderr[-3000:]
        from tests.airflow_api import AirflowAPI

        AirflowAPI(life.settings).wait_for_dag("german_credit_lifecycle")
        yield life
    finally:
        life.govml("stack", "down", timeout=300)


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
    assert _row(output, "ingest") == "FAILED"
    assert "failed stage(s): ingest" in output
    assert f"reason (ingest): DataValidationError: {empty}: data file is empty (0 bytes)" in output


def test_govml_run_with_the_stack_up_follows_the_run_to_its_approval_request(
    cli_stack: CliStack,
) -> None:
    from registry.approvals import list_requests
    from tests.airflow_api import AirflowAPI

    code, output = cli_stack.run("german_credit", "--reason", "quarterly refresh")
    assert code == 0, output[-4000:]
    assert _row(output, "request_approval") == "done" and _row(output, "register") == "done"
    api = AirflowAPI(cli_stack.settings)
    runs = api.call("GET", "/api/v2/dags/german_credit_lifecycle/dagRuns")[1]["dag_runs"]
    run = next(r for r in runs if r["state"] == "running")
    assert run["triggering_user_name"] == "operator" and run["triggered_by"] == "rest_api"
    (request,) = list_requests(cli_stack.settings.governance_url, "german_credit")
    assert request.run_id == run["dag_run_id"]
    assert request.triggered_by == "operator" and request.trigger_authenticated
    assert "triggered by operator" in output
    api.wait_awaiting_input("german_credit_lifecycle", run["dag_run_id"], "approval", 300)


def test_govml_run_with_the_stack_down_uses_the_servers_artifacts(
    cli_stack: CliStack, tmp_path: Path
) -> None:
    """The version the server registered (``mlflow-artifacts:`` URIs) is the champion a
    run with the stack down downloads; its new version is registered in the experiment
    the server made, where the server finds it again."""
    from ops.lifecycle_runner import tracking_uri
    from registry.mlflow_registry import set_alias

    stopped = cli_stack.govml("stack", "down", timeout=300)
    assert stopped.returncode == 0, stopped.stderr
    settings = cli_stack.settings
    backend = tracking_uri(settings)  # the server is down: its backend store
    assert backend.startswith("sqlite:")
    set_alias(
        backend, "german_credit", "champion", "1", actor="test", reason="a champion",
        governance_url=settings.governance_url,
    )  # fmt: skip
    code, output = cli_stack.run("german_credit")
    assert code == 0, output[-4000:]
    assert "mlflow-artifacts" not in output
    assert _row(output, "champion") == "done" and _row(output, "register") == "done"
    run_dir = Path(output.split("run folder   : ")[1].split()[0])
    metrics = json.loads((run_dir / "evaluate" / "metrics.json").read_text())
    assert "champion" in metrics  # compared with the server-registered champion
    registered = json.loads((run_dir / "register" / "register.json").read_text())
    assert registered["version"] == "2"
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
         "print(h(s().mlflow_tracking_uri, 'german_credit', '2'))"],
        env=cli_stack.env, cwd=ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert served.stdout.strip() == registered["artifact_sha256"], served.stderr[-3000:]
