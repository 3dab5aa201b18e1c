"""The embedded stack under test: ``govml stack up`` / ``down`` around a test
(:func:`running_stack`) and the stack's Airflow REST API as its users (:class:`AirflowAPI`)."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tests.support import REPO, seed_airflow_db, wait_until


@contextlib.contextmanager
def running_stack(env: dict[str, str]) -> Iterator[Any]:
    """``govml stack up`` in the isolated environment ``env`` (:func:`stack_env`);
    ``govml stack down`` afterwards, whatever happened. Yields ``env``, ``settings``,
    ``api`` (the stack's :class:`AirflowAPI`) and ``up`` (the completed ``stack up``)."""
    import subprocess
    from types import SimpleNamespace

    from pipelines.config import load_settings

    govml = str(REPO / ".venv" / "bin" / "govml")
    seed_airflow_db(load_settings(env))
    try:
        up = subprocess.run(
            [govml, "stack", "up"], cwd=REPO, env=env, capture_output=True, text=True, timeout=600
        )
        assert up.returncode == 0, up.stdout + up.stderr
        settings = load_settings(env)
        yield SimpleNamespace(env=env, settings=settings, api=AirflowAPI(settings), up=up)
    finally:
        subprocess.run([govml, "stack", "down"], cwd=REPO, env=env, timeout=300, check=False)


class SharedStack:
    """One German Credit embedded stack (:func:`german_credit_stack_env`) for the test
    modules that need *a* running stack and leave it as they found it: no run waiting,
    nothing stopped (tests/e2e, the stack-up halves of test_run_identity and
    test_run_modes). Starting a stack costs about 40 s of CPU; its users run one after
    another on one test worker (tests/conftest.py groups them), filter what they read by
    their own run ids, and end the runs they leave waiting.

    :meth:`running` starts it on first use (and again after :meth:`stop`); the session's
    conftest stops it after its last user in a row, so it does not idle beside the tests
    that follow."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.env: dict[str, str] | None = None  # the same folder and ports on a restart
        self._context: Any = None
        self._running: Any = None

    def running(self) -> Any:
        """The running stack: ``env``, ``settings``, ``api``, ``up``
        (:func:`running_stack`)."""
        if self._running is None:
            from tests.support import german_credit_stack_env

            self.env = self.env or german_credit_stack_env(self.base)
            self._context = running_stack(self.env)
            self._running = self._context.__enter__()
        return self._running

    @property
    def is_running(self) -> bool:
        return self._running is not None

    def stop(self) -> None:
        """Stop it (``govml stack down``) if it runs; a later :meth:`running` restarts it."""
        context, self._context, self._running = self._context, None, None
        if context is not None:
            context.__exit__(None, None, None)


class AirflowAPI:
    """The stack's Airflow REST API, as the users `make up` created."""

    POLL_S = 1.0  # between two looks at a run or task state

    def __init__(self, settings) -> None:  # noqa: ANN001
        import json

        self.base = settings.airflow_url
        self.airflow_home = settings.airflow_home
        self.run_dir = settings.run_dir
        self.passwords = json.loads((settings.airflow_home / "passwords.json").read_text())

    def call(
        self, method: str, path: str, body: dict | None = None, user: str = "operator"
    ) -> tuple[int, object]:
        """One JSON call as ``user`` (none: anonymous): (status, JSON or text)."""
        from ops.identity import http_json

        token = self.token(user) if user else None
        return http_json(method, self.base + path, body, token=token, timeout=30)

    def token(self, user: str) -> str:
        import json
        import urllib.request

        req = urllib.request.Request(
            f"{self.base}/auth/token",
            data=json.dumps({"username": user, "password": self.passwords[user]}).encode(),
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        with urllib.request.urlopen(req, timeout=30) as resp:
            return json.loads(resp.read())["access_token"]

    @staticmethod
    def _run_path(dag: str, run_id: str) -> str:
        from urllib.parse import quote

        return f"/api/v2/dags/{dag}/dagRuns/{quote(run_id, safe='')}"

    def wait_for_dag(self, dag: str, timeout: float = 180) -> None:

        wait_until(  # the dag-processor parses dags/ after start-up
            lambda: self.call("GET", f"/api/v2/dags/{dag}")[0] == 200,
            timeout,
            f"the dag-processor to parse {dag}",
            interval=1,
        )

    def trigger(self, dag: str, conf: dict | None = None, user: str = "operator") -> str:
        self.wait_for_dag(dag)
        code, run = self.call(
            "POST", f"/api/v2/dags/{dag}/dagRuns", {"logical_date": None, "conf": conf or {}}, user
        )
        assert code == 200, run
        return run["dag_run_id"]  # type: ignore[index]

    def run_state(self, dag: str, run_id: str) -> str:
        return self.call("GET", self._run_path(dag, run_id))[1]["state"]  # type: ignore[index]

    def task_instance(self, dag: str, run_id: str, task: str) -> dict:
        """The task instance as the REST API shows it (empty if it cannot be read)."""
        code, ti = self.call("GET", f"{self._run_path(dag, run_id)}/taskInstances/{task}")
        return ti if code == 200 and isinstance(ti, dict) else {}

    def task_state(self, dag: str, run_id: str, task: str) -> str | None:
        return self.task_instance(dag, run_id, task).get("state")

    def hitl(self, dag: str, run_id: str, task: str) -> dict:
        code, body = self.call(
            "GET", f"{self._run_path(dag, run_id)}/taskInstances/{task}/-1/hitlDetails"
        )
        assert code == 200, body
        return body  # type: ignore[return-value]

    def answer(
        self, dag: str, run_id: str, task: str, option: str, reason: str, user: str
    ) -> tuple[int, object]:
        from ops.approval_form import answer_body

        return self.call(
            "PATCH",
            f"{self._run_path(dag, run_id)}/taskInstances/{task}/-1/hitlDetails",
            answer_body(option, reason),
            user,
        )

    def wait_awaiting_input(
        self, dag: str, run_id: str, task: str, timeout: float, settle: float = 1.0
    ) -> None:
        """Until the task waits for a (new) answer: awaiting_input with no response, and
        the scheduler done with the execution that paused (:meth:`pauses_processed`),
        still so ``settle`` seconds later.

        An answer given before the scheduler read the paused execution's end races it:
        the answer puts the task back in the queue under the same key, the late "finished"
        event then looks like the new execution's end, and the scheduler fails the task
        instance ("state mismatch"). People do not answer within seconds; on a loaded
        machine the end can take that long to reach the scheduler, so the tests wait for
        the scheduler to log it, as a person would have.
        """

        deadline = time.monotonic() + timeout
        state = None
        while time.monotonic() < deadline:
            state = self.task_state(dag, run_id, task)
            if (
                state == "awaiting_input"
                and not self.hitl(dag, run_id, task).get("response_received")
                and self.pauses_processed(dag, run_id, task)
            ):
                time.sleep(settle)
                if self.task_state(dag, run_id, task) == "awaiting_input":
                    return
                continue
            if self.run_state(dag, run_id) in ("failed", "success"):
                break
            time.sleep(self.POLL_S)
        raise AssertionError(
            f"{task} not awaiting input (state {state}, run {run_id})\n"
            + self.why_not(dag, run_id, task)
        )

    def pauses_processed(self, dag: str, run_id: str, task: str) -> bool:
        """Whether the scheduler has read the end of every execution of the task that
        paused for input: as many "Received executor event" lines for the task instance
        in its log as "Pausing task as AWAITING_INPUT" lines in the task's own log."""
        folder = self.airflow_home / "logs" / f"dag_id={dag}" / f"run_id={run_id}"
        pauses = sum(
            attempt.read_text(errors="replace").count("Pausing task as AWAITING_INPUT")
            for attempt in (folder / f"task_id={task}").glob("attempt=*.log")
        )
        scheduler = self.run_dir / "airflow-scheduler.log"
        key = f"task_id='{task}', run_id='{run_id}'"
        ends = sum(
            1
            for line in scheduler.read_text(errors="replace").splitlines()
            if "Received executor event" in line and key in line
        )
        return pauses > 0 and ends >= pauses

    def why_not(self, dag: str, run_id: str, task: str) -> str:
        """What the task's own log and the scheduler's log say went wrong with it: the
        lines of its attempt log at warning level and above, and the scheduler's lines
        naming the task in a state mismatch."""
        folder = self.airflow_home / "logs" / f"dag_id={dag}" / f"run_id={run_id}"
        lines = []
        for attempt in sorted((folder / f"task_id={task}").glob("attempt=*.log")):
            lines += [
                f"{attempt.name}: {line[:600]}"
                for line in attempt.read_text(errors="replace").splitlines()
                if any(level in line for level in ('"warning"', '"error"', '"critical"'))
            ]
        scheduler = self.run_dir / "airflow-scheduler.log"
        if scheduler.exists():
            lines += [
                f"scheduler: {line[:600]}"
                for line in scheduler.read_text(errors="replace").splitlines()
                if f".{task} {run_id}" in line and ("mismatch" in line or "reported that" in line)
            ]
        return "\n".join(lines[-40:]) or "(no warning or error in the task's log)"

    def end_run(self, dag: str, run_id: str) -> None:
        """Mark an unfinished run failed, as the admin (a test leaving the shared stack
        with no run waiting: the lifecycle DAGs run one run at a time)."""
        if self.run_state(dag, run_id) in ("success", "failed"):
            return
        code, body = self.call("PATCH", self._run_path(dag, run_id), {"state": "failed"}, "admin")
        assert code == 200, body

    def wait_run(self, dag: str, run_id: str, timeout: float) -> str:

        deadline = time.monotonic() + timeout
        state = self.run_state(dag, run_id)
        while state in ("queued", "running") and time.monotonic() < deadline:
            time.sleep(self.POLL_S)
            state = self.run_state(dag, run_id)
        return state
