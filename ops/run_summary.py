"""The one-line run summary ``ops/run_dag.py`` prints for the CLI and the tests.

``GOVML-RUN {"dag_id": ..., "run_id": ..., "state": ..., "tasks": {...}}`` on stdout.
The DAG's tasks log from other threads to the same output (stderr merged into stdout by
the callers), so the line is written in one ``write`` call (a pipe write of under 4 KiB
is never split), and the reader takes the first JSON object after the prefix and ignores
anything a log line may still have appended.
"""

from __future__ import annotations

import json
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
