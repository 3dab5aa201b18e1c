"""The gateway in front of real model servers on loopback (.venv-serving processes).

Champion (version 1), challenger (version 2) and shadow (version 3) serve the same
trained German Credit model with its spec; the gateway splits, sticks, mirrors and fails
over between them, and its answers are the servers' answers. Every server checks its
deployment's own token file; the gateway takes its clients' tokens and calls each server
with that deployment's ``service.token`` (found under ``--deployments``).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from pipelines.features import read_split
from pipelines.training import score
from serving.gateway_routes import write_routes
from serving.token_files import provision, write_records
from serving.token_records import generate_token
from tests.datasets import json_records
from tests.german_credit import german_credit_features, trained
from tests.support import free_port, http_status, predict_request, serving_process, wait_until

ROOT = Path(__file__).resolve().parents[2]
SPEC = ROOT / "specs" / "german_credit.yaml"
MODEL = "german_credit"
CLIENT, CLIENT_RECORD = generate_token("core-banking", ["predict"])
pytestmark = pytest.mark.slow


@contextlib.contextmanager
def _server(root: Path, version: str) -> Iterator[tuple[subprocess.Popen, str]]:
    port = free_port()
    tokens = provision(root / f"german-credit-v{version}")  # as the local deployer does
    url = f"http://127.0.0.1:{port}"
    with serving_process(
        ["-m", "serving", "--enable_grpc", "false", "--model_name", MODEL,
         "--model_uri", str(root / "train"), "--spec", str(SPEC), "--model_version", version,
         "--http_port", str(port), "--tokens", str(tokens.tokens)],
        root / f"server-v{version}.log",
        f"{url}/v2/models/{MODEL}/ready",
    ) as proc:  # fmt: skip
        yield proc, url


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimpleNamespace]:
    root = tmp_path_factory.mktemp("gateway")
    spec = german_credit_features(root, 40)
    booster = trained(spec, root, root / "train")
    test = read_split(spec, root / "features", "test")
    rows = json_records(test[list(booster.feature_name())])
    with contextlib.ExitStack() as running:  # stopped in reverse: the gateway first
        procs = {v: running.enter_context(_server(root, v)) for v in ("1", "2", "3")}
        routes = root / "routes.json"
        write_routes(routes, _routes(procs, percent=25))
        port = free_port()
        write_records(root / "gateway-tokens.json", [CLIENT_RECORD])
        base = f"http://127.0.0.1:{port}"
        gateway = running.enter_context(
            serving_process(
                ["-m", "serving.gateway", "--routes", str(routes), "--port", str(port),
                 "--shadow_log", str(root / "shadow.jsonl"),
                 "--tokens", str(root / "gateway-tokens.json"), "--deployments", str(root)],
                root / "gateway.log",
                f"{base}/healthz",
            )
        )  # fmt: skip
        yield SimpleNamespace(
            root=root, procs=procs, routes=routes, base=base, gateway=gateway, rows=rows,
            expected=score(booster, test).tolist(),
        )  # fmt: skip


def _routes(procs: dict, percent: float, shadow: bool = False, **extra: Any) -> dict:
    model: dict[str, Any] = {
        "champion": {"url": procs["1"][1], "version": "1"},
        "challenger": {"url": procs["2"][1], "version": "2"},
        "challenger_percent": percent,
        **extra,
    }
    if shadow:
        model["shadow"] = {"url": procs["3"][1], "version": "3"}
    return {"models": {MODEL: model}}


def _reloads(stack: SimpleNamespace) -> int:
    return (stack.root / "gateway.log").read_text().count("gateway: routes reloaded")


def _reroute(stack: SimpleNamespace, routes: dict) -> None:
    """Write the routes file; return once the gateway (polling it every 0.5 s) reloaded it."""
    before = _reloads(stack)
    write_routes(stack.routes, routes)
    wait_until(lambda: _reloads(stack) > before, 10, "the gateway to reload its routes")


# The frozen-shadow test compares two latency samples and keeps its original pacing: its
# fixed pauses (0.5 s after the shadow traffic, SETTLE_S after each reload) are not waits
# for a condition. Polling instead (for the reload, for the shadow calls to end) made the
# frozen-shadow median ~3 ms slower on a loaded machine, in 3 runs of 3; what settles in
# that time is not observable from outside, and the comparison needs both samples alike.
SETTLE_S = 1.2


def _predict(stack: SimpleNamespace, row: dict, entity: str | None) -> tuple[int, Any, Any]:
    req = predict_request(stack.base, MODEL, row, CLIENT, entity)
    try:
        with urllib.request.urlopen(req, timeout=15) as resp:
            return resp.status, json.loads(resp.read()), resp.headers
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read()), err.headers


def test_the_split_follows_the_weight_and_each_entity_sticks(stack: SimpleNamespace) -> None:
    _reroute(stack, _routes(stack.procs, percent=25))
    seen: dict[str, str] = {}
    for i in range(240):
        row = stack.rows[i % len(stack.rows)]
        code, body, headers = _predict(stack, row, f"customer-{i}")
        assert code == 200, body
        assert body["predictions"] == [stack.expected[i % len(stack.rows)]]
        assert headers["X-Govml-Version"] == body["model_version"]
        seen[f"customer-{i}"] = headers["X-Govml-Route"]
    share = sum(r == "challenger" for r in seen.values()) / len(seen)
    assert 0.15 < share < 0.35, share
    for entity, route in list(seen.items())[:60]:  # the same entity, the same model
        assert _predict(stack, stack.rows[0], entity)[2]["X-Govml-Route"] == route
    _reroute(stack, _routes(stack.procs, percent=0))
    assert {_predict(stack, stack.rows[0], e)[2]["X-Govml-Route"] for e in seen} == {"champion"}


def test_bad_input_and_unknown_models_get_the_servers_4xx(stack: SimpleNamespace) -> None:
    code, body, _ = _predict(stack, {"duration_months": "twelve"}, "customer-1")
    assert code == 400 and "duration_months" in body["error"]
    assert http_status(f"{stack.base}/v2/models/nope/ready") == 404


def test_a_dead_challenger_fails_over_to_the_champion(stack: SimpleNamespace) -> None:
    _reroute(stack, _routes(stack.procs, percent=100))
    proc, _ = stack.procs["2"]
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    answers = [_predict(stack, stack.rows[i], f"c-{i}") for i in range(30)]
    assert all(code == 200 for code, _, _ in answers)
    assert {h["X-Govml-Route"] for _, _, h in answers} == {"failover"}
    assert [b["predictions"][0] for _, b, _ in answers] == stack.expected[:30]


def test_a_frozen_shadow_never_slows_or_fails_the_client(stack: SimpleNamespace) -> None:
    _reroute(
        stack,
        _routes(stack.procs, percent=0, shadow=True, shadow_timeout_s=0.5, shadow_max_in_flight=4),
    )
    for i in range(20):  # a working shadow: every answer compared in the shadow log
        assert _predict(stack, stack.rows[i], f"s-{i}")[0] == 200
    time.sleep(0.5)  # pacing kept for the latency samples below (see SETTLE_S)
    log = [json.loads(line) for line in (stack.root / "shadow.jsonl").read_text().splitlines()]
    ok = [r for r in log if r["shadow_outcome"] == "ok"]
    assert len(ok) >= 15
    assert all(r["primary_scores"] == r["shadow_scores"] for r in ok)  # same model file
    _reroute(stack, _routes(stack.procs, percent=0))  # the same traffic without a shadow
    time.sleep(SETTLE_S)
    plain = []
    for i in range(40):
        began = time.perf_counter()
        assert _predict(stack, stack.rows[i], f"s-{i}")[0] == 200
        plain.append(time.perf_counter() - began)
    plain.sort()
    _reroute(
        stack,
        _routes(stack.procs, percent=0, shadow=True, shadow_timeout_s=0.5, shadow_max_in_flight=4),
    )
    time.sleep(SETTLE_S)
    shadow, _ = stack.procs["3"]
    os.killpg(shadow.pid, signal.SIGSTOP)  # accepts connections, never answers
    try:
        latencies = []
        for i in range(40):
            began = time.perf_counter()
            code, body, headers = _predict(stack, stack.rows[i], f"s-{i}")
            latencies.append(time.perf_counter() - began)
            assert code == 200 and headers["X-Govml-Route"] == "champion"
            assert body["predictions"] == [stack.expected[i]]
        latencies.sort()
        # the client never waits for the frozen shadow: the median moves by under 2 ms
        assert latencies[20] - plain[20] < 0.002, (plain[20], latencies[20])
        wanted = [
            f'govml_gateway_shadow_total{{model="{MODEL}",outcome="{outcome}"}}'
            for outcome in ("skipped", "timeout")
        ]

        def counted() -> bool:
            metrics = urllib.request.urlopen(f"{stack.base}/metrics", timeout=5).read().decode()
            return all(line in metrics for line in wanted)

        wait_until(counted, 10, "skipped and timed-out shadow calls in /metrics")
    finally:
        os.killpg(shadow.pid, signal.SIGCONT)


def test_only_the_gateways_clients_score_and_their_tokens_stay_at_the_gateway(
    stack: SimpleNamespace,
) -> None:
    _reroute(stack, _routes(stack.procs, percent=0))
    body = json.dumps({"instances": [stack.rows[0]]}).encode()
    for url in (f"{stack.base}/v1/models/{MODEL}:predict",  # no token at the gateway
                f"{stack.procs['1'][1]}/v1/models/{MODEL}:predict"):  # fmt: skip
        req = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(req, timeout=10)
        assert refused.value.code == 401
    # the gateway's client token means nothing to a model server
    req = urllib.request.Request(
        f"{stack.procs['1'][1]}/v1/models/{MODEL}:predict",
        data=body,
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {CLIENT}"},
    )
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(req, timeout=10)
    assert refused.value.code == 401
    assert _predict(stack, stack.rows[0], "customer-1")[0] == 200
