"""The gateway's routing rules: buckets, weighted sticky split, routes files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipelines.errors import ConfigError
from serving.gateway import BUCKETS, Gateway, bucket, load_routes, parse_routes, write_routes

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
    gateway = Gateway(path)
    path.write_text("{not json")
    assert gateway.reload() is False
    assert gateway.routes["fraud"].challenger_percent == 10
    path.write_text(json.dumps(routes(challenger=CHALLENGER, challenger_percent=30)))
    assert gateway.reload() is True
    assert gateway.routes["fraud"].challenger_percent == 30
