"""Where the online aggregates keep their state: in process (default) or in Redis.

Both stores hold one :class:`~pipelines.features_online.EntityState` per entity value
(one card, one customer, one terminal) and give the same guarantees:

* **Atomic per transaction.** Observing a transaction reads each of its entity
  values' states, computes the features and the new states
  (:meth:`~pipelines.features_online.Pending.observe`) and writes them so that no
  concurrent update is lost: :class:`InProcessStore` under a lock,
  :class:`RedisStore` in one Lua script
  (:data:`~serving.feature_store_scripts.OBSERVE_SCRIPT`, atomic on the Redis
  server) that applies the same rules to every entity value of the transaction at
  once and returns the prior states, from which Python computes the features. Each
  Redis value starts with a random 8-byte version token that every write renews: the
  backfill (:meth:`RedisStore.merge`) writes with a compare-and-set on it
  (:data:`~serving.feature_store_scripts.CAS_SCRIPT`), so a concurrent observe makes it
  read and merge again.
  A transaction that any of its entity values finds too late is written nowhere.
* **Pseudonymous keys.** A state's key is ``<namespace>:<entity column>:<HMAC-SHA256
  of the entity value>`` (32 hex digits): card and customer ids are never stored or
  logged in clear. The key comes from ``GOVML_FEATURE_KEY`` (required for Redis, whose
  states outlive a process; the in-process store takes a random one when it is unset).
* **Namespaces.** ``govml:features:<spec>:<fingerprint of the aggregate definitions>:
  <key id>``: model versions with the same feature definitions share their state
  (and a shadow or canary of the same transactions does not count them twice: the
  states skip transaction ids they hold); a version whose definitions differ gets a
  fresh namespace, which ``govml features backfill`` warms up from history before the
  version takes traffic (:meth:`FeatureStore.merge`, :meth:`FeatureStore.mark_warm`).

Redis values expire after the entity's retention (longest window + allowed lateness)
plus an hour without a write: an idle card's state then holds nothing a new event
could see anyway.

The Redis store is not Redis Cluster safe: one transaction's keys (its card, customer
and terminal) are in different hash slots and the observe script touches them all
(:mod:`serving.resp` does not speak Cluster either).
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import struct
import threading
from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from pipelines.errors import ConfigError, GovMLError
from pipelines.feature_state import (
    EntityState,
    Event,
    Observation,
    StateError,
    Status,
    ValueKind,
    refused,
)
from pipelines.features_online import EntityFeatures, OnlineFeatures, Pending
from serving.feature_store_keys import PREFIX, KeyMaker, secret_from_env
from serving.feature_store_scripts import CAS_SCRIPT, OBSERVE_SCRIPT, OBSERVE_SHA
from serving.resp import Encoded, RespClient, RespError, bulk

log = logging.getLogger(__name__)

TOKEN_BYTES = 8
TTL_SLACK_MS = 3_600_000
MAX_ATTEMPTS = 50
MERGE_BATCH = 500

_STATUS_OF = (Status.RECORDED, Status.DUPLICATE, Status.TOO_LATE)
_ARGS_PER_KEY = 11
_INT64_MAX = 2**63 - 1
_HALF = 2**32
_ITEM_FORMAT = {ValueKind.FIXED: "q", ValueKind.FLOAT: "d", ValueKind.CODE: "q"}


class StoreError(GovMLError):
    """The feature store cannot be reached or stays contended (HTTP 503)."""

    status = 503


# ----------------------------------------------------------------------------- stores


@dataclass(frozen=True)
class MergeResult:
    states: int  # entity values in the history
    written: int  # states that changed


class FeatureStore(ABC):
    """One spec's online state (see the module doc)."""

    kind: str

    def __init__(self, online: OnlineFeatures, keys: KeyMaker) -> None:
        self.online = online
        self.keys = keys

    @abstractmethod
    async def observe(self, pending: Sequence[Pending]) -> list[Observation]:
        """Each entity value's observation of one transaction, applied atomically."""

    @abstractmethod
    def merge(self, states: Iterable[tuple[EntityFeatures, str, EntityState]]) -> MergeResult:
        """Add history (:func:`~pipelines.features_online.states_from_history`) to the
        stored states: events they lack, by transaction id; safe beside live traffic."""

    @abstractmethod
    def state(self, entity: str, text: str) -> EntityState | None:
        """The stored state of one entity value (for inspection and tests)."""

    @abstractmethod
    def mark_warm(self, record: dict[str, Any]) -> None:
        """Record that the namespace was warmed up (what, from which history, when)."""

    @abstractmethod
    def warm_record(self) -> dict[str, Any] | None:
        """The warm-up record, or None for a namespace never warmed up."""

    @abstractmethod
    def clear(self) -> int:
        """Delete every state of the namespace; the number deleted."""

    async def aclose(self) -> None:  # noqa: B027 (optional hook)
        """Release connections (the in-process store has none)."""

    def close(self) -> None:  # noqa: B027 (optional hook)
        """Release the synchronous connections."""

    def _entity(self, name: str) -> EntityFeatures:
        for entity in self.online.entities:
            if entity.entity == name:
                return entity
        raise KeyError(name)


class InProcessStore(FeatureStore):
    """States in a dict of this process, every transaction under one lock.

    States are kept in their stored form (bytes, as in Redis): a few microseconds to
    read and write, and the cyclic garbage collector never walks them (a store of
    hundreds of thousands of live state objects made its pauses show in the p99)."""

    kind = "memory"

    def __init__(self, online: OnlineFeatures, keys: KeyMaker) -> None:
        super().__init__(online, keys)
        self._states: dict[str, bytes] = {}
        self._lock = threading.Lock()
        self._warm: dict[str, Any] | None = None

    def _read(self, entity: EntityFeatures, key: str) -> EntityState | None:
        blob = self._states.get(key)
        return None if blob is None else entity.decode(blob)

    def observe_now(self, pending: Sequence[Pending]) -> list[Observation]:
        keys = [self.keys.key(p.entity.entity, p.text) for p in pending]
        states = self._states
        with self._lock:
            done = [p.observe_stored(states.get(k)) for p, k in zip(pending, keys, strict=True)]
            seen = [obs for obs, _ in done]
            if not refused(seen):
                for key, (_, stored) in zip(keys, done, strict=True):
                    if stored is not None:
                        states[key] = stored
        return seen

    async def observe(self, pending: Sequence[Pending]) -> list[Observation]:
        return self.observe_now(pending)

    def merge(self, states: Iterable[tuple[EntityFeatures, str, EntityState]]) -> MergeResult:
        total = written = 0
        for entity, text, extra in states:
            key = self.keys.key(entity.entity, text)
            total += 1
            with self._lock:
                merged = entity.merge(self._read(entity, key), extra)
                if merged is not None:
                    self._states[key] = merged.to_bytes()
                    written += 1
        return MergeResult(total, written)

    def state(self, entity: str, text: str) -> EntityState | None:
        with self._lock:
            return self._read(self._entity(entity), self.keys.key(entity, text))

    def mark_warm(self, record: dict[str, Any]) -> None:
        self._warm = dict(record)

    def warm_record(self) -> dict[str, Any] | None:
        return None if self._warm is None else dict(self._warm)

    def clear(self) -> int:
        with self._lock:
            count = len(self._states)
            self._states.clear()
            self._warm = None
        return count


class RedisStore(FeatureStore):
    """States in Redis (``redis://host:port/db``, ``rediss://``, ``unix://``).

    A transaction costs one round trip (:mod:`serving.resp`): ``EVALSHA`` of
    :data:`OBSERVE_SCRIPT` with the transaction's entity keys (``EVAL`` once more
    after a ``NOSCRIPT``: Redis restarted or its script cache was flushed). The script
    decides each entity value's status and writes the new states atomically, exactly
    as :meth:`~pipelines.features_online.EntityFeatures.observe` and the store's rules
    do, and returns the prior states; Python computes the features from them with the
    same :meth:`~pipelines.features_online.Pending.observe` (deterministic: the state
    it computes is the one the script wrote) and checks that it reaches the script's
    status. Concurrent transactions, in this process or in other replicas, are
    serialised by Redis. Not Redis Cluster safe (see the module doc).
    """

    kind = "redis"

    def __init__(self, online: OnlineFeatures, keys: KeyMaker, url: str) -> None:
        super().__init__(online, keys)
        import redis

        self.url = url
        self._redis_errors: tuple[type[BaseException], ...] = (redis.RedisError, OSError)
        self._sync = redis.Redis.from_url(url, socket_timeout=10)
        self._async: RespClient | None = None
        self._ttl = {e.entity: e.retention // 1_000_000 + TTL_SLACK_MS for e in online.entities}
        self._async_loop: asyncio.AbstractEventLoop | None = None
        self._layouts = {e.entity: _Layout(e, self._ttl[e.entity]) for e in online.entities}

    def _client(self) -> RespClient:
        """The lean client of the running event loop (connections belong to one)."""
        loop = asyncio.get_running_loop()
        if self._async is None or self._async_loop is not loop:
            self._async = RespClient(self.url)
            self._async_loop = loop
        return self._async

    def ping(self) -> None:
        try:
            self._sync.ping()
        except self._redis_errors as exc:
            raise StoreError(f"feature store {safe_url(self.url)}: {exc}") from None

    # ------------------------------------------------------------------ requests
    async def observe(self, pending: Sequence[Pending]) -> list[Observation]:
        try:
            return await self._observe(pending)
        except RespError as exc:
            raise StoreError(f"feature store unavailable: {exc}") from None

    async def _observe(self, pending: Sequence[Pending]) -> list[Observation]:
        if not pending:
            return []
        n = len(pending)
        keys: list[bytes] = []
        args: list[bytes] = []
        tokens = secrets.token_bytes(TOKEN_BYTES * n)
        for i, p in enumerate(pending):
            name = p.entity.entity
            keys.append(bulk(self.keys.key(name, p.text).encode()))
            token = tokens[TOKEN_BYTES * i : TOKEN_BYTES * (i + 1)]
            args.append(self._layouts[name].encoded(p.event, token))
        rest = (n, Encoded(b"".join(keys), n), Encoded(b"".join(args), _ARGS_PER_KEY * n))
        client = self._client()
        (reply,) = await client.execute(("EVALSHA", OBSERVE_SHA, *rest))
        if isinstance(reply, RespError) and str(reply).startswith("NOSCRIPT"):
            (reply,) = await client.execute(("EVAL", OBSERVE_SCRIPT, *rest))
        if isinstance(reply, RespError):
            raise StoreError(f"feature store: {reply}")
        if not isinstance(reply, list) or len(reply) != 2 * len(pending):
            raise StoreError(f"feature store: unexpected observe answer: {reply!r:.80}")
        seen = []
        for i, p in enumerate(pending):
            code, blob = reply[2 * i], reply[2 * i + 1]
            try:
                stored = None if blob is None else memoryview(blob)[TOKEN_BYTES:]
                obs, _ = p.observe_stored(stored, record=False)
            except StateError as exc:
                raise StoreError(f"feature store: {p.entity.entity}: {exc}") from None
            if not 0 <= code < len(_STATUS_OF) or obs.status != _STATUS_OF[code]:
                raise StoreError(
                    f"feature store: the observe script found {p.entity.entity} "
                    f"{_STATUS_OF[code] if 0 <= code < len(_STATUS_OF) else code}, Python "
                    f"{obs.status} (the script and the state layout disagree)"
                )
            seen.append(obs)
        return seen

    @staticmethod
    def _decode(entity: EntityFeatures, blob: bytes | None) -> EntityState | None:
        return None if blob is None else entity.decode(blob[TOKEN_BYTES:])

    # ------------------------------------------------------------------ backfill
    def merge(self, states: Iterable[tuple[EntityFeatures, str, EntityState]]) -> MergeResult:
        total = written = 0
        batch: list[tuple[EntityFeatures, str, EntityState]] = []
        try:
            for item in states:
                batch.append(item)
                if len(batch) >= MERGE_BATCH:
                    written += self._merge_batch(batch)
                    total += len(batch)
                    batch = []
            if batch:
                written += self._merge_batch(batch)
                total += len(batch)
        except self._redis_errors as exc:
            raise StoreError(f"feature store {safe_url(self.url)}: {exc}") from None
        return MergeResult(total, written)

    def _merge_batch(self, batch: list[tuple[EntityFeatures, str, EntityState]]) -> int:
        keys = [self.keys.key(e.entity, text) for e, text, _ in batch]
        todo = list(range(len(batch)))
        written = 0
        for _ in range(MAX_ATTEMPTS):
            blobs = self._sync.mget([keys[i] for i in todo])
            pipe = self._sync.pipeline(transaction=False)
            sent = []
            for i, blob in zip(todo, blobs, strict=True):
                entity, _, extra = batch[i]
                merged = entity.merge(self._decode(entity, blob), extra)
                if merged is None:
                    continue
                value = secrets.token_bytes(TOKEN_BYTES) + merged.to_bytes()
                ttl = self._ttl[entity.entity]
                pipe.eval(CAS_SCRIPT, 1, keys[i], _token(blob), value, ttl)
                sent.append(i)
            results = pipe.execute() if sent else []
            written += sum(1 for ok in results if ok)
            todo = [i for i, ok in zip(sent, results, strict=True) if not ok]
            if not todo:
                return written
        raise StoreError(f"feature store: backfill still contended after {MAX_ATTEMPTS} attempts")

    def state(self, entity: str, text: str) -> EntityState | None:
        blob = self._sync.get(self.keys.key(entity, text))
        return self._decode(self._entity(entity), blob)

    def mark_warm(self, record: dict[str, Any]) -> None:
        self._sync.set(self.keys.marker, json.dumps(record, sort_keys=True).encode())

    def warm_record(self) -> dict[str, Any] | None:
        try:
            raw = self._sync.get(self.keys.marker)
        except self._redis_errors as exc:
            raise StoreError(f"feature store {safe_url(self.url)}: {exc}") from None
        return None if raw is None else json.loads(raw)

    def clear(self) -> int:
        count = 0
        for key in self._sync.scan_iter(match=f"{self.keys.namespace}:*", count=1000):
            count += int(self._sync.delete(key))
        return count

    async def aclose(self) -> None:
        if self._async is not None:
            await self._async.aclose()
            self._async = None

    def close(self) -> None:
        self._sync.close()


class _Layout:
    """One entity's arguments to :data:`OBSERVE_SCRIPT` (see the comment above it)."""

    def __init__(self, entity: EntityFeatures, ttl: int) -> None:
        self.ttl = ttl
        self.lateness = entity.lateness
        self.retention_hi, self.retention_lo = divmod(entity.retention, _HALF)
        if not 0 <= entity.retention <= _INT64_MAX:
            raise ConfigError(f"{entity.entity}: retention out of range")
        self._item = struct.Struct("<qqQ" + "".join(_ITEM_FORMAT[k] for k in entity.kinds))
        # the header prefix and the rows as the state layout writes them: checked here
        # so that a layout change cannot make the script splice wrong bytes
        values = tuple(0.5 if k == ValueKind.FLOAT else -9 for k in entity.kinds)
        samples = (Event(-5, 7, 3, values), Event(-4, 8, 1, values))
        one = entity.observe(None, samples[0]).state
        two = entity.observe(one, samples[1]).state
        assert two is not None
        data = two.to_bytes()
        self.head = data[:4]
        rows = b"".join(self._item.pack(*self._fields(e)) for e in samples)
        if data[4:8] != struct.pack("<I", 2) or data[8:] != rows:
            raise StoreError(f"{entity.entity}: the state layout is not the observe script's")

        # what never changes, RESP-encoded once (see encoded())
        self._head_bulk = bulk(self.head)
        self._ttl_bulk = bulk(b"%d" % ttl)
        self._retention_bulk = bulk(b"%d" % self.retention_hi) + bulk(b"%d" % self.retention_lo)

    @staticmethod
    def _fields(event: Event) -> tuple[int | float, ...]:
        return (event.time, event.id, event.flags, *event.values)

    def _packed(self, event: Event) -> tuple[bytes, int, int, int, int]:
        """(packed item, event time's high and low halves, and its expiry's)."""
        t = event.time
        try:
            item = self._item.pack(t, event.id, event.flags, *event.values)
        except struct.error as exc:
            raise StoreError(f"feature store: event out of range: {exc}") from None
        th, tl = divmod(t, _HALF)
        lh, ll = divmod(t + self.lateness, _HALF)
        return item, th, tl, lh, ll

    def encoded(self, event: Event, token: bytes) -> bytes:
        """:meth:`arguments`, RESP-encoded (:data:`_ARGS_PER_KEY` bulk strings)."""
        item, th, tl, lh, ll = self._packed(event)
        return b"%b$%d\r\n%b\r\n$8\r\n%b\r\n$%d\r\n%b\r\n%b%b%b%b%b%b" % (
            self._head_bulk,
            len(item),
            item,
            item[8:16],
            len(token),
            token,
            self._ttl_bulk,
            bulk(b"%d" % th),
            bulk(b"%d" % tl),
            bulk(b"%d" % lh),
            bulk(b"%d" % ll),
            self._retention_bulk,
        )

    def arguments(self, event: Event, token: bytes) -> tuple[bytes | int, ...]:
        """The script's arguments for one key (the readable form of :meth:`encoded`)."""
        item, th, tl, lh, ll = self._packed(event)
        return (
            self.head,
            item,
            item[8:16],
            token,
            self.ttl,
            th,
            tl,
            lh,
            ll,
            self.retention_hi,
            self.retention_lo,
        )


def _token(blob: bytes | None) -> bytes:
    return b"" if blob is None else blob[:TOKEN_BYTES]


def safe_url(url: str) -> str:
    """The URL without a password."""
    if "@" in url:
        scheme, _, rest = url.partition("://")
        return f"{scheme}://***@{rest.rsplit('@', 1)[1]}"
    return url


def open_store(
    online: OnlineFeatures, url: str | None, *, secret: bytes | None = None, prefix: str = PREFIX
) -> FeatureStore:
    """``memory`` (or None): :class:`InProcessStore`; ``redis://...``: :class:`RedisStore`."""
    if url in (None, "", "memory"):
        keys = KeyMaker(online, secret or secret_from_env(required=False), prefix)
        return InProcessStore(online, keys)
    if url.startswith(("redis://", "rediss://", "unix://")):
        keys = KeyMaker(online, secret or secret_from_env(required=True), prefix)
        return RedisStore(online, keys, url)
    raise ConfigError(f"feature store {url!r}: use 'memory' or a redis:// URL")


def run(coroutine: Any) -> Any:
    """Run a coroutine outside a server's event loop (CLI, tests)."""
    return asyncio.run(coroutine)
