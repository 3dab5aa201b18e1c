"""Online aggregates: the spec's windowed features for one live event at a time.

Generated from the same :class:`~pipelines.spec_features.AggregateFeature` definitions as the
offline path (:func:`pipelines.features.compute_aggregates`), with the same semantics
and the same bits:

* For an event of entity ``e`` at time ``t`` each aggregate covers the recorded events
  of ``e`` with a time in the open interval ``(t - window, t)``: the event itself,
  events at the same instant and events exactly one window old never count; ``where``
  and null ``column`` values are handled as offline; sums are exact
  (:mod:`pipelines.aggregates`).
* **State** per entity value (one card, one customer, one terminal): its events in
  time order, one row each (:class:`EntityState`): time (ns), transaction id, one bit
  per aggregate telling whether the event counts for it (``where`` holds, ``column``
  not null), and the values the aggregates need (fixed-point for ``sum``/``mean``/
  ``std``, float64 for ``max``, an int64 code for ``nunique``). :meth:`EntityState.to_bytes`
  is the form a store keeps.
* **Observing** an event (:meth:`EntityFeatures.observe`) computes its features from
  the state, then inserts it in time order (after events at the same instant) and
  evicts the events that no accepted event can see any more.
* **Late events**: an event may be up to ``allowed_lateness``
  (``spec.features.online``) older than the newest event of its entity (the entity's
  *watermark*). It is inserted in time order and its own features cover exactly the
  events before it in its window, as offline. Events that were scored *before* it
  arrived keep the features they got; they did not see it, while the offline path
  (which knows every event) counts it for them: the online features of an event are
  the offline features computed over the events that had arrived when it was scored
  (tested). An event older than the watermark minus ``allowed_lateness`` is refused
  (:attr:`Status.TOO_LATE`): the state no longer holds all of its window.
* **Eviction**: the state keeps an event while it can be in the window of an event
  that may still be accepted: events with a time ``<= watermark - (longest window +
  allowed_lateness)`` are dropped.
* **Duplicates**: an event whose transaction id is already in the state (a retry, or
  the same transaction through a second transformer) is not recorded again; it still
  gets its features.

:func:`pipelines.feature_history.states_from_history` builds the same states from
history in one vectorised pass (the warm-up of a new model version:
``ops.feature_backfill``).
"""

from __future__ import annotations

import bisect
import hashlib
import json
import math
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from pipelines.aggregates import (
    EMPTY_VALUE,
    SUM_DECIMALS,
    canonical_value,
    fixed_point_value,
    matches,
    mean_value,
    sum_value,
    value_code,
)
from pipelines.errors import DataValidationError, SpecError
from pipelines.feature_slots import (
    NS_PER_SECOND,
    Slot,
    compile_slots,
    finish_window,
    spec_column_type,
)
from pipelines.feature_state import (
    LAYOUT_VERSION,
    STATE_HEADER,
    STATE_MAGIC,
    EntityState,
    Event,
    Observation,
    Status,
    ValueKind,
    row_dtype,
    stored_events,
)
from pipelines.spec import Column, ColumnType, ModelSpec
from pipelines.spec_features import AggregateFeature, Aggregation

#: states with at most this many events are evaluated as Python lists (faster when small)
SMALL_STATE = 96


@dataclass(frozen=True, slots=True)
class Pending:
    """One transaction's event for one entity value, before its state is read."""

    entity: EntityFeatures
    text: str  # the entity value (see :func:`entity_text`); a store keys its state by it
    event: Event

    def observe(self, state: EntityState | None, *, record: bool = True) -> Observation:
        return self.entity.observe(state, self.event, record=record)

    def observe_stored(
        self, data: bytes | memoryview | None, *, record: bool = True
    ) -> tuple[Observation, bytes | None]:
        return self.entity.observe_stored(data, self.event, record=record)


# ----------------------------------------------------------------------------- one entity


class EntityFeatures:
    """The state machine of every aggregate of one entity column (e.g. ``card_id``)."""

    def __init__(
        self,
        entity: str,
        aggregates: Sequence[AggregateFeature],
        columns: Mapping[str, Column],
        allowed_lateness_seconds: int,
    ) -> None:
        if not aggregates or any(a.entity != entity for a in aggregates):
            raise SpecError(f"EntityFeatures({entity}): needs aggregates of {entity} only")
        if len(aggregates) > 64:
            raise SpecError(f"{entity}: at most 64 aggregates per entity column online")
        if allowed_lateness_seconds < 0:
            raise SpecError("allowed_lateness must not be negative")
        self.entity = entity
        self.entity_type = spec_column_type(columns, entity, f"entity {entity}")
        self.aggregates = tuple(aggregates)
        self.names = tuple(a.name for a in aggregates)
        self.lateness = int(allowed_lateness_seconds) * NS_PER_SECOND
        self.retention = max(a.window_seconds for a in aggregates) * NS_PER_SECOND
        self.retention += self.lateness
        value_columns, slots, where = compile_slots(aggregates, columns)
        self.value_columns = tuple(value_columns)
        self.kinds = tuple(v.kind for v in value_columns)
        self.row_dtype = row_dtype(self.kinds)
        self._row_struct = struct.Struct(
            "<qqQ" + "".join("d" if k == ValueKind.FLOAT else "q" for k in self.kinds)
        )
        self._slots = tuple(slots)
        # each slot as the row evaluation reads it: bit, aggregation, row field (-1: count)
        self._plan = tuple(
            (s, int(s.bit), s.agg.agg, -1 if s.agg.agg == Aggregation.COUNT else 3 + s.value)
            for s in slots
        )
        self._where = tuple(where)
        self._types = {
            name: spec_column_type(columns, name, self.entity)
            for name in self.needed_columns
            if name != entity
        }
        self.fingerprint = _fingerprint(
            {
                "entity": entity,
                "entity_type": self.entity_type.value,
                "aggregates": [a.model_dump(mode="json") for a in aggregates],
                "types": {k: v.value for k, v in sorted(self._types.items())},
            }
        )

    def column_type(self, name: str) -> ColumnType:
        """The spec type of one of the columns the entity's aggregates read."""
        return self._types[name]

    @property
    def needed_columns(self) -> tuple[str, ...]:
        """The raw columns an event must carry for this entity's aggregates."""
        out = [self.entity]
        for agg in self.aggregates:
            for name in (agg.column, *agg.where):
                if name is not None and name not in out:
                    out.append(name)
        return tuple(out)

    # ------------------------------------------------------------------ events
    def event(self, row: Mapping[str, Any], time_ns: int, event_id: int) -> Event:
        """Encode one event (``row``: column -> value, nulls as None or NaN).

        Raises :class:`DataValidationError` naming the column for a value that cannot
        be summed exactly (infinite or above 4.6e12).
        """
        canonical = {name: canonical_value(row.get(name), t) for name, t in self._types.items()}
        flags = 0
        for i, (slot, targets) in enumerate(zip(self._slots, self._where, strict=True)):
            column = slot.agg.column
            if column is not None and _missing(canonical[column]):
                continue
            if all(matches(canonical[col], target) for col, target in targets):
                flags |= 1 << i
        values: list[int | float] = []
        for vc in self.value_columns:
            value = canonical[vc.column]
            if vc.kind == ValueKind.FIXED:
                try:
                    values.append(fixed_point_value(value))
                except ValueError as exc:
                    raise DataValidationError(f"{vc.column}: {exc}") from None
            elif vc.kind == ValueKind.FLOAT:
                values.append(value)
            else:
                values.append(value_code(value, self._types[vc.column]))
        return Event(int(time_ns), int(event_id), flags, tuple(values))

    # ------------------------------------------------------------------ features
    def empty(self) -> tuple[float, ...]:
        return tuple(EMPTY_VALUE[s.agg.agg] for s in self._slots)

    def features(self, state: EntityState | None, time_ns: int) -> tuple[float, ...]:
        """Every aggregate over the state's events in ``(t - window, t)``.

        Small states (up to :data:`SMALL_STATE` events: most cards and customers) are
        read as Python lists, large ones (a busy terminal) with numpy; both give the
        same values (integer sums are exact either way; tested).
        """
        if state is None or len(state) == 0:
            return self.empty()
        if len(state) <= SMALL_STATE:
            return self._features_small(state, time_ns)
        times = state.times
        hi = int(np.searchsorted(times, time_ns, "left"))
        starts: dict[int, int] = {}
        out: list[float] = []
        for slot in self._slots:
            lo = starts.get(slot.window)
            if lo is None:
                lo = starts[slot.window] = int(
                    np.searchsorted(times, time_ns - slot.window, "right")
                )
            out.append(self._aggregate(slot, state, lo, hi))
        return tuple(out)

    def _features_small(self, state: EntityState, time_ns: int) -> tuple[float, ...]:
        columns = [state.times.tolist(), state.ids.tolist(), state.flags.tolist()]
        return self._features_columns(columns + [v.tolist() for v in state.values], time_ns)

    def _features_columns(
        self, columns: Sequence[Sequence[Any]], time_ns: int
    ) -> tuple[float, ...]:
        """:meth:`features` of a small state as Python columns (time, id, flags, then
        the values: the fields of a stored row)."""
        times, flags = columns[0], columns[2]
        hi = bisect.bisect_left(times, time_ns)
        starts: dict[int, int] = {}
        out: list[float] = []
        for slot, bit, kind, column in self._plan:
            lo = starts.get(slot.window)
            if lo is None:
                lo = starts[slot.window] = bisect.bisect_right(times, time_ns - slot.window)
            if column < 0:  # count
                out.append(float(sum(1 for f in flags[lo:hi] if f & bit)))
                continue
            part = zip(columns[column][lo:hi], flags[lo:hi], strict=True)
            values = [v for v, f in part if f & bit]
            out.append(finish_window(kind, values) if values else EMPTY_VALUE[kind])
        return tuple(out)

    @staticmethod
    def _aggregate(slot: Slot, state: EntityState, lo: int, hi: int) -> float:
        kind = slot.agg.agg
        if lo >= hi:
            return EMPTY_VALUE[kind]
        counting = (state.flags[lo:hi] & slot.bit) != 0
        if kind == Aggregation.COUNT:
            return float(np.count_nonzero(counting))
        values = state.values[slot.value][lo:hi][counting]
        n = len(values)
        if n == 0:
            return EMPTY_VALUE[kind]
        if kind == Aggregation.SUM:
            return sum_value(int(values.sum()))
        if kind == Aggregation.MEAN:
            return mean_value(int(values.sum()), n)
        if kind == Aggregation.MAX:
            return float(values.max())
        if kind == Aggregation.NUNIQUE:  # int64 codes; np.unique costs ~30 µs a call here
            ordered = np.sort(values)
            return float(1 + np.count_nonzero(ordered[1:] != ordered[:-1]))
        return finish_window(kind, values.tolist())

    # ------------------------------------------------------------------ transitions
    def observe(
        self, state: EntityState | None, event: Event, *, record: bool = True
    ) -> Observation:
        """The event's features and the state with it recorded (see the module doc);
        ``record=False``: the features and the status only (a store that writes the new
        state itself, as Redis's observe script does, needs no copy of it here)."""
        features = self.features(state, event.time)
        if state is None or len(state) == 0:
            return Observation(features, self._single(event) if record else None, Status.RECORDED)
        if event.time < state.watermark - self.lateness:
            return Observation(features, None, Status.TOO_LATE)
        if bool((state.ids == event.id).any()):
            return Observation(features, None, Status.DUPLICATE)
        return Observation(
            features, self._insert(state, event) if record else None, Status.RECORDED
        )

    def _row(self, event: Event) -> bytes:
        return self._row_struct.pack(event.time, event.id, event.flags, *event.values)

    def _single(self, event: Event) -> EntityState:
        return EntityState.of_rows(np.frombuffer(self._row(event), dtype=self.row_dtype))

    def _insert(self, state: EntityState, event: Event) -> EntityState:
        times = state.times
        pos = int(np.searchsorted(times, event.time, "right"))
        watermark = max(state.watermark, event.time)
        first = int(np.searchsorted(times, watermark - self.retention, "right"))
        first = min(first, pos)  # the new event itself is never evicted (it is >= cutoff)
        rows = state.rows  # spliced as bytes: one copy, not one per column
        data = b"".join((rows[first:pos].tobytes(), self._row(event), rows[pos:].tobytes()))
        return EntityState.of_rows(np.frombuffer(data, dtype=self.row_dtype))

    def observe_stored(
        self, data: bytes | memoryview | None, event: Event, *, record: bool = True
    ) -> tuple[Observation, bytes | None]:
        """:meth:`observe` on a stored state (:meth:`EntityState.to_bytes`, None for
        none): the observation (without ``state``) and the new stored state (None when
        nothing is recorded, or ``record`` is False). A small state is read as struct
        rows and the event's row spliced into its bytes, without numpy (the same
        values, bits and bytes as :meth:`observe`; tested)."""
        n = 0 if data is None else stored_events(data, self.kinds)
        if n == 0:
            stored = STATE_HEADER.pack(STATE_MAGIC, LAYOUT_VERSION, len(self.kinds), 1) + self._row(
                event
            )
            return Observation(self.empty(), None, Status.RECORDED), stored if record else None
        assert data is not None
        if n > SMALL_STATE:
            obs = self.observe(self.decode(data), event, record=record)
            stored = None if obs.state is None else obs.state.to_bytes()
            return Observation(obs.features, None, obs.status), stored
        body = memoryview(data)[STATE_HEADER.size :]
        columns = list(zip(*self._row_struct.iter_unpack(body), strict=True))
        times = columns[0]
        t = event.time
        features = self._features_columns(columns, t)
        watermark = times[-1]
        if t < watermark - self.lateness:
            return Observation(features, None, Status.TOO_LATE), None
        if event.id in columns[1]:
            return Observation(features, None, Status.DUPLICATE), None
        if not record:
            return Observation(features, None, Status.RECORDED), None
        pos = bisect.bisect_right(times, t)
        first = bisect.bisect_right(times, max(watermark, t) - self.retention)
        first = min(first, pos)  # the new event itself is never evicted (it is >= cutoff)
        size = self._row_struct.size
        header = STATE_HEADER.pack(STATE_MAGIC, LAYOUT_VERSION, len(self.kinds), n - first + 1)
        stored = b"".join(
            (header, body[first * size : pos * size], self._row(event), body[pos * size :])
        )
        return Observation(features, None, Status.RECORDED), stored

    def merge(self, state: EntityState | None, extra: EntityState) -> EntityState | None:
        """``state`` with the events of ``extra`` whose ids it lacks, in time order, then
        evicted (a backfill into a state that live traffic may already be updating).
        None when nothing changes."""
        if state is None or len(state) == 0:
            return self.evict(extra)
        new = ~np.isin(extra.ids, state.ids)
        if not new.any():
            return None
        combined = np.concatenate([state.rows, extra.rows[np.flatnonzero(new)]])
        order = np.argsort(combined["time"], kind="stable")
        merged = self.evict(EntityState.of_rows(combined[order]))
        if len(merged) == len(state) and np.array_equal(merged.ids, state.ids):
            return None  # every missing event was too old to keep
        return merged

    def evict(self, state: EntityState) -> EntityState:
        """Drop the events no acceptable event can see (time <= watermark - retention)."""
        if len(state) == 0:
            return state
        first = int(np.searchsorted(state.times, state.watermark - self.retention, "right"))
        return state if first == 0 else state.slice(first)

    def decode(self, data: bytes) -> EntityState:
        return EntityState.from_bytes(data, self.kinds)


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _fingerprint(payload: Mapping[str, Any]) -> str:
    document = {"layout": LAYOUT_VERSION, "decimals": SUM_DECIMALS, **payload}
    text = json.dumps(document, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:12]


# ----------------------------------------------------------------------------- a whole spec


class OnlineFeatures:
    """Every aggregate of a spec, grouped by entity column (one state per entity value)."""

    def __init__(self, spec: ModelSpec) -> None:
        if not spec.features.aggregates:
            raise SpecError(f"{spec.name}: no features.aggregates to compute online")
        if spec.data.time_column is None:
            raise SpecError(f"{spec.name}: online aggregates need data.time_column")
        columns = spec.data.columns
        groups: dict[str, list[AggregateFeature]] = {}
        for agg in spec.features.aggregates:
            groups.setdefault(agg.entity, []).append(agg)
        lateness = spec.features.online.allowed_lateness_seconds
        self.spec_name = spec.name
        self.entities = tuple(
            EntityFeatures(entity, aggs, columns, lateness) for entity, aggs in groups.items()
        )
        self.names = tuple(a.name for a in spec.features.aggregates)
        self.time_column = spec.data.time_column
        self.id_column = spec.data.id_column
        id_spec = columns.get(self.id_column)
        if id_spec is None:
            raise SpecError(f"{spec.name}: data.id_column {self.id_column!r} is not a column")
        self.id_type = id_spec.type
        self.fingerprint = _fingerprint(
            {"spec": spec.name, "entities": [e.fingerprint for e in self.entities]}
        )
        self._position = {name: i for i, name in enumerate(self.names)}

    @property
    def needed_columns(self) -> tuple[str, ...]:
        """Columns every event must carry: the id, the time and the aggregates' inputs."""
        out = [self.id_column, self.time_column]
        for entity in self.entities:
            out += [c for c in entity.needed_columns if c not in out]
        return tuple(out)

    def event_id(self, value: Any) -> int:
        """A transaction id as the int64 the states record."""
        if self.id_type == ColumnType.INT:
            return int(value)
        return value_code(canonical_value(value, ColumnType.STRING), ColumnType.STRING)

    def prepare(self, row: Mapping[str, Any], time_ns: int, event_id: int) -> list[Pending]:
        """One transaction as the events of its entity values (a null entity value
        has no state: its aggregates are those of an empty window, as offline)."""
        out = []
        for entity in self.entities:
            text = entity_text(row.get(entity.entity))
            if text is not None:
                out.append(Pending(entity, text, entity.event(row, time_ns, event_id)))
        return out

    def assemble(self, parts: Mapping[str, tuple[float, ...]]) -> dict[str, float]:
        """The aggregates in spec order from each entity's features."""
        out: dict[str, float] = {}
        for entity in self.entities:
            values = parts.get(entity.entity) or entity.empty()
            out.update(zip(entity.names, values, strict=True))
        return {name: out[name] for name in self.names}


def entity_text(value: Any) -> str | None:
    """The text that names an entity value (None for a null): 123, 123.0 and "123"
    give "123", as the prediction log's pseudonyms do."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    return canonical_text(value)


def canonical_text(value: Any) -> str:
    """One text per identifier: 123, 123.0, numpy.int64(123) and "123" all give "123"."""
    item = getattr(value, "item", None)
    if callable(item) and not isinstance(value, str):
        value = item()
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)
