"""The online state machine against the offline aggregates: the same bits, every
aggregation, ties, window edges, late events, duplicates, eviction, the stored form,
and states rebuilt from history."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import pytest

from pipelines import features_online
from pipelines.data.fraud import generate_fraud
from pipelines.data.fraud_config import FraudConfig
from pipelines.errors import DataValidationError, SpecError
from pipelines.feature_history import states_from_history
from pipelines.feature_state import EntityState, StateError, Status, refused
from pipelines.features import compute_aggregates
from pipelines.features_online import OnlineFeatures
from pipelines.spec import ModelSpec
from pipelines.spec_features import AggregateFeature
from tests.datasets import spec_of, typed_frame, window_edge_aggregates, window_edge_events
from tests.unit.test_features import _all_aggregates, _events

# ----------------------------------------------------------------------------- helpers


def records(online: OnlineFeatures, frame: pd.DataFrame) -> list[dict[str, Any]]:
    """The rows as a transformer receives them: Python values, None for nulls."""
    part = frame[list(online.needed_columns)].astype(object)
    return part.where(part.notna(), None).to_dict("records")


class Replay:
    """The online path in memory: one state per entity value, transactions observed in
    the order given (a store applies the same steps atomically)."""

    def __init__(self, online: OnlineFeatures) -> None:
        self.online = online
        self.states: dict[tuple[str, str], EntityState] = {}

    def observe(self, row: dict[str, Any], time_ns: int) -> tuple[dict[str, float], Status]:
        online = self.online
        pending = online.prepare(row, time_ns, online.event_id(row[online.id_column]))
        seen = [p.observe(self.states.get((p.entity.entity, p.text))) for p in pending]
        if not refused(seen):
            for p, o in zip(pending, seen, strict=True):
                if o.state is not None:
                    self.states[p.entity.entity, p.text] = o.state
        statuses = {o.status for o in seen}
        status = (
            Status.TOO_LATE
            if Status.TOO_LATE in statuses
            else Status.RECORDED
            if Status.RECORDED in statuses or not statuses
            else Status.DUPLICATE
        )
        parts = {p.entity.entity: o.features for p, o in zip(pending, seen, strict=True)}
        return online.assemble(parts), status

    def run(self, frame: pd.DataFrame, arrival: np.ndarray | None = None) -> pd.DataFrame:
        """Every row's online features, rows observed in ``arrival`` order."""
        rows = records(self.online, frame)
        times = frame[self.online.time_column].to_numpy("datetime64[ns]").astype(np.int64)
        out = np.full((len(frame), len(self.online.names)), np.nan)
        for i in np.arange(len(frame)) if arrival is None else arrival:
            features, _ = self.observe(rows[i], int(times[i]))
            out[i] = list(features.values())
        return pd.DataFrame(out, columns=list(self.online.names), index=frame.index)


def spec_with(aggregates: list[AggregateFeature], lateness: str = "1h") -> ModelSpec:
    """The fraud spec with other aggregates over the `_events` columns."""
    spec = spec_of("fraud")
    columns = dict(spec.data.columns)
    columns["card"] = columns["card_id"]
    columns["t"] = columns["tx_time"]
    columns["terminal"] = columns["terminal_id"].model_copy(update={"missing": "allow"})
    columns["amount"] = columns["amount"].model_copy(update={"missing": "allow", "max": None})
    data = spec.data.model_copy(update={"columns": columns, "time_column": "t"})
    features = spec.features.model_copy(
        update={
            "aggregates": aggregates,
            "online": spec.features.online.model_copy(update={"allowed_lateness": lateness}),
        }
    )
    return spec.model_copy(update={"data": data, "features": features})


def events_frame(n: int, seed: int) -> pd.DataFrame:
    """`_events` (ties on a 1-minute grid, nulls) with a transaction id."""
    frame = _events(n, seed=seed, integer_amounts=False)
    frame.insert(0, "transaction_id", np.arange(1, n + 1))
    return frame


def assert_same(online: pd.DataFrame, offline: pd.DataFrame) -> None:
    """Bit for bit, NaN where NaN, for every column."""
    for name in offline.columns:
        a, b = online[name].to_numpy(), offline[name].to_numpy()
        assert np.array_equal(a.view(np.int64), b.view(np.int64)) or np.array_equal(
            a, b, equal_nan=True
        ), f"{name}: online {a[a != b][:5]} offline {b[a != b][:5]}"


@pytest.fixture(scope="module")
def fraud() -> tuple[ModelSpec, pd.DataFrame]:
    spec = spec_of("fraud")
    frame = typed_frame(spec, generate_fraud(FraudConfig(n_rows=20_000, seed=5, days=10)))
    return spec, frame


# ----------------------------------------------------------------------------- parity


def test_replaying_history_gives_the_offline_features_bit_for_bit(
    fraud: tuple[ModelSpec, pd.DataFrame],
) -> None:
    spec, frame = fraud
    online = Replay(OnlineFeatures(spec)).run(frame)
    offline = compute_aggregates(spec.features.aggregates, frame, "tx_time")
    assert_same(online, offline)
    # the data exercise every aggregate: non-trivial values everywhere
    for agg in spec.features.aggregates:
        assert online[agg.name].nunique() > 3, agg.name


@pytest.mark.parametrize("small_state", [0, 10**9])
def test_numpy_and_list_evaluation_give_the_same_bits(
    monkeypatch: pytest.MonkeyPatch, fraud: tuple[ModelSpec, pd.DataFrame], small_state: int
) -> None:
    """Every state through the numpy path (0), or through the list path (10**9)."""
    monkeypatch.setattr(features_online, "SMALL_STATE", small_state)
    spec, frame = fraud
    frame = frame.iloc[:6000]
    online = Replay(OnlineFeatures(spec)).run(frame)
    assert_same(online, compute_aggregates(spec.features.aggregates, frame, "tx_time"))
    aggs = _all_aggregates()  # std and every other aggregation, with nulls and ties
    events = events_frame(300, seed=8)
    got = Replay(OnlineFeatures(spec_with(aggs))).run(events)
    assert_same(got, compute_aggregates(aggs, events, "t"))


def test_every_aggregation_with_ties_nulls_and_filters_matches_offline_exactly() -> None:
    frame = events_frame(600, seed=3)
    aggs = _all_aggregates()  # count/sum/mean/max/std/nunique x 3 windows x where
    assert {a.agg.value for a in aggs} == {"count", "sum", "mean", "max", "std", "nunique"}
    assert frame.duplicated(["card", "t"]).sum() > 50
    spec = spec_with(aggs)
    online = Replay(OnlineFeatures(spec)).run(frame)
    assert_same(online, compute_aggregates(aggs, frame, "t"))


def test_window_edges_and_ties() -> None:
    frame = window_edge_events()
    aggs = window_edge_aggregates("count", "sum")
    online = Replay(OnlineFeatures(spec_with(aggs))).run(frame)
    # rows at t0 do not see each other; exactly one window old has left the window
    assert online["n"].tolist() == [0, 0, 0, 3, 1, 0]
    assert online["s"].tolist() == [0, 0, 0, 60, 40, 0]


# ----------------------------------------------------------------------------- late events


def test_a_late_event_sees_exactly_the_earlier_events_and_later_ones_keep_what_they_saw() -> None:
    """Online features of each event == offline features over the events that had
    arrived when it was scored (itself included), for arrivals shuffled within the
    allowed lateness."""
    frame = events_frame(300, seed=4)
    aggs = _all_aggregates()
    spec = spec_with(aggs, lateness="2h")
    rng = np.random.default_rng(0)
    times = frame["t"].to_numpy("datetime64[ns]").astype(np.int64)
    jitter = rng.integers(0, 90 * 60, len(frame)) * 1_000_000_000  # up to 90 min late
    arrival = np.argsort(times + jitter, kind="stable")
    assert (np.diff(times[arrival]) < 0).sum() > 50  # many events arrive late
    online = Replay(OnlineFeatures(spec)).run(frame, arrival)
    for k, i in enumerate(arrival[::7]):  # every 7th event: offline over its prefix
        arrived = frame.iloc[np.sort(arrival[: 7 * k + 1])]
        expected = compute_aggregates(aggs, arrived, "t").loc[i]
        got = online.loc[i]
        assert np.array_equal(got.to_numpy(), expected.to_numpy(), equal_nan=True), i


def test_an_event_later_than_the_allowed_lateness_is_refused_and_not_recorded() -> None:
    aggs = [AggregateFeature(name="n", entity="card", window="24h", agg="count")]
    online = OnlineFeatures(spec_with(aggs, lateness="30m"))
    replay = Replay(online)
    hour = 3_600_000_000_000
    base = {"card": 1, "amount": 1.0, "channel": "online", "terminal": 1}
    assert replay.observe({**base, "transaction_id": 1}, 10 * hour) == ({"n": 0.0}, Status.RECORDED)
    late_ok = replay.observe({**base, "transaction_id": 2}, 10 * hour - hour // 2)
    assert late_ok == ({"n": 0.0}, Status.RECORDED)  # exactly the allowed lateness
    too_late = replay.observe({**base, "transaction_id": 3}, 10 * hour - hour // 2 - 1)
    assert too_late[1] == Status.TOO_LATE
    assert replay.observe({**base, "transaction_id": 4}, 11 * hour)[0] == {"n": 2.0}


def test_a_retried_transaction_is_recorded_once() -> None:
    aggs = [AggregateFeature(name="n", entity="card", window="24h", agg="count")]
    replay = Replay(OnlineFeatures(spec_with(aggs)))
    row = {"transaction_id": 7, "card": 1, "amount": 1.0, "channel": "online", "terminal": 1}
    hour = 3_600_000_000_000
    assert replay.observe(row, hour)[1] == Status.RECORDED
    assert replay.observe(row, hour)[1] == Status.DUPLICATE
    assert replay.observe({**row, "transaction_id": 8}, 2 * hour)[0] == {"n": 1.0}


@pytest.mark.parametrize("small_state", [0, 16, 10**9])
def test_observing_the_stored_bytes_equals_observing_the_state(
    monkeypatch: pytest.MonkeyPatch, small_state: int
) -> None:
    """The stores' path (:meth:`EntityFeatures.observe_stored`: struct rows spliced as
    bytes for small states, numpy for large ones) gives the same features, status and
    stored bytes as :meth:`EntityFeatures.observe` at every step: late arrivals, refusals,
    retried transactions, eviction, and states crossing ``SMALL_STATE``."""
    monkeypatch.setattr(features_online, "SMALL_STATE", small_state)
    frame = events_frame(500, seed=11)
    aggs = _all_aggregates()
    online = OnlineFeatures(spec_with(aggs, lateness="1h"))
    rows = records(online, frame)
    times = frame["t"].to_numpy("datetime64[ns]").astype(np.int64)
    rng = np.random.default_rng(2)
    jitter = rng.integers(0, 100 * 60, len(frame)) * 1_000_000_000  # some beyond the hour
    arrival = list(np.argsort(times + jitter, kind="stable"))
    arrival += [int(i) for i in rng.choice(len(frame), 40)]  # retried transactions
    states: dict[tuple[str, str], EntityState] = {}
    stored: dict[tuple[str, str], bytes] = {}
    statuses: set[Status] = set()
    for i in arrival:
        row = rows[i]
        for p in online.prepare(row, int(times[i]), online.event_id(row["transaction_id"])):
            key = (p.entity.entity, p.text)
            expected = p.observe(states.get(key))
            for record in (False, True):
                got, data = p.observe_stored(stored.get(key), record=record)
                assert got.features == expected.features or np.array_equal(
                    got.features, expected.features, equal_nan=True
                ), (i, key)
                assert got.status == expected.status and got.state is None
            statuses.add(expected.status)
            if expected.state is None:
                assert data is None
            else:
                assert data == expected.state.to_bytes()
                states[key], stored[key] = expected.state, data
    assert statuses == set(Status)
    assert max(len(state) for state in states.values()) > 30  # crosses 16


def test_a_corrupt_stored_state_is_refused_on_the_stores_path() -> None:
    online = OnlineFeatures(spec_with(_all_aggregates()))
    row = {"transaction_id": 1, "card": 1, "amount": 1.0, "channel": "online", "terminal": 1}
    (pending, *_) = online.prepare(row, 10**12, 1)
    _, data = pending.observe_stored(None)
    assert data is not None
    for bad in (data[:5], data[:-1], b"XX" + data[2:], data[:2] + b"\x01" + data[3:]):
        with pytest.raises(StateError, match="feature state"):
            pending.observe_stored(bad)


# ----------------------------------------------------------------------------- state


def test_eviction_keeps_only_what_an_acceptable_event_can_see(
    fraud: tuple[ModelSpec, pd.DataFrame],
) -> None:
    spec, frame = fraud
    replay = Replay(OnlineFeatures(spec))
    replay.run(frame)
    retention = {e.entity: e.retention for e in replay.online.entities}
    for (entity, _), state in replay.states.items():
        assert int(state.times[0]) > state.watermark - retention[entity]
        assert np.all(np.diff(state.times) >= 0)
    # exactly the events inside the retention, for the busiest terminal of 10 days
    busiest = int(frame["terminal_id"].value_counts().index[0])
    state = replay.states["terminal_id", str(busiest)]
    times = frame.loc[frame["terminal_id"] == busiest, "tx_time"].astype("int64")
    kept = int((times > state.watermark - retention["terminal_id"]).sum())
    assert len(state) == kept < len(times) / 4


def test_the_stored_form_round_trips_and_refuses_another_layout(
    fraud: tuple[ModelSpec, pd.DataFrame],
) -> None:
    spec, frame = fraud
    replay = Replay(OnlineFeatures(spec))
    replay.run(frame.iloc[:2000])
    card = next(e for e in replay.online.entities if e.entity == "card_id")
    customer = next(e for e in replay.online.entities if e.entity == "customer_id")
    state = next(s for (e, _), s in replay.states.items() if e == "card_id" and len(s) > 1)
    back = card.decode(state.to_bytes())
    for a, b in zip(
        (back.times, back.ids, back.flags, *back.values),
        (state.times, state.ids, state.flags, *state.values),
        strict=True,
    ):
        assert a.dtype == b.dtype and np.array_equal(a, b)
    with pytest.raises(StateError, match="value column"):
        customer.decode(state.to_bytes())
    with pytest.raises(StateError, match="do not hold"):
        card.decode(state.to_bytes()[:-1])


def test_states_from_history_equal_the_replayed_states(
    fraud: tuple[ModelSpec, pd.DataFrame],
) -> None:
    spec, frame = fraud
    online = OnlineFeatures(spec)
    replay = Replay(online)
    replay.run(frame)
    built = {(e.entity, text): s for e, text, s in states_from_history(online, frame)}
    assert built.keys() == replay.states.keys()
    for key, state in built.items():
        other = replay.states[key]
        order_a = np.lexsort((state.ids, state.times))
        order_b = np.lexsort((other.ids, other.times))
        for a, b in zip(
            (state.times, state.ids, state.flags, *state.values),
            (other.times, other.ids, other.flags, *other.values),
            strict=True,
        ):
            assert np.array_equal(a[order_a], b[order_b]), key


def test_backfill_then_live_events_give_the_offline_features(
    fraud: tuple[ModelSpec, pd.DataFrame],
) -> None:
    spec, frame = fraud
    online = OnlineFeatures(spec)
    cut = frame["tx_time"].max().normalize()
    history, day = frame[frame["tx_time"] < cut], frame[frame["tx_time"] >= cut]
    replay = Replay(online)
    for entity, text, state in states_from_history(online, history):
        replay.states[entity.entity, text] = state
    got = replay.run(day)
    offline = compute_aggregates(spec.features.aggregates, frame, "tx_time").loc[day.index]
    assert_same(got, offline)


def test_merging_history_into_live_state_loses_nothing_and_adds_nothing_twice(
    fraud: tuple[ModelSpec, pd.DataFrame],
) -> None:
    spec, frame = fraud
    online = OnlineFeatures(spec)
    card = next(e for e in online.entities if e.entity == "card_id")
    states = {t: s for e, t, s in states_from_history(online, frame) if e is card}
    text, full = max(states.items(), key=lambda kv: len(kv[1]))
    half = full.slice(len(full) // 2)
    early = full.slice(0, len(full) // 2 + 2)  # overlaps by two events
    merged = card.merge(half, early)
    assert merged is not None and np.array_equal(merged.ids, full.ids)
    assert card.merge(full, early) is None  # nothing new


def test_bad_definitions_and_values_are_refused_with_the_name() -> None:
    spec = spec_with([AggregateFeature(name="s", entity="card", window="1h", agg="sum",
                                       column="channel")])  # fmt: skip
    with pytest.raises(SpecError, match="s: sum needs a number"):
        OnlineFeatures(spec)
    with pytest.raises(DataValidationError, match="s: sum needs a numeric column, 'channel'"):
        compute_aggregates(spec.features.aggregates, events_frame(20, seed=1), "t")
    spec = spec_with([AggregateFeature(name="s", entity="card", window="1h", agg="sum",
                                       column="amount")])  # fmt: skip
    online = OnlineFeatures(spec)
    with pytest.raises(DataValidationError, match="amount: infinite"):
        online.prepare({"card": 1, "amount": float("inf")}, 0, 1)
