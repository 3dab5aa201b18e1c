"""The rollout controller's state machine, through the routes file the gateway reads."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipelines.rollout import Trip
from pipelines.spec_operations import Rollout
from serving.auth import TokenStore
from serving.control.rollout_controller import EndpointDown, RolloutController, RolloutError
from serving.gateway import Gateway
from serving.gateway_routes import load_routes

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
    gateway = Gateway(routes, tokens=TokenStore([]))  # routing only: no client here
    assert gateway.routes["fraud"].shadow is not None
    clock.now += 3600
    controller.step([], requests=500)
    assert gateway.reload()
    assert gateway.routes["fraud"].challenger_percent == 5


def test_other_models_routes_are_kept(setup: tuple) -> None:
    controller, clock, routes = setup
    from serving.gateway_routes import write_routes

    write_routes(routes, {"models": {"credit": {"champion": CHAMPION}}})
    controller.start(CHAMPION, CHALLENGER, "ops")
    assert set(load_routes(routes)) == {"credit", "fraud"}


class Probe:
    """The endpoints' ready probe as the controller sees it: the URLs that do not answer."""

    def __init__(self) -> None:
        self.down: dict[str, str] = {}
        self.asked: list[str] = []

    def __call__(self, model: str, endpoint: dict[str, str]) -> str | None:
        self.asked.append(endpoint["url"])
        return self.down.get(endpoint["url"])


@pytest.fixture
def probed(tmp_path: Path) -> tuple[RolloutController, Clock, Path, Probe]:
    clock, probe = Clock(), Probe()
    routes = tmp_path / "routes.json"
    controller = RolloutController(
        "fraud", POLICY, routes, tmp_path / "rollout.json", clock, probe=probe
    )
    return controller, clock, routes, probe


DEAD = (
    "refused to route traffic to fraud v5 (challenger): its endpoint http://127.0.0.1:9002 "
    "does not answer its ready probe (connection refused)"
)


def test_a_rollout_does_not_start_towards_a_dead_endpoint(probed: tuple) -> None:
    controller, clock, routes, probe = probed
    probe.down[CHALLENGER["url"]] = "connection refused"
    with pytest.raises(EndpointDown) as refused:
        controller.start(CHAMPION, CHALLENGER, "ops-anna")
    assert str(refused.value) == DEAD
    assert refused.value.detail()["refused"] == "start"
    assert not routes.exists() and controller.load() is None  # nothing was routed
    probe.down = {CHAMPION["url"]: "HTTP 503"}
    with pytest.raises(EndpointDown, match=r"fraud v4 \(champion\).*\(HTTP 503\)"):
        controller.start(CHAMPION, CHALLENGER, "ops-anna")
    probe.down = {}
    assert controller.start(CHAMPION, CHALLENGER, "ops-anna").kind == "rollout_started"


def test_a_step_up_to_a_dead_challenger_rolls_the_rollout_back(probed: tuple) -> None:
    controller, clock, routes, probe = probed
    controller.start(CHAMPION, CHALLENGER, "ops-anna")
    clock.now += 3600
    assert controller.step([], requests=500).kind == "rollout_step"  # 5 %
    probe.down[CHALLENGER["url"]] = "connection refused"
    clock.now += 1800
    event = controller.step([], requests=500)
    assert event.kind == "rollout_rolled_back" and event.actor == "rollout-controller"
    assert event.detail["reasons"] == [DEAD] and event.detail["automatic"] is True
    assert event.detail["endpoint_down"]["refused"] == "step to 25%"
    # not one more request for the dead endpoint: the champion takes everything
    assert route(routes) == {"champion": "4", "challenger": None, "percent": 0, "shadow": None}


def test_resuming_towards_a_dead_challenger_is_refused(probed: tuple) -> None:
    controller, clock, routes, probe = probed
    controller.start(CHAMPION, CHALLENGER, "ops-anna")
    clock.now += 3600
    controller.step([], requests=500)
    controller.pause("ops-carl", "holiday freeze")
    probe.down[CHALLENGER["url"]] = "connection refused"
    with pytest.raises(EndpointDown) as refused:
        controller.resume("ops-carl")
    assert str(refused.value) == DEAD and refused.value.detail()["refused"] == "resume"
    assert controller.status()["phase"] == "paused" and route(routes)["percent"] == 5
    probe.down = {}  # redeployed
    assert controller.resume("ops-carl").kind == "rollout_resumed"
    clock.now += 1800
    assert controller.step([], requests=500).kind == "rollout_step"
    assert route(routes)["percent"] == 25


def test_the_go_and_the_promotion_need_a_live_challenger_a_rollback_never_waits(
    probed: tuple,
) -> None:
    controller, clock, routes, probe = probed
    controller.start(CHAMPION, CHALLENGER, "ops")
    for _ in range(4):
        clock.now += 3600
        controller.step([], requests=500)
    assert controller.status()["phase"] == "approval"
    probe.down[CHALLENGER["url"]] = "no answer within 3 s"
    with pytest.raises(EndpointDown, match=r"\(no answer within 3 s\)"):
        controller.approve("risk-ben")
    assert route(routes)["percent"] == 50 and controller.status()["phase"] == "approval"
    asked = len(probe.asked)
    event = controller.rollback("ops-dana", "challenger host lost")
    assert event.kind == "rollout_rolled_back" and len(probe.asked) == asked  # no probe
    assert route(routes)["challenger"] is None
