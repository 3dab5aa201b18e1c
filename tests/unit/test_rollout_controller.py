"""The rollout controller's state machine, through the routes file the gateway reads."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipelines.rollout import Trip
from pipelines.spec import Rollout
from serving.gateway import Gateway, load_routes
from serving.rollout_controller import RolloutController, RolloutError

CHAMPION = {"url": "http://127.0.0.1:9001", "version": "4"}
CHALLENGER = {"url": "http://127.0.0.1:9002", "version": "5"}
POLICY = Rollout(
    shadow={"duration": "1h", "min_requests": 100},
    canary_steps=[5, 25, 50, 100],
    bake_time="30m",
    approval_before_full=True,
)


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def setup(tmp_path: Path) -> tuple[RolloutController, Clock, Path]:
    clock = Clock()
    routes = tmp_path / "routes.json"
    controller = RolloutController("fraud", POLICY, routes, tmp_path / "rollout.json", clock)
    return controller, clock, routes


def route(routes: Path) -> dict:
    r = load_routes(routes)["fraud"]
    return {
        "champion": r.champion.version,
        "challenger": r.challenger.version if r.challenger else None,
        "percent": r.challenger_percent,
        "shadow": r.shadow.version if r.shadow else None,
    }


def test_a_full_rollout_walks_every_step_and_waits_for_approval(setup: tuple) -> None:
    controller, clock, routes = setup
    kinds = [controller.start(CHAMPION, CHALLENGER, "ops-anna").kind]
    assert route(routes) == {"champion": "4", "challenger": None, "percent": 0, "shadow": "5"}
    kinds.append(controller.step([], requests=50).kind)  # too few requests
    clock.now += 3600
    kinds.append(controller.step([], requests=500).kind)
    assert route(routes)["percent"] == 5 and route(routes)["shadow"] is None
    for expected in (25, 50):
        clock.now += 1800
        controller.step([], requests=500)
        assert route(routes)["percent"] == expected
    clock.now += 1800
    assert controller.step([], requests=500).kind == "awaiting_approval"
    assert route(routes)["percent"] == 50  # nothing moves without a human
    assert controller.step([], requests=500).detail == {"reason": "awaiting approval"}
    assert controller.approve("risk-ben").detail == {"approved": True}
    assert route(routes)["percent"] == 100
    clock.now += 1800
    promoted = controller.step([], requests=500)
    assert promoted.kind == "champion_promoted" and promoted.detail == {"previous": "4"}
    assert route(routes) == {"champion": "5", "challenger": None, "percent": 0, "shadow": None}
    assert kinds == ["rollout_started", "rollout_hold", "rollout_step"]
    history = controller.load().history
    assert [h["kind"] for h in history].count("rollout_step") == 4  # 5, 25, 50, 100
    assert history[0]["actor"] == "ops-anna" and any(h["actor"] == "risk-ben" for h in history)


def test_a_tripped_guardrail_rolls_back_at_once_and_says_which(setup: tuple) -> None:
    controller, clock, routes = setup
    controller.start(CHAMPION, CHALLENGER, "ops-anna")
    clock.now += 3600
    controller.step([], requests=500)
    event = controller.step([Trip("error_rate", 0.03, 0.001)], requests=20)
    assert event.kind == "rollout_rolled_back" and event.detail["automatic"] is True
    assert "error_rate" in event.detail["reasons"][0]
    assert route(routes) == {"champion": "4", "challenger": None, "percent": 0, "shadow": None}
    with pytest.raises(RolloutError, match="no rollout in progress"):
        controller.step([], requests=1)
    controller.start(CHAMPION, {**CHALLENGER, "version": "6"}, "ops-anna")  # a new one may start


def test_pause_freezes_decisions_and_resume_bakes_again(setup: tuple) -> None:
    controller, clock, routes = setup
    controller.start(CHAMPION, CHALLENGER, "ops-anna")
    clock.now += 3600
    controller.step([], requests=500)
    controller.pause("ops-carl", "market holiday")
    clock.now += 7200
    assert controller.step([], requests=5000).detail == {"reason": "paused"}
    assert route(routes)["percent"] == 5
    with pytest.raises(RolloutError, match="already paused"):
        controller.pause("ops-carl", "again")
    controller.resume("ops-carl")
    assert controller.step([], requests=5000).kind == "rollout_hold"  # the bake restarts
    clock.now += 1800
    assert controller.step([], requests=5000).kind == "rollout_step"


def test_manual_actions_are_checked_against_the_state(setup: tuple) -> None:
    controller, clock, routes = setup
    with pytest.raises(RolloutError, match="no rollout"):
        controller.rollback("ops", "why not")
    controller.start(CHAMPION, CHALLENGER, "ops")
    with pytest.raises(RolloutError, match="already rolling out"):
        controller.start(CHAMPION, CHALLENGER, "ops")
    with pytest.raises(RolloutError, match="skips every canary step"):
        controller.promote("ops")
    with pytest.raises(RolloutError, match="nothing awaits approval"):
        controller.approve("risk")
    event = controller.rollback("ops-dana", "complaints from branch staff")
    assert event.detail == {"reasons": ["complaints from branch staff"], "automatic": False}
    assert controller.status()["phase"] == "rolled_back"


def test_the_gateway_follows_the_controllers_routes(setup: tuple) -> None:
    controller, clock, routes = setup
    controller.start(CHAMPION, CHALLENGER, "ops")
    gateway = Gateway(routes)
    assert gateway.routes["fraud"].shadow is not None
    clock.now += 3600
    controller.step([], requests=500)
    assert gateway.reload()
    assert gateway.routes["fraud"].challenger_percent == 5


def test_other_models_routes_are_kept(setup: tuple) -> None:
    controller, clock, routes = setup
    from serving.gateway import write_routes

    write_routes(routes, {"models": {"credit": {"champion": CHAMPION}}})
    controller.start(CHAMPION, CHALLENGER, "ops")
    assert set(load_routes(routes)) == {"credit", "fraud"}
