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
  answer is sent, bounded by ``shadow_max_in_flight`` (excess copies are skipped and
  counted) and a timeout; its failures and slowness never reach the client. Each pair of
  answers (scores, status, latency) is appended to ``shadow_log`` (JSONL) for the
  rollout controller to compare.
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
  (``--tokens``, hashed, watched for changes like the model servers' files: a revoked
  token is refused within about a second); 401/403 otherwise, before anything is
  forwarded. The gateway never passes its clients' tokens on: it calls each model
  server with that deployment's own token, read from the upstream's ``token_file``
  in the routes, else from ``<deployments>/<model>-v<version>/service.token``
  (``--deployments``, by default the folder above the routes file's: the local
  deployer's state root). A model server that refuses the gateway's token (401/403)
  is treated like a failed one: a challenger fails over, a champion gives 502.

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
import hashlib
import json
import logging
import os
import random
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
from prometheus_client import CONTENT_TYPE_LATEST, Counter, Gauge, Histogram, generate_latest

from pipelines.errors import ConfigError
from serving.auth import (
    AuthError,
    TokenStore,
    deployment_name,
    deployment_tokens,
    file_stamp,
    read_token,
)
from serving.bind import bind_host
from serving.gateway_abtest import (
    TEST_ID,
    AbTestRoute,
    Arm,
    Enrolment,
    append_lines,
    valid_request_id,
)

log = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

BUCKETS = 10_000
ENTITY_HEADER = b"x-govml-entity"
FORWARDED_HEADERS = frozenset(  # never the client's authorization: see UpstreamTokens
    {
        b"content-type",
        b"inference-header-content-length",
        b"x-request-id",
        b"traceparent",
    }
)
SCORING_SUFFIXES = (":predict", ":explain", "/infer")
# scoring calls and the scope a gateway client needs for them
SCOPES = ((":predict", "predict"), ("/infer", "predict"), (":explain", "explain"))
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
SHADOW = Counter(
    "govml_gateway_shadow_total",
    "Shadow copies by outcome (ok, error, timeout, skipped)",
    ["model", "outcome"],
)
UNSTICKY = Counter(
    "govml_gateway_unsticky_total", "Requests without an entity id (random bucket)", ["model"]
)
WEIGHT = Gauge(
    "govml_gateway_challenger_percent", "Share of entities routed to the challenger", ["model"]
)
ENROLLED = Gauge(
    "govml_gateway_abtest_enrolled", "Entities enrolled in the A/B test by arm", ["model", "arm"]
)
OUTSIDE = Counter(
    "govml_gateway_abtest_outside_total",
    "Requests of an A/B route answered by the champion outside the test (no_entity, capped)",
    ["model", "reason"],
)
AB_DROPPED = Counter(
    "govml_gateway_abtest_log_dropped_total",
    "A/B log lines lost (buffer full, write error)",
    ["model"],
)


@dataclass(frozen=True)
class Upstream:
    url: str
    version: str
    token_file: str | None = None  # the model server's token for the gateway


@dataclass(frozen=True)
class Route:
    model: str
    champion: Upstream
    challenger: Upstream | None = None
    challenger_percent: float = 0.0
    shadow: Upstream | None = None
    salt: str = ""
    shadow_max_in_flight: int = 32
    shadow_timeout_s: float = 2.0
    abtest: AbTestRoute | None = None

    def pick(self, entity: str | None) -> tuple[str, Upstream]:
        """("champion" | "challenger", upstream) for an entity id (None: random)."""
        if self.challenger is None or self.challenger_percent <= 0:
            return "champion", self.champion
        return (
            ("challenger", self.challenger)
            if bucket(entity, self.salt or self.model) < self.challenger_percent * 100
            else ("champion", self.champion)
        )


def bucket(entity: str | None, salt: str) -> int:
    """The entity's bucket in [0, 10000): SHA-256 of salt and id; random without an id."""
    if entity is None:
        return random.randrange(BUCKETS)
    return entity_hash(entity, salt)[0]


def entity_hash(entity: str, salt: str) -> tuple[int, int]:
    """(bucket, 64-bit pseudonym) of an entity id: both from one SHA-256 of salt and id."""
    digest = hashlib.sha256(f"{salt}\x00{entity}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % BUCKETS, int.from_bytes(digest[8:16], "big")


# ----------------------------------------------------------------------------- routes
def _upstream(model: str, key: str, raw: Any) -> Upstream:
    where = f"routes: {model}.{key}"
    if not isinstance(raw, dict) or set(raw) - {"url", "version", "token_file"} or "url" not in raw:
        raise ConfigError(f"{where}: expected {{url, version[, token_file]}}, got {raw!r}")
    url = raw["url"]
    if not isinstance(url, str) or not url.startswith(("http://", "https://")):
        raise ConfigError(f"{where}.url: expected an http(s) URL, got {url!r}")
    token_file = raw.get("token_file")
    if token_file is not None and (not isinstance(token_file, str) or not token_file):
        raise ConfigError(f"{where}.token_file: expected a file path, got {token_file!r}")
    return Upstream(url=url.rstrip("/"), version=str(raw.get("version", "")), token_file=token_file)


def _cap(model: str, raw: dict[str, Any], key: str) -> int | None:
    value = raw.get(key)
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ConfigError(f"routes: {model}.abtest.{key}: expected an integer >= 1, got {value!r}")
    return value


def _abtest(model: str, raw: dict[str, Any], percent: float) -> AbTestRoute:
    """The ``abtest`` block of an A/B route (a fixed split between two arms)."""
    block = raw["abtest"]
    allowed = {"id", "max_entities", "max_new_entities_per_day"}
    if not isinstance(block, dict) or set(block) - allowed:
        raise ConfigError(
            f"routes: {model}.abtest: expected an object with keys {sorted(allowed)}, got {block!r}"
        )
    test_id = block.get("id")
    if not isinstance(test_id, str) or not TEST_ID.match(test_id):
        raise ConfigError(
            f"routes: {model}.abtest.id: expected letters, digits, '.', '_' or '-', got {test_id!r}"
        )
    if raw.get("shadow"):
        raise ConfigError(f"routes: {model}: an A/B test route has no shadow")
    if not 0 < percent < 100:
        raise ConfigError(
            f"routes: {model}.challenger_percent: an A/B test splits between 0 and 100 "
            f"exclusive, got {percent!r}"
        )
    if not raw.get("salt"):
        raise ConfigError(f"routes: {model}: an A/B test route needs its own salt")
    return AbTestRoute(
        test_id, _cap(model, block, "max_entities"), _cap(model, block, "max_new_entities_per_day")
    )


def parse_routes(data: Any) -> dict[str, Route]:
    """Routes from the file's JSON; every problem named with its place."""
    if not isinstance(data, dict) or not isinstance(data.get("models"), dict):
        raise ConfigError('routes: expected {"models": {NAME: {...}}}')
    out: dict[str, Route] = {}
    allowed = {
        "champion",
        "challenger",
        "challenger_percent",
        "shadow",
        "salt",
        "shadow_max_in_flight",
        "shadow_timeout_s",
        "abtest",
    }
    for model, raw in data["models"].items():
        if not isinstance(raw, dict):
            raise ConfigError(f"routes: {model}: expected an object")
        unknown = sorted(set(raw) - allowed)
        if unknown:
            raise ConfigError(
                f"routes: {model}: unknown key(s) {unknown}; allowed {sorted(allowed)}"
            )
        if "champion" not in raw:
            raise ConfigError(f"routes: {model}: a champion is required")
        percent = raw.get("challenger_percent", 0)
        if (
            not isinstance(percent, int | float)
            or isinstance(percent, bool)
            or not 0 <= percent <= 100
        ):
            raise ConfigError(
                f"routes: {model}.challenger_percent: expected 0..100, got {percent!r}"
            )
        challenger = (
            _upstream(model, "challenger", raw["challenger"]) if raw.get("challenger") else None
        )
        if percent > 0 and challenger is None:
            raise ConfigError(f"routes: {model}: challenger_percent {percent} without a challenger")
        in_flight = raw.get("shadow_max_in_flight", 32)
        timeout = raw.get("shadow_timeout_s", 2.0)
        if not isinstance(in_flight, int) or in_flight < 0:
            raise ConfigError(f"routes: {model}.shadow_max_in_flight: expected an integer >= 0")
        if not isinstance(timeout, int | float) or timeout <= 0:
            raise ConfigError(f"routes: {model}.shadow_timeout_s: expected seconds > 0")
        out[model] = Route(
            model=model,
            champion=_upstream(model, "champion", raw["champion"]),
            challenger=challenger,
            challenger_percent=float(percent),
            shadow=_upstream(model, "shadow", raw["shadow"]) if raw.get("shadow") else None,
            salt=str(raw.get("salt", "")),
            shadow_max_in_flight=in_flight,
            shadow_timeout_s=float(timeout),
            abtest=_abtest(model, raw, float(percent)) if raw.get("abtest") else None,
        )
    return out


def load_routes(path: str | os.PathLike[str]) -> dict[str, Route]:
    try:
        data = json.loads(Path(path).read_text())
    except OSError as exc:
        raise ConfigError(f"routes file {path}: {exc}") from None
    except ValueError as exc:
        raise ConfigError(f"routes file {path}: not JSON: {exc}") from None
    return parse_routes(data)


def write_routes(path: str | os.PathLike[str], routes: dict[str, Any]) -> None:
    """Write a routes file atomically (the gateway never reads half a file)."""
    path = Path(path)
    parse_routes(routes)  # refuse to write what the gateway would refuse to load
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(routes, indent=2, sort_keys=True))
    os.replace(tmp, path)


# ----------------------------------------------------------------------------- tokens
class UpstreamTokens:
    """The bearer token the gateway presents to each model server of its routes.

    :meth:`refresh` (at start and on every reload tick, off the request path) looks at
    each upstream's token file, re-reading it when its stamp changed; :meth:`header`
    is a dict lookup. An upstream without a readable token file is called without one
    (its server answers 401, which the gateway treats as a failure), and logged once."""

    def __init__(self, deployments: Path | None) -> None:
        self.deployments = deployments
        self._files: dict[Path, tuple[tuple[int, int, int] | None, str | None]] = {}
        self._headers: dict[tuple[str, Upstream], str] = {}

    def path_of(self, model: str, upstream: Upstream) -> Path | None:
        if upstream.token_file:
            return Path(upstream.token_file)
        if self.deployments is None or not upstream.version:
            return None
        folder = self.deployments / deployment_name(model, upstream.version)
        return deployment_tokens(folder).service_token

    def _token(self, path: Path) -> str | None:
        stamp = file_stamp(path)
        known = self._files.get(path)
        if known is not None and known[0] == stamp:
            return known[1]
        try:
            token: str | None = read_token(path)
        except ConfigError as exc:
            token = None
            log.error("gateway: no token for a model server: %s", exc)
        self._files[path] = (stamp, token)
        return token

    def refresh(self, routes: dict[str, Route]) -> None:
        headers: dict[tuple[str, Upstream], str] = {}
        for route in routes.values():
            for upstream in (route.champion, route.challenger, route.shadow):
                path = self.path_of(route.model, upstream) if upstream else None
                token = self._token(path) if path is not None else None
                if upstream is not None and token is not None:
                    headers[route.model, upstream] = f"Bearer {token}"
        self._headers = headers

    def header(self, model: str, upstream: Upstream) -> str | None:
        return self._headers.get((model, upstream))


def _scope(path: str) -> str | None:
    for suffix, scope in SCOPES:
        if path.endswith(suffix):
            return scope
    return None


# ----------------------------------------------------------------------------- the app
def _model_of(path: str) -> str | None:
    for prefix in ("/v1/models/", "/v2/models/"):
        if path.startswith(prefix):
            rest = path[len(prefix) :]
            for sep in (":", "/"):
                rest = rest.split(sep, 1)[0]
            return rest or None
    return None


class Gateway:
    """The ASGI app (see the module doc)."""

    def __init__(
        self,
        routes_path: str | os.PathLike[str],
        *,
        tokens: TokenStore,
        deployments: str | os.PathLike[str] | None = None,
        max_body_bytes: int = 1 << 20,
        reload_seconds: float = 0.5,
        shadow_log: str | os.PathLike[str] | None = None,
        upstream_timeout_s: float = 10.0,
        abtest_dir: str | os.PathLike[str] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.routes_path = Path(routes_path)
        self.abtest_dir = Path(abtest_dir) if abtest_dir else self.routes_path.parent / "abtests"
        self.clock = clock
        self._experiments: dict[str, Enrolment] = {}
        self._retired: list[Enrolment] = []
        self.tokens = tokens
        self.upstream_tokens = UpstreamTokens(
            Path(deployments) if deployments else self.routes_path.parent.parent
        )
        self.routes = load_routes(self.routes_path)
        self._stamp = self._file_stamp()
        self.max_body_bytes = max_body_bytes
        self.reload_seconds = reload_seconds
        self.shadow_log = Path(shadow_log) if shadow_log else None
        self.upstream_timeout_s = upstream_timeout_s
        self._session: aiohttp.ClientSession | None = None
        self._shadow_session: aiohttp.ClientSession | None = None
        self._shadow_in_flight: dict[str, int] = {}
        self._tasks: set[asyncio.Task] = set()
        self._reloader: asyncio.Task | None = None
        self._publish_weights()
        self._sync_experiments()
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
        self._sync_experiments()
        log.info("gateway: routes reloaded: %s", _describe(routes))
        return True

    # -------------------------------------------------------------- A/B tests
    def _sync_experiments(self) -> None:
        """Enrolment of every A/B route: kept across reloads, restored from its file for a
        test this gateway has not seen yet (a restart), retired when its route ends it."""
        wanted = {r.abtest.id: r.model for r in self.routes.values() if r.abtest is not None}
        for test_id in list(self._experiments):
            if test_id not in wanted:
                self._retired.append(self._experiments.pop(test_id))
        for test_id, model in wanted.items():
            if test_id not in self._experiments:
                state = Enrolment.restore(test_id, self.abtest_dir / test_id)
                self._experiments[test_id] = state
                log.info(
                    "gateway: A/B test %s of %s: %d control, %d treatment entities enrolled",
                    test_id,
                    model,
                    state.control,
                    state.treatment,
                )
        self._publish_enrolment()

    def _publish_enrolment(self) -> None:
        for route in self.routes.values():
            state = self._experiments.get(route.abtest.id) if route.abtest else None
            if state is not None:
                ENROLLED.labels(route.model, "control").set(state.control)
                ENROLLED.labels(route.model, "treatment").set(state.treatment)

    def enrolment(self, test_id: str) -> Enrolment | None:
        return self._experiments.get(test_id)

    async def flush(self) -> None:
        """Append the A/B tests' pending log lines to their files (in a worker thread)."""
        self._publish_enrolment()
        pending = [e for e in [*self._experiments.values(), *self._retired] if e.pending]
        self._retired = []
        for state in pending:
            lost = await asyncio.to_thread(append_lines, state.folder, *state.take())
            self._count_lost(state, lost)

    def flush_now(self) -> None:
        for state in [*self._experiments.values(), *self._retired]:
            if state.pending:
                self._count_lost(state, append_lines(state.folder, *state.take()))
        self._retired = []

    def _count_lost(self, state: Enrolment, lost: int) -> None:
        model = next(
            (r.model for r in self.routes.values() if r.abtest and r.abtest.id == state.test_id),
            state.test_id,
        )
        lost += state.dropped
        state.dropped = 0
        if lost:
            AB_DROPPED.labels(model).inc(lost)

    def _ab_pick(
        self, route: Route, entity: str | None
    ) -> tuple[str, Upstream, tuple[Enrolment, int, Arm] | None]:
        """(route name, upstream, (enrolment, entity key, arm) if the request is in the test)."""
        assert route.abtest is not None
        if entity is None:
            OUTSIDE.labels(route.model, "no_entity").inc()
            return "champion", route.champion, None
        state = self._experiments[route.abtest.id]
        position, key = entity_hash(entity, route.salt)
        candidate = "treatment" if position < route.challenger_percent * 100 else "control"
        arm = state.assign(key, candidate, route.abtest, self.clock())  # type: ignore[arg-type]
        if arm is None:
            OUTSIDE.labels(route.model, "capped").inc()
            return "champion", route.champion, None
        if arm == "treatment":
            assert route.challenger is not None
            return "treatment", route.challenger, (state, key, arm)
        return "control", route.champion, (state, key, arm)

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
        self._shadow_session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=64, keepalive_timeout=60), auto_decompress=False
        )
        self._reloader = asyncio.get_running_loop().create_task(self._reload_loop())

    async def shutdown(self) -> None:
        if self._reloader is not None:
            self._reloader.cancel()
        self.flush_now()
        for task in list(self._tasks):
            task.cancel()
        for session in (self._session, self._shadow_session):
            if session is not None:
                await session.close()

    # -------------------------------------------------------------- ASGI
    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        path = scope.get("path", "")
        if path == "/healthz":
            await _answer(send, 200, b'{"status":"ok"}')
            return
        if path == "/metrics":
            await _answer(send, 200, generate_latest(), CONTENT_TYPE_LATEST.encode())
            return
        model = _model_of(path)
        route = self.routes.get(model) if model else None
        if route is None:
            await _answer(send, 404, json.dumps({"error": f"no route for {path!r}"}).encode())
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
        needed = _scope(path)
        if needed is not None:
            try:
                self.tokens.check(authorization, needed)
            except AuthError as exc:
                extra = (
                    [(b"www-authenticate", exc.www_authenticate.encode())]
                    if exc.status == 401
                    else []
                )
                body = json.dumps({"error": str(exc)}).encode()
                await _answer(send, exc.status, body, extra=extra)
                REQUESTS.labels(route.model, "none", str(exc.status)).inc()
                return
        body = await _read_body(receive, self.max_body_bytes)
        if body is None:
            await _answer(
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
        method = scope["method"]
        signed = needed is not None  # the gateway's token only for a client it checked
        status, answer, upstream_s = await self._call(
            route.model, upstream, method, suffix, headers, body, signed
        )
        if name in ("challenger", "treatment") and (
            status is None or status >= 500 or status == 404 or status in REFUSED_CREDENTIALS
        ):
            # 404: the challenger's server lacks the model the route says it serves;
            # 401/403: it refuses the gateway's token (not the client's doing)
            log.warning("gateway: challenger %s failed (%s); answering from the champion",
                        upstream.url, status)  # fmt: skip
            name, upstream = "failover", route.champion
            status, answer, upstream_s = await self._call(
                route.model, upstream, method, suffix, headers, body, signed
            )
        if signed and status in REFUSED_CREDENTIALS:
            log.error("gateway: %s refused the gateway's token (%s)", upstream.url, status)
            status, answer = (
                502,
                (
                    json.dumps(
                        {"error": f"the model server for {route.model!r} refused the gateway"}
                    ).encode(),
                    "application/json",
                ),
            )
        if status is None:
            status, answer = (
                502,
                (
                    json.dumps({"error": f"model server for {route.model!r} unreachable"}).encode(),
                    "application/json",
                ),
            )
        raw, content_type = answer
        extra = [
            (b"x-govml-route", name.encode()),
            (b"x-govml-version", upstream.version.encode()),
        ]
        if enrolled is not None:
            extra.append((b"x-request-id", headers["x-request-id"].encode()))
        await _answer(send, status, raw, content_type.encode(), extra)
        if enrolled is not None and method == "POST" and path.endswith(SCORING_SUFFIXES):
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
        if route.shadow is not None and method == "POST" and path.endswith(SCORING_SUFFIXES):
            self._mirror(route, suffix, headers, body, name, upstream, status, raw, upstream_s)

    def _signed(self, model: str, upstream: Upstream, headers: dict[str, str]) -> dict[str, str]:
        """The headers with the gateway's own token for this model server."""
        token = self.upstream_tokens.header(model, upstream)
        return {**headers, "authorization": token} if token else headers

    async def _call(
        self,
        model: str,
        upstream: Upstream,
        method: str,
        suffix: str,
        headers: dict[str, str],
        body: bytes,
        signed: bool,
    ) -> tuple[int | None, tuple[bytes, str], float]:
        """One call to a model server; with the gateway's token for it when ``signed``
        (a scoring call of an authenticated client), else as the client sent it."""
        assert self._session is not None
        if signed:
            headers = self._signed(model, upstream, headers)
        began = time.perf_counter()
        try:
            async with self._session.request(
                method, upstream.url + suffix, data=body or None, headers=headers
            ) as resp:
                raw = await resp.read()
                content_type = resp.headers.get("Content-Type", "application/json")
                return resp.status, (raw, content_type), time.perf_counter() - began
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            log.warning("gateway: %s%s: %s", upstream.url, suffix, exc or type(exc).__name__)
            return None, (b"", "application/json"), time.perf_counter() - began

    # -------------------------------------------------------------- shadow
    def _mirror(
        self,
        route: Route,
        suffix: str,
        headers: dict[str, str],
        body: bytes,
        primary_route: str,
        primary: Upstream,
        primary_status: int,
        primary_raw: bytes,
        primary_s: float,
    ) -> None:
        in_flight = self._shadow_in_flight.get(route.model, 0)
        if in_flight >= route.shadow_max_in_flight:
            SHADOW.labels(route.model, "skipped").inc()
            return
        self._shadow_in_flight[route.model] = in_flight + 1
        task = asyncio.get_running_loop().create_task(
            self._shadow(
                route,
                suffix,
                headers,
                body,
                primary_route,
                primary,
                primary_status,
                primary_raw,
                primary_s,
            )
        )
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _shadow(
        self,
        route: Route,
        suffix: str,
        headers: dict[str, str],
        body: bytes,
        primary_route: str,
        primary: Upstream,
        primary_status: int,
        primary_raw: bytes,
        primary_s: float,
    ) -> None:
        assert route.shadow is not None and self._shadow_session is not None
        began = time.perf_counter()
        status: int | None = None
        raw = b""
        outcome = "ok"
        try:
            async with asyncio.timeout(route.shadow_timeout_s):
                async with self._shadow_session.post(
                    route.shadow.url + suffix,
                    data=body,
                    headers=self._signed(route.model, route.shadow, headers),
                ) as resp:
                    status, raw = resp.status, await resp.read()
            if status >= 500:
                outcome = "error"
        except TimeoutError:
            outcome = "timeout"
        except (aiohttp.ClientError, OSError):
            outcome = "error"
        except asyncio.CancelledError:
            raise
        finally:
            self._shadow_in_flight[route.model] -= 1
        SHADOW.labels(route.model, outcome).inc()
        if self.shadow_log is None:
            return
        record = {
            "time": time.time(),
            "model": route.model,
            "primary_route": primary_route,
            "primary_version": primary.version,
            "primary_status": primary_status,
            "primary_ms": round(primary_s * 1000, 3),
            "primary_scores": _scores(primary_raw),
            "shadow_version": route.shadow.version,
            "shadow_status": status,
            "shadow_outcome": outcome,
            "shadow_ms": round((time.perf_counter() - began) * 1000, 3),
            "shadow_scores": _scores(raw),
        }
        try:
            with self.shadow_log.open("a") as out:
                out.write(json.dumps(record) + "\n")
        except OSError as exc:
            log.warning("gateway: cannot append to the shadow log %s: %s", self.shadow_log, exc)


def _scores(raw: bytes) -> list[float] | None:
    """Scores of a V1 (``predictions``) or V2 (output ``score``) answer, if any."""
    try:
        data = json.loads(raw)
    except ValueError:
        return None
    if isinstance(data, dict):
        if isinstance(data.get("predictions"), list):
            return data["predictions"]
        for output in data.get("outputs") or []:
            if isinstance(output, dict) and output.get("name") == "score":
                return output.get("data")
    return None


async def _read_body(receive: Receive, limit: int) -> bytes | None:
    chunks = []
    seen = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            break
        chunk = message.get("body", b"")
        seen += len(chunk)
        if seen > limit:
            return None
        chunks.append(chunk)
        if not message.get("more_body", False):
            break
    return b"".join(chunks)


async def _answer(
    send: Send,
    status: int,
    body: bytes,
    content_type: bytes = b"application/json",
    extra: list[tuple[bytes, bytes]] | None = None,
) -> None:
    headers = [(b"content-type", content_type), (b"content-length", str(len(body)).encode())]
    headers += extra or []
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def _describe(routes: dict[str, Route]) -> str:
    parts = []
    for name, r in routes.items():
        text = f"{name}: champion {r.champion.version or r.champion.url}"
        if r.challenger:
            text += (
                f", challenger {r.challenger.version or r.challenger.url} {r.challenger_percent:g}%"
            )
        if r.shadow:
            text += f", shadow {r.shadow.version or r.shadow.url}"
        parts.append(text)
    return "; ".join(parts)


def main(argv: list[str] | None = None) -> int:
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
    args = parser.parse_args(argv)
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
            max_body_bytes=args.max_body_bytes,
            upstream_timeout_s=args.upstream_timeout_s,
        )
    except ConfigError as exc:
        sys.stderr.write(f"error: {exc}\n")
        return 2
    import uvicorn

    log.info("gateway on %s:%d: %s", host, args.port, _describe(app.routes))
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
