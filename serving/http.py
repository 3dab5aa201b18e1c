"""The model server's HTTP guard: body size limit, bearer tokens, request metrics.

A pure ASGI middleware added to KServe's FastAPI app before it starts:

* a body larger than ``max_body_bytes`` gets 413 (``Content-Length`` checked first,
  a streamed body counted as it arrives);
* ``:predict``, ``:explain`` and V2 ``/infer`` need a bearer token with the scope of
  the call when a token store is configured (401 without/with a bad token, 403
  without the scope); health, metadata and ``/metrics`` stay open;
* Prometheus ``govml_requests_total{kind,code}`` and
  ``govml_request_seconds{kind}`` for every request.
"""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from prometheus_client import Counter, Histogram

from serving.auth import AuthError, TokenStore

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
App = Callable[[Scope, Receive, Send], Awaitable[None]]

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
    """predict | explain | infer | health | metrics | other (a small label set)."""
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


SCOPES = {"predict": "predict", "infer": "predict", "explain": "explain"}


class _TooLarge(Exception):
    pass


async def _json_response(send: Send, status: int, body: dict, headers: dict[str, str]) -> None:
    raw = json.dumps(body).encode()
    head = [(b"content-type", b"application/json"), (b"content-length", str(len(raw)).encode())]
    head += [(k.lower().encode(), v.encode()) for k, v in headers.items()]
    await send({"type": "http.response.start", "status": status, "headers": head})
    await send({"type": "http.response.body", "body": raw})


class GuardMiddleware:
    def __init__(self, app: App, *, max_body_bytes: int, tokens: TokenStore | None = None) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.tokens = tokens

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        kind = request_kind(scope.get("path", ""))
        started = time.perf_counter()
        status = {"code": 500}

        async def send_tracking(message: Message) -> None:
            if message["type"] == "http.response.start":
                status["code"] = int(message["status"])
            await send(message)

        try:
            await self._guarded(scope, receive, send_tracking, kind)
        finally:
            REQUESTS.labels(kind, str(status["code"])).inc()
            LATENCY.labels(kind).observe(time.perf_counter() - started)

    async def _guarded(self, scope: Scope, receive: Receive, send: Send, kind: str) -> None:
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        length = headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > self.max_body_bytes:
            await self._too_large(send)
            return
        if kind in SCOPES and self.tokens is not None:
            try:
                client = self.tokens.check(headers.get("authorization"), SCOPES[kind])
            except AuthError as exc:
                extra = {"WWW-Authenticate": exc.www_authenticate} if exc.status == 401 else {}
                await _json_response(send, exc.status, {"error": str(exc)}, extra)
                return
            scope.setdefault("state", {})["govml_client"] = client
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

    async def _too_large(self, send: Send) -> None:
        await _json_response(
            send,
            413,
            {"error": f"request body larger than {self.max_body_bytes} bytes"},
            {"Connection": "close"},
        )
