"""The one-line run summary ``dags/govml_airflow/run_dag.py`` prints for the CLI and the tests.

``GOVML-RUN {"dag_id": ..., "run_id": ..., "state": ..., "tasks": {...}}`` on stdout.
The DAG's tasks log from other threads to the same output (stderr merged into stdout by
the callers), so the line is written in one ``write`` call (a pipe write of under 4 KiB
is never split), and the reader takes the first JSON object after the prefix and ignores
anything a log line may still have appended.

While the run goes on, :func:`progress` reads the task states from the same output.
"""

from __future__ import annotations

import json
import re
import sys
from typing import Any, TextIO

PREFIX = "GOVML-RUN "


def write_summary(summary: dict[str, Any], stream: TextIO | None = None) -> None:
    """The summary line, in one write."""
    out = stream or sys.stdout
    out.write(PREFIX + json.dumps(summary, sort_keys=True) + "\n")
    out.flush()


def read_summary(text: str) -> dict[str, Any] | None:
    """The last summary in ``text`` (a run's output), or None when there is none."""
    found = None
    for line in text.splitlines():
        at = line.find(PREFIX)
        if at < 0:
            continue
        try:
            found, _ = json.JSONDecoder().raw_decode(line, at + len(PREFIX))
        except json.JSONDecodeError:
            continue
    return found


# dag.test() logs each task it runs between these two lines; in between, the execution
# API logs the task instance's state changes
_STARTING = re.compile(r"\[DAG TEST\] starting task_id=(\S+)")
_ENDED = re.compile(r"\[DAG TEST\] end task task_id=(\S+)")
_NEW_STATE = re.compile(r"Task instance state updated .*new_state=(\w+)")


def progress(text: str) -> dict[str, str]:
    """Task states (Airflow's names) of a ``dag.test()`` run so far, from its output."""
    states: dict[str, str] = {}
    current = None
    for line in text.splitlines():
        if match := _STARTING.search(line):
            current = match.group(1)
            states[current] = "running"
        elif current and (match := _NEW_STATE.search(line)):
            states[current] = match.group(1)
        elif (match := _ENDED.search(line)) and match.group(1) == current:
            if states.get(current) == "running":  # ended without a recorded state
                states[current] = "ended"
            current = None
    return states
