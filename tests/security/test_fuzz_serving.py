"""Fuzzing the model server (issue 21, "Done when"): no input makes a 5xx.

A real model server (.venv-serving, loopback, tokens on, a JSONL prediction log) gets
at least 2,000 generated requests:

* schemathesis (v4) cases of every operation in the server's own ``/openapi.json``,
  valid and invalid per the document (positive and negative generation), most aimed at
  the served model, with a bearer token of the operation's scope;
* hypothesis-generated V2 requests in the binary tensor extension: real feature rows
  as tensors of every V2 datatype, then mutated: shapes, datatypes, ``binary_data_size``
  values, ``Inference-Header-Content-Length`` values, labels (unknown, not UTF-8),
  envelopes, trailing bytes, truncated headers, content types.

Every answer must be below 500; the server must stay ready throughout and at the end;
every 200 answer to a scoring call must have its rows in the prediction log (each
request carries its own ``X-Request-Id``; a request of n rows must leave the rows
``<id>:0`` .. ``<id>:n-1``). Deterministic (``derandomize``), no example database.
"""

from __future__ import annotations

import itertools
import json
import math
import struct
import time
from collections import Counter
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import requests

from tests.german_credit import complete_rows, served_german_credit
from tests.support import GERMAN_CREDIT, logged_rows

pytestmark = pytest.mark.slow
MODEL = GERMAN_CREDIT
SCHEMA_CASES = 700
BINARY_CASES = 1300
READY_EVERY = 100
NUMERIC_TYPES = {
    "FP64": "<f8",
    "FP32": "<f4",
    "FP16": "<f2",
    "INT64": "<i8",
    "INT32": "<i4",
    "INT16": "<i2",
    "INT8": "<i1",
    "UINT64": "<u8",
    "UINT32": "<u4",
    "UINT8": "<u1",
    "BOOL": "?",
}


class Fuzz:
    """The server under fuzzing and what it answered."""

    def __init__(self, served: SimpleNamespace, names: list[str], rows: list[dict]) -> None:
        self.served = served
        self.names = names
        self.rows = rows
        self.session = requests.Session()
        self.ids = (f"fz{i:06d}" for i in itertools.count())
        self.codes: Counter[tuple[str, int]] = Counter()
        self.server_errors: list[str] = []
        self.scored: dict[str, int] = {}  # request id -> rows answered with 200
        self.calls = 0

    def token(self, path: str) -> str:
        return self.served.explain_token if path.endswith(":explain") else self.served.token

    def record(self, kind: str, request_id: str, path: str, response: Any, sent: str) -> None:
        status = response.status_code
        self.codes[kind, status] += 1
        self.calls += 1
        if status >= 500:
            self.server_errors.append(f"{status} {sent[:300]} -> {response.content[:300]!r}")
        elif status == 200:
            rows = answered_rows(path, response)
            if rows:
                self.scored[request_id] = rows
        if self.calls % READY_EVERY == 0:
            assert self.ready(), f"not ready after {self.calls} requests"

    def ready(self) -> bool:
        answer = self.session.get(f"{self.served.base}/v2/health/ready", timeout=15)
        return answer.status_code == 200 and answer.json() == {"ready": True}


def answered_rows(path: str, response: Any) -> int:
    """Rows a 200 answer scored: V1 predictions or explanations, V2 score outputs
    (the JSON part of a binary answer too); 0 for a call that scores nothing."""
    if not (path.endswith((":predict", ":explain", "/infer"))):
        return 0
    headers = {k.lower(): v for k, v in response.headers.items()}
    length = headers.get("inference-header-content-length")
    if isinstance(length, list):
        length = length[0]
    raw = response.content[: int(length)] if length else response.content
    body = json.loads(raw)
    if path.endswith(":predict"):
        return len(body["predictions"])
    if path.endswith(":explain"):
        return len(body["explanations"])
    return int(body["outputs"][0]["shape"][0])


@pytest.fixture(scope="module")
def fuzz(
    german_credit_model: SimpleNamespace, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Fuzz]:
    root = tmp_path_factory.mktemp("fuzz-serving")
    trained = german_credit_model
    with served_german_credit(root, trained, version="3", max_body_bytes=100_000) as served:
        state = Fuzz(served, **complete_rows(trained))
        try:
            yield state
        finally:
            state.session.close()


def _settings(examples: int):  # noqa: ANN202
    from hypothesis import HealthCheck, settings

    return settings(
        max_examples=examples,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=list(HealthCheck),
    )


# ----------------------------------------------------------------------------- schemathesis


def test_schemathesis_cases_from_the_openapi_document(fuzz: Fuzz) -> None:
    import schemathesis
    from hypothesis import given
    from hypothesis import strategies as st
    from schemathesis import GenerationMode

    base = fuzz.served.base
    schema = schemathesis.openapi.from_url(f"{base}/openapi.json")
    ours = {"model_name": MODEL}
    cases = st.one_of(
        schema.as_strategy(GenerationMode.POSITIVE, path_parameters=ours),
        schema.as_strategy(GenerationMode.NEGATIVE, path_parameters=ours),
        schema.as_strategy(GenerationMode.POSITIVE, path_parameters=ours),
        schema.as_strategy(GenerationMode.POSITIVE),
        schema.as_strategy(GenerationMode.NEGATIVE),
    )
    before = fuzz.calls

    @_settings(SCHEMA_CASES)
    @given(cases)
    def check(case: Any) -> None:
        request_id = next(fuzz.ids)
        headers = {"Authorization": f"Bearer {fuzz.token(case.path)}", "X-Request-Id": request_id}
        response = case.call(base_url=base, session=fuzz.session, headers=headers, timeout=60)
        sent = f"{case.method} {case.formatted_path} query={case.query} body={case.body!r}"
        fuzz.record("openapi", request_id, case.formatted_path, response, sent)
        assert response.status_code < 500, fuzz.server_errors[-1]

    check()
    assert fuzz.calls - before >= SCHEMA_CASES * 0.95, fuzz.calls - before
    assert fuzz.ready()


# ----------------------------------------------------------------------------- binary V2


def _encode(datatype: str, values: list[Any]) -> bytes:
    if datatype == "BYTES":
        out = b""
        for v in values:
            raw = v if isinstance(v, bytes) else str(v).encode()
            out += struct.pack("<I", len(raw)) + raw
        return out
    numbers = [v if isinstance(v, int | float) else 0 for v in values]
    with np.errstate(all="ignore"):
        return np.asarray(numbers, dtype=np.float64).astype(NUMERIC_TYPES[datatype]).tobytes()


MUTATIONS = (
    "drop input", "extra input", "odd number", "odd label", "datatype", "shape", "size",
    "parameters", "json data", "id", "envelope parameters", "outputs", "truncated header",
    "trailing bytes", "header length", "random body",
)  # fmt: skip


def binary_requests(fuzz: Fuzz):  # noqa: ANN201
    """(body, headers, summary) of V2 binary requests: real rows as tensors in the
    usual datatypes and shapes, about half of them with one mutation (:data:`MUTATIONS`)."""
    from hypothesis import strategies as st

    numeric = {n for n in fuzz.names if not isinstance(fuzz.rows[0][n], str)}
    labels = {n: sorted({r[n] for r in fuzz.rows}) for n in fuzz.names if n not in numeric}
    header_text = st.text(alphabet="0123456789 -+.e²xabc", max_size=8)
    odd_numbers = st.sampled_from([math.nan, math.inf, -1.0, 1e300, 0.5, 2**63, -(2**31)])
    odd_labels = st.sampled_from(["", "x" * 300, "unknown", b"\xff\xfe", "A11 "])

    @st.composite
    def build(draw: Any) -> tuple[bytes, dict[str, str], str]:
        mutation = draw(st.sampled_from([None] * len(MUTATIONS) + list(MUTATIONS)))
        n = draw(st.integers(1, 5))
        picks = draw(st.lists(st.integers(0, len(fuzz.rows) - 1), min_size=n, max_size=n))
        rows = [fuzz.rows[i] for i in picks]
        names = list(fuzz.names)
        if draw(st.booleans()):
            names = draw(st.permutations(names))  # any order is fine
        target = draw(st.sampled_from(names))
        if mutation == "drop input":
            names.remove(target)
        elif mutation == "extra input":
            names.append(draw(st.sampled_from([target, "unknown_feature"])))
        metas, data = [], b""
        for i, name in enumerate(names):
            hit = name == target and i == names.index(target)
            values: list[Any] = [r.get(name, 0) for r in rows]
            if name in numeric:
                datatype = draw(st.sampled_from(["FP64", "FP64", "FP32", "INT64", "INT32"]))
                if hit and mutation == "odd number":
                    values[draw(st.integers(0, n - 1))] = draw(odd_numbers)
            else:
                datatype = "BYTES"
                if name in labels and draw(st.booleans()):  # other known labels
                    values = [draw(st.sampled_from(labels[name])) for _ in range(n)]
                if hit and mutation == "odd label":
                    values[draw(st.integers(0, n - 1))] = draw(odd_labels)
            if hit and mutation == "datatype":
                datatype = draw(st.sampled_from([*NUMERIC_TYPES, "BYTES", "STRING", "", 7]))
            chunk = _encode(datatype if datatype in NUMERIC_TYPES else "BYTES", values)
            shape: Any = draw(st.sampled_from([[n], [n], [n, 1]]))
            if hit and mutation == "shape":
                shape = draw(st.sampled_from([[0], [n + 1], [n, 2], [], [-1], [2**40], "n"]))
            size: Any = len(chunk)
            if hit and mutation == "size":
                size = draw(st.sampled_from([size - 1, size + 1, 0, -1, 10**12, 1.5, True, "8"]))
            meta: dict[str, Any] = {"name": name, "shape": shape, "datatype": datatype,
                                    "parameters": {"binary_data_size": size}}  # fmt: skip
            if hit and mutation == "parameters":
                odd = [{}, None, [], {"binary_data_size": size, "x": 1}]
                meta["parameters"] = draw(st.sampled_from(odd))
            if hit and mutation == "json data":
                meta["data"] = [v for v in values if isinstance(v, str | int | float)]
            metas.append(meta)
            data += chunk
        header: dict[str, Any] = {"id": "b", "inputs": metas}
        if mutation == "id":
            header["id"] = draw(st.sampled_from([None, 7, ["x"], ""]))
        if mutation == "envelope parameters":
            header["parameters"] = draw(st.sampled_from([{"a": 1}, [], "x", None]))
        if mutation == "outputs":
            header["outputs"] = draw(st.sampled_from([[{"name": "score"}], [{}], "x", [1]]))
        head = json.dumps(header).encode()
        if mutation == "truncated header":
            head = draw(st.sampled_from([head[: len(head) // 2], b"[]", b"", b"\xff" + head]))
        if mutation == "trailing bytes":
            data += draw(st.binary(min_size=1, max_size=16))
        length = str(len(head))
        if mutation == "header length":
            length = draw(header_text | st.integers(0, 10**7).map(str) | st.just(str(10**30)))
        body = draw(st.binary(max_size=200)) if mutation == "random body" else head + data
        content_type = draw(st.sampled_from(
            ["application/octet-stream"] * 5 + ["application/json", "text/plain", ""]
        ))  # fmt: skip
        headers = {"Inference-Header-Content-Length": length}
        if content_type:
            headers["Content-Type"] = content_type
        return body, headers, f"{mutation}: {headers} header={head[:400]!r} {len(data)} bytes"

    return build()


def test_hypothesis_binary_v2_tensors_and_headers(fuzz: Fuzz) -> None:
    from hypothesis import given

    url = f"{fuzz.served.base}/v2/models/{MODEL}/infer"
    before = fuzz.calls

    @_settings(BINARY_CASES)
    @given(binary_requests(fuzz))
    def check(request: tuple[bytes, dict[str, str], str]) -> None:
        body, headers, summary = request
        request_id = next(fuzz.ids)
        headers = {**headers, "Authorization": f"Bearer {fuzz.served.token}",
                   "X-Request-Id": request_id}  # fmt: skip
        response = fuzz.session.post(url, data=body, headers=headers, timeout=60)
        fuzz.record("binary", request_id, url, response, summary)
        assert response.status_code < 500, fuzz.server_errors[-1]

    check()
    assert fuzz.calls - before >= BINARY_CASES * 0.95, fuzz.calls - before
    assert fuzz.codes["binary", 200] > BINARY_CASES // 5, fuzz.codes
    assert fuzz.codes["binary", 400] > BINARY_CASES // 5, fuzz.codes


# ----------------------------------------------------------------------------- the outcome


def test_two_thousand_cases_no_5xx_ready_and_every_200_logged(fuzz: Fuzz) -> None:
    assert fuzz.calls >= 2000, fuzz.codes
    assert not fuzz.server_errors, fuzz.server_errors[:5]
    assert fuzz.ready()
    assert fuzz.scored, fuzz.codes
    expected = {f"{rid}:{i}" for rid, n in fuzz.scored.items() for i in range(n)}
    deadline = time.monotonic() + 30
    while True:  # the log is written asynchronously (JSONL lines within about a second)
        found = Counter(r["request_id"] for r in logged_rows(fuzz.served.log_dir))
        missing = expected - set(found)
        if not missing or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert not missing, sorted(missing)[:20]
    assert all(found[key] == 1 for key in expected), [k for k in expected if found[k] != 1][:20]
    # no row answered with an error was logged as scored
    ours = {key.rsplit(":", 1)[0] for key in found if key.startswith("fz")}
    assert ours == set(fuzz.scored), sorted(ours ^ set(fuzz.scored))[:20]
