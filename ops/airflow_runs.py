"""DAG runs through the Airflow REST API, as an authenticated user.

With the stack up, ``govml run`` never runs a DAG itself (``dag.test()`` would race the
scheduler on the same metadata database): it triggers the run as the user it
authenticated (``POST /api/v2/dags/{dag_id}/dagRuns`` with that user's token, so
Airflow itself records ``triggering_user_name``) and follows it: the task instances'
states, and for a failed task the reason from its log
(``GET .../taskInstances/{task}/logs/{try}``).
"""

from __future__ import annotations

import urllib.parse
from dataclasses import dataclass
from typing import Any

from ops.identity import http_json
from pipelines.errors import StackError

FAILED_STATES = frozenset({"failed", "upstream_failed"})
FINISHED_STATES = frozenset({"success", "failed", "upstream_failed", "skipped", "removed"})


@dataclass(frozen=True)
class TaskState:
    task_id: str
    state: str | None
    try_number: int
    duration: float | None


class AirflowRuns:
    """One user's view of the Airflow REST API (their token)."""

    def __init__(self, base_url: str, token: str, user: str, timeout: float = 30) -> None:
        self.base = base_url.rstrip("/")
        self.token = token
        self.user = user
        self.timeout = timeout

    def __repr__(self) -> str:
        return f"AirflowRuns({self.base!r}, user={self.user!r})"

    def _call(self, method: str, path: str, body: dict | None = None) -> tuple[int, Any]:
        try:
            return http_json(method, self.base + path, body, self.token, self.timeout)
        except OSError as exc:
            raise StackError(f"Airflow at {self.base} does not answer: {exc}") from None

    @staticmethod
    def _run_path(dag_id: str, run_id: str) -> str:
        return f"/api/v2/dags/{dag_id}/dagRuns/{urllib.parse.quote(run_id, safe='')}"

    @staticmethod
    def _detail(body: Any) -> str:
        if isinstance(body, dict) and "detail" in body:
            detail = body["detail"]
            return detail if isinstance(detail, str) else str(detail)[:300]
        return str(body)[:300]

    def dag(self, dag_id: str) -> dict[str, Any]:
        """The DAG as Airflow knows it; refuses one it does not know or that is paused."""
        status, body = self._call("GET", f"/api/v2/dags/{dag_id}")
        if status == 404:
            raise StackError(
                f"Airflow does not know the DAG {dag_id}: is its spec in the specs folder "
                "and valid (`govml spec validate`)? The dag-processor parses new specs "
                "within a minute"
            )
        if status in (401, 403):
            raise StackError(f"Airflow refused {self.user} reading {dag_id} (HTTP {status})")
        if status != 200 or not isinstance(body, dict):
            raise StackError(f"Airflow answered {status} for {dag_id}: {self._detail(body)}")
        if body.get("is_paused"):
            raise StackError(
                f"{dag_id} is paused in Airflow, so a run would wait forever: unpause it in "
                "the Airflow UI first"
            )
        return body

    def trigger(self, dag_id: str, conf: dict[str, Any], note: str | None = None) -> dict:
        """A new manual run of ``dag_id`` as this user; the run as Airflow answered it."""
        body: dict[str, Any] = {"logical_date": None, "conf": conf}
        if note:
            body["note"] = note
        status, run = self._call("POST", f"/api/v2/dags/{dag_id}/dagRuns", body)
        if status == 403:
            raise StackError(
                f"Airflow refused {self.user} triggering {dag_id} (HTTP 403): triggering a run "
                "needs an Airflow role that may run DAGs (user, op or admin)"
            )
        if status not in (200, 201) or not isinstance(run, dict) or not run.get("dag_run_id"):
            raise StackError(
                f"Airflow refused the run of {dag_id} (HTTP {status}): {self._detail(run)}"
            )
        return run

    def run(self, dag_id: str, run_id: str) -> dict[str, Any]:
        status, body = self._call("GET", self._run_path(dag_id, run_id))
        if status != 200 or not isinstance(body, dict):
            raise StackError(f"cannot read run {run_id} of {dag_id} (HTTP {status})")
        return body

    def task_states(self, dag_id: str, run_id: str) -> dict[str, TaskState]:
        """Every task instance of the run, by task id."""
        status, body = self._call("GET", f"{self._run_path(dag_id, run_id)}/taskInstances")
        if status != 200 or not isinstance(body, dict):
            raise StackError(f"cannot read the tasks of run {run_id} of {dag_id} (HTTP {status})")
        found = {}
        for ti in body.get("task_instances") or []:
            found[ti["task_id"]] = TaskState(
                ti["task_id"], ti.get("state"), int(ti.get("try_number") or 0), ti.get("duration")
            )
        return found

    def failure_reason(self, dag_id: str, run_id: str, task: TaskState) -> str:
        """Why a task failed, from its log (the exception it failed with); "" if unknown."""
        if task.try_number < 1:
            return ""
        path = (
            f"{self._run_path(dag_id, run_id)}/taskInstances/{task.task_id}/logs/"
            f"{task.try_number}?full_content=true"
        )
        status, body = self._call("GET", path)
        if status != 200 or not isinstance(body, dict):
            return ""
        return reason_from_log(body.get("content") or [])


def reason_from_log(content: list[Any]) -> str:
    """The failure in a task log as the REST API returns it (structured entries).

    The task runner logs "Task failed with exception" with ``error_detail``: the
    exception chain, the raised exception first. ``AirflowFailException`` carries the
    project error as its message (``GateFailedError: ...``); another exception is
    named with its type. The last failure logged wins.
    """
    reason = ""
    for entry in content:
        if isinstance(entry, str):
            if "AirflowFailException:" in entry:
                reason = entry.split("AirflowFailException:", 1)[1].strip()
            continue
        details = entry.get("error_detail") if isinstance(entry, dict) else None
        if not details or not isinstance(details[0], dict):
            continue
        kind, value = str(details[0].get("exc_type") or ""), str(details[0].get("exc_value") or "")
        reason = value if kind == "AirflowFailException" else f"{kind}: {value}"
    return reason.strip().splitlines()[0] if reason.strip() else ""
