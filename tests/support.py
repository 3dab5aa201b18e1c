"""Helpers shared by the integration and browser tests."""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def stack_env(var_dir: Path, **extra: str) -> dict[str, str]:
    """The environment for an isolated embedded stack: own folder, free ports."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GOVML_", "AIRFLOW"))}
    env.pop("MLFLOW_TRACKING_URI", None)
    env.update(
        {
            "GOVML_VAR_DIR": str(var_dir),
            "GOVML_AIRFLOW_PORT": str(free_port()),
            "GOVML_MLFLOW_PORT": str(free_port()),
        }
    )
    env.update(extra)
    return env


def single_spec_dir(root: Path, dest: Path, name: str) -> Path:
    """A specs folder holding one spec, unscheduled (lifecycle and monitoring): only the
    runs a test triggers run.

    (A scheduled run would start when the stack starts and wait at its approval gate,
    and the DAG runs one run at a time.)
    """
    import yaml

    dest.mkdir(parents=True, exist_ok=True)
    data = yaml.safe_load((root / "specs" / f"{name}.yaml").read_text())
    data["schedule"] = "none"
    data["monitoring"] = {**(data.get("monitoring") or {}), "schedule": "none"}
    (dest / f"{name}.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    return dest


class AirflowAPI:
    """The stack's Airflow REST API, as the users `make up` created."""

    def __init__(self, settings) -> None:  # noqa: ANN001
        import json

        self.base = settings.airflow_url
        self.passwords = json.loads((settings.airflow_home / "passwords.json").read_text())

    def call(
        self, method: str, path: str, body: dict | None = None, user: str = "operator"
    ) -> tuple[int, object]:
        import json
        import urllib.error
        import urllib.request

        headers = {"Content-Type": "application/json"}
        if user:
            headers["Authorization"] = f"Bearer {self.token(user)}"
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.base + path, data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                raw = resp.read()
                return resp.status, json.loads(raw) if raw else None
        except urllib.error.HTTPError as err:
            raw = err.read()
            try:
                return err.code, json.loads(raw)
            except ValueError:
                return err.code, raw.decode(errors="replace")

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
        import time

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:  # the dag-processor parses dags/ after start-up
            if self.call("GET", f"/api/v2/dags/{dag}")[0] == 200:
                return
            time.sleep(2)
        raise AssertionError(f"{dag} was not parsed by the dag-processor in {timeout} s")

    def trigger(self, dag: str, conf: dict | None = None, user: str = "operator") -> str:
        self.wait_for_dag(dag)
        code, run = self.call(
            "POST", f"/api/v2/dags/{dag}/dagRuns", {"logical_date": None, "conf": conf or {}}, user
        )
        assert code == 200, run
        return run["dag_run_id"]  # type: ignore[index]

    def run_state(self, dag: str, run_id: str) -> str:
        return self.call("GET", self._run_path(dag, run_id))[1]["state"]  # type: ignore[index]

    def task_state(self, dag: str, run_id: str, task: str) -> str | None:
        code, ti = self.call("GET", f"{self._run_path(dag, run_id)}/taskInstances/{task}")
        return ti.get("state") if code == 200 and isinstance(ti, dict) else None

    def hitl(self, dag: str, run_id: str, task: str) -> dict:
        code, body = self.call(
            "GET", f"{self._run_path(dag, run_id)}/taskInstances/{task}/-1/hitlDetails"
        )
        assert code == 200, body
        return body  # type: ignore[return-value]

    def answer(
        self, dag: str, run_id: str, task: str, option: str, reason: str, user: str
    ) -> tuple[int, object]:
        return self.call(
            "PATCH",
            f"{self._run_path(dag, run_id)}/taskInstances/{task}/-1/hitlDetails",
            {"chosen_options": [option], "params_input": {"reason": reason}},
            user,
        )

    def wait_awaiting_input(
        self, dag: str, run_id: str, task: str, timeout: float, settle: float = 5.0
    ) -> None:
        """Until the task waits for a (new) answer: awaiting_input with no response, still
        so ``settle`` seconds later.

        An answer given within a second of the task pausing can race Airflow's scheduler
        (the paused task process's exit is processed after the answer moved the task on,
        and the scheduler fails the task instance); people do not answer that fast, and
        a loaded CI machine widens the window, so the tests wait as a person would.
        """
        import time

        deadline = time.monotonic() + timeout
        state = None
        while time.monotonic() < deadline:
            state = self.task_state(dag, run_id, task)
            if state == "awaiting_input" and not self.hitl(dag, run_id, task).get(
                "response_received"
            ):
                time.sleep(settle)
                if self.task_state(dag, run_id, task) == "awaiting_input":
                    return
                continue
            if self.run_state(dag, run_id) in ("failed", "success"):
                break
            time.sleep(3)
        raise AssertionError(f"{task} not awaiting input (state {state}, run {run_id})")

    def wait_run(self, dag: str, run_id: str, timeout: float) -> str:
        import time

        deadline = time.monotonic() + timeout
        state = self.run_state(dag, run_id)
        while state in ("queued", "running") and time.monotonic() < deadline:
            time.sleep(3)
            state = self.run_state(dag, run_id)
        return state


def run_async(coroutine: Any) -> Any:
    """``asyncio.run`` in a fresh thread: a test's coroutine gets an event loop of its
    own even if an earlier test (a library it drove) left one marked running in the
    main thread, where ``asyncio.run`` would refuse to start."""
    import asyncio
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="test-loop") as pool:
        return pool.submit(asyncio.run, coroutine).result()
