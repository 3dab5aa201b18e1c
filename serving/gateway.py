"""The model gateway: one stable endpoint in front of a model's servers.

The bank's systems call the gateway; it forwards each scoring request to the model's
``champion`` server, or to the ``challenger`` for a fixed share of entities, and mirrors
requests to a ``shadow`` version whose answers never reach the client:

* **Weighted, sticky split**: the entity id (header ``X-Govml-Entity``: a card, a
  customer) is hashed with the route's salt into one of 10,000 buckets; buckets below
  ``challenger_percent`` × 100 go to the challenger. The same entity keeps seeing the
  same model while the weight stands, and raising the weight only moves entities from
  champion to challenger, never back. A request without an entity id gets a random
  bucket (counted in ``govml_gateway_unsticky_total``).
* **Shadow**: a copy of each scoring request goes to the shadow server after the client's
  answer is sent; its failures and slowness never reach the client; each pair of answers
  is logged for the rollout controller to compare (:mod:`serving.gateway_shadow`).
* **Failover**: a challenger that cannot be reached, answers 5xx, or answers 404 (its
  server lacks the model the route says it serves) is retried once on the champion
  (scoring is idempotent); the client sees the champion's answer.
* **A/B tests**: a route with an ``abtest`` block splits entities between a control arm
  (champion) and a treatment arm (challenger) at the fixed share, enrols each entity in
  its arm for the whole test, applies exposure caps and logs which arm answered each
  request (:mod:`serving.gateway_abtest`). Enrolment survives route reloads and restarts.
* **Routes** come from a JSON file (``--routes``), reloaded when it changes; a file that
  does not parse keeps the previous routes (and says why in the log). The rollout
  controller changes weights by rewriting it (atomically).

* **Tokens, both ways**: a scoring request (``:predict``, ``/infer``: scope predict;
  ``:explain``: scope explain) needs a bearer token of the gateway's own clients
  (``--tokens``); 401/403 otherwise, before anything is forwarded. The gateway never
  passes its clients' tokens on: it calls each model server with that deployment's own
  token (:class:`serving.gateway_routes.UpstreamTokens`).

The answer carries ``X-Govml-Route`` (champion, challenger, failover; on an A/B route
control, treatment, failover, or champion for a request outside the test) and
``X-Govml-Version``; on an A/B route also ``X-Request-Id``. Prometheus ``/metrics``:
requests by model, route and code, the latency the gateway adds, shadow outcomes, A/B
enrolment. ``/healthz`` answers 200.

    python -m serving.gateway --routes var/serving/gateway/routes.json \
        --tokens var/serving/gateway/tokens.json --port 8090

It listens on 127.0.0.1 unless ``--host`` or ``GOVML_SERVING_BIND_HOST`` names another
address (:mod:`serving.bind`); it refuses to start without ``--tokens``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import aiohttp
from prometheus_client import CONTENT_TYPE_LATEST, Counter, Gauge, Histogram, generate_latest

from pipelines.errors import ConfigError
from serving.asgi import Receive, Scope, Send, answer, read_body
from serving.auth import (
    AuthError,
    TokenStore,
)
from serving.bind import bind_host
from serving.gateway_abtest import (
    Arm,
    Enrolment,
    valid_request_id,
)
from serving.gateway_experiments import Experiments
from serving.gateway_routes import (
    SCORING_SUFFIXES,
    Route,
    Upstream,
    UpstreamTokens,
    describe_routes,
    load_routes,
    model_of,
    scope_of,
)
from serving.gateway_shadow import PrimaryAnswer, ShadowCopy, ShadowMirror

log = logging.getLogger(__name__)


ENTITY_HEADER = b"x-govml-entity"
FORWARDED_HEADERS = frozenset(  # never the client's authorization: see UpstreamTokens
    {
        b"content-type",
        b"inference-header-content-length",
        b"x-request-id",
        b"traceparent",
    }
)
REFUSED_CREDENTIALS = (401, 403)  # a model server refused the gateway's own token
NO_TOKENS = (
    "error: --tokens FILE is required: the gateway answers only bearer-token holders "
    "(make one with: govml serving gateway-token new NAME --scope predict)"
)

REQUESTS = Counter(
    "govml_gateway_requests_total",
    "Requests by model, route and status",
    ["model", "route", "code"],
)
ADDED = Histogram(
    "govml_gateway_added_seconds",
    "Time the gateway adds to a request (total minus the upstream's)",
    ["model"],
    buckets=(0.0001, 0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.05),
)
UNSTICKY = Counter(
    "govml_gateway_unsticky_total", "Requests without an entity id (random bucket)", ["model"]
)
WEIGHT = Gauge(
    "govml_gateway_challenger_percent", "Share of entities routed to the challenger", ["model"]
)


@dataclass(frozen=True)
class GatewayLimits:
    """Request size, how often the routes are re-read, how long a model server may take."""

    max_body_bytes: int = 1 << 20
    reload_seconds: float = 0.5
    upstream_timeout_s: float = 10.0


class Gateway:
    """The ASGI app (see the module doc)."""

    def __init__(
        self,
        routes_path: str | os.PathLike[str],
        *,
        tokens: TokenStore,
        deployments: str | os.PathLike[str] | None = None,
        shadow_log: str | os.PathLike[str] | None = None,
        abtest_dir: str | os.PathLike[str] | None = None,
        limits: GatewayLimits = GatewayLimits(),
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.routes_path = Path(routes_path)
        self.abtest_dir = Path(abtest_dir) if abtest_dir else self.routes_path.parent / "abtests"
        self.clock = clock
        self.experiments = Experiments(self.abtest_dir, clock)
        self.tokens = tokens
        self.upstream_tokens = UpstreamTokens(
            Path(deployments) if deployments else self.routes_path.parent.parent
        )
        self.routes = load_routes(self.routes_path)
        self._stamp = self._file_stamp()
        self.max_body_bytes = limits.max_body_bytes
        self.reload_seconds = limits.reload_seconds
        self.shadow_log = Path(shadow_log) if shadow_log else None
        self.upstream_timeout_s = limits.upstream_timeout_s
        self._session: aiohttp.ClientSession | None = None
        self.shadows = ShadowMirror(self.shadow_log, self._signed)
        self._reloader: asyncio.Task | None = None
        self._publish_weights()
        self.experiments.sync(self.routes)
        self.upstream_tokens.refresh(self.routes)

    # -------------------------------------------------------------- lifecycle
    def _file_stamp(self) -> tuple[int, int] | None:
        try:
            st = self.routes_path.stat()
        except OSError:
            return None
        return st.st_mtime_ns, st.st_size

    def _publish_weights(self) -> None:
        for name, route in self.routes.items():
            WEIGHT.labels(name).set(route.challenger_percent if route.challenger else 0)

    def reload(self) -> bool:
        """Reload the routes file if it changed; False when the new file is refused."""
        stamp = self._file_stamp()
        if stamp == self._stamp:
            return True
        self._stamp = stamp
        try:
            routes = load_routes(self.routes_path)
        except ConfigError as exc:
            log.error("gateway: keeping the previous routes: %s", exc)
            return False
        self.routes = routes
        self._publish_weights()
        self.experiments.sync(self.routes)
        log.info("gateway: routes reloaded: %s", describe_routes(routes))
        return True

    # -------------------------------------------------------------- A/B tests
    def enrolment(self, test_id: str) -> Enrolment | None:
        return self.experiments.enrolment(test_id)

    async def flush(self) -> None:
        """Append the A/B tests' pending log lines to their files (in a worker thread)."""
        await self.experiments.flush()

    def flush_now(self) -> None:
        self.experiments.flush_now()

    def _ab_pick(
        self, route: Route, entity: str | None
    ) -> tuple[str, Upstream, tuple[Enrolment, int, Arm] | None]:
        """(route name, upstream, (enrolment, entity key, arm) if the request is in the test)."""
        return self.experiments.pick(route, entity)

    async def _reload_loop(self) -> None:
        while True:
            await asyncio.sleep(self.reload_seconds)
            self.reload()
            self.upstream_tokens.refresh(self.routes)
            try:
                await self.flush()
            except Exception:  # noqa: BLE001 (the loop must go on: the next tick retries)
                log.exception("gateway: writing the A/B logs failed")

    async def startup(self) -> None:
        timeout = aiohttp.ClientTimeout(total=self.upstream_timeout_s)
        connector = aiohttp.TCPConnector(limit=256, keepalive_timeout=60, ttl_dns_cache=300)
        self._session = aiohttp.ClientSession(
            timeout=timeout, connector=connector, auto_decompress=False
        )
        self.shadows.start()
        self._reloader = asyncio.get_running_loop().create_task(self._reload_loop())

    async def shutdown(self) -> None:
        if self._reloader is not None:
            self._reloader.cancel()
        self.flush_now()
        self.shadows.cancel()
        if self._session is not None:
            await self._session.close()
        await self.shadows.close()

    # -------------------------------------------------------------- ASGI
    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        path = scope.get("path", "")
        if path == "/healthz":
            await answer(send, 200, b'{"status":"ok"}')
            return
        if path == "/metrics":
            await answer(send, 200, generate_latest(), CONTENT_TYPE_LATEST.encode())
            return
        model = model_of(path)
        route = self.routes.get(model) if model else None
        if route is None:
            await answer(send, 404, json.dumps({"error": f"no route for {path!r}"}).encode())
            return
        await self._forward(scope, receive, send, route, path)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await self.startup()
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.shutdown()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _forward(
        self, scope: Scope, receive: Receive, send: Send, route: Route, path: str
    ) -> None:
        started = time.perf_counter()
        headers, entity, authorization = _request_headers(scope)
        needed = scope_of(path)
        if needed is not None and not await self._authorised(send, route, authorization, needed):
            return
        body = await read_body(receive, self.max_body_bytes)
        if body is None:
            await answer(
                send, 413, json.dumps({"error": f"body over {self.max_body_bytes} bytes"}).encode()
            )
            REQUESTS.labels(route.model, "none", "413").inc()
            return
        if entity is None and route.challenger is not None:
            UNSTICKY.labels(route.model).inc()
        enrolled = None
        if route.abtest is None:
            name, upstream = route.pick(entity)
        else:
            name, upstream, enrolled = self._ab_pick(route, entity)
            if enrolled is not None and not valid_request_id(headers.get("x-request-id")):
                headers["x-request-id"] = uuid.uuid4().hex  # joins the prediction log to the arm
        query = scope.get("query_string", b"")
        suffix = path + (f"?{query.decode('latin-1')}" if query else "")
        call = _Call(route.model, scope["method"], suffix, headers, body, needed is not None)
        name, upstream, status, (raw, content_type), upstream_s = await self._answered(
            call, route, name, upstream
        )
        extra = [
            (b"x-govml-route", name.encode()),
            (b"x-govml-version", upstream.version.encode()),
        ]
        if enrolled is not None:
            extra.append((b"x-request-id", headers["x-request-id"].encode()))
        await answer(send, status, raw, content_type.encode(), extra)
        scoring = call.method == "POST" and path.endswith(SCORING_SUFFIXES)
        if enrolled is not None and scoring:
            state, key, arm = enrolled  # the arm assigned (intention to treat), even on failover
            state.record(
                self.clock(),
                headers["x-request-id"],
                key,
                arm,
                name,
                status,
                json.dumps(upstream.version),
            )
        REQUESTS.labels(route.model, name, str(status)).inc()
        ADDED.labels(route.model).observe(max(time.perf_counter() - started - upstream_s, 0.0))
        if route.shadow is not None and scoring:
            self.shadows.mirror(
                ShadowCopy(route, suffix, headers, body),
                PrimaryAnswer(name, upstream, status, raw, upstream_s),
            )

    async def _authorised(
        self, send: Send, route: Route, authorization: str | None, needed: str
    ) -> bool:
        """True when the client's token has the scope; else answers 401/403."""
        try:
            self.tokens.check(authorization, needed)
        except AuthError as exc:
            extra = (
                [(b"www-authenticate", exc.www_authenticate.encode())] if exc.status == 401 else []
            )
            body = json.dumps({"error": str(exc)}).encode()
            await answer(send, exc.status, body, extra=extra)
            REQUESTS.labels(route.model, "none", str(exc.status)).inc()
            return False
        return True

    async def _answered(
        self, call: _Call, route: Route, name: str, upstream: Upstream
    ) -> tuple[str, Upstream, int, tuple[bytes, str], float]:
        """(route name, upstream, status, (body, content type), upstream seconds) of the
        request: a failed challenger retried on the champion, a failure as a 502."""
        status, reply, upstream_s = await self._call(upstream, call)
        if name in ("challenger", "treatment") and (
            status is None or status >= 500 or status == 404 or status in REFUSED_CREDENTIALS
        ):
            # 404: the challenger's server lacks the model the route says it serves;
            # 401/403: it refuses the gateway's token (not the client's doing)
            log.warning("gateway: challenger %s failed (%s); answering from the champion",
                        upstream.url, status)  # fmt: skip
            name, upstream = "failover", route.champion
            status, reply, upstream_s = await self._call(upstream, call)
        if call.signed and status in REFUSED_CREDENTIALS:
            log.error("gateway: %s refused the gateway's token (%s)", upstream.url, status)
            error = f"the model server for {route.model!r} refused the gateway"
            status, reply = 502, (json.dumps({"error": error}).encode(), "application/json")
        if status is None:
            error = f"model server for {route.model!r} unreachable"
            status, reply = 502, (json.dumps({"error": error}).encode(), "application/json")
        return name, upstream, status, reply, upstream_s

    def _signed(self, model: str, upstream: Upstream, headers: dict[str, str]) -> dict[str, str]:
        """The headers with the gateway's own token for this model server."""
        token = self.upstream_tokens.header(model, upstream)
        return {**headers, "authorization": token} if token else headers

    async def _call(
        self, upstream: Upstream, call: _Call
    ) -> tuple[int | None, tuple[bytes, str], float]:
        """One call to a model server; with the gateway's token for it when ``signed``
        (a scoring call of an authenticated client), else as the client sent it."""
        assert self._session is not None
        method, suffix, headers = call.method, call.suffix, call.headers
        if call.signed:
            headers = self._signed(call.model, upstream, headers)
        began = time.perf_counter()
        try:
            async with self._session.request(
                method, upstream.url + suffix, data=call.body or None, headers=headers
            ) as resp:
                raw = await resp.read()
                content_type = resp.headers.get("Content-Type", "application/json")
                return resp.status, (raw, content_type), time.perf_counter() - began
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            log.warning("gateway: %s%s: %s", upstream.url, suffix, exc or type(exc).__name__)
            return None, (b"", "application/json"), time.perf_counter() - began


@dataclass(frozen=True)
class _Call:
    """One request as the gateway forwards it to a model server."""

    model: str
    method: str
    suffix: str  # the path and query after the server's URL
    headers: dict[str, str]
    body: bytes
    signed: bool  # with the gateway's own token (a scoring call of a checked client)


def _request_headers(scope: Scope) -> tuple[dict[str, str], str | None, str | None]:
    """(headers to forward, entity id, the client's authorization) of a request."""
    headers: dict[str, str] = {}
    entity = authorization = None
    for key, value in scope["headers"]:
        key = key.lower()
        if key in FORWARDED_HEADERS:
            headers[key.decode()] = value.decode("latin-1")
        elif key == ENTITY_HEADER:
            entity = value.decode("latin-1")
        elif key == b"authorization":
            authorization = value.decode("latin-1")
    return headers, entity, authorization


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m serving.gateway", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--routes", required=True, help="routes JSON file (reloaded on change)")
    parser.add_argument(
        "--tokens", default=None, help="the gateway clients' bearer token file (required)"
    )
    parser.add_argument(
        "--deployments",
        default=None,
        help="the deployments' folder, for each model server's token (default: the folder "
        "above the routes file's)",
    )
    parser.add_argument(
        "--host",
        default=None,
        help="address to listen on (default: $GOVML_SERVING_BIND_HOST or 127.0.0.1)",
    )
    parser.add_argument("--port", type=int, default=8090)
    parser.add_argument("--shadow_log", default=None, help="JSONL file of shadow comparisons")
    parser.add_argument(
        "--abtest_dir",
        default=None,
        help="folder of the A/B tests' enrolment and assignment logs (default: abtests/ "
        "beside the routes file)",
    )
    parser.add_argument("--max_body_bytes", type=int, default=1 << 20)
    parser.add_argument(
        "--upstream_timeout_s", type=float, default=10.0, help="give up on a model server after"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    if not args.tokens:
        sys.stderr.write(NO_TOKENS + "\n")
        return 2
    try:
        host = bind_host(args.host)
        app = Gateway(
            args.routes,
            tokens=TokenStore.load(args.tokens),
            deployments=args.deployments,
            shadow_log=args.shadow_log,
            abtest_dir=args.abtest_dir,
            limits=GatewayLimits(
                max_body_bytes=args.max_body_bytes, upstream_timeout_s=args.upstream_timeout_s
            ),
        )
    except ConfigError as exc:
        sys.stderr.write(f"error: {exc}\n")
        return 2
    import uvicorn

    log.info("gateway on %s:%d: %s", host, args.port, describe_routes(app.routes))
    with contextlib.suppress(KeyboardInterrupt):
        uvicorn.run(
            app,
            host=host,
            port=args.port,
            loop="uvloop",
            http="httptools",
            lifespan="on",
            access_log=False,
            log_level="warning",
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
