"""The rollout controller's state machine: shadow, canary steps, approval, promotion, rollback.

It owns one model's rollout and drives the gateway by rewriting its routes file
(atomically; the gateway reloads it within a second):

========== =========================================== ===============================
phase       routes                                      next
========== =========================================== ===============================
shadow      champion 100 %, challenger mirrored          canary at the first step
canary      challenger at the step's share (sticky)      the next step, approval, done
approval    as canary, waiting for a human before 100 %  canary 100 % on ``approve()``
paused      as they were; no automatic decision          ``resume()``
promoted    the challenger is the champion, alone        (the caller moves the alias)
rolled_back the champion alone                           (a new rollout)
========== =========================================== ===============================

:meth:`RolloutController.step` takes the guardrail verdict of the current window
(:func:`pipelines.rollout.check_guardrails`) and applies :func:`pipelines.rollout.decide`;
a trip rolls back at once: the routes file is rewritten before ``step`` returns, so the
gateway sends everything to the champion within its reload interval.

Traffic never goes to an endpoint that does not answer: with a ``probe`` (the endpoint's
ready probe, :func:`serving.control.rollout_windows.endpoint_problem`), ``start`` checks both
endpoints, and every transition that gives the challenger more traffic (a step up,
the go for 100 %, promotion, resuming) checks the challenger first. A person's action
is refused (:class:`EndpointDown`, state and routes unchanged); the controller's own
step rolls the rollout back instead, like a tripped guardrail, so that no traffic stays
on the dead endpoint. A rollback is never held back by a probe. Every transition is
returned as an :class:`Event` (and kept in the state file's history) for the caller to
record in the audit trail with the actor; the controller itself never talks to the
registry (``serving`` imports no ``registry``).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from pipelines.errors import GovMLError
from pipelines.files import read_json_or_none
from pipelines.rollout import StepState, Trip, decide
from pipelines.spec_operations import Rollout
from serving.gateway_routes import write_routes

Phase = Literal["shadow", "canary", "approval", "paused", "promoted", "rolled_back"]
ACTIVE: tuple[Phase, ...] = ("shadow", "canary", "approval", "paused")


class RolloutError(GovMLError):
    """A rollout action that does not fit the rollout's state."""

    exit_code = 2


# (model, endpoint {"url", "version"}) -> None when it answers its ready probe, else why not
Probe = Callable[[str, dict[str, str]], str | None]


class EndpointDown(RolloutError):
    """Traffic refused to an endpoint that does not answer its ready probe."""

    def __init__(
        self, model: str, role: str, endpoint: dict[str, str], why: str, refused: str
    ) -> None:
        self.model, self.role, self.endpoint = model, role, dict(endpoint)
        self.why, self.refused = why, refused
        super().__init__(
            f"refused to route traffic to {model} v{endpoint.get('version')} ({role}): its "
            f"endpoint {endpoint.get('url')} does not answer its ready probe ({why})"
        )

    def detail(self) -> dict[str, Any]:
        """What an audit event records about the refusal."""
        return {
            "reason": str(self),
            "refused": self.refused,
            "role": self.role,
            "endpoint": self.endpoint.get("url"),
            "endpoint_version": self.endpoint.get("version"),
            "probe": self.why,
        }


@dataclass(frozen=True)
class Event:
    kind: str  # rollout_started, rollout_step, rollout_hold, awaiting_approval, ...
    model: str
    version: str
    percent: int
    actor: str
    time: float
    detail: dict[str, Any] = field(default_factory=dict)


@dataclass
class RolloutState:
    model: str
    champion: dict[str, str]  # {"url", "version"}
    challenger: dict[str, str]
    phase: Phase = "shadow"
    percent: int = 0
    step_started: float = 0.0
    paused_from: str | None = None
    history: list[dict[str, Any]] = field(default_factory=list)


class RolloutController:
    def __init__(
        self,
        model: str,
        policy: Rollout,
        routes_path: str | os.PathLike[str],
        state_path: str | os.PathLike[str],
        clock: Callable[[], float] = time.time,
        probe: Probe | None = None,
    ) -> None:
        self.model = model
        self.policy = policy
        self.routes_path = Path(routes_path)
        self.state_path = Path(state_path)
        self.clock = clock
        self.probe = probe

    def check(self, endpoint: dict[str, str], role: str, refused: str) -> None:
        """Raise :class:`EndpointDown` unless ``endpoint`` answers its ready probe."""
        if self.probe is None:
            return
        why = self.probe(self.model, endpoint)
        if why is not None:
            raise EndpointDown(self.model, role, endpoint, why, refused)

    # ------------------------------------------------------------------ state
    def load(self) -> RolloutState | None:
        data = read_json_or_none(self.state_path, RolloutError, f"rollout state {self.state_path}")
        return None if data is None else RolloutState(**data)

    def _save(self, state: RolloutState) -> None:
        self.state_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.state_path.with_name(f".{self.state_path.name}.tmp")
        tmp.write_text(json.dumps(asdict(state), indent=2))
        os.replace(tmp, self.state_path)

    def _active(self) -> RolloutState:
        state = self.load()
        if state is None or state.phase not in ACTIVE:
            raise RolloutError(f"{self.model}: no rollout in progress")
        return state

    def _routes(self, state: RolloutState) -> None:
        route: dict[str, Any] = {"champion": state.champion, "salt": f"{self.model}-rollout"}
        if state.phase == "shadow":
            route["shadow"] = state.challenger
        elif state.phase in ("canary", "approval", "paused") and state.percent > 0:
            route["challenger"] = state.challenger
            route["challenger_percent"] = state.percent
        elif state.phase == "promoted":
            route = {"champion": state.challenger}
        try:  # other models' routes in the same file stay as they are
            current = json.loads(self.routes_path.read_text())
        except (OSError, ValueError):
            current = {}
        models = dict(current.get("models") or {}) if isinstance(current, dict) else {}
        models[self.model] = route
        self.routes_path.parent.mkdir(parents=True, exist_ok=True)
        write_routes(self.routes_path, {"models": models})

    def _event(self, state: RolloutState, kind: str, actor: str, **detail: Any) -> Event:
        event = Event(
            kind,
            self.model,
            state.challenger["version"],
            state.percent,
            actor,
            self.clock(),
            detail,
        )
        state.history.append(asdict(event))
        return event

    def _transition(self, state: RolloutState, kind: str, actor: str, **detail: Any) -> Event:
        """A transition: its event in the state's history, the state saved."""
        event = self._event(state, kind, actor, **detail)
        self._save(state)
        return event

    # ------------------------------------------------------------------ transitions
    def start(self, champion: dict[str, str], challenger: dict[str, str], actor: str) -> Event:
        """Begin with the shadow phase: the challenger sees every request, answers none."""
        current = self.load()
        if current is not None and current.phase in ACTIVE:
            raise RolloutError(
                f"{self.model}: version {current.challenger['version']} is already rolling out "
                f"({current.phase}, {current.percent}%); roll it back or promote it first"
            )
        self.check(champion, "champion", "start")
        self.check(challenger, "challenger", "start")
        state = RolloutState(
            self.model, dict(champion), dict(challenger), "shadow", 0, self.clock()
        )
        self._routes(state)
        return self._transition(state, "rollout_started", actor, champion=champion["version"])

    def step(self, trips: list[Trip], requests: int, actor: str = "rollout-controller") -> Event:
        """Apply the verdict of the current window (``requests``: the challenger's)."""
        state = self._active()
        if state.phase == "paused":
            return self._event(state, "rollout_hold", actor, reason="paused")
        if state.phase == "approval" and not trips:  # still waiting: not a transition
            return self._event(state, "rollout_hold", actor, reason="awaiting approval")
        now = self.clock()
        decision, following = decide(
            self.policy, StepState(state.percent, now - state.step_started, requests), trips
        )
        if decision == "rollback":
            return self._rollback(state, actor, [t.message for t in trips], automatic=True)
        if decision == "advance":  # more traffic for the challenger: is it there?
            try:
                self.check(state.challenger, "challenger", f"step to {following}%")
            except EndpointDown as exc:
                return self._rollback(state, actor, [str(exc)], True, exc.detail())
        if decision == "hold":
            event = self._event(state, "rollout_hold", actor, elapsed_s=now - state.step_started)
        elif decision == "await_approval":
            state.phase = "approval"
            event = self._event(state, "awaiting_approval", actor, next_percent=following)
        elif decision == "advance":
            assert following is not None
            state.phase, state.percent, state.step_started = "canary", following, now
            self._routes(state)
            event = self._event(state, "rollout_step", actor)
        else:  # done: 100 % has baked, promote
            try:
                return self.promote(actor)
            except EndpointDown as exc:
                return self._rollback(state, actor, [str(exc)], True, exc.detail())
        self._save(state)
        return event

    def approve(self, actor: str) -> Event:
        """A human's go for 100 %."""
        state = self._active()
        if state.phase != "approval":
            raise RolloutError(f"{self.model}: nothing awaits approval ({state.phase})")
        self.check(state.challenger, "challenger", "go for 100%")
        state.phase, state.percent, state.step_started = "canary", 100, self.clock()
        self._routes(state)
        return self._transition(state, "rollout_step", actor, approved=True)

    def pause(self, actor: str, reason: str) -> Event:
        state = self._active()
        if state.phase == "paused":
            raise RolloutError(f"{self.model}: already paused")
        state.paused_from, state.phase = state.phase, "paused"
        return self._transition(state, "rollout_paused", actor, reason=reason)

    def resume(self, actor: str) -> Event:
        state = self._active()
        if state.phase != "paused":
            raise RolloutError(f"{self.model}: not paused ({state.phase})")
        self.check(state.challenger, "challenger", "resume")
        state.phase = state.paused_from or "canary"  # type: ignore[assignment]
        state.paused_from, state.step_started = None, self.clock()  # bake again
        return self._transition(state, "rollout_resumed", actor)

    def rollback(self, actor: str, reason: str) -> Event:
        return self._rollback(self._active(), actor, [reason], automatic=False)

    def _rollback(
        self,
        state: RolloutState,
        actor: str,
        reasons: list[str],
        automatic: bool,
        down: dict[str, Any] | None = None,
    ) -> Event:
        state.phase, state.percent = "rolled_back", 0
        self._routes(state)  # first: the champion takes everything again
        extra = {"endpoint_down": down} if down else {}
        return self._transition(
            state, "rollout_rolled_back", actor, reasons=reasons, automatic=automatic, **extra
        )

    def promote(self, actor: str) -> Event:
        """The challenger becomes the champion (the caller moves the MLflow alias)."""
        state = self._active()
        if state.phase == "shadow":
            raise RolloutError(f"{self.model}: promote from shadow skips every canary step")
        self.check(state.challenger, "challenger", "promotion")
        state.phase, state.percent = "promoted", 100
        self._routes(state)
        return self._transition(
            state, "champion_promoted", actor, previous=state.champion["version"]
        )

    def status(self) -> dict[str, Any]:
        state = self.load()
        if state is None:
            return {"model": self.model, "phase": None}
        return {
            "model": state.model,
            "phase": state.phase,
            "percent": state.percent,
            "champion": state.champion,
            "challenger": state.challenger,
            "step_age_s": self.clock() - state.step_started,
            "events": len(state.history),
        }
