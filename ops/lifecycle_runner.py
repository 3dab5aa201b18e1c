"""``govml run SPEC --as USER``: the lifecycle DAG of a spec, run from the command line.

Two modes, chosen by whether the stack's Airflow API server answers:

* **stack up**: the run is triggered in Airflow as USER, through the REST API with the
  token USER's login returned (Airflow records USER as the run's triggering user), and
  followed: the task instances' states, and for a failed stage the reason from its
  task log (:mod:`ops.airflow_runs`). The CLI never runs a task itself, so it never
  races the scheduler.
* **stack down**: the same DAG runs here with ``dag.test()`` in a child process
  (:mod:`dags.govml_airflow.run_dag`; it refuses if a scheduler heartbeats on the
  metadata database). USER, authenticated against the stack's password file, is
  recorded as the run's trigger in the audit chain before the run starts
  (``run_triggered``), bound to the child by a one-time secret. MLflow is its backend
  store, used directly.

Without ``--as`` the stack-down run still runs, but its trigger is not authenticated,
and the version it registers cannot be approved for deployment.

Either way: a progress line per stage, then where the results are.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.live import Live
from rich.markup import escape
from rich.table import Table

from ops import stack
from ops.identity import Identity, airflow_up
from ops.local_run import (
    DEFAULT_UNTIL,
    EXIT_REFUSED,
    TRIGGER_NONCE_ENV,
    lifecycle_run_id,
    record_run_trigger,
)
from ops.run_summary import progress, read_summary
from ops.stack_processes import http_ok
from pipelines.config import Settings
from pipelines.errors import StackError
from pipelines.runs import safe_run_id
from pipelines.spec import ModelSpec
from pipelines.stages import LIFECYCLE
from registry.approval_state import ApprovalStatus
from registry.databases import normalise_url

# After the automated stages of the lifecycle table: the human approval and the deployment.
GOVERNED_TASKS = {
    "request_approval": "approval/request.json",
    "approval": "",
    "deploy": "deploy/deploy.json",
}
# stage -> the file whose appearance means the stage finished
MARKERS = {row.task_id: row.done for row in LIFECYCLE if row.done} | {
    task: done for task, done in GOVERNED_TASKS.items() if done
}
# the table's stages: the lifecycle's tasks in order (``approval`` is the human gate)
STAGES = (*(row.task_id for row in LIFECYCLE), *GOVERNED_TASKS)
# Airflow task instance state -> what the table shows
SHOWN = {
    None: "waiting",
    "none": "waiting",
    "scheduled": "waiting",
    "queued": "queued",
    "running": "running",
    "success": "done",
    "failed": "FAILED",
    "upstream_failed": "not run",
    "skipped": "skipped",
    "up_for_retry": "retrying",
    "up_for_reschedule": "waiting",
    "deferred": "waiting",
    "restarting": "running",
    "removed": "removed",
    "awaiting_input": "awaiting approval",
    "ended": "ended",
}
COLOURS = {
    "done": "green",
    "FAILED": "red",
    "not run": "red",
    "running": "yellow",
    "retrying": "yellow",
    "awaiting approval": "cyan",
}
POLL_SECONDS = 2.0


def tracking_uri(settings: Settings) -> str:
    """The tracking server when it answers, else its backend store used directly (then
    the server's ``mlflow-artifacts:`` URIs resolve to its artifact folder here)."""
    uri = settings.mlflow_tracking_uri
    if uri.startswith("http") and not http_ok(f"{uri}/health", timeout=1.0)[0]:
        from registry.mlflow_local import serve_proxied_artifacts_from

        serve_proxied_artifacts_from(settings.mlflow_artifacts)
        return normalise_url(settings.mlflow_backend_url)
    return uri


def run_environment(settings: Settings) -> dict[str, str]:
    """The ``dag.test()`` child's environment: the stack's Airflow settings, MLflow."""
    env = dict(os.environ) | stack.airflow_env(settings)
    env["MLFLOW_TRACKING_URI"] = tracking_uri(settings)
    env["PYTHONUNBUFFERED"] = "1"
    env.pop(TRIGGER_NONCE_ENV, None)  # only a secret this run recorded counts
    return env


def stages_until(until: str) -> list[str]:
    return list(STAGES[: STAGES.index(until) + 1]) if until in STAGES else list(STAGES)


def stage_table(
    spec: ModelSpec, states: dict[str, str], seconds: dict[str, float], stages: list[str]
) -> Table:
    """One row per stage: its state as Airflow has it, and how long it ran."""
    table = Table(title=f"{spec.name} lifecycle")
    table.add_column("stage")
    table.add_column("status")
    table.add_column("seconds", justify="right")
    for stage in stages:
        shown = SHOWN.get(states.get(stage), states.get(stage) or "waiting")
        colour = COLOURS.get(shown, "dim")
        took = seconds.get(stage)
        table.add_row(stage, f"[{colour}]{shown}[/]", f"{took:.1f}" if took else "")
    return table


_EXCEPTION_LINE = re.compile(r"^(?:[A-Za-z_][\w]*\.)*([A-Za-z_]\w*(?:Error|Exception)): (.+)$")


def failure_reason(log_text: str) -> str:
    """Why a ``dag.test()`` run failed: the last project error its output shows (a task
    fails with ``AirflowFailException: <ProjectError>: ...``), else the last exception
    a traceback ended with."""
    other = ""
    for line in reversed(log_text.splitlines()):
        if "AirflowFailException:" in line:
            return line.split("AirflowFailException:", 1)[1].strip()
        if not other and (match := _EXCEPTION_LINE.match(line)):
            other = f"{match.group(1)}: {match.group(2).strip()}"
    return other


@dataclass(frozen=True)
class LifecycleRequest:
    """One run of a spec's lifecycle DAG: the spec and its file, the run parameters
    (Airflow's ``conf``), the last stage to wait for, and who triggers it (``--as``)."""

    spec: ModelSpec
    spec_path: Path
    conf: dict[str, Any]
    until: str = DEFAULT_UNTIL
    identity: Identity | None = None

    @property
    def dag_id(self) -> str:
        return f"{self.spec.name}_lifecycle"


def run_lifecycle(
    settings: Settings, request: LifecycleRequest, console: Console | None = None
) -> int:
    return run_lifecycle_in(settings, request, console)[0]


def run_lifecycle_in(
    settings: Settings, request: LifecycleRequest, console: Console | None = None
) -> tuple[int, Path]:
    """:func:`run_lifecycle`, also returning the run folder."""
    console = console or Console()
    run = _run_in_airflow if airflow_up(settings) else _run_here
    code, run_id = run(settings, request, console)
    run_dir = settings.runs_dir / request.spec.name / safe_run_id(run_id)
    _print_results(settings, run_dir, console)
    return code, run_dir


# --------------------------------------------------------------------------- stack up
def _in_specs_folder(settings: Settings, spec_path: Path) -> bool:
    return spec_path.resolve().parent == settings.specs_dir.resolve()


def _run_in_airflow(
    settings: Settings, request: LifecycleRequest, console: Console
) -> tuple[int, str]:
    """Trigger the run in Airflow as the user and follow it; (exit code, run id)."""
    from ops.airflow_runs import AirflowRuns

    spec, spec_path, identity = request.spec, request.spec_path, request.identity
    if identity is None or identity.token is None:
        raise StackError(
            f"Airflow runs at {settings.airflow_url}: govml run triggers the run there as "
            "you, so give --as USER (your Airflow login)"
        )
    if not _in_specs_folder(settings, spec_path):
        raise StackError(
            f"{spec_path} is not in the specs folder {settings.specs_dir}: with the stack up "
            "the run uses the DAG Airflow parsed from there; copy the spec there (or stop "
            "the stack to run this file here)"
        )
    dag_id = request.dag_id
    api = AirflowRuns(settings.airflow_url, identity.token, identity.user)
    api.dag(dag_id)
    run = api.trigger(dag_id, request.conf, note=f"govml run --as {identity.user}")
    run_id = str(run["dag_run_id"])
    console.print(
        f"triggered {dag_id} run {run_id} in Airflow as {run.get('triggering_user_name')}"
    )
    code = _follow(api, spec, dag_id, run_id, stages_until(request.until), console)
    if code == 0 and request.until != "deploy":
        console.print(
            f"the run goes on in Airflow ({settings.airflow_url}/dags/{dag_id}); its approval "
            "task waits for the reviewers' answers"
        )
    return code, run_id


def _follow(
    api: Any, spec: ModelSpec, dag_id: str, run_id: str, stages: list[str], console: Console
) -> int:
    """Poll the run's task instances until the last stage is done or something failed."""
    from ops.airflow_runs import FAILED_STATES

    started = time.monotonic()
    last = stages[-1]
    tasks: dict[str, Any] = {}
    said_queued = False
    with Live(stage_table(spec, {}, {}, stages), console=console, refresh_per_second=2) as live:
        try:
            while True:
                tasks = api.task_states(dag_id, run_id)
                run_state = str(api.run(dag_id, run_id).get("state"))
                states = {t: s.state for t, s in tasks.items()}
                seconds = {t: s.duration for t, s in tasks.items() if s.duration}
                live.update(stage_table(spec, states, seconds, stages))
                failed = [t for t in stages if states.get(t) in FAILED_STATES]
                if failed or states.get(last) == "success" or run_state in ("success", "failed"):
                    break
                if run_state == "queued" and not said_queued and time.monotonic() - started > 10:
                    console.print(f"queued: {dag_id} runs one run at a time; another is active")
                    said_queued = True
                time.sleep(POLL_SECONDS)
        except KeyboardInterrupt:
            console.print(f"stopped following; run {run_id} goes on in Airflow")
            raise
    console.print()
    failed_tasks = [s for t, s in tasks.items() if s.state == "failed"]
    ok = not failed_tasks and tasks.get(last) is not None and tasks[last].state == "success"
    failed = [t.task_id for t in failed_tasks]
    _print_outcome(console, run_id, ok, time.monotonic() - started, failed)
    for task in failed_tasks:
        reason = api.failure_reason(dag_id, run_id, task)
        if reason:
            console.print(f"reason ({task.task_id}): {escape(reason)}")
    return 0 if ok else 1


# --------------------------------------------------------------------------- stack down
def _child_environment(
    settings: Settings, request: LifecycleRequest, run_id: str, console: Console
) -> dict[str, str]:
    """The ``dag.test()`` child's environment, with the trigger's one-time secret when
    the trigger (``--as USER``) was proven and recorded."""
    env = run_environment(settings)
    if request.identity is not None:
        env[TRIGGER_NONCE_ENV] = record_run_trigger(
            settings, request.identity, request.dag_id, run_id, request.spec.name
        )
    else:
        console.print(
            "[yellow]no --as USER: this run's trigger is not authenticated, so the version "
            "it registers cannot be approved for deployment[/]"
        )
    return env


def _run_here(settings: Settings, request: LifecycleRequest, console: Console) -> tuple[int, str]:
    """``dag.test()`` in a child process, the trigger recorded first; (exit code, run id)."""
    spec, until = request.spec, request.until
    if until == "deploy":
        raise StackError(
            "--until deploy waits for the reviewers' answers, which Airflow takes: start the "
            "stack (make up) first; with the stack down a run stops at request_approval"
        )
    with console.status("preparing the stores (Airflow metadata migration)"):
        stack.prepare_stores(settings)
    run_after = dt.datetime.now(dt.UTC).replace(microsecond=0)
    run_id = lifecycle_run_id(run_after)
    run_dir = settings.runs_dir / spec.name / safe_run_id(run_id)
    run_dir.mkdir(parents=True, exist_ok=True)
    env = _child_environment(settings, request, run_id, console)
    cmd = [
        sys.executable,
        "-m",
        "dags.govml_airflow.run_dag",
        str(request.spec_path),
        "--conf",
        json.dumps(request.conf),
        "--run-after",
        run_after.isoformat(),
        "--until",
        until,
    ]
    stages = stages_until(until)
    log_path = run_dir / "lifecycle.log"
    started = time.monotonic()
    with log_path.open("w") as log:
        proc = subprocess.Popen(
            cmd, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=settings.home
        )
        seconds = _watch(spec, run_dir, log_path, stages, console, proc.poll)
    log_text = log_path.read_text(errors="replace")
    summary: dict[str, Any] = read_summary(log_text) or {}
    tasks = dict(summary.get("tasks") or {})
    if summary.get("state") == "refused" or proc.returncode == EXIT_REFUSED:
        raise StackError(summary.get("reason") or f"the run was refused; see {log_path}")
    console.print(stage_table(spec, tasks or progress(log_text), seconds, stages))
    ok = proc.returncode == 0 and summary.get("state") == "success"
    failed = sorted(t for t, s in tasks.items() if s == "failed")
    _print_outcome(console, run_id, ok, time.monotonic() - started, failed)
    if not ok:
        reason = str(summary.get("reason") or "") or failure_reason(log_text)
        if reason:
            console.print(f"reason: {escape(reason)}")
    console.print(f"log          : {log_path}")
    return (0 if ok else 1), run_id


def _watch(
    spec: ModelSpec,
    run_dir: Path,
    log_path: Path,
    stages: list[str],
    console: Console,
    poll: Callable[[], int | None],
) -> dict[str, float]:
    """The live stage table of a ``dag.test()`` run, from its output and its files; the
    seconds each stage ran."""
    seconds: dict[str, float] = {}
    began: dict[str, float] = {}
    with Live(stage_table(spec, {}, {}, stages), console=console, refresh_per_second=4) as live:
        while True:
            finished = poll() is not None
            states = progress(log_path.read_text(errors="replace"))
            now = time.monotonic()
            for stage in stages:
                if states.get(stage) == "running":
                    began.setdefault(stage, now)
                elif stage in began and stage not in seconds:
                    seconds[stage] = now - began[stage]
                marker = MARKERS.get(stage)
                if marker and stage not in states and (run_dir / marker).exists():
                    states[stage] = "success"
            if finished:
                live.update("")  # the final table comes from the run's summary
                return seconds
            live.update(stage_table(spec, states, seconds, stages))
            time.sleep(0.5)


# --------------------------------------------------------------------------- results
def _print_outcome(
    console: Console, run_id: str, ok: bool, seconds: float, failed: list[str]
) -> None:
    console.print(
        f"run {run_id}: [{'green' if ok else 'red'}]{'success' if ok else 'FAILED'}[/] "
        f"in {seconds:.0f} s"
    )
    if not ok:
        console.print(f"failed stage(s): {escape(', '.join(failed)) or 'none failed (stopped)'}")


def _print_results(settings: Settings, run_dir: Path, console: Console) -> None:
    console.print(f"run folder   : {run_dir}")
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
        _print_request(settings, json.loads(request_file.read_text()), console)
    deploy_file = run_dir / "deploy" / "deploy.json"
    if deploy_file.exists():
        dep = json.loads(deploy_file.read_text())
        console.print(f"released     : version {dep['model_version']} as {dep['alias']}")


def _print_request(settings: Settings, req: dict[str, Any], console: Console) -> None:
    trigger = req.get("triggered_by") or "the system (schedule)"
    if req.get("trigger_authenticated") is False:
        trigger = "an unauthenticated trigger: it cannot be approved for deployment"
    console.print(
        f"approval     : request {req['id']} is {req['status']}, needs "
        f"{req['required_approvers']} approver(s) with role "
        f"{' or '.join(req['approver_roles'])}; triggered by {trigger}"
    )
    if req["status"] == ApprovalStatus.PENDING and req.get("trigger_authenticated") is not False:
        console.print(
            f"               record decisions with: govml approve {req['model_name']} "
            f'{req["model_version"]} --as USER --reason "..." (a run triggered in '
            f"Airflow waits for them under {settings.airflow_url}/required_actions)"
        )
