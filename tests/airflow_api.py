"""The embedded stack under test: ``govml stack up`` / ``down`` around a test
(:func:`running_stack`) and the stack's Airflow REST API as its users (:class:`AirflowAPI`)."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
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
        self, dag: str, run_id: str, task: str, timeout: float, settle: float = 5.0
    ) -> None:
        """Until the task waits for a (new) answer: awaiting_input with no response, its
        paused process gone, still so ``settle`` seconds later.

        An answer given before the scheduler processed the paused task process's end races
        it (the end is processed after the answer moved the task on, and the scheduler
        fails the task instance). People do not answer that fast; on a loaded machine the
        process takes seconds to wind up after pausing, so the tests wait for it to exit
        and then for the scheduler's next loops, as a person would.
        """

        deadline = time.monotonic() + timeout
        state = None
        while time.monotonic() < deadline:
            ti = self.task_instance(dag, run_id, task)
            state = ti.get("state")
            if state == "awaiting_input" and not self.hitl(dag, run_id, task).get(
                "response_received"
            ):
                _wait_exited(ti.get("pid"), deadline - time.monotonic())
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

    def wait_run(self, dag: str, run_id: str, timeout: float) -> str:

        deadline = time.monotonic() + timeout
        state = self.run_state(dag, run_id)
        while state in ("queued", "running") and time.monotonic() < deadline:
            time.sleep(self.POLL_S)
            state = self.run_state(dag, run_id)
        return state


def _wait_exited(pid: int | None, timeout: float) -> None:
    """Until the process ``pid`` (a task process on this machine) has exited."""
    import psutil

    def exited() -> bool:
        try:
            return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return True

    if pid:
        wait_until(exited, max(timeout, 1.0), f"task process {pid} to exit", interval=0.2)
