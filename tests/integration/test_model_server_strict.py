"""The model server with its spec, on loopback (.venv-serving): strict input, tokens,
body limit, metrics, prediction log, and scores equal to the pipeline's.

The German Credit model is trained by the real pipeline stages (features, training);
the server validates each request against the spec's feature schema and scores the
model input matrix without pandas.
"""

from __future__ import annotations

import json
import math
import random
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pandas as pd
import pytest

from pipelines.booster_layout import model_frame
from pipelines.training import score
from serving.prediction_log_files import complete_files, read_records
from tests.german_credit import served_german_credit
from tests.support import GERMAN_CREDIT, free_port, http_call, start_model_server
from tests.v2_protocol import v2_binary, v2_inputs

ROOT = Path(__file__).resolve().parents[2]
MODEL = GERMAN_CREDIT
pytestmark = pytest.mark.slow
_call = http_call


@pytest.fixture(scope="module")
def server(
    german_credit_model: SimpleNamespace, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[SimpleNamespace]:
    root = tmp_path_factory.mktemp("strict")
    with served_german_credit(root, german_credit_model, version="7") as served:
        yield SimpleNamespace(**vars(served), **vars(german_credit_model), root=root)


def _predict(server: SimpleNamespace, body: object, token: str | None = "default") -> tuple:
    token = server.token if token == "default" else token
    return _call(f"{server.base}/v1/models/{MODEL}:predict", body, token)


def test_v1_scores_and_decisions_equal_the_pipeline(server: SimpleNamespace) -> None:
    code, body, _ = _predict(server, {"instances": server.rows})
    assert code == 200, body
    expected = score(server.booster, server.test)
    assert body["predictions"] == expected.tolist()
    threshold = server.spec.gates.decision_threshold
    assert body["decisions"] == [bool(s >= threshold) for s in expected]
    assert body["model_version"] == "7" and body["threshold"] == threshold


def test_v2_infer_with_named_columns_equals_v1(server: SimpleNamespace) -> None:
    rows = server.rows[:12]
    names = list(server.booster.feature_name())
    inputs = []
    for name in names:
        values = [r[name] for r in rows]
        if all(isinstance(v, str) for v in values):
            inputs.append({"name": name, "shape": [len(rows)], "datatype": "BYTES", "data": values})
        else:
            inputs.append({"name": name, "shape": [len(rows)], "datatype": "FP64", "data": values})
    code, body, _ = _call(
        f"{server.base}/v2/models/{MODEL}/infer", {"inputs": inputs}, server.token
    )
    assert code == 200, body
    scores = next(o for o in body["outputs"] if o["name"] == "score")["data"]
    assert scores == score(server.booster, server.test.head(12)).tolist()


@pytest.mark.parametrize(
    ("change", "needle"),
    [
        (lambda r: r.update(purpose="lottery"), "purpose: unknown category"),
        (lambda r: r.pop("savings"), "savings"),
        (lambda r: r.update(duration_months="12"), "duration_months"),
        (lambda r: r.update(duration_months=500), "duration_months"),
        (lambda r: r.update(credit_amount=None), "credit_amount"),
        (lambda r: r.update(sex="female"), "sex"),  # a protected attribute is not a feature
    ],
)
def test_each_bad_field_is_a_400_naming_it(server: SimpleNamespace, change, needle: str) -> None:  # noqa: ANN001
    row = dict(server.rows[0])
    change(row)
    code, body, _ = _predict(server, {"instances": [row]})
    assert code == 400, body
    assert needle in json.dumps(body)


def test_tokens_are_enforced_on_predict_and_health_stays_open(server: SimpleNamespace) -> None:
    body = {"instances": server.rows[:1]}
    code, _, headers = _predict(server, body, token=None)
    assert code == 401 and "Bearer" in headers.get("www-authenticate", "")
    assert _predict(server, body, token="gml_not-a-real-token")[0] == 401
    assert _predict(server, body, token=server.explain_token)[0] == 403
    assert _call(f"{server.base}/v2/models/{MODEL}/ready")[0] == 200
    assert _call(f"{server.base}/v2/health/live")[0] == 200


def test_an_oversized_body_is_413(server: SimpleNamespace) -> None:
    import http.client
    from urllib.parse import urlsplit

    parts = urlsplit(server.base)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=15)
    # the server answers from the Content-Length alone, before reading the body
    conn.putrequest("POST", f"/v1/models/{MODEL}:predict")
    conn.putheader("Content-Type", "application/json")
    conn.putheader("Authorization", f"Bearer {server.token}")
    conn.putheader("Content-Length", str(5_000_000))
    conn.endheaders()
    response = conn.getresponse()
    assert response.status == 413
    assert "larger than 200000 bytes" in response.read().decode()
    conn.close()
    # a body without Content-Length (chunked) is counted as it arrives
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=15)
    chunk = b" " * 65536
    conn.putrequest("POST", f"/v1/models/{MODEL}:predict")
    conn.putheader("Content-Type", "application/json")
    conn.putheader("Authorization", f"Bearer {server.token}")
    conn.putheader("Transfer-Encoding", "chunked")
    conn.endheaders()
    try:
        for _ in range(8):
            conn.send(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        conn.send(b"0\r\n\r\n")
    except OSError:
        pass  # the server may answer and close before the client has sent everything
    response = conn.getresponse()
    assert response.status == 413
    conn.close()


def test_unknown_model_is_404(server: SimpleNamespace) -> None:
    code, _, _ = _call(f"{server.base}/v1/models/nope:predict", {"instances": []}, server.token)
    assert code == 404


def test_a_thousand_mutated_requests_never_get_a_5xx(server: SimpleNamespace) -> None:
    rng = random.Random(42)
    names = list(server.booster.feature_name())
    oddities: list[Any] = [None, "", "x" * 500, -1e308, 1e308, True, [], {}, [1, 2], "NaN", 0, -5]
    codes: dict[int, int] = {}
    for i in range(1000):
        rows = [dict(r) for r in rng.sample(server.rows, k=rng.randint(1, 3))]
        for row in rows:
            for _ in range(rng.randint(0, 3)):
                action = rng.random()
                name = rng.choice(names)
                if action < 0.5:
                    row[name] = rng.choice(oddities)
                elif action < 0.7:
                    row.pop(name, None)
                elif action < 0.85:
                    row[f"extra_{i}"] = 1
                else:
                    row[name] = rng.uniform(-1e6, 1e6)
        shape = rng.random()
        body: Any = {"instances": rows}
        if shape < 0.05:
            body = {"rows": rows}
        elif shape < 0.1:
            body = rows
        elif shape < 0.12:
            body = {"instances": "nope"}
        try:
            code, answer, _ = _predict(server, body)
        except OSError as exc:
            pytest.fail(f"request {i} got no answer ({exc}): {json.dumps(body)[:2000]}")
        codes[code] = codes.get(code, 0) + 1
        assert code < 500, (body, answer)
    assert codes.get(200) and codes.get(400), codes


def test_explain_gives_the_pipelines_contributions_and_reason_codes(
    server: SimpleNamespace,
) -> None:
    from pipelines.reasons import contributions, reason_codes

    rows = server.rows[:30]
    url = f"{server.base}/v1/models/{MODEL}:explain"
    assert _call(url, {"instances": rows}, server.token)[0] == 403  # predict-only token
    code, body, _ = _call(url, {"instances": rows}, server.explain_token)
    assert code == 200, body
    frame = server.test.head(30)
    expected = contributions(server.booster, frame)
    names = list(server.booster.feature_name())
    codes = reason_codes(expected, names, server.spec.reason_codes)
    threshold = server.spec.gates.decision_threshold
    scores = score(server.booster, frame)
    declined = 0
    for i, item in enumerate(body["explanations"]):
        assert [item["contributions"][n] for n in names] == expected[i, :-1].tolist()
        assert item["expected_value"] == expected[i, -1]
        if scores[i] >= threshold:
            declined += 1
            assert item["decision"] == "decline"
            assert [(r["feature"], r["label"]) for r in item["reasons"]] == [
                (r.feature, r.label) for r in codes[i]
            ]
            assert 0 < len(item["reasons"]) <= 4
        else:
            assert item["decision"] == "approve" and item["reasons"] == []
    assert declined, "the sample should hold at least one decline"


def test_the_openapi_document_describes_the_real_request(server: SimpleNamespace) -> None:
    import jsonschema

    code, document, _ = _call(f"{server.base}/openapi.json")
    assert code == 200
    operation = document["paths"]["/v1/models/{model_name}:predict"]["post"]
    ref = operation["requestBody"]["content"]["application/json"]["schema"]["$ref"]
    body = document["components"]["schemas"][ref.rsplit("/", 1)[1]]
    row = body["properties"]["instances"]["items"]
    assert set(row["required"]) == set(server.booster.feature_name())
    assert row["additionalProperties"] is False
    assert "lottery" not in row["properties"]["purpose"]["enum"]
    assert operation["security"] == [{"bearer": []}]
    jsonschema.validate({"instances": server.rows[:3]}, body)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"instances": [dict(server.rows[0], purpose="lottery")]}, body)


def _request_schema(server: SimpleNamespace) -> dict[str, Any]:
    """The V1 request body schema from the server's own OpenAPI document."""
    _, document, _ = _call(f"{server.base}/openapi.json")
    operation = document["paths"]["/v1/models/{model_name}:predict"]["post"]
    ref = operation["requestBody"]["content"]["application/json"]["schema"]["$ref"]
    body = json.loads(json.dumps(document["components"]["schemas"][ref.rsplit("/", 1)[1]]))
    body["properties"]["instances"]["maxItems"] = 4  # keep generated requests small
    return body


def _strategy(schema: dict[str, Any]):  # noqa: ANN202
    """A hypothesis strategy for the JSON Schema subset the feature schema uses
    (objects with required properties, arrays, enums, bounded numbers, nullable types)."""
    from hypothesis import strategies as st

    if "enum" in schema:
        return st.sampled_from(schema["enum"])
    types = schema.get("type")
    if isinstance(types, list):
        return st.one_of([_strategy(dict(schema, type=t)) for t in types])
    low, high = schema.get("minimum"), schema.get("maximum")
    if types == "null":
        return st.none()
    if types == "integer":
        return st.integers(
            None if low is None else math.ceil(low), None if high is None else math.floor(high)
        )
    if types == "number":
        return st.floats(low, high, allow_nan=False, allow_infinity=False)
    if types == "boolean":
        return st.booleans()
    if types == "array":
        return st.lists(
            _strategy(schema["items"]),
            min_size=schema.get("minItems", 0),
            max_size=schema.get("maxItems", 4),
        )
    if types == "object":
        return st.fixed_dictionaries(
            {k: _strategy(v) for k, v in schema["properties"].items() if k in schema["required"]}
        )
    raise AssertionError(f"unsupported schema {schema}")


def _generated(examples: int, strategy: Any) -> Callable[[Callable], Callable]:
    """Run the decorated check on ``examples`` cases drawn from ``strategy``, the same
    cases every run (derandomized), no deadline."""
    from hypothesis import HealthCheck, given, settings

    def decorate(check: Callable) -> Callable:
        return settings(
            max_examples=examples,
            deadline=None,
            derandomize=True,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
        )(given(strategy)(check))

    return decorate


def test_property_requests_valid_per_the_openapi_document_are_scored(
    server: SimpleNamespace,
) -> None:
    seen: list[int] = []

    @_generated(500, _strategy(_request_schema(server)))
    def check(body: dict[str, Any]) -> None:
        code, answer, _ = _predict(server, body)
        seen.append(code)
        assert code == 200, (body, answer)
        assert len(answer["predictions"]) == len(body["instances"])

    check()
    assert len(seen) >= 500


def test_property_any_json_body_never_gets_a_5xx(server: SimpleNamespace) -> None:
    from hypothesis import strategies as st

    names = list(server.booster.feature_name())
    scalars = (
        st.none()
        | st.booleans()
        | st.integers()
        | st.floats(allow_nan=False)
        | st.text(max_size=30)
    )
    values = st.recursive(
        scalars,
        lambda inner: (
            st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
        ),
        max_leaves=6,
    )
    row = st.fixed_dictionaries(
        {},
        optional={name: values | st.sampled_from([server.rows[0][name]]) for name in names}
        | {"unexpected": values},
    )
    bodies = st.fixed_dictionaries({"instances": st.lists(row, max_size=3)}) | values
    codes: list[int] = []

    @_generated(600, bodies)
    def check(body: Any) -> None:
        code, answer, _ = _predict(server, body)
        codes.append(code)
        assert code < 500, (body, answer)

    check()
    assert len(codes) >= 600 and 400 in codes


def _with_type(server: SimpleNamespace, raw: bytes, content_type: str) -> tuple[int, Any]:
    req = urllib.request.Request(
        f"{server.base}/v1/models/{MODEL}:predict",
        data=raw,
        headers={"Content-Type": content_type, "Authorization": f"Bearer {server.token}"},
    )
    try:
        with urllib.request.urlopen(req, timeout=15) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def test_the_fast_route_answers_exactly_as_kserves_route(server: SimpleNamespace) -> None:
    """``application/json`` is answered by the guard's fast route, another JSON media type
    (``application/ld+json``) by KServe's own route: the answers are the same."""
    row = server.rows[3]
    bodies = [
        json.dumps({"instances": server.rows[:25]}).encode(),
        json.dumps({"instances": [row]}).encode(),
        json.dumps({"instances": row}).encode(),  # one object
        json.dumps({"instances": [{**row, "purpose": "lottery"}]}).encode(),
        json.dumps({"instances": [{**row, "extra_field": 1}]}).encode(),
        json.dumps({"rows": [row]}).encode(),
        json.dumps([row]).encode(),
        b'{"instances": [',  # not JSON
        b"",
    ]
    for raw in bodies:
        fast = _with_type(server, raw, "application/json")
        framework = _with_type(server, raw, "application/ld+json")
        assert fast == framework, raw[:80]
    assert _with_type(server, bodies[0], "application/json")[0] == 200
    assert _with_type(server, bodies[-2], "application/json")[0] == 400


def _v2_call(
    server: SimpleNamespace, raw: bytes, content_type: str, json_length: int | None = None
) -> tuple[int, Any]:
    headers = {"Content-Type": content_type, "Authorization": f"Bearer {server.token}"}
    if json_length is not None:
        headers["Inference-Header-Content-Length"] = str(json_length)
    req = urllib.request.Request(
        f"{server.base}/v2/models/{MODEL}/infer", data=raw, headers=headers
    )
    try:
        with urllib.request.urlopen(req, timeout=15) as resp:
            answer = json.loads(resp.read())
            status = resp.status
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())
    if "id" in answer and not answer["id"].startswith("req-"):
        answer["id"] = "generated"  # a fresh UUID each time when the request has none
    return status, answer


def _v2_inputs(server: SimpleNamespace, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return v2_inputs(rows, list(server.booster.feature_name()))


def test_the_v2_fast_route_answers_exactly_as_kserves_route(server: SimpleNamespace) -> None:
    """V2 ``/infer`` as ``application/json`` (fast route) and ``application/ld+json``
    (KServe's route), and in the binary tensor extension both ways: same answers."""
    rows = [r for r in server.rows[:40] if all(v is not None for v in r.values())][:30]
    inputs = _v2_inputs(server, rows)
    wrong_category = json.loads(json.dumps(inputs))
    for item in wrong_category:
        if item["datatype"] == "BYTES":
            item["data"][3] = "no-such-category"
            break
    bodies = [
        {"id": "req-1", "inputs": inputs},
        {"inputs": inputs},
        {"inputs": inputs[:-2]},  # missing inputs
        {"inputs": wrong_category},
        {"inputs": [{**inputs[0], "data": ["x"] * len(rows)}, *inputs[1:]]},
        {"inputs": inputs, "outputs": [{"name": "score"}]},  # declined: KServe answers
        {"inputs": "not a list"},
    ]
    for body in bodies:
        raw = json.dumps(body).encode()
        fast = _v2_call(server, raw, "application/json")
        framework = _v2_call(server, raw, "application/ld+json")
        assert fast == framework, json.dumps(body)[:120]
    ok = _v2_call(server, json.dumps(bodies[0]).encode(), "application/json")
    assert ok[0] == 200
    scores = next(o for o in ok[1]["outputs"] if o["name"] == "score")["data"]
    expected = server.booster.predict(model_frame(server.booster, pd.DataFrame(rows)))
    assert scores == expected.tolist()
    # the binary tensor extension (any content type: the header declares it) answers
    # as the same request in JSON does
    raw, head = v2_binary(inputs, "req-2")
    body = json.dumps({"id": "req-2", "inputs": inputs}).encode()
    as_json = _v2_call(server, body, "application/json")
    for content_type in ("application/octet-stream", "application/x-not-fast"):
        assert _v2_call(server, raw, content_type, head) == as_json
    assert as_json[0] == 200
    assert next(o for o in as_json[1]["outputs"] if o["name"] == "score")["data"] == scores
    # an unknown label in a binary BYTES tensor: the same 400 as in JSON
    raw, head = v2_binary(wrong_category, "req-3")
    binary = _v2_call(server, raw, "application/octet-stream", head)
    body = json.dumps({"inputs": wrong_category}).encode()
    assert binary == _v2_call(server, body, "application/json")
    assert binary[0] == 400
    assert "no-such-category" in binary[1]["error"]


def test_metrics_and_the_prediction_log(server: SimpleNamespace) -> None:
    code, text, _ = _call(f"{server.base}/metrics")
    assert code == 200
    assert 'govml_requests_total{code="200",kind="predict"}' in text
    assert 'govml_requests_total{code="401",kind="predict"}' in text
    assert "govml_request_seconds_bucket" in text
    assert 'govml_score_count{model="german_credit",version="7"}' in text
    assert "govml_decisions_total" in text
    logged = 'govml_prediction_log_rows_total{model="german_credit",outcome="%s",version="7"}'
    assert logged % "dropped" + " 0.0" in text  # nothing lost to a full queue
    assert logged % "written" in text and "govml_prediction_log_pending_rows" in text
    # the log is written asynchronously and completed when the server stops
    server.proc.terminate()
    server.proc.wait(timeout=60)
    files = complete_files(server.log_dir)
    assert files, list(server.log_dir.iterdir())
    records = [r for f in files for r in read_records(f)]
    first = server.rows[0]
    ours = [r for r in records if r["features"] == first]
    assert ours, records[:2]
    record = ours[0]
    assert record["model_version"] == "7" and record["model_name"] == MODEL
    assert record["score"] == pytest.approx(score(server.booster, server.test.head(1))[0])
    expected = score(server.booster, server.test.head(1))[0]
    threshold = server.spec.gates.decision_threshold
    assert record["decision"] == ("decline" if expected >= threshold else "approve")
    assert record["latency_ms"] >= 0


def test_a_model_that_does_not_match_its_spec_is_refused(server: SimpleNamespace) -> None:
    log = server.root / "refused.log"
    proc = start_model_server(
        server.env,
        log,
        "--model_name", MODEL,
        "--model_uri", str(server.model_dir),
        "--spec", str(ROOT / "specs" / "credit.yaml"),
        "--tokens", str(server.root / "tokens.json"),
        "--http_port", str(free_port()),
    )  # fmt: skip
    proc.wait(timeout=120)
    out = log.read_text()
    assert proc.returncode == 3
    assert "does not match the spec" in out or "refusing to serve" in out
