"""Real-time features end to end on loopback: a held-out day replayed through the real
feature transformer (``python -m serving.transformer``) in front of the real model
server, with the in-process store (warmed up from history at start) and with Redis
(warmed up by ``govml features backfill``), gives exactly the offline features for
every feature of every row: in the transformer's answer and in what the predictor
received (its prediction log). Concurrent requests for one card lose no update; a
retry is counted once; bad input is a 400 naming the field and changes no state.
Both servers check the deployment's token file; the transformer calls its predictor
with the deployment's own token (``service.token``), as the local deployer runs them.

Redis is the server on 127.0.0.1:6379: in CI it must answer; elsewhere the Redis half
skips when it does not.
"""

from __future__ import annotations

import http.client
import json
import math
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pandas as pd
import pytest

from pipelines.data.fraud import generate_fraud
from pipelines.data.fraud_config import FraudConfig
from pipelines.features import compute_aggregates
from pipelines.features_online import OnlineFeatures
from pipelines.stages.features import build_features
from pipelines.stages.train import train
from serving.prediction_log_files import complete_files, read_records
from serving.token_files import provision, write_records
from serving.token_records import generate_token, load_records
from serving.transactions import TransactionSchema
from tests.datasets import spec_of, with_training, write_ingest
from tests.support import SERVING_PY, free_port
from tests.unit.test_feature_store import REDIS_URL, redis_answers

ROOT = Path(__file__).resolve().parents[2]
GOVML = ROOT / ".venv" / "bin" / "govml"
MODEL = "fraud"
ROWS = 50_000
KEY = "parity-test-feature-key-0123456789"
TOKEN, TOKEN_RECORD = generate_token("parity-test", ["predict", "explain"])
AUTH = {"Authorization": f"Bearer {TOKEN}"}
pytestmark = pytest.mark.slow


# ----------------------------------------------------------------------------- helpers


class Client:
    """A keep-alive JSON client of one server."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)

    def post(self, path: str, body: Any, request_id: str | None = None) -> tuple[int, Any]:
        headers = {"Content-Type": "application/json", **AUTH}
        if request_id:
            headers["X-Request-Id"] = request_id
        self.conn.request("POST", path, json.dumps(body), headers)
        response = self.conn.getresponse()
        return response.status, json.loads(response.read())

    def predict(self, rows: list[dict[str, Any]], request_id: str | None = None) -> tuple:
        return self.post(f"/v1/models/{MODEL}:predict", {"instances": rows}, request_id)


def wait_ready(proc: subprocess.Popen, port: int, log: Path, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"server exited {proc.returncode}:\n{log.read_text()[-4000:]}")
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            conn.request("GET", f"/v2/models/{MODEL}/ready")
            if conn.getresponse().status == 200:
                return
        except OSError:
            pass
        time.sleep(0.3)
    proc.kill()
    pytest.fail(f"not ready in {timeout} s:\n{log.read_text()[-4000:]}")


def start(args: list[str], log: Path, env: dict[str, str]) -> subprocess.Popen:
    with log.open("w") as out:  # a file: a pipe nobody reads would block the server
        return subprocess.Popen(
            [str(SERVING_PY), *args, "--enable_grpc", "false"],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()


def transactions(frame: pd.DataFrame, fields: list[str], time_column: str) -> list[dict]:
    """Rows as the bank's system sends them (JSON values; ISO times)."""
    part = frame[fields].astype(object)
    out = part.where(part.notna(), None).to_dict("records")
    for row, t in zip(out, frame[time_column], strict=True):
        row[time_column] = t.isoformat()
    return json.loads(json.dumps(out))


def same(got: dict[str, Any], expected: pd.Series) -> bool:
    """JSON aggregates (null for NaN) equal to the offline float64 values, exactly."""
    for name, want in expected.items():
        value = got[name]
        if math.isnan(want):
            if value is not None:
                return False
        elif value is None or float(value) != float(want):
            return False
    return True


# ----------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimpleNamespace]:
    """Data, offline features, a trained model and its model server."""
    root = tmp_path_factory.mktemp("features")
    spec = with_training(spec_of(MODEL), num_boost_round=20, early_stopping_rounds=20)
    frame = generate_fraud(FraudConfig(n_rows=ROWS, seed=21, fraud_rate=0.01))
    cut = frame["tx_time"].max().normalize()  # the last day is held out
    history = frame[frame["tx_time"] < cut].reset_index(drop=True)
    day = frame[frame["tx_time"] >= cut].reset_index(drop=True)
    history_file = write_ingest(spec, history, root / "history")
    build_features(spec, history_file, root / "features")
    train(spec, root / "features", root / "train")
    everything = pd.concat([history, day], ignore_index=True)
    offline = compute_aggregates(spec.features.aggregates, everything, "tx_time")
    offline = offline.iloc[len(history) :].reset_index(drop=True)
    env = dict(os.environ) | {
        "GOVML_PREDICTION_LOG_KEY": "p" * 32,
        "GOVML_FEATURE_KEY": KEY,
    }
    tokens = provision(root / "deployment")  # the deployment's files, as the deployer makes
    records = [r.to_dict() for r in load_records(tokens.tokens)]
    write_records(tokens.tokens, [*records, TOKEN_RECORD])  # the test's own client
    port = free_port()
    predictor = start(
        ["-m", "serving", "--model_name", MODEL, "--model_uri", str(root / "train"),
         "--spec", str(ROOT / "specs" / "fraud.yaml"), "--prediction_log", str(root / "log"),
         "--prediction_log_format", "jsonl", "--http_port", str(port),
         "--tokens", str(tokens.tokens)],
        root / "predictor.log", env,
    )  # fmt: skip
    try:
        wait_ready(predictor, port, root / "predictor.log")
        fields = list(TransactionSchema(spec, OnlineFeatures(spec)).fields)
        yield SimpleNamespace(
            root=root,
            spec=spec,
            day=day,
            offline=offline,
            requests=transactions(day, fields, "tx_time"),
            history_file=history_file,
            env=env,
            predictor=predictor,
            predictor_port=port,
            tokens=tokens,
        )
    finally:
        stop(predictor)


def start_transformer(world: SimpleNamespace, kind: str) -> SimpleNamespace:
    """The transformer with the in-process store (warmed up from the history file while
    it loads) or with Redis (warmed up by ``govml features backfill`` first)."""
    store, prefix = "memory", f"govml-test:{uuid.uuid4().hex[:8]}"
    extra: list[str] = ["--history", str(world.history_file)]
    if kind == "redis":
        store, extra = REDIS_URL, []
        done = subprocess.run(
            [str(GOVML), "features", "backfill", MODEL, "--store", store, "--prefix", prefix,
             "--history", str(world.history_file)],
            cwd=ROOT, env=world.env, capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        assert "entity states from" in done.stdout
    port = free_port()
    log = world.root / f"transformer-{kind}.log"
    proc = start(
        ["-m", "serving.transformer", "--model_name", MODEL,
         "--spec", str(ROOT / "specs" / "fraud.yaml"),
         "--predictor_host", f"127.0.0.1:{world.predictor_port}", "--http_port", str(port),
         "--feature_store", store, "--feature_prefix", prefix, *extra,
         "--tokens", str(world.tokens.tokens),
         "--predictor_token_file", str(world.tokens.service_token)],
        log, world.env,
    )  # fmt: skip
    wait_ready(proc, port, log)
    return SimpleNamespace(kind=kind, port=port, store=store, prefix=prefix, log=log, proc=proc)


@pytest.fixture(scope="module")
def transformers(world: SimpleNamespace) -> Iterator[dict[str, SimpleNamespace | None]]:
    servers: dict[str, SimpleNamespace | None] = {"memory": None, "redis": None}
    try:
        servers["memory"] = start_transformer(world, "memory")
        if redis_answers() or os.environ.get("CI") == "true":
            servers["redis"] = start_transformer(world, "redis")
        yield servers
    finally:
        for server in servers.values():
            if server is not None:
                stop(server.proc)
        redis_server = servers["redis"]
        if redis_server is not None:
            import redis

            client = redis.Redis.from_url(redis_server.store)
            for key in client.scan_iter(match=f"{redis_server.prefix}:*", count=1000):
                client.delete(key)


@pytest.fixture(params=["memory", "redis"])
def transformer(
    request: pytest.FixtureRequest, transformers: dict[str, SimpleNamespace | None]
) -> SimpleNamespace:
    server = transformers[request.param]
    if server is None:
        pytest.skip(f"Redis does not answer at {REDIS_URL} (outside CI)")
    return server


# ----------------------------------------------------------------------------- tests


def test_a_held_out_day_gets_exactly_the_offline_features(
    world: SimpleNamespace, transformer: SimpleNamespace
) -> None:
    client = Client(transformer.port)
    requests, offline = world.requests, world.offline
    half = len(requests) // 2
    answers: list[dict[str, Any]] = []
    for i in range(half):  # one transaction per request
        code, body = client.predict([requests[i]], f"{transformer.kind}-{i}")
        assert code == 200, body
        assert len(body["predictions"]) == 1 and len(body["decisions"]) == 1
        answers += body["aggregates"]
    for i in range(half, len(requests), 8):  # batches: transactions observed in order
        code, body = client.predict(requests[i : i + 8])
        assert code == 200, body
        answers += body["aggregates"]
    assert len(answers) == len(offline) > 1000
    wrong = [i for i, got in enumerate(answers) if not same(got, offline.iloc[i])]
    assert not wrong, f"{len(wrong)} rows differ, e.g. row {wrong[0]}: {answers[wrong[0]]}"
    # every aggregate was exercised with non-trivial values
    for name in offline.columns:
        assert offline[name].nunique() > 2, name


def test_a_retry_is_counted_once_and_bad_input_changes_nothing(
    world: SimpleNamespace, transformer: SimpleNamespace
) -> None:
    client = Client(transformer.port)
    base = dict(world.requests[-1])
    card, t0 = 88_000_001, pd.Timestamp(base["tx_time"]) + pd.Timedelta("1h")
    first = {**base, "transaction_id": 90_000_001, "card_id": card, "tx_time": t0.isoformat(),
             "customer_id": card, "terminal_id": card}  # fmt: skip
    assert client.predict([first])[0] == 200
    code, body = client.predict([first])  # the same transaction again
    assert code == 200 and body["aggregates"][0]["card_tx_count_1h"] == 0
    bad = [
        ({k: v for k, v in first.items() if k != "card_id"}, "card_id: missing field"),
        ({**first, "tx_time": "yesterday"}, "tx_time: expected an ISO 8601 time"),
        ({**first, "amount": 1e9}, "amount"),
        ({**first, "channel": "fax"}, "channel: unknown category"),
        ({**first, "iban": "DE00"}, "unknown field 'iban'"),
        ({**first, "tx_time": (t0 - pd.Timedelta("2h")).isoformat()}, "too late"),
    ]
    for n, (row, needle) in enumerate(bad):
        code, body = client.predict([{**row, "transaction_id": 90_000_100 + n}])
        assert code == 400, (needle, body)
        assert needle in body["error"]
        assert str(card) not in body["error"]  # personal data is never echoed
    later = {
        **first,
        "transaction_id": 90_000_002,
        "tx_time": (t0 + pd.Timedelta("1s")).isoformat(),
    }
    code, body = client.predict([later])
    assert code == 200 and body["aggregates"][0]["card_tx_count_1h"] == 1  # only `first`


def test_kserves_own_route_transforms_the_same_way(
    world: SimpleNamespace, transformer: SimpleNamespace
) -> None:
    """A body the fast route leaves to KServe (not JSON by its content type) goes
    through KServe's preprocess -> predict -> postprocess: same answer, same state."""
    base = dict(world.requests[-1])
    t0 = pd.Timestamp(base["tx_time"]) + pd.Timedelta("5h")
    card = 88_000_003
    rows = [
        {**base, "transaction_id": 92_000_000 + k, "card_id": card, "customer_id": card,
         "terminal_id": card, "tx_time": (t0 + pd.Timedelta(seconds=k)).isoformat()}
        for k in range(2)
    ]  # fmt: skip
    conn = http.client.HTTPConnection("127.0.0.1", transformer.port, timeout=30)
    conn.request("POST", f"/v1/models/{MODEL}:predict", json.dumps({"instances": rows[:1]}),
                 {"Content-Type": "text/plain", **AUTH})  # fmt: skip
    response = conn.getresponse()
    body = json.loads(response.read())
    assert response.status == 200, body
    assert body["aggregates"][0]["card_tx_count_1h"] == 0 and len(body["predictions"]) == 1
    conn.request("POST", f"/v1/models/{MODEL}:predict", json.dumps({"instances": rows[:1]}),
                 {"Content-Type": "text/plain", **AUTH})  # fmt: skip
    again = json.loads(conn.getresponse().read())
    assert again["predictions"] == body["predictions"]  # the same features and score
    code, fast = Client(transformer.port).predict(rows[1:])
    assert code == 200 and fast["aggregates"][0]["card_tx_count_1h"] == 1  # recorded once
    conn.request("POST", f"/v1/models/{MODEL}:predict", json.dumps({"instances": [{}]}),
                 {"Content-Type": "text/plain", **AUTH})  # fmt: skip
    bad = conn.getresponse()
    assert bad.status == 400 and "card_id: missing field" in json.loads(bad.read())["error"]


def test_the_openapi_document_describes_raw_transactions(transformer: SimpleNamespace) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", transformer.port, timeout=30)
    conn.request("GET", "/openapi.json")
    document = json.loads(conn.getresponse().read())
    body = document["components"]["schemas"][f"{MODEL}_request"]
    row = body["properties"]["instances"]["items"]
    assert {"transaction_id", "tx_time", "card_id", "amount"} <= set(row["required"])
    assert "card_tx_count_1h" not in row["properties"]  # computed here, never sent
    predict = document["paths"]["/v1/models/{model_name}:predict"]["post"]
    assert predict["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith(
        f"{MODEL}_request"
    )


def test_concurrent_requests_for_one_card_lose_no_update(
    world: SimpleNamespace, transformer: SimpleNamespace
) -> None:
    base = dict(world.requests[-1])
    t0 = pd.Timestamp(base["tx_time"]) + pd.Timedelta("3h")
    card, n = 88_000_002, 120

    def send(k: int) -> tuple[int, Any]:
        when = (t0 + pd.Timedelta(seconds=k % 60)).isoformat()
        row = {**base, "transaction_id": 91_000_000 + k, "card_id": card, "customer_id": card,
               "terminal_id": card, "tx_time": when}  # fmt: skip
        return Client(transformer.port).predict([row])

    with ThreadPoolExecutor(max_workers=16) as pool:
        results = list(pool.map(send, range(n)))
    assert all(code == 200 for code, _ in results), [b for c, b in results if c != 200][:3]
    last = {**base, "transaction_id": 91_999_999, "card_id": card, "customer_id": card,
            "terminal_id": card, "tx_time": (t0 + pd.Timedelta("2m")).isoformat()}  # fmt: skip
    code, body = Client(transformer.port).predict([last])
    assert code == 200 and body["aggregates"][0]["card_tx_count_10m"] == n


def test_the_predictor_received_exactly_the_offline_features(world: SimpleNamespace) -> None:
    """Last: stops the model server, whose prediction log then holds every row it got."""
    stop(world.predictor)
    names = list(world.offline.columns)
    got: dict[str, dict[str, Any]] = {}
    for path in complete_files(world.root / "log"):
        for record in read_records(path):
            request_id = str(record.get("request_id") or "")
            if request_id.startswith(("memory-", "redis-")):
                got[request_id] = record["features"]
    assert got, "no logged rows"
    kinds = {r.split("-")[0] for r in got}
    assert "memory" in kinds
    for request_id, features in got.items():
        i = int(request_id.split("-")[1].split(":")[0])
        assert same({n: features[n] for n in names}, world.offline.iloc[i]), request_id
        raw = world.requests[i]
        assert all(features[f] == raw[f] for f in world.spec.features.raw), request_id
    assert np.isfinite(len(got))
    assert len(got) >= len(world.requests) // 2 * len(kinds) - 1
    print(f"{len(got)} rows checked in the predictor's log", file=sys.stderr)
