"""The model server's guard middleware, driven as plain ASGI: fast routes, limits, tokens."""

from __future__ import annotations

import json
import logging
from typing import Any

import pytest
from fastapi import FastAPI, Request
from pydantic import BaseModel
from starlette.testclient import TestClient

from serving.auth import TokenStore
from serving.http import REQUESTS, GuardMiddleware, QuietFastRoutes, install
from serving.http_errors import INTERNAL_ERROR, error_status, one_line
from serving.http_versions import route_version
from serving.request_context import current_client
from serving.token_files import write_records
from serving.token_records import generate_token
from tests.support import run_async

PATH = "/v1/models/fraud:predict"


class App:
    """The framework behind the middleware (KServe's FastAPI app in the server)."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        self.calls.append(scope["path"])
        raw = json.dumps({"from": "framework", "bytes": len(body)}).encode()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": raw})


def call(
    guard: GuardMiddleware,
    body: bytes,
    headers: dict[str, str] | None = None,
    path: str = PATH,
    method: str = "POST",
    chunk: int | None = None,
    query: bytes = b"",
) -> tuple[int, dict]:
    chunks = [body] if chunk is None else [body[i : i + chunk] for i in range(0, len(body), chunk)]
    chunks = chunks or [b""]
    messages = [
        {"type": "http.request", "body": c, "more_body": i < len(chunks) - 1}
        for i, c in enumerate(chunks)
    ]
    sent: list[dict] = []

    async def receive() -> dict:
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    async def send(message: dict) -> None:
        sent.append(message)

    head = [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    scope = {"type": "http", "path": path, "method": method, "headers": head}
    if query:
        scope["query_string"] = query
    run_async(guard(scope, receive, send))
    status = sent[0]["status"]
    payload = b"".join(m.get("body", b"") for m in sent[1:])
    return status, json.loads(payload)


class Model:
    def __init__(self) -> None:
        self.ready = True
        self.seen: list[tuple[bytes, str | None]] = []

    def handle(self, body: bytes, client: str | None, json_length: str | None = None) -> Any:
        self.seen.append((body, client))
        if body == b"boom":
            raise RuntimeError("a bug")
        return 200, json.dumps({"from": "fast", "client": client}).encode()


def guard_with(model: Model, tokens: TokenStore | None = None, limit: int = 1000) -> tuple:
    app = App()
    guard = GuardMiddleware(
        app,
        max_body_bytes=limit,
        tokens=tokens,
        fast_routes={PATH: (model.handle, lambda: model.ready)},
    )
    return guard, app


JSON = {"Content-Type": "application/json"}


def test_a_json_predict_is_answered_by_the_fast_route_without_the_framework() -> None:
    model = Model()
    guard, app = guard_with(model)
    assert call(guard, b'{"instances": []}', JSON) == (200, {"from": "fast", "client": None})
    assert call(guard, b"{}", {}) == (200, {"from": "fast", "client": None})  # no content type
    assert app.calls == []
    assert model.seen[0][0] == b'{"instances": []}'


def test_a_body_in_several_chunks_reaches_the_fast_route_whole() -> None:
    model = Model()
    guard, _ = guard_with(model)
    body = json.dumps({"instances": [{"a": i} for i in range(40)]}).encode()
    assert call(guard, body, JSON, chunk=7)[0] == 200
    assert model.seen[-1][0] == body


@pytest.mark.parametrize(
    ("headers", "path", "method"),
    [
        ({"Content-Type": "application/ld+json"}, PATH, "POST"),  # other JSON: KServe decodes
        ({"Content-Type": "text/plain"}, PATH, "POST"),
        ({**JSON, "ce-specversion": "1.0"}, PATH, "POST"),  # CloudEvents binary mode
        (JSON, "/v1/models/fraud:explain", "POST"),
        (JSON, "/v1/models/other:predict", "POST"),
        (JSON, PATH, "GET"),
    ],
)
def test_anything_else_goes_to_the_framework(headers: dict, path: str, method: str) -> None:
    model = Model()
    guard, app = guard_with(model)
    status, payload = call(guard, b"{}", headers, path=path, method=method)
    assert (status, payload["from"]) == (200, "framework")
    assert model.seen == [] and app.calls == [path]


def test_a_model_not_ready_goes_to_the_framework_which_answers_503_in_kserve() -> None:
    model = Model()
    model.ready = False
    guard, app = guard_with(model)
    assert call(guard, b"{}", JSON)[1]["from"] == "framework"


def test_limits_and_tokens_apply_before_the_fast_route() -> None:
    model = Model()
    guard, _ = guard_with(model, limit=100)
    big = b"[" + b"1," * 200 + b"1]"
    status, payload = call(guard, big, {**JSON, "Content-Length": str(len(big))})
    assert status == 413 and "100 bytes" in payload["error"]
    status, _ = call(guard, big, JSON, chunk=30)  # streamed, no Content-Length
    assert status == 413
    assert model.seen == []


def test_tokens_name_the_client_for_the_prediction_log(tmp_path) -> None:  # noqa: ANN001
    token, record = generate_token("cards-auth", ["predict"])
    other, other_record = generate_token("reporting", ["explain"])
    write_records(tmp_path / "tokens.json", [record, other_record])
    model = Model()
    guard, _ = guard_with(model, tokens=TokenStore.load(tmp_path / "tokens.json"))
    assert call(guard, b"{}", JSON)[0] == 401
    assert call(guard, b"{}", {**JSON, "Authorization": "Bearer nope"})[0] == 401
    assert call(guard, b"{}", {**JSON, "Authorization": f"Bearer {other}"})[0] == 403
    assert model.seen == []
    status, payload = call(guard, b"{}", {**JSON, "Authorization": f"Bearer {token}"})
    assert (status, payload["client"]) == (200, "cards-auth")


def test_a_bug_in_the_fast_route_is_a_500_that_says_where_to_look() -> None:
    model = Model()
    guard, _ = guard_with(model)
    status, payload = call(guard, b"boom", JSON)
    assert status == 500 and "server log" in payload["error"]


def test_requests_are_counted_by_kind_and_code() -> None:
    from prometheus_client import REGISTRY

    def count(code: str) -> float:
        value = REGISTRY.get_sample_value("govml_requests_total", {"kind": "predict", "code": code})
        return value or 0.0

    model = Model()
    guard, _ = guard_with(model, limit=10)
    before_ok, before_413 = count("200"), count("413")
    call(guard, b"{}", JSON)
    call(guard, b"x" * 50, {**JSON, "Content-Length": "50"})
    assert count("200") == before_ok + 1
    assert count("413") == before_413 + 1


V2 = "/v2/models/fraud/infer"


def v2_guard(model: Model, declines: bool = False) -> tuple:
    app = App()
    seen: list[tuple[bytes, str | None]] = []

    def handle(body: bytes, client: str | None, json_length: str | None) -> Any:
        seen.append((body, json_length))
        return None if declines else (200, json.dumps({"from": "fast"}).encode())

    guard = GuardMiddleware(app, max_body_bytes=1000, fast_routes={V2: (handle, lambda: True)})
    return guard, app, seen


def test_the_binary_extension_is_fast_only_with_its_header() -> None:
    guard, app, seen = v2_guard(Model())
    binary = {"Content-Type": "application/octet-stream", "Inference-Header-Content-Length": "2"}
    assert call(guard, b"{}\x00\x01", binary, path=V2)[1]["from"] == "fast"
    assert seen == [(b"{}\x00\x01", "2")]
    assert call(guard, b"{}", {"Content-Type": "application/octet-stream"}, path=V2)[1] == {
        "from": "framework",
        "bytes": 2,
    }


def test_a_declined_request_reaches_the_framework_with_its_whole_body() -> None:
    guard, app, seen = v2_guard(Model(), declines=True)
    body = json.dumps({"inputs": [], "outputs": [{"name": "score"}]}).encode()
    status, payload = call(guard, body, JSON, path=V2, chunk=5)
    assert (status, payload) == (200, {"from": "framework", "bytes": len(body)})
    assert seen == [(body, None)] and app.calls == [V2]


def test_the_model_repository_api_needs_an_admin_token(tmp_path) -> None:  # noqa: ANN001
    path = "/v2/repository/models/fraud/unload"
    guard, app = guard_with(Model())
    status, payload = call(guard, b"", JSON, path=path)
    assert status == 403 and "scope admin" in payload["error"] and app.calls == []
    token, record = generate_token("scorer", ["predict"])
    admin, admin_record = generate_token("ops", ["admin"])
    write_records(tmp_path / "tokens.json", [record, admin_record])
    guard, app = guard_with(Model(), tokens=TokenStore.load(tmp_path / "tokens.json"))
    assert call(guard, b"", {**JSON, "Authorization": f"Bearer {token}"}, path=path)[0] == 403
    status, payload = call(guard, b"", {**JSON, "Authorization": f"Bearer {admin}"}, path=path)
    assert (status, payload["from"]) == (200, "framework") and app.calls == [path]


def test_install_puts_fast_routes_in_front_of_the_framework_stack_and_counts_once() -> None:
    """KServe's app: fast routes skip every layer of its stack; other requests, declined
    ones and requests while not ready go through it, with the full guard inside."""
    app = FastAPI()
    layers: list[str] = []

    @app.post(PATH)
    async def framework_predict(request: Request) -> dict:
        return {"from": "framework", "bytes": len(await request.body())}

    @app.get("/v2/health/ready")
    async def ready() -> dict:
        return {"ready": True}

    model = Model()
    declined: list[bytes] = []

    def handle(body: bytes, client: str | None, json_length: str | None) -> Any:
        if body == b'{"decline": true}':
            declined.append(body)
            return None
        return model.handle(body, client)

    access = logging.getLogger("uvicorn.access")
    filters = list(access.filters)
    install(app, max_body_bytes=100, fast_routes={PATH: (handle, lambda: model.ready)})
    added = [f for f in access.filters if f not in filters]
    access.filters = filters
    assert len(added) == 1 and isinstance(added[0], QuietFastRoutes)

    @app.middleware("http")  # added after the guard, as KServe adds its timing log
    async def timing(request: Request, call_next: Any) -> Any:
        layers.append(request.url.path)
        return await call_next(request)

    def count(kind: str, code: str) -> float:
        return REQUESTS.labels(kind, code)._value.get()

    before = {c: count("predict", c) for c in ("200", "413")}
    health = count("health", "200")
    with TestClient(app) as client:
        answer = client.post(PATH, content=b'{"instances": []}', headers=JSON)
        assert answer.json() == {"from": "fast", "client": None} and layers == []
        answer = client.post(PATH, content=b'{"decline": true}', headers=JSON)
        assert answer.json() == {"from": "framework", "bytes": 17} and layers == [PATH]
        model.ready = False
        assert client.post(PATH, content=b"{}", headers=JSON).json()["from"] == "framework"
        model.ready = True
        assert client.post(PATH, content=b"x" * 101, headers=JSON).status_code == 413
        assert client.get("/v2/health/ready").json() == {"ready": True}
        # a streamed body over the limit on a framework route: 413 from the inner guard
        chunks = iter([b"x" * 60, b"x" * 60])
        answer = client.post(PATH, content=chunks, headers={"Content-Type": "text/plain"})
        assert answer.status_code == 413
    assert declined == [b'{"decline": true}']
    assert layers == [PATH, PATH, "/v2/health/ready", PATH]
    assert count("predict", "200") - before["200"] == 3  # fast, declined, not ready
    assert count("predict", "413") - before["413"] == 2
    assert count("health", "200") - health == 1


def test_the_access_log_leaves_out_successful_fast_route_answers_only() -> None:
    quiet = QuietFastRoutes([PATH])

    def line(path: str, status: int) -> logging.LogRecord:
        args = ("127.0.0.1:5000", "POST", path, "1.1", status)
        return logging.LogRecord("uvicorn.access", 20, "", 0, '%s - "%s %s HTTP/%s" %d', args, None)

    assert not quiet.filter(line(PATH, 200))
    assert not quiet.filter(line(PATH.replace(":", "%3A"), 200))  # as uvicorn logs it
    assert quiet.filter(line(PATH, 400)) and quiet.filter(line(PATH, 503))
    assert quiet.filter(line(PATH + "?debug=1", 200))  # not the fast route's path
    assert quiet.filter(line("/v2/health/ready", 200))
    other = logging.LogRecord("uvicorn.access", 20, "", 0, "free text", None, None)
    assert quiet.filter(other)


def test_use_event_loop_makes_kserve_s_flag_real() -> None:
    """In a process of its own: the policy is process-wide."""
    import subprocess
    import sys

    code = (
        "import asyncio\n"
        "from serving.http import use_event_loop\n"
        "print(use_event_loop('auto'))\n"
        "asyncio.get_event_loop()  # what KServe's ModelServer.start asks for\n"
        "async def kind(): return type(asyncio.get_running_loop()).__module__\n"
        "print(asyncio.run(kind()))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["uvloop", "uvloop"]
    from serving.http import use_event_loop

    assert use_event_loop("asyncio") == "asyncio"
    with pytest.raises(ValueError, match="expected auto, asyncio or uvloop"):
        use_event_loop("trio")


# ----------------------------------------------------------------------------- issue 21


def test_the_binary_extension_is_fast_whatever_its_content_type() -> None:
    """The header declares the extension: one strict decoder reads every binary body."""
    guard, app, seen = v2_guard(Model())
    for content_type in ("text/plain", "application/x-anything", "application/json"):
        headers = {"Content-Type": content_type, "Inference-Header-Content-Length": "2"}
        assert call(guard, b"{}\x00", headers, path=V2)[1] == {"from": "fast"}
    assert len(seen) == 3 and app.calls == []
    # a CloudEvent stays with KServe, which answers it as one
    cloudevent = {"Inference-Header-Content-Length": "2", "ce-specversion": "1.0"}
    assert call(guard, b"{}\x00", cloudevent, path=V2)[1]["from"] == "framework"


def test_a_request_with_a_query_string_goes_to_the_framework() -> None:
    model = Model()
    guard, app = guard_with(model)
    assert call(guard, b"{}", JSON, query=b"model_version=2")[1]["from"] == "framework"
    assert model.seen == [] and app.calls == [PATH]


class Raising(Model):
    def __init__(self, error: Exception) -> None:
        super().__init__()
        self.error = error

    def handle(self, body: bytes, client: str | None, json_length: str | None = None) -> Any:
        raise self.error


def test_an_error_raised_by_a_fast_route_gets_the_one_mapping(caplog) -> None:  # noqa: ANN001
    from pipelines.errors import ConfigError
    from serving.schema import InputError

    bad = InputError(["row 0: amount: missing field", "row 1: kind: unknown category"])
    guard, _ = guard_with(Raising(bad))
    assert call(guard, b"{}", JSON) == (400, {"error": str(bad)})
    guard, _ = guard_with(Raising(ConfigError("a setting, not the request")))
    with caplog.at_level(logging.ERROR, logger="serving.http"):
        assert call(guard, b"{}", JSON) == (500, {"error": INTERNAL_ERROR})
    assert "request failed" in caplog.text and "a setting, not the request" in caplog.text


class FailingApp(App):
    """A framework that raises (KServe's routes let some errors escape)."""

    def __init__(self, error: Exception, after_start: bool = False) -> None:
        super().__init__()
        self.error = error
        self.after_start = after_start

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        await receive()
        if self.after_start:
            await send({"type": "http.response.start", "status": 200, "headers": []})
        raise self.error


def test_an_error_the_framework_lets_escape_gets_the_one_mapping() -> None:
    from serving.schema import InputError

    for error, answer in (
        (InputError(["input amount: missing"]), (400, {"error": "1 problem(s) in the request: "
                                                                "input amount: missing"})),
        (KeyError("inputs"), (500, {"error": INTERNAL_ERROR})),
    ):  # fmt: skip
        guard = GuardMiddleware(FailingApp(error), max_body_bytes=1000)
        assert call(guard, b"{}", {"Content-Type": "text/plain"}) == answer
    guard = GuardMiddleware(FailingApp(KeyError("x"), after_start=True), max_body_bytes=1000)
    with pytest.raises(KeyError):  # an answer already started cannot be replaced
        call(guard, b"{}", {"Content-Type": "text/plain"})


def test_error_status_lines() -> None:
    from pipelines.errors import SpecError
    from serving.schema import InputError

    assert error_status(InputError(["a"])) == (400, "1 problem(s) in the request: a")
    assert error_status(SpecError("no status: a failure")) == (500, INTERNAL_ERROR)
    assert one_line("a\n  b\tc") == "a b c"
    assert len(one_line("x" * 10_000)) == 500


def test_the_framework_route_sees_the_authenticated_client(tmp_path) -> None:  # noqa: ANN001
    seen: list[str | None] = []

    class Reading(App):
        async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
            seen.append(current_client())
            await super().__call__(scope, receive, send)

    token, record = generate_token("cards-auth", ["predict", "explain"])
    write_records(tmp_path / "tokens.json", [record])
    tokens = TokenStore.load(tmp_path / "tokens.json")
    guard = GuardMiddleware(Reading(), max_body_bytes=1000, tokens=tokens)
    bearer = {"Authorization": f"Bearer {token}", "Content-Type": "text/plain"}
    assert call(guard, b"{}", bearer, path="/v1/models/fraud:explain")[0] == 200
    assert call(guard, b"{}", bearer)[0] == 200
    assert call(guard, b"", {}, path="/v2/health/ready", method="GET")[0] == 200
    assert seen == ["cards-auth", "cards-auth", None]


@pytest.mark.parametrize(
    ("path", "query", "expected"),
    [
        ("/v2/models/fraud/versions/4/infer", b"", ("/v2/models/fraud/infer", b"", None)),
        ("/v2/models/fraud/versions/4/ready", b"", ("/v2/models/fraud/ready", b"", None)),
        ("/v2/models/fraud/versions/4", b"", ("/v2/models/fraud", b"", None)),
        ("/v2/models/fraud", b"model_version=4&a=1", ("/v2/models/fraud", b"a=1", None)),
        ("/v2/models/fraud/ready", b"model_version=", ("/v2/models/fraud/ready", b"", None)),
        (
            "/v2/models/fraud/versions/5/infer",
            b"",
            (
                "/v2/models/fraud/infer",
                b"",
                "model fraud has no version 5 here: this server serves version 4",
            ),
        ),
        (
            "/v2/models/fraud/ready",
            b"model_version=5",
            (
                "/v2/models/fraud/ready",
                b"",
                "model fraud has no version 5 here: this server serves version 4",
            ),
        ),
        # a model this server does not know: KServe answers that it does not exist
        ("/v2/models/other/versions/5/ready", b"", ("/v2/models/other/ready", b"", None)),
        # not a versioned path
        (
            "/v2/models/fraud/versions/4/explain",
            b"",
            ("/v2/models/fraud/versions/4/explain", b"", None),
        ),
    ],  # fmt: skip
)
def test_route_version(path: str, query: bytes, expected: tuple) -> None:
    assert route_version(path, query, {"fraud": "4"}) == expected


def test_a_model_served_without_a_version_has_none() -> None:
    assert route_version("/v2/models/fraud/versions/1", b"", {"fraud": ""})[2] == (
        "model fraud has no version 1: it is served without a version"
    )


def test_the_served_version_is_the_unversioned_path_and_others_are_404() -> None:
    app = App()
    seen: list[str] = []

    def handle(body: bytes, client: str | None, json_length: str | None) -> Any:
        seen.append("fast")
        return 200, b'{"from": "fast"}'

    guard = GuardMiddleware(
        app, max_body_bytes=1000, fast_routes={V2: (handle, lambda: True)}, versions={"fraud": "4"}
    )
    assert call(guard, b"{}", JSON, path="/v2/models/fraud/versions/4/infer") == (
        200,
        {"from": "fast"},
    )
    refused = {"error": "model fraud has no version 3 here: this server serves version 4"}
    assert call(guard, b"{}", JSON, path="/v2/models/fraud/versions/3/infer") == (404, refused)
    assert call(guard, b"", {}, path="/v2/models/fraud/versions/3/ready", method="GET") == (
        404,
        refused,
    )
    assert call(guard, b"", {}, path="/v2/models/fraud/versions/4/ready", method="GET")[0] == 200
    assert app.calls == ["/v2/models/fraud/ready"] and seen == ["fast"]


class Body(BaseModel):
    """A request model like KServe's V2 InferenceRequest (taken as ``Body | bytes``)."""

    inputs: list[int]


def test_a_body_fastapi_refuses_is_a_400_with_one_line() -> None:
    app = FastAPI()

    @app.post("/v2/models/{name}/infer")
    async def infer(name: str, body: Body | bytes) -> dict:
        return {"ok": True}

    install(app, max_body_bytes=1000)
    with TestClient(app) as client:
        answer = client.post("/v2/models/m/infer", json={"inputs": "x"})
        assert (answer.status_code, answer.json()) == (
            400,
            {"error": "invalid request body: body.Body.inputs: Input should be a valid list"},
        )
        answer = client.post("/v2/models/m/infer", content=b"{", headers=JSON)
        assert answer.status_code == 400
        assert answer.json()["error"].startswith("invalid request body: body.1: JSON decode")
