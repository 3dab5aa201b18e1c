"""The model server's HTTP guard: body size limit, bearer tokens, request metrics, and
the one place where errors become HTTP answers.

A pure ASGI middleware added to KServe's FastAPI app before it starts (:func:`install`):

* a body larger than ``max_body_bytes`` gets 413 (``Content-Length`` checked first,
  a streamed body counted as it arrives);
* ``:predict``, ``:explain`` and V2 ``/infer`` need a bearer token with the scope of
  the call when a token store is configured (401 without/with a bad token, 403
  without the scope); health, metadata and ``/metrics`` stay open; KServe's model
  repository API (``/v2/repository/...``: load, unload) needs scope ``admin``, and is
  refused (403) on a server without tokens;
* the authenticated client and the ``X-Request-Id`` go to
  :mod:`serving.request_context`, so the prediction log names them whichever route
  (fast or KServe's) answers;
* versioned V2 paths (``/v2/models/NAME/versions/V[/ready|/infer]``, which KServe
  answers 501): for the version the server was started with (``versions``), exactly
  the unversioned path; another version is a 404 naming the one served;
* Prometheus ``govml_requests_total{kind,code}`` and
  ``govml_request_seconds{kind}`` for every request.

Errors: :func:`error_answer` maps an exception to its answer, for the fast routes'
handlers, for anything KServe's routes let escape, and for FastAPI's request
validation (:func:`install` registers it): bad input 400 (the project's
:class:`~serving.schema.InputError`, KServe's ``InvalidInput``, a body that FastAPI's
models or KServe's own decoders cannot read), unknown model 404, anything else 500
(a failure: logged with its traceback; the answer names no internals). Each answer is
``{"error": "<one line>"}``.

Fast routes: the V1 ``:predict`` and V2 ``/infer`` of a ready, strict model are
answered here, after the same size and token checks, by the model's own handlers
(:meth:`serving.model.LightGBMModel.handle_v1_predict`, ``handle_v2_infer``), without
FastAPI's routing, pydantic models and response classes (which cost more than scoring a
row, and far more than scoring a big batch). A fast route takes JSON bodies (no
content type, ``application/json``) and every body in the V2 binary tensor extension
(an ``Inference-Header-Content-Length`` header, any content type), so that one strict
decoder reads them all. The answers are the ones KServe's route gives (same scores,
same ``{"error": ...}`` bodies); a handler may be a coroutine function (the feature
transformer's, which awaits its store and its predictor). A handler may decline a
request (returns None: an unusual V2 envelope); the request then goes to KServe's app
with its body, as does any other request, or any request while the model is not ready.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
import os
import time
import urllib.parse
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from prometheus_client import Counter, Histogram

from serving.asgi import App, Message, Receive, Scope, Send
from serving.auth import AuthError, TokenStore
from serving.http_errors import error_answer, validation_error
from serving.http_versions import V2_MODELS, VERSIONS, route_version, with_versioned_routes
from serving.request_context import RequestHeaders, set_client, set_request_id

log = logging.getLogger(__name__)

REQUESTS = Counter(
    "govml_requests_total", "HTTP requests by kind and status code", ["kind", "code"]
)
LATENCY = Histogram(
    "govml_request_seconds",
    "HTTP request latency by kind",
    ["kind"],
    buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
)


def request_kind(path: str) -> str:
    """predict | explain | infer | repository | health | metrics | other (a small set)."""
    if path.startswith("/v2/repository"):
        return "repository"
    if path.endswith(":predict"):
        return "predict"
    if path.endswith(":explain"):
        return "explain"
    if path.endswith("/infer"):
        return "infer"
    if path == "/metrics":
        return "metrics"
    if path in ("/", "/v2/health/live", "/v2/health/ready") or path.endswith("/ready"):
        return "health"
    return "other"


SCOPES = {"predict": "predict", "infer": "predict", "explain": "explain", "repository": "admin"}


class _TooLarge(Exception):
    pass


async def _json_response(send: Send, status: int, body: dict, headers: dict[str, str]) -> None:
    raw = json.dumps(body).encode()
    head = [(b"content-type", b"application/json"), (b"content-length", str(len(raw)).encode())]
    head += [(k.lower().encode(), v.encode()) for k, v in headers.items()]
    await send({"type": "http.response.start", "status": status, "headers": head})
    await send({"type": "http.response.body", "body": raw})


JSON_TYPES = frozenset({b"application/json", b"application/json; charset=utf-8"})
# (body, client name, Inference-Header-Content-Length) -> (status, JSON) or None (decline),
# or an awaitable of that
FastHandler = Callable[[bytes, "str | None", "str | None"], Any]
_JSON_HEAD = [(b"content-type", b"application/json")]


class _Metrics:
    """Labelled Prometheus children, looked up once per (kind, code)."""

    def __init__(self) -> None:
        self._counts: dict[tuple[str, int], Any] = {}
        self._latency = {kind: LATENCY.labels(kind) for kind in KINDS}

    def record(self, kind: str, code: int, seconds: float) -> None:
        counter = self._counts.get((kind, code))
        if counter is None:
            counter = self._counts[kind, code] = REQUESTS.labels(kind, str(code))
        counter.inc()
        self._latency[kind].observe(seconds)


KINDS = ("predict", "explain", "infer", "repository", "metrics", "health", "other")


def _replay(body: bytes, receive: Receive) -> Receive:
    """A receive() that hands over an already read body, then the client's messages."""
    pending = [{"type": "http.request", "body": body, "more_body": False}]

    async def replay() -> Message:
        if pending:
            return pending.pop()
        return await receive()

    return replay


class GuardMiddleware:
    def __init__(
        self,
        app: App,
        *,
        max_body_bytes: int,
        tokens: TokenStore | None = None,
        fast_routes: dict[str, tuple[FastHandler, Callable[[], bool]]] | None = None,
        fast_only: bool = False,
        versions: Mapping[str, str] | None = None,
    ) -> None:
        """``fast_routes``: path → (handler, is-ready) answered without KServe's app.

        ``fast_only``: this guard sits in front of the framework's whole middleware
        stack (see :func:`install`) and takes only the requests its fast routes answer;
        it hands every other request, untouched and uncounted, to ``app`` (whose stack
        holds the full guard).

        ``versions``: model name → the version served (``--model_version``; empty:
        none). The versioned V2 paths of that version are the unversioned ones (the
        versioned ``/infer`` a fast route too), another version's are a 404."""
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.tokens = tokens
        self.fast_only = fast_only
        self.versions = dict(versions or {})
        self.fast_routes = with_versioned_routes(fast_routes or {}, self.versions)
        self.metrics = _Metrics()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or (self.fast_only and scope["path"] not in self.fast_routes):
            await self.app(scope, receive, send)
            return
        path = scope.get("path", "")
        kind = request_kind(path)
        started = time.perf_counter()
        outcome: dict[str, Any] = {"code": 500, "forwarded": False}

        async def send_tracking(message: Message) -> None:
            if message["type"] == "http.response.start":
                outcome["code"] = int(message["status"])
            await send(message)

        try:
            await self._guarded(scope, receive, send_tracking, kind, path, outcome)
        finally:
            if not outcome["forwarded"]:
                self.metrics.record(kind, outcome["code"], time.perf_counter() - started)

    async def _guarded(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        kind: str,
        path: str,
        outcome: dict[str, Any],
    ) -> None:
        headers = RequestHeaders.of(scope)
        fast = self.fast_routes.get(path)
        take_fast = (
            fast is not None
            and scope["method"] == "POST"
            and not headers.cloudevent
            and not scope.get("query_string")  # ?model_version=: the full guard's
            and (
                headers.content_type is None
                or headers.content_type in JSON_TYPES
                or headers.json_length is not None
            )
            and fast[1]()
        )
        if self.fast_only and not take_fast:
            outcome["forwarded"] = True
            await self.app(scope, receive, send)
            return
        set_request_id(headers.request_id)  # the prediction log's id for this request's rows
        length = headers.length
        if length is not None and length.isdigit() and int(length) > self.max_body_bytes:
            await self._too_large(send)
            return
        allowed, client = await self._authorize(scope, send, kind, headers.authorization)
        if not allowed:
            return
        if take_fast:
            assert fast is not None
            await self._fast(scope, receive, send, fast[0], client, headers.json_length, outcome)
            return
        await self._versioned(scope, receive, send, path, client)

    async def _authorize(
        self, scope: Scope, send: Send, kind: str, authorization: str | None
    ) -> tuple[bool, Any]:
        """(allowed, client): the bearer token checked for the route's scope; a refusal
        is answered here."""
        client = None
        if kind == "repository" and self.tokens is None:
            # loading and unloading models changes what the bank is served: never open
            await _json_response(
                send,
                403,
                {"error": "the model repository API needs tokens (--tokens) with scope admin"},
                {},
            )
            return False, None
        if kind in SCOPES and self.tokens is not None:
            try:
                client = self.tokens.check(authorization, SCOPES[kind])
            except AuthError as exc:
                extra = {"WWW-Authenticate": exc.www_authenticate} if exc.status == 401 else {}
                await _json_response(send, exc.status, {"error": str(exc)}, extra)
                return False, None
            scope.setdefault("state", {})["govml_client"] = client
        return True, client

    async def _versioned(
        self, scope: Scope, receive: Receive, send: Send, path: str, client: Any
    ) -> None:
        """KServe's routes, a ``/versions/<v>`` path or ``?model_version=`` mapped first."""
        query = scope.get("query_string", b"")
        if (
            self.versions
            and path.startswith(V2_MODELS)
            and (VERSIONS in path or b"model_version" in query)
        ):
            plain, query, refused = route_version(path, query, self.versions)
            if refused is not None:
                await _json_response(send, 404, {"error": refused}, {})
                return
            scope = {**scope, "path": plain, "raw_path": plain.encode(), "query_string": query}
        set_client(client)  # KServe's routes do not pass it on: the model reads it here
        await self._framework(scope, receive, send)

    async def _framework(self, scope: Scope, receive: Receive, send: Send) -> None:
        """KServe's app, with the body limit; an error it lets escape before answering
        gets its answer from :func:`error_answer`."""
        seen = 0
        started_response = False

        async def limited_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_body_bytes:
                    raise _TooLarge
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started_response
            if message["type"] == "http.response.start":
                started_response = True
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except _TooLarge:
            if not started_response:
                await self._too_large(send)
        except Exception as exc:
            if started_response:
                raise
            await self._answer(send, *error_answer(exc))

    async def _fast(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        handler: FastHandler,
        client: str | None,
        json_length: str | None,
        outcome: dict[str, Any],
    ) -> None:
        chunks = []
        seen = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client went away
                return
            chunk = message.get("body", b"")
            seen += len(chunk)
            if seen > self.max_body_bytes:
                await self._too_large(send)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        try:
            answer = handler(body, client, json_length)
            if inspect.isawaitable(answer):  # the feature transformer's handler is async
                answer = await answer
        except Exception as exc:  # noqa: BLE001 (bad input 400, a bug 500: error_answer)
            answer = error_answer(exc)
        if answer is None:  # declined: KServe's route answers, with the body read here
            if self.fast_only:  # the guard behind checks and counts it
                outcome["forwarded"] = True
                await self.app(scope, _replay(body, receive), send)
            else:
                set_client(client)
                await self._framework(scope, _replay(body, receive), send)
            return
        status, raw = answer
        head = [*_JSON_HEAD, (b"content-length", str(len(raw)).encode())]
        await send({"type": "http.response.start", "status": status, "headers": head})
        await send({"type": "http.response.body", "body": raw})

    @staticmethod
    async def _answer(send: Send, status: int, raw: bytes) -> None:
        head = [*_JSON_HEAD, (b"content-length", str(len(raw)).encode())]
        await send({"type": "http.response.start", "status": status, "headers": head})
        await send({"type": "http.response.body", "body": raw})

    async def _too_large(self, send: Send) -> None:
        await _json_response(
            send,
            413,
            {"error": f"request body larger than {self.max_body_bytes} bytes"},
            {"Connection": "close"},
        )


async def _refused_body(request: Any, exc: Exception) -> Any:
    """FastAPI's handler for a body its models refuse: :func:`error_answer`'s 400."""
    from starlette.responses import Response

    status, raw = error_answer(exc)
    return Response(raw, status_code=status, media_type="application/json")


ACCESS_LOG_ENV = "GOVML_ACCESS_LOG_FAST_ROUTES"


class QuietFastRoutes(logging.Filter):
    """Drops uvicorn access-log lines of successful requests to the given paths."""

    def __init__(self, paths: Iterable[str]) -> None:
        super().__init__()
        paths = list(paths)  # uvicorn logs the path percent-encoded (':' as %3A)
        self.paths = frozenset(paths) | {urllib.parse.quote(p) for p in paths}

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args  # uvicorn: (client, method, path + query, HTTP version, status)
        if isinstance(args, tuple) and len(args) == 5 and args[2] in self.paths:
            return not (isinstance(args[4], int) and args[4] < 400)
        return True


def install(
    app: Any,
    *,
    max_body_bytes: int,
    tokens: TokenStore | None = None,
    fast_routes: dict[str, tuple[FastHandler, Callable[[], bool]]] | None = None,
    versions: Mapping[str, str] | None = None,
) -> None:
    """Guard a FastAPI/Starlette ``app`` (KServe's) before it starts.

    The full guard goes into the app's middleware stack (inside FastAPI's error
    handling: its checks and metrics for every request); a second, fast-only guard
    with the same limits and tokens goes in front of the whole stack, so a fast route
    skips FastAPI's telemetry and body-limit layers and KServe's per-request timing log
    (each a coroutine frame and a send wrapper per message, a log line per request).
    A request the fast guard does not answer reaches the stack exactly as sent.

    Uvicorn's access log leaves out the fast routes' successful answers (each is
    counted in ``govml_requests_total`` and, on the model server, written to the
    prediction log with its request id; a line each costs more than the features of
    a transaction): :class:`QuietFastRoutes`, unless ``GOVML_ACCESS_LOG_FAST_ROUTES=1``.
    Their 4xx and 5xx answers stay in the access log.

    ``versions`` (model name → served version): see :class:`GuardMiddleware`. A body
    FastAPI's request models refuse is a 400 with one line (:func:`error_answer`), not
    FastAPI's 422 with the offending input echoed.
    """
    for refused in validation_error():
        app.add_exception_handler(refused, _refused_body)
    app.add_middleware(
        GuardMiddleware, max_body_bytes=max_body_bytes, tokens=tokens, versions=versions
    )
    if not fast_routes:
        return
    routes = with_versioned_routes(fast_routes, versions or {})
    if os.environ.get(ACCESS_LOG_ENV, "0") != "1":
        logging.getLogger("uvicorn.access").addFilter(QuietFastRoutes(routes))
    build = app.build_middleware_stack

    def build_with_fast_lane() -> App:
        return GuardMiddleware(
            build(),
            max_body_bytes=max_body_bytes,
            tokens=tokens,
            fast_routes=fast_routes,
            fast_only=True,
            versions=versions,
        )

    app.build_middleware_stack = build_with_fast_lane


def use_event_loop(choice: str) -> str:
    """Honour KServe's ``--event-loop`` (auto: uvloop when installed) for the process.

    KServe's single-process server runs ``asyncio.run`` itself and starts uvicorn
    without letting it set up a loop, so the flag is silently ignored there and every
    request runs on the pure-Python asyncio loop. Setting the event loop policy before
    :meth:`kserve.ModelServer.start` makes the choice real (uvloop: about a fifth less
    CPU per transaction in the feature transformer here). Returns the loop in use."""
    if choice not in ("auto", "asyncio", "uvloop"):
        raise ValueError(f"--event-loop {choice!r}: expected auto, asyncio or uvloop")
    if choice == "asyncio":
        return "asyncio"
    try:
        import uvloop
    except ImportError:
        if choice == "uvloop":
            raise ValueError("--event-loop uvloop: uvloop is not installed") from None
        return "asyncio"
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    # ModelServer.start asks asyncio.get_event_loop() for a loop to configure before
    # asyncio.run makes its own (the standard policy creates one on demand; uvloop's
    # refuses): give it one, as the standard policy would
    asyncio.set_event_loop(asyncio.new_event_loop())
    return "uvloop"
