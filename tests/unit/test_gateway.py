"""The gateway's routing rules (buckets, weighted sticky split, routes files) and its
tokens: its own clients' on the way in, each model server's own on the way out."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path
from typing import Any

import pytest

from pipelines.errors import ConfigError
from serving.auth import TokenStore
from serving.gateway import Gateway
from serving.gateway_routes import BUCKETS, bucket, load_routes, parse_routes, write_routes
from serving.token_files import provision, read_token, revoke_client, write_records
from serving.token_records import generate_token
from tests.support import run_async as run
from tests.unit.test_gateway_abtest import CLIENT, CLIENT_RECORD, request, upstream

CHAMPION = {"url": "http://127.0.0.1:9001", "version": "1"}
CHALLENGER = {"url": "http://127.0.0.1:9002", "version": "2"}


def routes(**fraud: object) -> dict:
    return {"models": {"fraud": {"champion": CHAMPION, **fraud}}}


def test_buckets_are_deterministic_uniform_and_salted() -> None:
    ids = [f"card-{i}" for i in range(50_000)]
    buckets = [bucket(i, "fraud") for i in ids]
    assert buckets == [bucket(i, "fraud") for i in ids]
    assert all(0 <= b < BUCKETS for b in buckets)
    deciles = [0] * 10
    for b in buckets:
        deciles[b * 10 // BUCKETS] += 1
    assert all(abs(d - 5_000) < 300 for d in deciles), deciles
    moved = sum(bucket(i, "fraud") != bucket(i, "ab-test-2") for i in ids[:1000])
    assert moved > 990  # a new salt re-randomises the assignment


def test_the_split_is_weighted_sticky_and_only_grows_the_challengers_share() -> None:
    ids = [f"customer-{i}" for i in range(20_000)]
    shares = {}
    chosen = {}
    for percent in (0, 5, 25, 50, 100):
        route = parse_routes(routes(challenger=CHALLENGER, challenger_percent=percent))["fraud"]
        picks = {i: route.pick(i)[0] for i in ids}
        assert picks == {i: route.pick(i)[0] for i in ids}  # sticky
        shares[percent] = sum(p == "challenger" for p in picks.values()) / len(ids)
        chosen[percent] = {i for i, p in picks.items() if p == "challenger"}
    assert shares[0] == 0 and shares[100] == 1
    for percent in (5, 25, 50):
        assert abs(shares[percent] - percent / 100) < 0.015, shares
    assert chosen[5] <= chosen[25] <= chosen[50]  # raising the weight never moves anyone back


@pytest.mark.parametrize(
    ("data", "needle"),
    [
        ({"model": {}}, "models"),
        ({"models": {"fraud": {}}}, "champion is required"),
        (routes(challenger_percent=20), "without a challenger"),
        (routes(challenger=CHALLENGER, challenger_percent=120), "0..100"),
        (routes(challenger=CHALLENGER, challenger_percent=True), "0..100"),
        (routes(weight=3), "unknown key"),
        ({"models": {"fraud": {"champion": {"url": "ftp://x"}}}}, "http"),
        ({"models": {"fraud": {"champion": {"version": "1"}}}}, "url"),
        (routes(shadow_timeout_s=0), "shadow_timeout_s"),
    ],
)
def test_bad_routes_are_named(data: dict, needle: str) -> None:
    with pytest.raises(ConfigError, match=needle):
        parse_routes(data)


def test_write_routes_refuses_what_the_gateway_would_refuse(tmp_path: Path) -> None:
    path = tmp_path / "routes.json"
    write_routes(path, routes())
    with pytest.raises(ConfigError):
        write_routes(path, routes(challenger_percent=50))
    assert load_routes(path)["fraud"].challenger is None
    assert [p.name for p in tmp_path.iterdir()] == ["routes.json"]


def test_a_broken_routes_file_keeps_the_previous_routes(tmp_path: Path) -> None:
    path = tmp_path / "routes.json"
    write_routes(path, routes(challenger=CHALLENGER, challenger_percent=10))
    gateway = Gateway(path, tokens=TokenStore([]))
    path.write_text("{not json")
    assert gateway.reload() is False
    assert gateway.routes["fraud"].challenger_percent == 10
    path.write_text(json.dumps(routes(challenger=CHALLENGER, challenger_percent=30)))
    assert gateway.reload() is True
    assert gateway.routes["fraud"].challenger_percent == 30


# --------------------------------------------------------------------------- tokens
def test_an_upstream_token_file_is_part_of_its_route() -> None:
    parsed = parse_routes(routes(challenger={**CHALLENGER, "token_file": "/srv/v2.token"}))
    assert parsed["fraud"].challenger.token_file == "/srv/v2.token"
    with pytest.raises(ConfigError, match=r"fraud.champion.token_file: expected a file path"):
        parse_routes(routes() | {"models": {"fraud": {"champion": {**CHAMPION, "token_file": 7}}}})


def _gateway_with(tmp_path: Path, route: dict, reload_seconds: float = 1.0) -> Gateway:
    path = tmp_path / "gateway" / "routes.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    write_routes(path, route)
    tokens = tmp_path / "gateway" / "tokens.json"
    if not tokens.exists():
        write_records(tokens, [CLIENT_RECORD, READER_RECORD])
    return Gateway(path, tokens=TokenStore.load(tokens, reload_seconds=reload_seconds))


READER, READER_RECORD = generate_token("dashboards", ["explain"])


async def _served(
    tmp_path: Path, check: Any, *, champion_token: str | None, challenger: bool
) -> None:
    """Run ``check(gateway, deployments)`` against stand-in servers that each accept only
    their deployment's token (the champion's in ``<tmp>/fraud-v1/service.token``, found
    through the default deployments folder; the challenger's named by ``token_file``)."""
    provision(tmp_path / "fraud-v1")
    v1 = read_token(tmp_path / "fraud-v1" / "service.token")
    accepted = {"v1": v1, "other": "other", None: None}[champion_token]  # None: anything
    champion, champion_url = await upstream(200, accepted)
    route: dict[str, Any] = {"champion": {"url": champion_url, "version": "1"}}
    runners = [champion]
    if challenger:
        files = provision(tmp_path / "elsewhere")
        other, other_url = await upstream(200, read_token(files.service_token))
        runners.append(other)
        token_file = str(files.service_token)
        route |= {
            "challenger": {"url": other_url, "version": "2", "token_file": token_file},
            "challenger_percent": 100,
        }
    gw = _gateway_with(tmp_path, {"models": {"fraud": route}}, reload_seconds=0.05)
    await gw.startup()
    try:
        await check(gw, v1)
    finally:
        await gw.shutdown()
        for runner in runners:
            await runner.cleanup()


def test_scoring_needs_a_gateway_client_token_with_the_scope(tmp_path: Path) -> None:
    async def check(gw: Gateway, _v1: str) -> None:
        status, head, body = await request(gw, {"Authorization": None})
        assert (status, body) == (401, {"error": "missing bearer token"})
        assert head["www-authenticate"] == 'Bearer realm="govml"'
        status, _, body = await request(gw, {"Authorization": "Bearer gml_not-a-token"})
        assert (status, body) == (401, {"error": "unknown bearer token"})
        status, _, body = await request(gw, {"Authorization": f"Bearer {READER}"})
        assert (status, body) == (403, {"error": "client 'dashboards' may not predict"})
        status, _, body = await request(
            gw, {"Authorization": f"Bearer {READER}"}, path="/v1/models/fraud:explain"
        )
        assert status == 200

    run(_served(tmp_path, check, champion_token="v1", challenger=False))


def test_model_servers_get_their_own_token_never_the_clients(tmp_path: Path) -> None:
    async def check(gw: Gateway, v1: str) -> None:
        status, head, body = await request(gw, {"X-Govml-Entity": "card-1"})
        assert status == 200 and head["x-govml-route"] == "challenger"
        challenger_token = read_token(tmp_path / "elsewhere" / "service.token")
        assert body["authorization"] == f"Bearer {challenger_token}"
        assert CLIENT not in json.dumps(body)
        write_routes(gw.routes_path, {"models": {"fraud": {
            "champion": gw.routes["fraud"].champion.__dict__ | {"token_file": None}}}})  # fmt: skip
        os.utime(gw.routes_path, ns=(5, 5))
        gw.reload()
        gw.upstream_tokens.refresh(gw.routes)
        status, head, body = await request(gw, {})
        assert status == 200 and head["x-govml-route"] == "champion"
        assert body["authorization"] == f"Bearer {v1}"  # from <deployments>/fraud-v1

    run(_served(tmp_path, check, champion_token="v1", challenger=True))


def test_a_server_refusing_the_gateway_is_a_failure_not_the_clients_401(tmp_path: Path) -> None:
    async def check(gw: Gateway, _v1: str) -> None:
        (tmp_path / "elsewhere" / "service.token").write_text("gml_wrong\n")
        gw.upstream_tokens.refresh(gw.routes)
        status, head, _ = await request(gw, {"X-Govml-Entity": "card-1"})
        assert status == 502 and head["x-govml-route"] == "failover"  # champion refused too

    run(_served(tmp_path, check, champion_token="other", challenger=True))


def test_a_revoked_gateway_client_is_refused_within_the_reload_interval(tmp_path: Path) -> None:
    async def check(gw: Gateway, _v1: str) -> None:
        assert (await request(gw, {}))[0] == 200
        revoke_client(tmp_path / "gateway" / "tokens.json", "core-banking")
        await asyncio.sleep(0.1)  # the store looks at its file every 0.05 s here
        status, _, body = await request(gw, {})
        assert (status, body) == (401, {"error": "unknown bearer token"})

    run(_served(tmp_path, check, champion_token="v1", challenger=False))


def test_the_gateways_token_goes_only_with_calls_it_authenticated(tmp_path: Path) -> None:
    async def check(gw: Gateway, _v1: str) -> None:
        # a path the gateway does not score is passed on as the client sent it: never
        # with the gateway's token (the server's own checks decide)
        status, _, body = await request(
            gw, {"Authorization": None}, path="/v1/models/fraud:predict/extra"
        )
        assert status == 200 and body["authorization"] is None

    run(_served(tmp_path, check, champion_token=None, challenger=False))
