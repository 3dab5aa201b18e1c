"""``govml run SPEC``: the lifecycle DAG of a spec, run from the command line.

Drives the same DAG as the Airflow UI (``dag.test()`` in a child process, so no
scheduler is needed), shows a progress line per stage, and prints where the results
are. Uses the MLflow tracking server when it answers, else its backend store
directly (the same store, so the MLflow UI shows the run once ``make up`` runs).
"""

from __future__ import annotations

import datetime as dt
import getpass
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.live import Live
from rich.markup import escape
from rich.table import Table

from ops import stack
from ops.run_dag import DEFAULT_UNTIL, lifecycle_run_id
from ops.run_summary import read_summary
from pipelines.config import Settings
from pipelines.runs import safe_run_id
from pipelines.spec import ModelSpec
from registry.databases import normalise_url

# stage -> the file whose appearance means the stage finished
MARKERS = {
    "ingest": "ingest/result.json",
    "validate_data": "validate_data/result.json",
    "lineage": "lineage/lineage.json",
    "features": "features/result.json",
    "train": "train/result.json",
    "evaluate": "evaluate/result.json",
    "fairness": "fairness/result.json",
    "explain": "explain/result.json",
    "gates": "gates/result.json",
    "register": "register/register.json",
    "request_approval": "approval/request.json",
    "deploy": "deploy/deploy.json",
}


def tracking_uri(settings: Settings) -> str:
    """The tracking server when it answers, else its backend store used directly."""
    uri = settings.mlflow_tracking_uri
    if uri.startswith("http") and not stack.http_ok(f"{uri}/health", timeout=1.0)[0]:
        return normalise_url(settings.mlflow_backend_url)
    return uri


def run_environment(settings: Settings) -> dict[str, str]:
    env = dict(os.environ) | stack.airflow_env(settings)
    env["MLFLOW_TRACKING_URI"] = tracking_uri(settings)
    env["PYTHONUNBUFFERED"] = "1"
    # who triggered a `govml run` (dag.test() itself only says "dag_test"); four-eyes
    # keeps this person from approving the version the run registers
    env.setdefault("GOVML_TRIGGERED_BY", getpass.getuser())
    return env


def _table(spec: ModelSpec, states: dict[str, tuple[str, float]], stages: list[str]) -> Table:
    table = Table(title=f"{spec.name} lifecycle")
    table.add_column("stage")
    table.add_column("status")
    table.add_column("seconds", justify="right")
    for stage in stages:
        status, seconds = states.get(stage, ("waiting", 0.0))
        colour = {"done": "green", "FAILED": "red", "running": "yellow"}.get(status, "dim")
        table.add_row(stage, f"[{colour}]{status}[/]", f"{seconds:.1f}" if seconds else "")
    return table


def _failure_reason(log_text: str) -> str:
    for line in reversed(log_text.splitlines()):
        if "AirflowFailException:" in line:
            return line.split("AirflowFailException:", 1)[1].strip()
    return ""


def run_lifecycle(
    settings: Settings,
    spec: ModelSpec,
    spec_path: Path,
    conf: dict[str, Any],
    console: Console | None = None,
    until: str = DEFAULT_UNTIL,
) -> int:
    return run_lifecycle_in(settings, spec, spec_path, conf, console, until)[0]


def run_lifecycle_in(
    settings: Settings,
    spec: ModelSpec,
    spec_path: Path,
    conf: dict[str, Any],
    console: Console | None = None,
    until: str = DEFAULT_UNTIL,
) -> tuple[int, Path]:
    """:func:`run_lifecycle`, also returning the run folder."""
    console = console or Console()
    stages = list(MARKERS)[: list(MARKERS).index(until) + 1] if until in MARKERS else list(MARKERS)
    with console.status("preparing the stores (Airflow metadata migration)"):
        stack.prepare_stores(settings)
    run_after = dt.datetime.now(dt.UTC).replace(microsecond=0)
    run_id = lifecycle_run_id(run_after)
    run_dir = settings.runs_dir / spec.name / safe_run_id(run_id)
    run_dir.mkdir(parents=True, exist_ok=True)
    log_path = run_dir / "lifecycle.log"
    env = run_environment(settings)
    cmd = [
        sys.executable,
        "-m",
        "ops.run_dag",
        str(spec_path),
        "--conf",
        json.dumps(conf),
        "--run-after",
        run_after.isoformat(),
        "--until",
        until,
    ]
    started = time.monotonic()
    states: dict[str, tuple[str, float]] = {}
    last = started
    with (
        log_path.open("w") as log,
        Live(_table(spec, states, stages), console=console, refresh_per_second=4) as live,
    ):
        proc = subprocess.Popen(
            cmd, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=settings.home
        )
        while True:
            finished = proc.poll() is not None
            for stage in stages:
                marker = MARKERS[stage]
                if stage not in states and (run_dir / marker).exists():
                    now = time.monotonic()
                    states[stage] = ("done", now - last)
                    last = now
            live.update(_table(spec, states, stages))
            if finished:
                break
            time.sleep(0.5)
    console.print()
    log_text = log_path.read_text(errors="replace")
    summary: dict[str, Any] = read_summary(log_text) or {}
    ok = proc.returncode == 0 and summary.get("state") == "success"
    failed = sorted(t for t, s in summary.get("tasks", {}).items() if s == "failed")
    console.print(
        f"run {run_id}: [{'green' if ok else 'red'}]"
        f"{'success' if ok else 'FAILED'}[/] in {time.monotonic() - started:.0f} s"
    )
    if not ok:
        reason = _failure_reason(log_text)
        console.print(f"failed stage(s): {escape(', '.join(failed)) or 'unknown'}")
        if reason:
            console.print(f"reason: {escape(reason)}")
    console.print(f"run folder   : {run_dir}")
    console.print(f"log          : {log_path}")
    if (run_dir / "validate_data" / "data_docs" / "index.html").exists():
        console.print(f"data docs    : {run_dir / 'validate_data' / 'data_docs' / 'index.html'}")
    if (run_dir / "gates" / "gates.json").exists():
        console.print(f"gate results : {run_dir / 'gates' / 'gates.json'}")
    register_file = run_dir / "register" / "register.json"
    if register_file.exists():
        reg = json.loads(register_file.read_text())
        console.print(
            f"registered   : {reg['model_name']} version {reg['version']} "
            f"(alias {reg['alias']}), MLflow UI {settings.mlflow_url}"
        )
    request_file = run_dir / "approval" / "request.json"
    if request_file.exists():
        req = json.loads(request_file.read_text())
        console.print(
            f"approval     : request {req['id']} is {req['status']}, needs "
            f"{req['required_approvers']} approver(s) with role "
            f"{' or '.join(req['approver_roles'])}"
        )
        if req["status"] == "pending":
            console.print(
                f"               record decisions with: govml approve {req['model_name']} "
                f'{req["model_version"]} --as USER --reason "..." (a run triggered in '
                f"Airflow waits for them under {settings.airflow_url}/required_actions)"
            )
    deploy_file = run_dir / "deploy" / "deploy.json"
    if deploy_file.exists():
        dep = json.loads(deploy_file.read_text())
        console.print(f"released     : version {dep['model_version']} as {dep['alias']}")
    return (0 if ok else 1), run_dir
