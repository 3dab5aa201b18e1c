"""A/B tests end to end on loopback: real model servers (.venv-serving) with prediction
logs, the real gateway in A/B mode, the label feed, the ops layer and the governance
store (audit trail on SQLite).

Version 1 (the champion) and version 2 serve the same German Credit model; version 3 was
trained on inverted labels (an encoding bug): it declines good applicants and approves
bad ones. An A/A test (v2) is attributed
request by request and continues; stopped by hand, the champion takes all traffic
again. The harmful test (v3) is stopped at its first look by the false-positive-rate
guardrail, long before its planned end: the routes file gives the champion all traffic,
the gateway follows, and the audit trail holds the start, the look and the stop.
"""

from __future__ import annotations

import json
import random
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import yaml

from pipelines.config import load_settings
from pipelines.data.german_credit import load_german_credit
from pipelines.features import read_split
from pipelines.spec import load_spec
from serving.token_files import provision, write_records
from serving.token_records import generate_token
from tests.datasets import json_records
from tests.german_credit import german_credit_features, trained
from tests.releases import approve, grant_approvers, record_deployed
from tests.support import (
    free_port,
    logged_rows,
    predict_request,
    stack_env,
    start_serving,
    stop_serving,
    wait_http_ok,
    wait_until,
)

ROOT = Path(__file__).resolve().parents[2]
MODEL = "german_credit"
CLIENT, CLIENT_RECORD = generate_token("loan-origination", ["predict"])
pytestmark = pytest.mark.slow
ABTEST = {
    "hypothesis": "The challenger approves more applicants without declining more good ones",
    "primary_metric": "approval_rate",
    "baseline": 0.7,
    "minimum_detectable_effect": 0.03,
    "split_percent": 50,
    "exposure_cap": {"max_entities": 50_000},
    "max_duration": "14d",
    "guardrails": [
        {"metric": "false_positive_rate", "max_worsening": 0.05},
        {"metric": "default_rate", "max_worsening": 0.05},
    ],
    "segments": ["purpose", "housing"],
    "cuped_covariate": "duration_months",
    "amount_feature": "credit_amount",
}


def _server(world: SimpleNamespace, version: str, model_dir: Path) -> Any:
    port = free_port()
    folder = world.settings.serving_dir / f"german-credit-v{version}"
    tokens = provision(folder)  # the deployment's own tokens, as the local deployer makes
    proc = start_serving(
        ["-m", "serving", "--enable_grpc", "false", "--model_name", MODEL,
         "--model_uri", str(model_dir), "--spec", str(world.spec_path),
         "--model_version", version, "--http_port", str(port),
         "--prediction_log", str(folder / "predictions"), "--tokens", str(tokens.tokens)],
        world.root / f"server-v{version}.log",
    )  # fmt: skip
    return proc, f"http://127.0.0.1:{port}", folder


def _deployed(settings: Any, spec: Any, version: str, url: str) -> None:
    """An approved (four eyes) deployment record with the endpoint, as deploy writes it."""
    state = approve(settings.governance_url, spec, version, "0" * 64)
    record_deployed(settings.governance_url, state, {"endpoint": url})


@pytest.fixture(autouse=True)
def fixed_salt(monkeypatch: pytest.MonkeyPatch) -> None:
    """Under this salt the applicants below split 301/299 (seed 1) and 401/399 (seed 2).
    With a random salt the sample-ratio check, whose false alarm rate is 0.1 % by
    design, once stopped the A/A test (258/343); the tests are about attribution and
    guardrails, so their split is fixed, not drawn."""
    from ops import abtest

    monkeypatch.setattr(abtest, "new_salt", lambda: "abtest-fixed-salt")


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimpleNamespace]:
    from registry.store import upgrade
    from serving.gateway_routes import write_routes

    root = tmp_path_factory.mktemp("abtest")
    settings = load_settings(stack_env(root / "var"))
    upgrade(settings.governance_url)
    grant_approvers(settings.governance_url)
    raw = yaml.safe_load((ROOT / "specs" / f"{MODEL}.yaml").read_text())
    raw["abtest"] = ABTEST
    spec_path = root / f"{MODEL}.yaml"
    spec_path.write_text(yaml.safe_dump(raw, sort_keys=False))
    spec = load_spec(spec_path)
    data = load_german_credit()
    good = german_credit_features(root, 40, data)
    trained(good, root, root / "good")
    flipped = data.assign(**{spec.data.target: 1 - data[spec.data.target]})
    trained(german_credit_features(root / "bug", 40, flipped), root / "bug", root / "inverted")
    test = read_split(good, root / "features", "test")
    features = list(spec.features.names)
    frame = test[features]
    rows = json_records(frame)
    world = SimpleNamespace(
        root=root, settings=settings, spec=spec, spec_path=spec_path, rows=rows,
        labels=[int(v) for v in test[spec.data.target]], procs=[],
    )  # fmt: skip
    try:
        servers = {
            v: _server(world, v, root / d)
            for v, d in (("1", "good"), ("2", "good"), ("3", "inverted"))
        }
        world.procs += [s[0] for s in servers.values()]
        for version, (proc, url, _) in servers.items():
            wait_http_ok(f"{url}/v2/models/{MODEL}/ready", proc, root / f"server-v{version}.log")
            if version != "1":
                _deployed(settings, spec, version, url)
        world.urls = {v: s[1] for v, s in servers.items()}
        routes = settings.serving_dir / "gateway" / "routes.json"
        routes.parent.mkdir(parents=True, exist_ok=True)
        write_routes(routes, {"models": {MODEL: {"champion": {"url": world.urls["1"],
                                                               "version": "1"}}}})  # fmt: skip
        port = free_port()
        write_records(routes.parent / "tokens.json", [CLIENT_RECORD])  # the bank's client
        gateway = start_serving(
            ["-m", "serving.gateway", "--routes", str(routes), "--port", str(port),
             "--tokens", str(routes.parent / "tokens.json")],
            root / "gateway.log",
        )  # fmt: skip
        world.procs.append(gateway)
        world.base = f"http://127.0.0.1:{port}"
        world.routes = routes
        wait_http_ok(f"{world.base}/healthz", gateway, root / "gateway.log")
        yield world
    finally:
        for proc in world.procs:
            stop_serving(proc)


def _predict(world: SimpleNamespace, index: int, entity: str | None) -> tuple[str, str, str]:
    req = predict_request(world.base, MODEL, world.rows[index], CLIENT, entity)
    with urllib.request.urlopen(req, timeout=10) as resp:
        assert resp.status == 200
        return (
            resp.headers.get("X-Request-Id") or "",
            resp.headers["X-Govml-Route"],
            resp.headers["X-Govml-Version"],
        )


def _traffic(world: SimpleNamespace, n: int, seed: int) -> list[tuple[str, str, str, int]]:
    """``n`` requests of distinct applicants, then their labels in the label feed."""
    rng = random.Random(seed)
    picks = [(rng.randrange(len(world.rows)), f"applicant-{seed}-{i}") for i in range(n)]
    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(lambda p: (*_predict(world, *p), p[0]), picks))
    feed = world.settings.var_dir / "labels" / MODEL
    feed.mkdir(parents=True, exist_ok=True)
    with (feed / f"defaults-{seed}.jsonl").open("w") as out:
        for rid, _, _, index in answers:
            out.write(json.dumps({"request_id": f"{rid}:0", "label": world.labels[index]}) + "\n")
    return answers


def _settle(world: SimpleNamespace, test_id: str, expected: int) -> None:
    """Until the gateway's A/B log and the servers' prediction logs hold every request."""
    from ops.abtest_state import abtest_logs

    path = abtest_logs(world.settings, test_id) / "assignments.jsonl"

    def assigned() -> list[str]:
        lines = path.read_text().splitlines() if path.exists() else []
        return [json.loads(line)["request_id"] for line in lines] if len(lines) >= expected else []

    ids = wait_until(assigned, 20, f"{expected} requests in the gateway's A/B log {path}")

    def logged() -> bool:  # the prediction logs' writer threads flush in batches
        seen = {
            row["request_id"]
            for folder in world.settings.serving_dir.glob("german-credit-v*/predictions")
            if folder.exists()
            for row in logged_rows(folder)
        }
        return all(f"{rid}:0" in seen for rid in ids)

    wait_until(logged, 20, "every A/B request in the model servers' prediction logs")


def _until_champion(world: SimpleNamespace) -> None:
    """Until the gateway has reloaded its routes: an entity's request goes to the champion."""
    wait_until(
        lambda: _predict(world, 0, "probe-after-the-test")[1] == "champion",
        10,
        "the gateway to leave the A/B route (a probe answered by the champion)",
        interval=0.2,
    )


def _events(world: SimpleNamespace, kinds: list[str]) -> list[Any]:
    from registry import audit

    return audit.events(world.settings.governance_url, model_name=MODEL, kinds=kinds)


def _wait_ab(world: SimpleNamespace) -> None:
    wait_until(
        lambda: _predict(world, 0, "probe-entity")[1] in ("control", "treatment"),
        10,
        "the gateway to enter A/B mode (a probe answered by an arm)",
        interval=0.2,
    )


def test_an_aa_test_is_attributed_request_by_request_and_stops_by_hand(world) -> None:  # noqa: ANN001
    from ops import abtest, abtest_state

    state = abtest.start(world.settings, world.spec, "2", actor="ops-anna")
    _wait_ab(world)
    answers = _traffic(world, 600, seed=1)
    assert {route for _, route, _, _ in answers} == {"control", "treatment"}
    assert all((route == "treatment") == (version == "2") for _, route, version, _ in answers)
    _settle(world, state.id, 601)
    report = abtest.analyse(world.settings, world.spec)
    data = report["data"]
    assert data["unmatched"] == 0 and data["failed"] == 0
    assert data["rows"] == 601 and data["labelled"] == 600  # the probe has no label
    assert report["decision"]["action"] == "continue", report["decision"]
    assert not report["srm"]["mismatch"]
    effect = report["primary"]["effect"]
    assert effect["control"]["units"] + effect["treatment"]["units"] == 601
    assert report["primary"]["cuped"]["covariate"] == "duration_months"
    assert {s["segment"] for s in report["segments"]} == {"purpose", "housing"}
    folder = abtest_state.report_dir(world.settings, MODEL, state.id)
    page = (folder / "latest.html").read_text()
    assert "Decision: continue" in page and page.count("data:image/png;base64,") >= 3
    assert json.loads((folder / "latest.json").read_text())["test"]["id"] == state.id
    ended = abtest.stop(world.settings, world.spec, "ops-anna", "A/A check done")
    assert ended.status == "stopped"
    routes = json.loads(world.routes.read_text())["models"][MODEL]
    assert routes == {"champion": {"url": world.urls["1"], "version": "1"}}
    _until_champion(world)
    stopped = _events(world, ["abtest_stopped"])[-1]
    assert stopped.actor == "ops-anna" and stopped.payload["reasons"] == ["A/A check done"]


def test_a_harmful_challenger_is_stopped_by_the_guardrail_and_traffic_returns(world) -> None:  # noqa: ANN001
    from ops import abtest
    from registry import audit_verify

    state = abtest.start(world.settings, world.spec, "3", actor="ops-anna")
    assert state.design["looks"] == 14 and state.design["max_total"] > 7_000
    _wait_ab(world)
    answers = _traffic(world, 800, seed=2)
    _settle(world, state.id, 801)
    report = abtest.analyse(world.settings, world.spec)
    decision = report["decision"]
    assert decision["action"] == "stop", decision
    assert "guardrail false_positive_rate" in decision["reasons"][0]
    assert report["look"]["number"] == 1 and report["look"]["fraction"] < 0.2  # early
    guard = next(g for g in report["guardrails"] if g["metric"] == "false_positive_rate")
    assert guard["breached"] and guard["harm"] > 0.05 and guard["z"] >= guard["boundary"]
    # the champion has every request again: in the routes file and at the gateway
    routes = json.loads(world.routes.read_text())["models"][MODEL]
    assert routes == {"champion": {"url": world.urls["1"], "version": "1"}}
    _until_champion(world)
    assert {_predict(world, 1, f"applicant-2-{i}")[1] for i in range(20)} == {"champion"}
    # and the audit trail tells the story, hash chain intact
    started, analysed, stopped = (
        _events(world, [kind])[-1] for kind in ("abtest_started", "abtest_analysed",
                                                "abtest_stopped")
    )  # fmt: skip
    assert started.actor == "ops-anna" and started.payload["test_id"] == state.id
    assert started.payload["design"]["max_total"] == state.design["max_total"]
    assert analysed.payload["action"] == "stop" and analysed.model_version == "3"
    assert stopped.actor == abtest.ANALYST and stopped.payload["test_id"] == state.id
    assert "guardrail false_positive_rate" in stopped.payload["reasons"][0]
    assert stopped.seq > analysed.seq > started.seq
    assert audit_verify.verify_chain(world.settings.governance_url).ok
    assert len(answers) == 800
    status = abtest.status(world.settings, world.spec)
    assert status["status"] == "stopped" and status["last_look"]["action"] == "stop"
