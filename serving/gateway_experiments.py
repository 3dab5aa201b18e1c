"""The A/B tests a gateway is running: their enrolment, picks and log files.

One :class:`~serving.gateway_abtest.Enrolment` per A/B route, kept across route
reloads, restored from its files for a test the gateway has not seen yet (a restart),
retired (its last lines still written) when its route ends it. The rules of a test
itself are in :mod:`serving.gateway_abtest`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from pathlib import Path

from prometheus_client import Counter, Gauge

from serving.gateway_abtest import Arm, Enrolment, append_lines
from serving.gateway_routes import Route, Upstream, entity_hash

log = logging.getLogger("serving.gateway")  # the gateway's log, whichever module speaks

ENROLLED = Gauge(
    "govml_gateway_abtest_enrolled", "Entities enrolled in the A/B test by arm", ["model", "arm"]
)
OUTSIDE = Counter(
    "govml_gateway_abtest_outside_total",
    "Requests of an A/B route answered by the champion outside the test (no_entity, capped)",
    ["model", "reason"],
)
AB_DROPPED = Counter(
    "govml_gateway_abtest_log_dropped_total",
    "A/B log lines lost (buffer full, write error)",
    ["model"],
)


class Experiments:
    """The enrolment of every A/B test of the routes, under ``abtest_dir/<test id>/``."""

    def __init__(self, abtest_dir: Path, clock: Callable[[], float]) -> None:
        self.abtest_dir = abtest_dir
        self.clock = clock
        self.routes: dict[str, Route] = {}
        self._experiments: dict[str, Enrolment] = {}
        self._retired: list[Enrolment] = []

    def sync(self, routes: dict[str, Route]) -> None:
        """Enrolment of every A/B route: kept across reloads, restored from its file for a
        test this gateway has not seen yet (a restart), retired when its route ends it."""
        self.routes = routes
        wanted = {r.abtest.id: r.model for r in routes.values() if r.abtest is not None}
        for test_id in list(self._experiments):
            if test_id not in wanted:
                self._retired.append(self._experiments.pop(test_id))
        for test_id, model in wanted.items():
            if test_id not in self._experiments:
                state = Enrolment.restore(test_id, self.abtest_dir / test_id)
                self._experiments[test_id] = state
                log.info(
                    "gateway: A/B test %s of %s: %d control, %d treatment entities enrolled",
                    test_id,
                    model,
                    state.control,
                    state.treatment,
                )
        self.publish()

    def publish(self) -> None:
        for route in self.routes.values():
            state = self._experiments.get(route.abtest.id) if route.abtest else None
            if state is not None:
                ENROLLED.labels(route.model, "control").set(state.control)
                ENROLLED.labels(route.model, "treatment").set(state.treatment)

    def enrolment(self, test_id: str) -> Enrolment | None:
        return self._experiments.get(test_id)

    async def flush(self) -> None:
        """Append the A/B tests' pending log lines to their files (in a worker thread)."""
        self.publish()
        pending = [e for e in [*self._experiments.values(), *self._retired] if e.pending]
        self._retired = []
        for state in pending:
            lost = await asyncio.to_thread(append_lines, state.folder, *state.take())
            self._count_lost(state, lost)

    def flush_now(self) -> None:
        for state in [*self._experiments.values(), *self._retired]:
            if state.pending:
                self._count_lost(state, append_lines(state.folder, *state.take()))
        self._retired = []

    def _count_lost(self, state: Enrolment, lost: int) -> None:
        model = next(
            (r.model for r in self.routes.values() if r.abtest and r.abtest.id == state.test_id),
            state.test_id,
        )
        lost += state.dropped
        state.dropped = 0
        if lost:
            AB_DROPPED.labels(model).inc(lost)

    def pick(
        self, route: Route, entity: str | None
    ) -> tuple[str, Upstream, tuple[Enrolment, int, Arm] | None]:
        """(route name, upstream, (enrolment, entity key, arm) if the request is in the test)."""
        assert route.abtest is not None
        if entity is None:
            OUTSIDE.labels(route.model, "no_entity").inc()
            return "champion", route.champion, None
        state = self._experiments[route.abtest.id]
        position, key = entity_hash(entity, route.salt)
        candidate = "treatment" if position < route.challenger_percent * 100 else "control"
        arm = state.assign(key, candidate, route.abtest, self.clock())  # type: ignore[arg-type]
        if arm is None:
            OUTSIDE.labels(route.model, "capped").inc()
            return "champion", route.champion, None
        if arm == "treatment":
            assert route.challenger is not None
            return "treatment", route.challenger, (state, key, arm)
        return "control", route.champion, (state, key, arm)
