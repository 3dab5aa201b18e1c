"""Attacks 9 and 10 of issue 21 against a real model server (.venv-serving, loopback).

9. Binary V2 input: a valid one-row binary request with BYTES category tensors answered
   500 (``'KnownCodes' object is not subscriptable``); a too-small or huge
   ``binary_data_size``, a shape of ``[3]`` or ``[0]``, ``Inference-Header-Content-Length:
   abc`` answered 500; ``/v2/models/NAME/versions/1/infer`` answered 501. Now: 200 for
   the valid request, 400 with one line naming the problem for each malformed one, and
   the versioned paths work for the served version (404 naming it for another).
10. Prediction log gaps: ``:explain`` answers wrote no rows; requests that KServe's own
   routes answer (V1 as ``application/octet-stream``, V2 with ``parameters``) were
   logged with ``client: null``. Now every answered row is in the log with its
   client, and an explanation's rows carry its reason codes.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest

from tests.german_credit import complete_rows, served_german_credit
from tests.support import GERMAN_CREDIT, http_call, logged_rows
from tests.v2_protocol import v2_binary, v2_inputs

pytestmark = pytest.mark.slow
MODEL = GERMAN_CREDIT
VERSION = "7"
INFER = f"/v2/models/{MODEL}/infer"
PROBLEM = "1 problem(s) in the request: "
CLOUDEVENT = {"ce-specversion": "1.0", "ce-source": "test", "ce-type": "t", "ce-id": "1"}


@pytest.fixture(scope="module")
def server(
    german_credit_model: SimpleNamespace, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[SimpleNamespace]:
    root = tmp_path_factory.mktemp("serving-input")
    with served_german_credit(root, german_credit_model, version=VERSION) as served:
        yield SimpleNamespace(**vars(served), **complete_rows(german_credit_model))


def _binary_call(
    server: SimpleNamespace,
    body: bytes,
    json_length: str | int,
    content_type: str = "application/octet-stream",
    path: str = INFER,
    headers: dict[str, str] | None = None,
) -> tuple[int, Any]:
    head = {"Content-Type": content_type, "Inference-Header-Content-Length": str(json_length)}
    code, answer, _ = http_call(
        server.base + path, raw=body, token=server.token, headers=head | (headers or {})
    )
    return code, answer


def _one_row(server: SimpleNamespace) -> list[dict[str, Any]]:
    """One row's tensors, duration_months (FP64) first and checking_account_status
    (BYTES) second, so that the byte offsets in the messages are known."""
    inputs = v2_inputs(server.rows[:1], server.names)
    first = ("duration_months", "checking_account_status")
    return sorted(inputs, key=lambda i: first.index(i["name"]) if i["name"] in first else 2)


def _rows_of(server: SimpleNamespace, request_id: str, count: int) -> list[dict[str, Any]]:
    """The log rows ``request_id:0`` .. ``request_id:count-1`` (written asynchronously)."""
    wanted = {f"{request_id}:{i}" for i in range(count)}
    deadline = time.monotonic() + 20
    while True:
        rows = [r for r in logged_rows(server.log_dir) if r["request_id"] in wanted]
        if len(rows) >= count or time.monotonic() > deadline:
            return sorted(rows, key=lambda r: int(r["request_id"].rsplit(":", 1)[1]))
        time.sleep(0.2)


# ----------------------------------------------------------------------------- attack 9


def test_a_one_row_binary_request_with_category_tensors_is_scored(
    server: SimpleNamespace,
) -> None:
    inputs = _one_row(server)
    body, length = v2_binary(inputs, "one-row")
    code, answer = _binary_call(server, body, length, headers={"X-Request-Id": "bin-1"})
    assert code == 200, answer
    as_json = http_call(
        server.base + INFER, {"id": "one-row", "inputs": inputs}, token=server.token
    )
    assert (code, answer) == as_json[:2]
    score = answer["outputs"][0]["data"][0]
    [row] = _rows_of(server, "bin-1", 1)
    # the category codes the decoder made are logged as the labels sent
    assert row["features"] == server.rows[0]
    assert row["score"] == score and row["client"] == "core-banking"


def _problem(line: str) -> dict[str, str]:
    return {"error": PROBLEM + line}


def test_a_binary_data_size_too_small_is_a_400_naming_it(server: SimpleNamespace) -> None:
    inputs = _one_row(server)
    inputs[0]["parameters"] = {"binary_data_size": 7}
    body, length = v2_binary(inputs)
    assert _binary_call(server, body, length) == (
        400,
        _problem("input duration_months: shape [1] of FP64 needs 8 bytes, binary_data_size is 7"),
    )


def test_a_huge_binary_data_size_is_a_400_naming_it(server: SimpleNamespace) -> None:
    inputs = _one_row(server)
    inputs[0]["parameters"] = {"binary_data_size": 10**12}
    body, length = v2_binary(inputs)
    left = len(body) - length
    assert _binary_call(server, body, length) == (
        400,
        _problem(
            f"input duration_months: binary_data_size 1000000000000 runs past the end of "
            f"the body ({left} bytes left)"
        ),
    )


@pytest.mark.parametrize(("shape", "needs"), [([3], 24), ([0], 0)], ids=["shape-3", "shape-0"])
def test_a_shape_that_does_not_match_the_data_is_a_400(
    server: SimpleNamespace, shape: list[int], needs: int
) -> None:
    inputs = _one_row(server)
    inputs[0]["shape"] = shape
    body, length = v2_binary(inputs)
    assert _binary_call(server, body, length) == (
        400,
        _problem(f"input duration_months: shape {shape} of FP64 needs {needs} bytes, "
                 "binary_data_size is 8"),
    )  # fmt: skip
    inputs = _one_row(server)
    inputs[1]["shape"] = shape
    size = len(server.rows[0]["checking_account_status"]) + 4
    body, length = v2_binary(inputs)
    assert _binary_call(server, body, length) == (
        400,
        _problem(
            f"input checking_account_status: {size} bytes of BYTES data are not {shape[0]} "
            "length-prefixed element(s) (4-byte little-endian length, then the bytes)"
        ),
    )


def test_empty_tensors_are_a_400(server: SimpleNamespace) -> None:
    inputs = [{**i, "shape": [0], "data": []} for i in _one_row(server)]
    body, length = v2_binary(inputs)
    assert _binary_call(server, body, length) == (400, _problem("no rows: send at least one"))


@pytest.mark.parametrize("content_type", ["application/octet-stream", "text/plain"])
def test_a_header_length_that_is_not_a_number_is_a_400(
    server: SimpleNamespace, content_type: str
) -> None:
    body, _ = v2_binary(_one_row(server))
    line = "Inference-Header-Content-Length: expected the JSON header's length in bytes, got"
    for value in ("abc", "-5", "1e3", "²"):  # (² is a digit to str.isdigit)
        assert _binary_call(server, body, value, content_type) == (
            400,
            _problem(f"{line} {value!r}"),
        )
    assert _binary_call(server, body, 10**6, content_type) == (
        400,
        _problem(
            f"Inference-Header-Content-Length: 1000000 is larger than the body ({len(body)} bytes)"
        ),
    )


def test_a_binary_cloudevent_kserve_decodes_is_a_400_too(server: SimpleNamespace) -> None:
    """CloudEvents go to KServe's route, whose decoder raises ValueError: the guard's one
    error mapping answers 400 all the same."""
    body, _ = v2_binary(_one_row(server))
    assert _binary_call(server, body, "abc", headers=CLOUDEVENT) == (
        400,
        {
            "error": "cannot decode the request body: ValueError: invalid literal for "
            "int() with base 10: 'abc'"
        },
    )


def test_malformed_json_bodies_are_a_400_with_one_line(server: SimpleNamespace) -> None:
    cases = [
        (
            {"inputs": "x", "parameters": {}},
            "invalid request body: body.InferenceRequest.inputs: Input should be a valid list",
        ),
        (
            [1, 2],
            "invalid request body: body.InferenceRequest: Input should be a valid dictionary "
            "or object to extract fields from",
        ),
    ]
    for body, line in cases:
        assert http_call(server.base + INFER, body, token=server.token)[:2] == (
            400,
            {"error": line},
        )
    code, answer, _ = http_call(
        server.base + INFER,
        raw=b'{"inputs": [',
        token=server.token,
        headers={"Content-Type": "application/ld+json"},
    )
    assert (code, answer) == (
        400,
        {"error": "invalid request body: body.12: JSON decode error (Expecting value)"},
    )


def test_the_versioned_v2_paths_serve_the_served_version(server: SimpleNamespace) -> None:
    inputs = v2_inputs(server.rows[:3], server.names)
    body = {"id": "versioned", "inputs": inputs}
    plain = http_call(server.base + INFER, body, token=server.token)[:2]
    assert plain[0] == 200
    versioned = f"/v2/models/{MODEL}/versions/{VERSION}"
    assert http_call(server.base + versioned + "/infer", body, token=server.token)[:2] == plain
    raw, length = v2_binary(inputs, "versioned")
    assert _binary_call(server, raw, length, path=versioned + "/infer") == plain
    assert http_call(server.base + versioned + "/ready")[:2] == (
        200,
        {"name": MODEL, "ready": True},
    )
    metadata = http_call(f"{server.base}/v2/models/{MODEL}")[:2]
    assert metadata[0] == 200
    assert http_call(server.base + versioned)[:2] == metadata
    assert http_call(f"{server.base}/v2/models/{MODEL}?model_version={VERSION}")[:2] == metadata


def test_another_version_is_a_404_naming_the_served_one(server: SimpleNamespace) -> None:
    refused = {"error": f"model {MODEL} has no version 1 here: this server serves version 7"}
    body = {"inputs": v2_inputs(server.rows[:1], server.names)}
    base = f"{server.base}/v2/models/{MODEL}"
    assert http_call(f"{base}/versions/1/infer", body, token=server.token)[:2] == (404, refused)
    assert http_call(f"{base}/versions/1/ready")[:2] == (404, refused)
    assert http_call(f"{base}/versions/1")[:2] == (404, refused)
    assert http_call(f"{base}?model_version=1")[:2] == (404, refused)
    assert http_call(f"{base}/infer?model_version=1", body, token=server.token)[:2] == (
        404,
        refused,
    )
    # the token is checked first: an anonymous caller learns nothing about versions
    assert http_call(f"{base}/versions/1/infer", body)[0] == 401
    # an unknown model, versioned or not, is KServe's 404
    assert http_call(f"{server.base}/v2/models/nope/versions/{VERSION}/ready")[:2] == (
        404,
        {"error": "Model with name nope does not exist."},
    )


# ----------------------------------------------------------------------------- attack 10


def test_explanations_are_logged_with_their_reason_codes(server: SimpleNamespace) -> None:
    rows = server.rows[:40]
    code, answer, _ = http_call(
        f"{server.base}/v1/models/{MODEL}:explain",
        {"instances": rows},
        token=server.explain_token,
        headers={"X-Request-Id": "explain-1"},
    )
    assert code == 200, answer
    logged = _rows_of(server, "explain-1", len(rows))
    assert len(logged) == len(rows)
    declined = 0
    for row, sent, item in zip(logged, rows, answer["explanations"], strict=True):
        assert row["verb"] == "explain" and row["client"] == "dashboards"
        assert row["features"] == sent
        assert row["score"] == item["score"] and row["decision"] == item["decision"]
        assert row["reasons"] == item["reasons"]
        assert row["model_version"] == VERSION
        declined += bool(item["reasons"])
    assert declined, "the sample should hold a declined row with reason codes"


def test_requests_kserves_routes_answer_are_logged_with_their_client(
    server: SimpleNamespace,
) -> None:
    row = server.rows[5]
    code, answer, _ = http_call(
        f"{server.base}/v1/models/{MODEL}:predict",
        {"instances": [row]},
        token=server.token,
        headers={"Content-Type": "application/octet-stream", "X-Request-Id": "octet-1"},
    )
    assert code == 200, answer
    inputs = v2_inputs(server.rows[:2], server.names)
    code, answer, _ = http_call(
        server.base + INFER,
        {"inputs": inputs, "parameters": {"note": "not plain"}},
        token=server.token,
        headers={"X-Request-Id": "params-1"},
    )
    assert code == 200, answer
    [octet] = _rows_of(server, "octet-1", 1)
    assert octet["client"] == "core-banking" and octet["features"] == row
    params = _rows_of(server, "params-1", 2)
    assert [r["client"] for r in params] == ["core-banking", "core-banking"]
    assert [r["score"] for r in params] == answer["outputs"][0]["data"]
    assert all("verb" not in r for r in [octet, *params])


def test_no_request_made_a_server_error(server: SimpleNamespace) -> None:
    code, text, _ = http_call(f"{server.base}/metrics")
    assert code == 200
    assert not [
        line
        for line in text.splitlines()
        if line.startswith("govml_requests_total{") and 'code="5' in line
    ], text
    assert "request failed" not in server.server_log.read_text()  # error_answer's 500 line
