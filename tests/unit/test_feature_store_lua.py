"""The Redis store's one-round-trip observe (a Lua script per transaction) against the
in-process store: the same features, statuses and stored states over transactions
with ties, late events, duplicates, too-late events, evictions, a busy terminal and
pre-1970 times; one command per transaction; nothing lost beside a backfill; a
corrupt state refused and left as it is."""

from __future__ import annotations

import asyncio
import random
import threading
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

from pipelines.feature_state import EntityState, Event, Status
from pipelines.features_online import OnlineFeatures
from serving import feature_store
from serving.feature_store import (
    TOKEN_BYTES,
    FeatureStore,
    RedisStore,
    StoreError,
    open_store,
)
from serving.resp import RespClient
from tests.datasets import spec_of
from tests.racing import run_threads
from tests.support import run_async
from tests.unit.test_feature_store import SECRET, card_row, redis_store, transaction

__all__ = ["redis_store"]  # the fixture

SECOND = 1_000_000_000
HOUR = 3600 * SECOND
DAY = 24 * HOUR


def row(tx: int, card: int | None, customer: int | None, terminal: int, amount: Any) -> dict:
    return {
        "transaction_id": tx,
        "card_id": card,
        "customer_id": customer,
        "terminal_id": terminal,
        "amount": amount,
        "channel": "online" if tx % 3 else "pos",
    }


def sequence(seed: int, start: int) -> list[tuple[dict[str, Any], int]]:
    """Transactions in arrival order: ties, late events within the allowed hour,
    retries (same id), too-late events on a fresh card at a busy terminal (too late
    for the terminal only), jumps of days (evictions), nulls, and a burst of 2,000
    events on terminal 9 within a few hours."""
    rng = random.Random(seed)
    out: list[tuple[dict[str, Any], int]] = []
    t = start
    tx = 1
    fresh = 10_000

    def add(r: dict[str, Any], time: int) -> None:
        out.append((r, time))

    for phase in range(3):
        for _ in range(700):
            tx += 1
            r = rng.random()
            if r < 0.15:
                step = 0  # a tie with the previous event
            elif r < 0.2:
                step = rng.choice([2 * DAY, 8 * DAY, 26 * HOUR])  # evictions
            else:
                step = rng.randint(1, 900) * SECOND
            t += step
            time = t
            if rng.random() < 0.1:
                time = t - rng.randint(0, 3500) * SECOND  # late, within the lateness
            amount = None if rng.random() < 0.05 else round(rng.uniform(1, 500), 2)
            card = None if rng.random() < 0.03 else rng.randint(1, 25)
            customer = None if rng.random() < 0.03 else rng.randint(1, 8)
            add(row(tx, card, customer, rng.randint(1, 3), amount), time)
            if rng.random() < 0.05:  # a retry: same transaction again
                add(*out[-1])
            if rng.random() < 0.03 and len(out) > 10:  # an older id, another time
                old, _ = out[rng.randrange(len(out) - 10, len(out))]
                add(dict(old), t)
            if rng.random() < 0.03:  # too late for terminal 1, fine for a fresh card
                fresh += 1
                add(row(tx + 600_000, 1, 1, 1, 6.0), t)  # terminal 1's watermark: t
                add(row(tx + 500_000, fresh, None, 1, 5.0), t - 2 * HOUR - rng.randint(1, 99))
        if phase == 1:  # the busy terminal
            for _ in range(2_000):
                tx += 1
                t += rng.randint(0, 6) * SECOND
                add(row(tx, rng.randint(100, 160), rng.randint(1, 8), 9, 10.0), t)
    return out


def replay(store: FeatureStore, transactions: list[tuple[dict[str, Any], int]]) -> list:
    online = store.online

    async def main() -> list:
        seen = []
        for r, time in transactions:
            pending = transaction(online, r, time)
            got = await store.observe(pending)
            seen.append(
                [
                    (p.entity.entity, o.status, np.array(o.features, dtype=np.float64).tobytes())
                    for p, o in zip(pending, got, strict=True)
                ]
            )
        await store.aclose()
        return seen

    return run_async(main())


def entity_values(transactions: list[tuple[dict[str, Any], int]]) -> set[tuple[str, str]]:
    out = set()
    for r, _ in transactions:
        for name in ("card_id", "customer_id", "terminal_id"):
            if r[name] is not None:
                out.add((name, str(r[name])))
    return out


def state_bytes(store: FeatureStore, entity: str, text: str) -> bytes | None:
    state = store.state(entity, text)
    return None if state is None else state.to_bytes()


@pytest.mark.parametrize("start", [10 * DAY, -3 * DAY, -(10**18)], ids=["1970s", "zero", "1938"])
def test_the_script_gives_what_the_in_process_store_gives(
    redis_store: RedisStore, start: int
) -> None:
    transactions = sequence(seed=start % 1000, start=start)
    memory = open_store(redis_store.online, "memory", secret=SECRET)
    expected = replay(memory, transactions)
    got = replay(redis_store, transactions)
    assert got == expected
    statuses = [s for seen in expected for _, s, _ in seen]
    assert {Status.RECORDED, Status.DUPLICATE, Status.TOO_LATE} <= set(statuses)
    for entity, text in entity_values(transactions):
        assert state_bytes(redis_store, entity, text) == state_bytes(memory, entity, text)
    terminal = redis_store.state("terminal_id", "9")
    assert terminal is not None and len(terminal) >= 2_000
    # too late for terminal 1 only: the fresh card was written nowhere
    assert redis_store.state("card_id", "10001") is None
    assert memory.state("card_id", "10001") is None


def test_pre_1970_times_order_correctly(redis_store: RedisStore) -> None:
    online = redis_store.online
    times = [-5 * SECOND, -1, 0, 1, -2 * SECOND, -1, 3 * SECOND, -(2**62)]
    memory = open_store(online, "memory", secret=SECRET)
    transactions = [(card_row(3, 100 + i), t) for i, t in enumerate(times)]
    assert replay(redis_store, transactions) == replay(memory, transactions)
    state = redis_store.state("card_id", "3")
    assert state is not None
    assert state.times.tolist() == [-5 * SECOND, -2 * SECOND, -1, -1, 0, 1, 3 * SECOND]
    assert state_bytes(redis_store, "card_id", "3") == state_bytes(memory, "card_id", "3")


@pytest.fixture
def commands(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[list[str]]]:
    sent: list[list[str]] = []
    execute = RespClient.execute

    async def counting(self: RespClient, *command: Any) -> Any:
        sent.append([c[0] for c in command])
        return await execute(self, *command)

    monkeypatch.setattr(RespClient, "execute", counting)
    yield sent


def test_one_round_trip_per_transaction(
    redis_store: RedisStore, commands: list[list[str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    online = redis_store.online

    async def main() -> None:
        for i in range(40):
            await redis_store.observe(transaction(online, card_row(i % 4, i), i * SECOND))
        await redis_store.aclose()

    run_async(main())
    if commands[:2] == [["EVALSHA"], ["EVAL"]]:  # the script was new to this server
        del commands[1]
    assert commands == [["EVALSHA"]] * 40
    # after a restart (a script unknown to the server): EVALSHA, then EVAL once
    monkeypatch.setattr(feature_store, "OBSERVE_SHA", "0" * 40)
    commands.clear()
    seen = run_async(redis_store.observe(transaction(online, card_row(1, 99), 50 * SECOND)))
    assert commands == [["EVALSHA"], ["EVAL"]]
    assert all(o.status == Status.RECORDED for o in seen)
    state = redis_store.state("card_id", "1")
    assert state is not None and state.ids.tolist() == [1, 5, 9, 13, 17, 21, 25, 29, 33, 37, 99]


def test_two_replicas_concurrently_lose_no_update(redis_store: RedisStore) -> None:
    online = redis_store.online
    replicas = [redis_store, RedisStore(online, redis_store.keys, redis_store.url)]

    def worker(k: int) -> None:
        async def many() -> None:
            jobs = [
                replicas[k].observe(transaction(online, card_row(8, 1000 * k + i), i * SECOND))
                for i in range(150)
            ]
            for seen in await asyncio.gather(*jobs):
                assert all(o.status == Status.RECORDED for o in seen)
            await replicas[k].aclose()

        run_async(many())

    run_threads(2, worker)
    state = redis_store.state("card_id", "8")
    assert state is not None and sorted(state.ids.tolist()) == sorted(
        [i for i in range(150)] + [1000 + i for i in range(150)]
    )
    assert np.all(np.diff(state.times) >= 0)


def test_a_backfill_beside_live_observes_loses_nothing(redis_store: RedisStore) -> None:
    online = redis_store.online
    card = next(e for e in online.entities if e.entity == "card_id")

    def history(ids: range) -> EntityState:
        state = None
        for i in ids:
            event = card.event(card_row(77, i), i * SECOND, i)
            state = card.observe(state, event).state
        assert state is not None
        return state

    chunks = [history(range(1 + 10 * c, 11 + 10 * c)) for c in range(40)]
    live = list(range(100_001, 100_301))

    def backfill() -> None:
        for chunk in chunks:
            redis_store.merge([(card, "77", chunk)])

    async def observe() -> None:
        for at in range(0, len(live), 20):
            jobs = [
                redis_store.observe(transaction(online, card_row(77, i), (i - 99_000) * SECOND))
                for i in live[at : at + 20]
            ]
            await asyncio.gather(*jobs)
        await redis_store.aclose()

    thread = threading.Thread(target=backfill)
    thread.start()
    run_async(observe())
    thread.join()
    state = redis_store.state("card_id", "77")
    assert state is not None
    assert sorted(state.ids.tolist()) == list(range(1, 401)) + live
    assert np.all(np.diff(state.times) >= 0)


@pytest.mark.parametrize("damage", ["magic", "length"])
def test_a_corrupt_state_is_refused_and_left_as_it_is(redis_store: RedisStore, damage: str) -> None:
    online = redis_store.online
    run_async(redis_store.observe(transaction(online, card_row(5, 1), HOUR)))
    key = redis_store.keys.key("terminal_id", "1")
    stored = redis_store._sync.get(key)
    assert stored is not None
    if damage == "magic":
        bad = stored[:TOKEN_BYTES] + b"XX" + stored[TOKEN_BYTES + 2 :]
    else:
        bad = stored[:-8]
    redis_store._sync.set(key, bad)
    with pytest.raises(StoreError, match="terminal_id"):
        run_async(redis_store.observe(transaction(online, card_row(5, 2), HOUR + SECOND)))
    assert redis_store._sync.get(key) == bad
    card = redis_store.state("card_id", "5")  # nothing written for the other keys either
    assert card is not None and card.ids.tolist() == [1]


def test_the_script_checks_the_layout_of_every_entity() -> None:
    online = OnlineFeatures(spec_of("fraud"))
    for entity in online.entities:
        layout = feature_store._Layout(entity, 1000)
        assert layout.head[:2] == b"GF" and layout.head[3] == len(entity.kinds)


@pytest.mark.parametrize(
    "t",
    [40 * DAY, (40 * DAY >> 32 << 32) + 5, -(5 * DAY >> 32 << 32) + 5],
    ids=["plain", "borrow", "negative-borrow"],  # low 32 bits below the retention's
)
def test_lateness_and_eviction_boundaries_are_exact(redis_store: RedisStore, t: int) -> None:
    online = redis_store.online
    card = next(e for e in online.entities if e.entity == "card_id")
    lateness, retention = card.lateness, card.retention
    times = [
        t - retention,  # evicted once the watermark reaches t (time <= t - retention)
        t - retention + 1,  # kept
        t,
        t - lateness,  # exactly the allowed lateness: recorded
        t - lateness - 1,  # one nanosecond more: too late
        t + 1,  # evicts t - retention + 1
    ]
    transactions = [(card_row(6, 200 + i), time) for i, time in enumerate(times)]
    memory = open_store(online, "memory", secret=SECRET)
    got = replay(redis_store, transactions)
    assert got == replay(memory, transactions)
    card_statuses = [next(s for e, s, _ in seen if e == "card_id") for seen in got]
    assert card_statuses[3:5] == [Status.RECORDED, Status.TOO_LATE]
    state = redis_store.state("card_id", "6")
    assert state is not None and state.ids.tolist() == [203, 202, 205]
    assert state_bytes(redis_store, "card_id", "6") == state_bytes(memory, "card_id", "6")


def test_an_id_found_in_another_field_is_no_duplicate(redis_store: RedisStore) -> None:
    """A state is rows of (time, id, flags, values): the bytes of a new id may sit in
    an earlier event's time or amount, or across two fields; only an id is an id."""
    from pipelines.aggregates import fixed_point_value

    online = redis_store.online
    amount = fixed_point_value(12.5)
    first = row(1, 4, 1, 1, 12.5)
    ids = [
        7 * SECOND,  # the first event's time
        amount,  # its amount, fixed-point
        (7 * SECOND) >> 8 | (1 << 56),  # across its time and id: no id either
        5,
        5,  # a duplicate, and the only one
    ]
    transactions = [(first, 7 * SECOND)]
    transactions += [(row(tx, 4, 1, 1, 3.0), (8 + i) * SECOND) for i, tx in enumerate(ids)]
    memory = open_store(online, "memory", secret=SECRET)
    got = replay(redis_store, transactions)
    assert got == replay(memory, transactions)
    card_statuses = [next(s for e, s, _ in seen if e == "card_id") for seen in got]
    assert card_statuses == [Status.RECORDED] * 5 + [Status.DUPLICATE]
    state = redis_store.state("card_id", "4")
    assert state is not None and state.ids.tolist() == [1, *ids[:4]]


def test_the_encoded_arguments_are_the_readable_ones() -> None:
    from serving.resp import Encoded, _encode

    online = OnlineFeatures(spec_of("fraud"))
    for entity in online.entities:
        layout = feature_store._Layout(entity, 123_456)
        for t in (0, -1, 40 * DAY, -(5 * DAY) + 7, 2**62):
            event = Event(t, -42, 5, tuple(-9 for _ in entity.kinds))
            token = b"\x00\r\n$*-+12"[:8]
            raw = _encode(("EVALSHA", "x", 1, *layout.arguments(event, token)))
            fast = _encode(
                (
                    "EVALSHA",
                    "x",
                    1,
                    Encoded(layout.encoded(event, token), feature_store._ARGS_PER_KEY),
                )
            )
            assert fast == raw
