"""The feature stores: the in-process store and Redis (the real server on
127.0.0.1:6379; in CI it must answer) give the offline features, lose no update under
concurrent transactions for one card, write nothing for a refused transaction, keep
ids pseudonymous, and merge history beside live state."""

from __future__ import annotations

import asyncio
import os
import re
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from pipelines.data.fraud import generate_fraud
from pipelines.data.fraud_config import FraudConfig
from pipelines.errors import ConfigError
from pipelines.feature_history import states_from_history
from pipelines.feature_state import Status
from pipelines.features import compute_aggregates
from pipelines.features_online import OnlineFeatures
from pipelines.spec import ModelSpec
from serving.feature_store import FeatureStore, RedisStore, open_store
from serving.resp import RespClient, RespError
from tests.datasets import spec_of, typed_frame
from tests.racing import run_threads
from tests.support import run_async
from tests.unit.test_features_online import assert_same, records

REDIS_URL = os.environ.get("GOVML_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
SECRET = b"test-feature-key-" + b"k" * 16
HOUR = 3_600_000_000_000


def redis_answers() -> bool:
    import redis

    try:
        redis.Redis.from_url(REDIS_URL, socket_timeout=1).ping()
    except (redis.RedisError, OSError):
        return False
    return True


@pytest.fixture(scope="module")
def fraud() -> tuple[ModelSpec, pd.DataFrame]:
    spec = spec_of("fraud")
    return spec, typed_frame(spec, generate_fraud(FraudConfig(n_rows=8_000, seed=9, days=5)))


@pytest.fixture(params=["memory", "redis"])
def store(request: pytest.FixtureRequest) -> Iterator[FeatureStore]:
    online = OnlineFeatures(spec_of("fraud"))
    if request.param == "memory":
        yield open_store(online, "memory", secret=SECRET)
        return
    if not redis_answers():
        if os.environ.get("CI") == "true":
            pytest.fail(f"Redis does not answer at {REDIS_URL} (CI must run the Redis tests)")
        pytest.skip(f"Redis does not answer at {REDIS_URL}")
    prefix = f"govml-test:{uuid.uuid4().hex[:8]}"
    redis_store = open_store(online, REDIS_URL, secret=SECRET, prefix=prefix)
    try:
        yield redis_store
    finally:
        redis_store.clear()
        redis_store.close()


def transaction(online: OnlineFeatures, row: dict[str, Any], time_ns: int) -> list:
    return online.prepare(row, time_ns, online.event_id(row[online.id_column]))


async def observe_all(store: FeatureStore, frame: pd.DataFrame) -> pd.DataFrame:
    online = store.online
    times = frame["tx_time"].to_numpy("datetime64[ns]").astype(np.int64)
    out = []
    for row, t in zip(records(online, frame), times.tolist(), strict=True):
        pending = transaction(online, row, t)
        seen = await store.observe(pending)
        parts = {p.entity.entity: o.features for p, o in zip(pending, seen, strict=True)}
        out.append(online.assemble(parts))
    await store.aclose()
    return pd.DataFrame(out, index=frame.index)


def card_row(card: int, tx: int) -> dict[str, Any]:
    return {
        "transaction_id": tx,
        "card_id": card,
        "customer_id": 1,
        "terminal_id": 1,
        "amount": 10.0,
        "channel": "online",
    }


# ----------------------------------------------------------------------------- parity


def test_each_store_gives_the_offline_features_after_a_backfill(
    store: FeatureStore, fraud: tuple[ModelSpec, pd.DataFrame]
) -> None:
    spec, frame = fraud
    cut = frame["tx_time"].max().normalize()
    history, day = frame[frame["tx_time"] < cut], frame[frame["tx_time"] >= cut]
    result = store.merge(states_from_history(store.online, history))
    assert result.states == result.written > 500
    store.mark_warm({"rows": len(history)})
    assert store.warm_record() == {"rows": len(history)}
    got = run_async(observe_all(store, day))
    offline = compute_aggregates(spec.features.aggregates, frame, "tx_time").loc[day.index]
    assert_same(got, offline)
    # merging the same history again changes nothing (live events are kept)
    assert store.merge(states_from_history(store.online, history)).written == 0


# ----------------------------------------------------------------------------- concurrency


def test_concurrent_transactions_for_one_card_lose_no_update(store: FeatureStore) -> None:
    """4 threads (each its own connection and event loop) x 50 interleaved coroutines
    record 200 transactions of one card: all 200 are in its state, once."""
    online = store.online
    stores = [store] if store.kind == "memory" else []
    for _ in range(4 if store.kind == "redis" else 0):
        assert isinstance(store, RedisStore)
        stores.append(RedisStore(online, store.keys, store.url))

    def worker(k: int) -> None:
        target = stores[k % len(stores)]

        async def many() -> None:
            jobs = [
                target.observe(
                    transaction(online, card_row(42, 1000 * k + i), (k * 50 + i) * 10**9)
                )
                for i in range(50)
            ]
            results = await asyncio.gather(*jobs)
            assert all(o.status == Status.RECORDED for seen in results for o in seen)
            await target.aclose()

        run_async(many())

    run_threads(4, worker)
    state = store.state("card_id", "42")
    assert state is not None and len(state) == 200 and len(set(state.ids.tolist())) == 200
    assert np.all(np.diff(state.times) >= 0)
    pending = transaction(online, card_row(42, 9999), 300 * 10**9)
    seen = run_async(store.observe(pending))
    card = next(o for p, o in zip(pending, seen, strict=True) if p.entity.entity == "card_id")
    names = next(p.entity.names for p in pending if p.entity.entity == "card_id")
    assert card.features[names.index("card_tx_count_1h")] == 200.0


def test_a_refused_transaction_is_written_nowhere(store: FeatureStore) -> None:
    online = store.online
    run_async(store.observe(transaction(online, card_row(7, 1), 10 * HOUR)))
    other = card_row(8, 2)  # another card at the same terminal, far ahead
    run_async(store.observe(transaction(online, other, 20 * HOUR)))
    before = store.state("terminal_id", "1")
    late = transaction(online, card_row(7, 3), 12 * HOUR)  # fine for card 7, too late for 1
    seen = run_async(store.observe(late))
    assert {o.status for o in seen} == {Status.RECORDED, Status.TOO_LATE}
    assert len(store.state("card_id", "7")) == 1  # not recorded for the card either
    after = store.state("terminal_id", "1")
    assert before is not None and after is not None and len(after) == len(before)


# ----------------------------------------------------------------------------- keys


def test_keys_are_pseudonymous_and_namespaced(store: FeatureStore) -> None:
    key = store.keys.key("card_id", "4111111111")
    assert re.fullmatch(rf"{re.escape(store.keys.namespace)}:card_id:[0-9a-f]{{32}}", key)
    assert "4111111111" not in key
    other = open_store(store.online, "memory", secret=b"another-key-" + b"x" * 20)
    assert other.keys.namespace != store.keys.namespace  # the key id is in the namespace


def test_redis_needs_the_key(monkeypatch: pytest.MonkeyPatch) -> None:
    online = OnlineFeatures(spec_of("fraud"))
    monkeypatch.delenv("GOVML_FEATURE_KEY", raising=False)
    with pytest.raises(ConfigError, match="GOVML_FEATURE_KEY is not set"):
        open_store(online, REDIS_URL)
    with pytest.raises(ConfigError, match="use 'memory' or a redis:// URL"):
        open_store(online, "postgres://x", secret=SECRET)


def test_the_lean_redis_client_pipelines_selects_the_db_and_returns_errors_in_place() -> None:
    import redis

    if not redis_answers():
        if os.environ.get("CI") == "true":
            pytest.fail(f"Redis does not answer at {REDIS_URL}")
        pytest.skip(f"Redis does not answer at {REDIS_URL}")
    key = f"govml-test:{uuid.uuid4().hex}"
    url = REDIS_URL.rsplit("/", 1)[0] + "/2"

    async def main() -> list:
        client = RespClient(url)
        replies = await client.execute(
            ("SET", key, b"\x00\xffbinary"), ("GET", key), ("NOSUCHCOMMAND",), ("MGET", key, "x")
        )
        await client.aclose()
        return replies

    try:
        ok, value, error, both = run_async(main())
        assert ok == b"OK" and value == b"\x00\xffbinary" and both == [value, None]
        assert isinstance(error, RespError) and "unknown command" in str(error).lower()
        assert redis.Redis.from_url(url).get(key) == value  # written to db 2
    finally:
        redis.Redis.from_url(url).delete(key)


@pytest.fixture
def redis_store() -> Iterator[RedisStore]:
    if not redis_answers():
        if os.environ.get("CI") == "true":
            pytest.fail(f"Redis does not answer at {REDIS_URL} (CI must run the Redis tests)")
        pytest.skip(f"Redis does not answer at {REDIS_URL}")
    online = OnlineFeatures(spec_of("fraud"))
    prefix = f"govml-test:{uuid.uuid4().hex[:8]}"
    store = open_store(online, REDIS_URL, secret=SECRET, prefix=prefix)
    assert isinstance(store, RedisStore)
    try:
        yield store
    finally:
        store.clear()
        store.close()


def test_two_replicas_writing_in_turns_answer_from_the_stored_state(
    redis_store: RedisStore,
) -> None:
    """Two replicas write the same card in turns: every answer is that of the stored
    state, including what the other replica wrote just before."""
    store = redis_store
    online = store.online
    other = RedisStore(online, store.keys, store.url)
    names = next(e.names for e in online.entities if e.entity == "card_id")
    col = names.index("card_tx_count_1h")

    def count(target: FeatureStore, tx: int, seconds: int) -> tuple[float, Status]:
        pending = transaction(online, card_row(5, tx), 10 * HOUR + seconds * 10**9)
        seen = run_async(target.observe(pending))
        card = next(o for p, o in zip(pending, seen, strict=True) if p.entity.entity == "card_id")
        return card.features[col], card.status

    assert count(store, 1, 0) == (0.0, Status.RECORDED)
    assert count(other, 2, 1) == (1.0, Status.RECORDED)
    assert count(store, 3, 2) == (2.0, Status.RECORDED)  # sees tx 2 of the other
    assert count(other, 4, 3) == (3.0, Status.RECORDED)  # sees tx 3 of the first
    assert count(store, 4, 3) == (3.0, Status.DUPLICATE)  # the other's tx 4, once
    state = store.state("card_id", "5")
    assert state is not None and state.ids.tolist() == [1, 2, 3, 4]


def test_backfill_warms_a_namespace_once_and_refuses_the_in_process_store(
    tmp_path: Path, fraud: tuple[ModelSpec, pd.DataFrame], monkeypatch: pytest.MonkeyPatch
) -> None:
    from ops.feature_backfill import backfill, warm_record

    spec, frame = fraud
    history = tmp_path / "history.parquet"
    frame.to_parquet(history, index=False)
    with pytest.raises(ConfigError, match="lives inside the transformer"):
        backfill(spec, history, "memory", secret=SECRET)
    if not redis_answers():
        if os.environ.get("CI") == "true":
            pytest.fail(f"Redis does not answer at {REDIS_URL}")
        pytest.skip(f"Redis does not answer at {REDIS_URL}")
    prefix = f"govml-test:{uuid.uuid4().hex[:8]}"
    monkeypatch.setenv("GOVML_FEATURE_KEY", SECRET.decode())
    try:
        assert warm_record(spec, REDIS_URL, prefix=prefix) is None
        first = backfill(spec, history, REDIS_URL, prefix=prefix)
        assert first.rows == len(frame) and first.states == first.written > 500
        again = backfill(spec, history, REDIS_URL, prefix=prefix)
        assert again.states == first.states and again.written == 0  # nothing twice
        record = warm_record(spec, REDIS_URL, prefix=prefix)
        assert record is not None and record["rows"] == len(frame)
        assert record["fingerprint"] == OnlineFeatures(spec).fingerprint
    finally:
        store = open_store(OnlineFeatures(spec), REDIS_URL, prefix=prefix)
        store.clear()
        store.close()
