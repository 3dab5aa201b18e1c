"""The gateway's A/B test mode: enrolment, exposure caps and the assignment log.

An A/B route (a route with an ``abtest`` block) splits *entities* (the randomisation
unit: a card, a customer) between a **control** arm (the champion) and a **treatment**
arm (the challenger) by the route's salted hash bucket, at a fixed share. An entity is
**enrolled** in its arm the first time it is seen and keeps that arm for the whole test,
whatever later happens to the caps or the routes file. Exposure caps bound how many
entities may see the treatment (``max_entities`` in total, ``max_new_entities_per_day``
per UTC day): once a cap is reached, enrolment closes for both arms (so the arms stay
comparable) and new entities are answered by the champion outside the test; enrolled
entities keep their arm. Requests without an entity id are answered by the champion,
outside the test.

Two append-only JSONL files per test, under ``<abtest_dir>/<test id>/``:

* ``enrolments.jsonl``: one line per enrolled entity (``time``, ``entity``, ``arm``);
  the gateway rebuilds its enrolment from it at start-up, so a restart keeps every
  entity in its arm and the caps where they were;
* ``assignments.jsonl``: one line per scoring request of an enrolled entity
  (``time``, ``request_id``, ``entity``, ``arm``, ``route``: the arm, or ``failover``
  when the champion answered for a failing challenger, ``status``, ``version``). The
  request id is the ``X-Request-Id`` the gateway forwards to the model server (the
  client's own when it sent a valid one), which the server writes into its prediction
  log (``<request id>:<row>``): the analysis joins requests, scores, features and late
  labels to arms through it, intention-to-treat.

``entity`` is a pseudonym: 16 hex digits of SHA-256 over the test's random salt and the
id, never the id itself. Lines are encoded on the request path (about a microsecond) and
buffered in memory; the gateway appends them to the files in a worker thread at each
routes-reload tick, so a request never waits for a disk. A full buffer drops lines
(counted in ``govml_gateway_abtest_log_dropped_total``).
"""

from __future__ import annotations

import json
import logging
import re
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

log = logging.getLogger(__name__)

Arm = Literal["control", "treatment"]
TEST_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
REQUEST_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
ENROLMENTS = "enrolments.jsonl"
ASSIGNMENTS = "assignments.jsonl"
MAX_BUFFERED = 200_000  # lines per file kept in memory between two flushes
DAY = 86_400


@dataclass(frozen=True)
class AbTestRoute:
    """The ``abtest`` block of a route."""

    id: str
    max_entities: int | None = None
    max_new_entities_per_day: int | None = None


class Enrolment:
    """One test's entities and arms, its caps' counters and its pending log lines.

    Used from the gateway's event loop only; :meth:`take` hands the pending lines to the
    writer thread (:func:`append_lines`).
    """

    def __init__(self, test_id: str, folder: Path) -> None:
        self.test_id = test_id
        self.folder = folder
        self.arms: dict[int, Arm] = {}
        self.treatment = 0
        self.control = 0
        self.new_treatment_by_day: dict[int, int] = {}
        self._enrolments: list[str] = []
        self._assignments: list[str] = []
        self.dropped = 0

    # ------------------------------------------------------------------ state
    @classmethod
    def restore(cls, test_id: str, folder: Path) -> Enrolment:
        """The enrolment as the test's ``enrolments.jsonl`` records it (empty if new)."""
        state = cls(test_id, folder)
        path = folder / ENROLMENTS
        try:
            text = path.read_text()
        except FileNotFoundError:
            return state
        except OSError as exc:
            log.error("gateway: cannot read %s (%s): enrolment starts empty", path, exc)
            return state
        for line in text.splitlines():
            try:
                record = json.loads(line)
                key, arm, when = int(record["entity"], 16), record["arm"], float(record["time"])
            except (ValueError, KeyError, TypeError):
                continue  # a line cut by a crash
            if arm in ("control", "treatment") and key not in state.arms:
                state._add(key, arm, when)
        return state

    def _add(self, key: int, arm: Arm, now: float) -> None:
        self.arms[key] = arm
        if arm == "treatment":
            self.treatment += 1
            day = int(now // DAY)
            self.new_treatment_by_day[day] = self.new_treatment_by_day.get(day, 0) + 1
        else:
            self.control += 1

    def is_open(self, caps: AbTestRoute, now: float) -> bool:
        """Whether new entities may still be enrolled."""
        if caps.max_entities is not None and self.treatment >= caps.max_entities:
            return False
        per_day = caps.max_new_entities_per_day
        return per_day is None or self.new_treatment_by_day.get(int(now // DAY), 0) < per_day

    def assign(self, key: int, arm: Arm, caps: AbTestRoute, now: float) -> Arm | None:
        """The entity's arm: its enrolled one, else ``arm`` if enrolment is open, else None
        (served by the champion, outside the test)."""
        current = self.arms.get(key)
        if current is not None:
            return current
        if not self.is_open(caps, now):
            return None
        self._add(key, arm, now)
        self._buffer(
            self._enrolments, f'{{"time":{now:.6f},"entity":"{key:016x}","arm":"{arm}"}}\n'
        )
        return arm

    # ------------------------------------------------------------------ log
    def record(
        self, now: float, request_id: str, key: int, arm: Arm, route: str, status: int,
        version_json: str,
    ) -> None:  # fmt: skip
        """One scoring request of an enrolled entity (``request_id`` already validated)."""
        self._buffer(
            self._assignments,
            f'{{"time":{now:.6f},"request_id":"{request_id}","entity":"{key:016x}",'
            f'"arm":"{arm}","route":"{route}","status":{status},"version":{version_json}}}\n',
        )

    def _buffer(self, lines: list[str], line: str) -> None:
        if len(lines) >= MAX_BUFFERED:
            self.dropped += 1
            return
        lines.append(line)

    def take(self) -> tuple[list[str], list[str]]:
        """The pending (enrolment, assignment) lines; the buffers start again empty."""
        enrolments, assignments = self._enrolments, self._assignments
        self._enrolments, self._assignments = [], []
        return enrolments, assignments

    @property
    def pending(self) -> bool:
        return bool(self._enrolments or self._assignments)


_WRITE_LOCK = threading.Lock()  # one writer at a time (a flush and the final one)


def append_lines(folder: Path, enrolments: list[str], assignments: list[str]) -> int:
    """Append the lines to the test's files (enrolments first); lines lost on error."""
    lost = 0
    with _WRITE_LOCK:
        for name, lines in ((ENROLMENTS, enrolments), (ASSIGNMENTS, assignments)):
            if not lines:
                continue
            try:
                folder.mkdir(parents=True, exist_ok=True)
                with (folder / name).open("a") as out:
                    out.write("".join(lines))
            except OSError as exc:
                log.error("gateway: cannot append to %s: %s", folder / name, exc)
                lost += len(lines)
    return lost


def valid_request_id(value: str | None) -> bool:
    return value is not None and REQUEST_ID.match(value) is not None
