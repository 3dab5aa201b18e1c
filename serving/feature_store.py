"""Where the online aggregates keep their state: in process (default) or in Redis.

Both stores hold one :class:`~pipelines.features_online.EntityState` per entity value
(one card, one customer, one terminal) and give the same guarantees:

* **Atomic per entity value.** Observing a transaction reads each of its entity
  values' states, computes the features and the new states
  (:meth:`~pipelines.features_online.Pending.observe`) and writes them so that no
  concurrent update is lost: :class:`InProcessStore` under a lock,
  :class:`RedisStore` with a compare-and-set Lua script on a random 8-byte version
  token at the head of each value (a conflicting write is re-read and recomputed).
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
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import logging
import os
import random
import secrets
import threading
from abc import ABC, abstractmethod
from collections import OrderedDict
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from pipelines.errors import ConfigError, GovMLError
from pipelines.features_online import (
    EntityFeatures,
    EntityState,
    Observation,
    OnlineFeatures,
    Pending,
    Status,
    refused,
)
from serving.resp import RespClient, RespError

log = logging.getLogger(__name__)

KEY_ENV = "GOVML_FEATURE_KEY"
MIN_KEY_BYTES = 16
PREFIX = "govml:features"
TOKEN_BYTES = 8
TTL_SLACK_MS = 3_600_000
MAX_ATTEMPTS = 50
MERGE_BATCH = 500
CACHE_SIZE = 100_000

# Compare-and-set: write ARGV[2] (token + state) only if the stored token is ARGV[1]
# ('' when the key must be absent). GETRANGE of a missing key is ''. Sent with EVAL
# (Redis caches the compiled script; no NOSCRIPT handling after a restart).
CAS_SCRIPT = """
if redis.call('GETRANGE', KEYS[1], 0, 7) ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
return 1
"""


class StoreError(GovMLError):
    """The feature store cannot be reached or stays contended (HTTP 503)."""

    status = 503


# ----------------------------------------------------------------------------- keys


class KeyMaker:
    """Pseudonymous state keys of one spec's online features."""

    def __init__(self, online: OnlineFeatures, secret: bytes, prefix: str = PREFIX) -> None:
        if len(secret) < MIN_KEY_BYTES:
            raise ConfigError(f"{KEY_ENV}: the key needs at least {MIN_KEY_BYTES} bytes")
        self._secret = secret
        self.key_id = hmac.new(secret, b"govml-key-id", hashlib.sha256).hexdigest()[:16]
        self.namespace = f"{prefix}:{online.spec_name}:{online.fingerprint}:{self.key_id[:8]}"

    def key(self, entity: str, text: str) -> str:
        digest = hmac.digest(self._secret, f"{entity}\x00{text}".encode(), "sha256")
        return f"{self.namespace}:{entity}:{digest[:16].hex()}"

    @property
    def marker(self) -> str:
        """The key of the warm-up record (:meth:`FeatureStore.mark_warm`)."""
        return f"{self.namespace}:warm"


def secret_from_env(required: bool) -> bytes:
    """``GOVML_FEATURE_KEY``; a random key when unset and not ``required``."""
    value = os.environ.get(KEY_ENV, "")
    if value:
        return value.encode("utf-8")
    if required:
        raise ConfigError(
            f"{KEY_ENV} is not set: the feature store keys card and customer ids by their "
            "HMAC; give the transformer and `govml features backfill` the same key"
        )
    log.warning("%s is not set: the in-process feature store uses a random key", KEY_ENV)
    return secrets.token_bytes(32)


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
        with self._lock:
            seen = [p.observe(self._read(p.entity, k)) for p, k in zip(pending, keys, strict=True)]
            if not refused(seen):
                for key, obs in zip(keys, seen, strict=True):
                    if obs.state is not None:
                        self._states[key] = obs.state.to_bytes()
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

    Requests use :mod:`serving.resp` (two pipelined round trips: read, then
    compare-and-set). Each state this process wrote is also kept in a local LRU cache
    (``cache_size`` states, by default 100,000) with its version token: a transaction
    whose states are all cached skips the read and goes straight to the
    compare-and-set, which fails, and is then read and computed again, if another
    process (another replica) wrote in between; a cached state that decides "nothing
    to write" (a duplicate) is read again for its features. The answers are those of
    the stored states either way; the cache only saves a round trip when one replica
    sees an entity's transactions in a row.
    """

    kind = "redis"

    def __init__(
        self, online: OnlineFeatures, keys: KeyMaker, url: str, cache_size: int = CACHE_SIZE
    ) -> None:
        super().__init__(online, keys)
        import redis

        self.url = url
        self._redis_errors: tuple[type[BaseException], ...] = (redis.RedisError, OSError)
        self._sync = redis.Redis.from_url(url, socket_timeout=10)
        self._async: RespClient | None = None
        self._ttl = {e.entity: e.retention // 1_000_000 + TTL_SLACK_MS for e in online.entities}
        self._async_loop: asyncio.AbstractEventLoop | None = None
        self._key_locks = _KeyLocks()
        self.conflicts = 0  # compare-and-set retries (another process wrote first)
        self.cache_size = cache_size
        self._cache: OrderedDict[str, bytes] = OrderedDict()

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
            raise StoreError(f"feature store {_safe_url(self.url)}: {exc}") from None

    # ------------------------------------------------------------------ requests
    async def observe(self, pending: Sequence[Pending]) -> list[Observation]:
        try:
            return await self._observe(pending)
        except RespError as exc:
            raise StoreError(f"feature store unavailable: {exc}") from None

    async def _observe(self, pending: Sequence[Pending]) -> list[Observation]:
        if not pending:
            return []
        keys = [self.keys.key(p.entity.entity, p.text) for p in pending]
        # Transactions of this process on the same keys take turns (no conflicts
        # between them); other processes are kept out by the compare-and-set.
        async with self._key_locks.hold(sorted(set(keys))):
            return await self._observe_locked(pending, keys)

    async def _observe_locked(
        self, pending: Sequence[Pending], keys: list[str]
    ) -> list[Observation]:
        client = self._client()
        blobs: list[bytes | None] = [self._cache_get(k) for k in keys]
        cached = [b is not None for b in blobs]
        missing = [i for i, hit in enumerate(cached) if not hit]
        if missing:
            (fresh,) = await client.execute(("MGET", *(keys[i] for i in missing)))
            _raise(fresh)
            for i, blob in zip(missing, fresh, strict=True):
                blobs[i] = blob
        seen = [p.observe(self._decode(p.entity, b)) for p, b in zip(pending, blobs, strict=True)]
        stale = [i for i, o in enumerate(seen) if cached[i] and o.state is None]
        if stale and not refused(seen):
            # a cached state decided "nothing to write" (a duplicate): its features
            # must come from the stored state, which another process may have changed
            (fresh,) = await client.execute(("MGET", *(keys[i] for i in stale)))
            _raise(fresh)
            for i, blob in zip(stale, fresh, strict=True):
                blobs[i], cached[i] = blob, False
                seen[i] = pending[i].observe(self._decode(pending[i].entity, blob))
        if refused(seen):  # too late by a cached state: too late by the stored one too
            return seen
        tokens = [_token(b) for b in blobs]
        todo = [i for i, o in enumerate(seen) if o.state is not None]
        for attempt in range(MAX_ATTEMPTS):
            if not todo:
                return seen
            commands, values = [], {}
            for i in todo:
                values[i] = secrets.token_bytes(TOKEN_BYTES) + seen[i].state.to_bytes()  # type: ignore[union-attr]
                ttl = self._ttl[pending[i].entity.entity]
                commands.append(("EVAL", CAS_SCRIPT, 1, keys[i], tokens[i], values[i], ttl))
            written = await client.execute(*commands)
            for answer in written:
                _raise(answer)
            for i, ok in zip(todo, written, strict=True):
                if ok:
                    self._cache_put(keys[i], values[i])
                else:
                    self._cache.pop(keys[i], None)
            todo = [i for i, ok in zip(todo, written, strict=True) if not ok]
            if todo:  # another process wrote first: back off, read again, observe again
                self.conflicts += 1
                if not all(cached[i] for i in todo):  # a stale cache needs no back-off
                    await asyncio.sleep(random.uniform(0, min(0.02, 0.0005 * 2**attempt)))
                (again,) = await client.execute(("MGET", *(keys[i] for i in todo)))
                _raise(again)
                for i, blob in zip(todo, again, strict=True):
                    tokens[i], cached[i] = _token(blob), False
                    seen[i] = self._again(pending[i], blob)
                todo = [i for i in todo if seen[i].state is not None]
        raise StoreError(f"feature store: still contended after {MAX_ATTEMPTS} attempts")

    def _cache_get(self, key: str) -> bytes | None:
        blob = self._cache.get(key)
        if blob is not None:
            self._cache.move_to_end(key)
        return blob

    def _cache_put(self, key: str, blob: bytes) -> None:
        if self.cache_size <= 0:
            return
        self._cache[key] = blob
        self._cache.move_to_end(key)
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)

    def _again(self, pending: Pending, blob: bytes | None) -> Observation:
        obs = pending.observe(self._decode(pending.entity, blob))
        if obs.status == Status.TOO_LATE:  # a newer event arrived in between: rare
            log.warning("%s: an event became too late while it was recorded", pending.entity.entity)
        return obs

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
            raise StoreError(f"feature store {_safe_url(self.url)}: {exc}") from None
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
            raise StoreError(f"feature store {_safe_url(self.url)}: {exc}") from None
        return None if raw is None else json.loads(raw)

    def clear(self) -> int:
        self._cache.clear()
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


class _KeyLocks:
    """asyncio locks per key, made on demand and dropped when nobody holds or waits."""

    def __init__(self) -> None:
        self._locks: dict[str, tuple[asyncio.Lock, int]] = {}

    @contextlib.asynccontextmanager
    async def hold(self, keys: Sequence[str]) -> AsyncIterator[None]:
        """Hold every lock of ``keys`` (sorted: no deadlock between holders)."""
        registered: list[str] = []
        acquired: list[asyncio.Lock] = []
        try:
            for key in keys:
                lock, users = self._locks.get(key) or (asyncio.Lock(), 0)
                self._locks[key] = (lock, users + 1)
                registered.append(key)
                await lock.acquire()
                acquired.append(lock)
            yield
        finally:
            for lock in reversed(acquired):
                lock.release()
            for key in registered:
                lock, users = self._locks[key]
                if users == 1:
                    del self._locks[key]
                else:
                    self._locks[key] = (lock, users - 1)


def _raise(answer: Any) -> None:
    if isinstance(answer, RespError):
        raise answer


def _token(blob: bytes | None) -> bytes:
    return b"" if blob is None else blob[:TOKEN_BYTES]


def _safe_url(url: str) -> str:
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
