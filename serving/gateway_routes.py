"""The gateway's routes: which model server answers which request, with which token.

A routes file (JSON, reloaded by the gateway when it changes; rewritten atomically by the
rollout controller) names, per model, a champion, an optional challenger with its share
of entities (a weighted, sticky split over 10,000 buckets of the salted entity hash), an
optional shadow and an optional A/B test block. :func:`parse_routes` checks it and names
every problem with its place. :class:`UpstreamTokens` finds each model server's token
for the gateway (the upstream's ``token_file``, else the deployment's
``service.token``).

Tokens, both ways: a scoring request (``:predict``, ``/infer``: scope predict;
``:explain``: scope explain) needs a bearer token of the gateway's own clients
(``--tokens``, hashed, watched for changes like the model servers' files: a revoked
token is refused within about a second); 401/403 otherwise, before anything is
forwarded. The gateway never passes its clients' tokens on: it calls each model
server with that deployment's own token, read from the upstream's ``token_file``
in the routes, else from ``<deployments>/<model>-v<version>/service.token``
(``--deployments``, by default the folder above the routes file's: the local
deployer's state root). A model server that refuses the gateway's token (401/403)
is treated like a failed one: a challenger fails over, a champion gives 502.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipelines.errors import ConfigError
from serving.auth import file_stamp
from serving.gateway_abtest import (
    TEST_ID,
    AbTestRoute,
)
from serving.token_files import deployment_name, deployment_tokens, read_token

log = logging.getLogger("serving.gateway")  # the gateway's log, whichever module speaks

BUCKETS = 10_000


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


def describe_routes(routes: dict[str, Route]) -> str:
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


SCORING_SUFFIXES = (":predict", ":explain", "/infer")


# scoring calls and the scope a gateway client needs for them
SCOPES = ((":predict", "predict"), ("/infer", "predict"), (":explain", "explain"))


def scope_of(path: str) -> str | None:
    """The token scope a request path needs (None: an open path)."""
    for suffix, scope in SCOPES:
        if path.endswith(suffix):
            return scope
    return None


def model_of(path: str) -> str | None:
    """The model a V1 or V2 path names, if any."""
    for prefix in ("/v1/models/", "/v2/models/"):
        if path.startswith(prefix):
            rest = path[len(prefix) :]
            for sep in (":", "/"):
                rest = rest.split(sep, 1)[0]
            return rest or None
    return None
