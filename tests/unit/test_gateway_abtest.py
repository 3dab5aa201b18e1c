"""The gateway's A/B mode: a fixed sticky split, enrolment, exposure caps, state that
survives reloads and restarts, and an assignment log that attributes every request to
its arm (driven as plain ASGI against small upstream servers on loopback)."""

from __future__ import annotations

import json
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from pipelines.errors import ConfigError
from serving.auth import TokenStore
from serving.gateway import Gateway
from serving.gateway_abtest import ASSIGNMENTS, ENROLMENTS
from serving.gateway_routes import parse_routes, write_routes
from serving.request_context import current_request_id, set_request_id
from serving.token_files import write_records
from serving.token_records import generate_token
from tests.support import run_async

CHAMPION = {"url": "http://127.0.0.1:9001", "version": "1"}
CHALLENGER = {"url": "http://127.0.0.1:9002", "version": "2"}
DAY = 86_400.0
CLIENT, CLIENT_RECORD = generate_token("core-banking", ["predict", "explain"])


def client_tokens(folder: Path) -> TokenStore:
    """The gateway's own clients (core-banking), as a watched token file."""
    path = folder / "gateway-tokens.json"
    if not path.exists():
        write_records(path, [CLIENT_RECORD])
    return TokenStore.load(path)


def ab_routes(
    percent: float = 50, champion: dict = CHAMPION, challenger: dict = CHALLENGER, **abtest: Any
) -> dict:
    return {
        "models": {
            "fraud": {
                "champion": champion,
                "challenger": challenger,
                "challenger_percent": percent,
                "salt": "fraud-ab-7f3a",
                "abtest": {"id": "fraud-ab-1", **abtest},
            }
        }
    }


class Clock:
    def __init__(self, now: float = 20_000 * DAY) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def gateway(tmp_path: Path, routes: dict, clock: Clock | None = None) -> Gateway:
    path = tmp_path / "routes.json"
    write_routes(path, routes)
    return Gateway(path, tokens=client_tokens(tmp_path), clock=clock or Clock())


def arm_of(gw: Gateway, entity: str | None) -> str:
    return gw._ab_pick(gw.routes["fraud"], entity)[0]


# --------------------------------------------------------------------------- routes
@pytest.mark.parametrize(
    ("change", "needle"),
    [
        ({"abtest": {"id": "../etc"}}, "abtest.id"),
        ({"abtest": {"id": "t", "max_entities": 0}}, "max_entities"),
        ({"abtest": {"id": "t", "max_new_entities_per_day": "10"}}, "max_new_entities_per_day"),
        ({"abtest": {"id": "t", "cap": 3}}, "expected an object"),
        ({"challenger_percent": 100}, "between 0 and 100"),
        ({"salt": ""}, "own salt"),
        ({"shadow": CHAMPION}, "no shadow"),
    ],
)
def test_bad_ab_routes_are_named(change: dict, needle: str) -> None:
    data = ab_routes()
    data["models"]["fraud"].update(change)
    with pytest.raises(ConfigError, match=needle):
        parse_routes(data)


# --------------------------------------------------------------------------- assignment
def test_the_split_is_fixed_sticky_and_enrols_each_entity_once(tmp_path: Path) -> None:
    gw = gateway(tmp_path, ab_routes(percent=30))
    ids = [f"card-{i}" for i in range(20_000)]
    arms = {i: arm_of(gw, i) for i in ids}
    assert {i: arm_of(gw, i) for i in ids} == arms  # sticky
    share = sum(a == "treatment" for a in arms.values()) / len(ids)
    assert abs(share - 0.30) < 0.015
    state = gw.enrolment("fraud-ab-1")
    assert state is not None and state.treatment + state.control == len(ids)
    assert arm_of(gw, None) == "champion"  # no entity: outside the test
    assert state.treatment + state.control == len(ids)


def test_exposure_caps_close_enrolment_for_new_entities_only(tmp_path: Path) -> None:
    clock = Clock()
    gw = gateway(tmp_path, ab_routes(max_entities=100, max_new_entities_per_day=40), clock)
    seen: dict[str, str] = {}
    for i in range(400):
        seen[f"c{i}"] = arm_of(gw, f"c{i}")
    state = gw.enrolment("fraud-ab-1")
    assert state is not None and state.treatment == 40  # the daily cap
    assert "champion" in seen.values()
    # enrolled entities keep their arm; the capped ones stay on the champion, outside
    assert all(arm_of(gw, e) == a for e, a in seen.items())
    clock.now += DAY  # a new day: enrolment opens again for 40 more
    for i in range(400, 1_000):
        arm_of(gw, f"c{i}")
    assert state.treatment == 80
    clock.now += DAY  # and on the third, up to the total cap
    for i in range(1_000, 2_000):
        arm_of(gw, f"c{i}")
    assert state.treatment == 100
    # both arms stop enrolling together: control stays near the 50/50 ratio
    assert 0.8 < state.control / state.treatment < 1.25
    assert arm_of(gw, "c-new") == "champion"


def test_enrolment_survives_route_reloads_and_restarts(tmp_path: Path) -> None:
    clock = Clock()
    gw = gateway(tmp_path, ab_routes(percent=50, max_entities=300), clock)
    first = {f"u{i}": arm_of(gw, f"u{i}") for i in range(1_000)}
    # the operator rewrites the routes (a new cap): enrolled entities keep their arm
    write_routes(gw.routes_path, ab_routes(percent=50, max_entities=400))
    os.utime(gw.routes_path, ns=(1, 1))  # a new stamp, however fast the rewrite
    assert gw.reload() is True
    assert gw.routes["fraud"].abtest.max_entities == 400  # type: ignore[union-attr]
    enrolled = {e: a for e, a in first.items() if a != "champion"}
    assert len(enrolled) < len(first)  # the old cap had closed enrolment
    assert {e: arm_of(gw, e) for e in enrolled} == enrolled
    now = {e: arm_of(gw, e) for e in first}  # the higher cap enrols some of the others
    gw.flush_now()
    # a restart: a new gateway process rebuilds the enrolment from its file
    again = Gateway(gw.routes_path, tokens=client_tokens(tmp_path), clock=clock)
    assert {e: arm_of(again, e) for e in first} == now
    state = again.enrolment("fraud-ab-1")
    assert state is not None and state.treatment == 400  # the cap is where it was
    lines = (tmp_path / "abtests" / "fraud-ab-1" / ENROLMENTS).read_text().splitlines()
    assert len(lines) == len({json.loads(line)["entity"] for line in lines})
    assert not any("u1" in line for line in lines)  # pseudonyms, never the ids


def test_ending_the_test_keeps_its_log_and_a_new_test_starts_empty(tmp_path: Path) -> None:
    gw = gateway(tmp_path, ab_routes())
    for i in range(50):
        arm_of(gw, f"e{i}")
    write_routes(gw.routes_path, {"models": {"fraud": {"champion": CHAMPION}}})
    os.utime(gw.routes_path, ns=(2, 2))
    gw.reload()
    assert gw.enrolment("fraud-ab-1") is None
    gw.flush_now()  # a retired test's pending lines are still written
    folder = tmp_path / "abtests" / "fraud-ab-1"
    assert len((folder / ENROLMENTS).read_text().splitlines()) == 50


# --------------------------------------------------------------------------- requests
async def upstream(status: int, token: str | None = None) -> tuple[web.AppRunner, str]:
    """A model server stand-in: answers ``status`` and echoes the request id it got;
    with ``token``, 401 to a request without exactly that bearer token."""

    async def predict(request: web.Request) -> web.Response:
        rid = request.headers.get("X-Request-Id")
        seen = request.headers.get("Authorization")
        if token is not None and seen != f"Bearer {token}":
            return web.json_response({"error": "unknown bearer token"}, status=401)
        body = {"predictions": [0.1], "request_id": rid, "authorization": seen}
        return web.json_response(body, status=status)

    app = web.Application()
    app.router.add_post("/v1/models/fraud:predict", predict)
    app.router.add_post("/v1/models/fraud:explain", predict)
    app.router.add_post("/v1/models/fraud:predict/extra", predict)  # not a scoring route
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    return runner, f"http://127.0.0.1:{port}"


async def request(
    gw: Gateway, headers: dict[str, str | None], path: str = "/v1/models/fraud:predict"
) -> tuple[int, dict[str, str], dict[str, Any]]:
    """One request through the gateway, as ``core-banking`` unless ``headers`` carry
    another ``Authorization`` (``None``: none at all)."""
    headers = {"Authorization": f"Bearer {CLIENT}", **headers}
    sent: list[dict] = []
    body = json.dumps({"instances": [{"amount": 1.0}]}).encode()
    messages = [{"type": "http.request", "body": body, "more_body": False}]

    async def receive() -> dict:
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    async def send(message: dict) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "method": "POST",
        "path": path,
        "query_string": b"",
        "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items() if v is not None],
    }
    await gw(scope, receive, send)
    head = {k.decode(): v.decode() for k, v in sent[0]["headers"]}
    return sent[0]["status"], head, json.loads(sent[1]["body"])


def _with_upstreams(
    tmp_path: Path, challenger_status: int, check: Callable[[Gateway], Awaitable[None]]
) -> None:
    async def main() -> None:
        champion, champion_url = await upstream(200)
        challenger, challenger_url = await upstream(challenger_status)
        gw = gateway(
            tmp_path,
            ab_routes(
                champion={"url": champion_url, "version": "1"},
                challenger={"url": challenger_url, "version": "2"},
            ),
        )
        await gw.startup()
        try:
            await check(gw)
        finally:
            await gw.shutdown()
            await champion.cleanup()
            await challenger.cleanup()

    run_async(main())


def _assignments(tmp_path: Path) -> list[dict]:
    path = tmp_path / "abtests" / "fraud-ab-1" / ASSIGNMENTS
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_every_request_is_attributed_to_its_arm_through_the_request_id(tmp_path: Path) -> None:
    answers: dict[str, tuple[str, str]] = {}

    async def check(gw: Gateway) -> None:
        for i in range(60):
            status, head, body = await request(gw, {"X-Govml-Entity": f"card-{i}"})
            assert status == 200
            rid = head["x-request-id"]
            assert body["request_id"] == rid  # the model server got the same id
            answers[rid] = (head["x-govml-route"], head["x-govml-version"])
        status, head, body = await request(
            gw, {"X-Govml-Entity": "card-0", "X-Request-Id": "core-banking.tx-81"}
        )
        assert head["x-request-id"] == body["request_id"] == "core-banking.tx-81"
        answers["core-banking.tx-81"] = (head["x-govml-route"], head["x-govml-version"])
        status, head, body = await request(
            gw, {"X-Govml-Entity": "card-1", "X-Request-Id": 'bad"id'}
        )
        assert head["x-request-id"] != 'bad"id' and body["request_id"] == head["x-request-id"]
        answers[head["x-request-id"]] = (head["x-govml-route"], head["x-govml-version"])
        status, head, body = await request(gw, {})  # no entity: outside the test
        assert head["x-govml-route"] == "champion" and "x-request-id" not in head
        await gw.flush()

    _with_upstreams(tmp_path, 200, check)
    records = _assignments(tmp_path)
    assert {r["request_id"] for r in records} == set(answers)
    for record in records:
        route, version = answers[record["request_id"]]
        assert record["arm"] == route and record["route"] == route
        assert record["version"] == version == ("2" if route == "treatment" else "1")
        assert record["status"] == 200
    arms = {r["arm"] for r in records}
    assert arms == {"control", "treatment"}
    by_entity: dict[str, set[str]] = {}
    for record in records:
        by_entity.setdefault(record["entity"], set()).add(record["arm"])
    assert all(len(a) == 1 for a in by_entity.values())  # one arm per entity


def test_a_failing_treatment_is_answered_by_the_champion_and_stays_in_its_arm(
    tmp_path: Path,
) -> None:
    async def check(gw: Gateway) -> None:
        routes = set()
        for i in range(40):
            status, head, _ = await request(gw, {"X-Govml-Entity": f"card-{i}"})
            assert status == 200  # the client never sees the challenger's 500
            routes.add(head["x-govml-route"])
        assert routes == {"control", "failover"}
        await gw.flush()

    _with_upstreams(tmp_path, 500, check)
    failovers = [r for r in _assignments(tmp_path) if r["route"] == "failover"]
    assert failovers and all(r["arm"] == "treatment" and r["version"] == "1" for r in failovers)


def test_routes_without_a_test_add_no_request_id(tmp_path: Path) -> None:
    async def check(gw: Gateway) -> None:
        plain = ab_routes()
        del plain["models"]["fraud"]["abtest"]
        plain["models"]["fraud"]["champion"] = gw.routes["fraud"].champion.__dict__
        plain["models"]["fraud"]["challenger"] = gw.routes["fraud"].challenger.__dict__
        write_routes(gw.routes_path, plain)
        os.utime(gw.routes_path, ns=(3, 3))
        gw.reload()
        _, head, body = await request(gw, {"X-Govml-Entity": "card-1"})
        assert head["x-govml-route"] in ("champion", "challenger")
        assert "x-request-id" not in head and body["request_id"] is None

    _with_upstreams(tmp_path, 200, check)


def test_the_model_servers_request_id_comes_from_a_valid_header_only() -> None:
    set_request_id(b"gw-0f3a.1")
    assert current_request_id() == "gw-0f3a.1"
    for bad in (b'a"b', b"", b"x" * 129, b"-leading", None):
        set_request_id(bad)
        assert current_request_id() is None
