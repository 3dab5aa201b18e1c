"""The gateway's shadow: a copy of each scoring request for a version on trial.

The copy goes to the route's ``shadow`` server after the client's answer is sent, bounded
by ``shadow_max_in_flight`` (excess copies are skipped and counted) and a timeout; its
failures and slowness never reach the client. Each pair of answers (scores, status,
latency) is appended to the shadow log (JSONL) for the rollout controller to compare.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import aiohttp
from prometheus_client import Counter

from serving.gateway_routes import Route, Upstream

log = logging.getLogger("serving.gateway")  # the gateway's log, whichever module speaks

SHADOW = Counter(
    "govml_gateway_shadow_total",
    "Shadow copies by outcome (ok, error, timeout, skipped)",
    ["model", "outcome"],
)


@dataclass(frozen=True)
class ShadowCopy:
    """What the shadow is sent: the request as forwarded to the primary."""

    route: Route
    suffix: str
    headers: dict[str, str]
    body: bytes


@dataclass(frozen=True)
class PrimaryAnswer:
    """The answer the client got, for comparison with the shadow's."""

    route: str  # champion, challenger, failover, control, treatment
    upstream: Upstream
    status: int
    raw: bytes
    seconds: float


class ShadowMirror:
    """Sends shadow copies on a session of their own and logs each comparison.

    ``signed(model, upstream, headers)``: the headers with the gateway's token for that
    model server.
    """

    def __init__(
        self,
        shadow_log: Path | None,
        signed: Callable[[str, Upstream, dict[str, str]], dict[str, str]],
    ) -> None:
        self.shadow_log = shadow_log
        self._signed = signed
        self._session: aiohttp.ClientSession | None = None
        self._in_flight: dict[str, int] = {}
        self._tasks: set[asyncio.Task] = set()

    def start(self) -> None:
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=64, keepalive_timeout=60), auto_decompress=False
        )

    def cancel(self) -> None:
        """Cancel the copies still in flight."""
        for task in list(self._tasks):
            task.cancel()

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    def mirror(self, copy: ShadowCopy, primary: PrimaryAnswer) -> None:
        """Send ``copy`` in the background, or skip it (counted) when too many are out."""
        model = copy.route.model
        in_flight = self._in_flight.get(model, 0)
        if in_flight >= copy.route.shadow_max_in_flight:
            SHADOW.labels(model, "skipped").inc()
            return
        self._in_flight[model] = in_flight + 1
        task = asyncio.get_running_loop().create_task(self._shadow(copy, primary))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _shadow(self, copy: ShadowCopy, primary: PrimaryAnswer) -> None:
        route = copy.route
        assert route.shadow is not None and self._session is not None
        began = time.perf_counter()
        status: int | None = None
        raw = b""
        outcome = "ok"
        try:
            async with asyncio.timeout(route.shadow_timeout_s):
                async with self._session.post(
                    route.shadow.url + copy.suffix,
                    data=copy.body,
                    headers=self._signed(route.model, route.shadow, copy.headers),
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
            self._in_flight[route.model] -= 1
        SHADOW.labels(route.model, outcome).inc()
        if self.shadow_log is None:
            return
        record = {
            "time": time.time(),
            "model": route.model,
            "primary_route": primary.route,
            "primary_version": primary.upstream.version,
            "primary_status": primary.status,
            "primary_ms": round(primary.seconds * 1000, 3),
            "primary_scores": scores_of(primary.raw),
            "shadow_version": route.shadow.version,
            "shadow_status": status,
            "shadow_outcome": outcome,
            "shadow_ms": round((time.perf_counter() - began) * 1000, 3),
            "shadow_scores": scores_of(raw),
        }
        try:
            with self.shadow_log.open("a") as out:
                out.write(json.dumps(record) + "\n")
        except OSError as exc:
            log.warning("gateway: cannot append to the shadow log %s: %s", self.shadow_log, exc)


def scores_of(raw: bytes) -> list[float] | None:
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
