"""Online aggregates: the spec's windowed features for one live event at a time.

Generated from the same :class:`~pipelines.spec.AggregateFeature` definitions as the
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

:func:`states_from_history` builds the same states from history in one vectorised
pass (the warm-up of a new model version: ``ops.feature_backfill``).
"""

from __future__ import annotations

import bisect
import hashlib
import json
import math
import struct
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from pipelines.aggregates import (
    EMPTY_VALUE,
    SUM_DECIMALS,
    TEXT_TYPES,
    canonical_value,
    fixed_point_value,
    matches,
    mean_value,
    std_value,
    sum_value,
    value_code,
    where_target,
)
from pipelines.errors import DataValidationError, GovMLError, SpecError
from pipelines.spec import AggregateFeature, Aggregation, Column, ColumnType, ModelSpec

if TYPE_CHECKING:
    import pandas as pd

LAYOUT_VERSION = 2  # 1: column-major (one column after another)
#: states with at most this many events are evaluated as Python lists (faster when small)
SMALL_STATE = 96
_NS_PER_SECOND = 1_000_000_000
_HEADER = struct.Struct("<2sBBI")  # magic, layout version, value columns, events
_MAGIC = b"GF"


class StateError(GovMLError):
    """A stored state cannot be read (corrupt, or written with another layout)."""


class Status(StrEnum):
    RECORDED = "recorded"
    DUPLICATE = "duplicate"
    TOO_LATE = "too_late"


class ValueKind(StrEnum):
    FIXED = "fixed"  # int64 fixed point: sum, mean, std
    FLOAT = "float"  # float64: max
    CODE = "code"  # int64 code: nunique


# a value column's kind as far as its stored bytes go (a CODE column is int64 like FIXED)
_KIND_OF_DTYPE = {np.dtype(np.int64): ValueKind.FIXED, np.dtype(np.float64): ValueKind.FLOAT}
_KIND_OF = {
    Aggregation.SUM: ValueKind.FIXED,
    Aggregation.MEAN: ValueKind.FIXED,
    Aggregation.STD: ValueKind.FIXED,
    Aggregation.MAX: ValueKind.FLOAT,
    Aggregation.NUNIQUE: ValueKind.CODE,
}


# ----------------------------------------------------------------------------- state


def row_dtype(kinds: Sequence[ValueKind]) -> np.dtype:
    """One stored event: time (ns), transaction id, aggregate bits, then one 8-byte
    value per value column of the entity, little-endian, packed."""
    key = tuple(kinds)
    dtype = _ROW_DTYPES.get(key)
    if dtype is None:
        fields = [("time", "<i8"), ("id", "<i8"), ("flags", "<u8")]
        fields += [(f"v{i}", "<f8" if k == ValueKind.FLOAT else "<i8") for i, k in enumerate(key)]
        dtype = _ROW_DTYPES[key] = np.dtype(fields)
    return dtype


_ROW_DTYPES: dict[tuple[ValueKind, ...], np.dtype] = {}


@dataclass(frozen=True, slots=True)
class EntityState:
    """One entity value's recorded events, sorted by time (arrival order among ties):
    one row per event (:func:`row_dtype`), the columns as views of the rows."""

    rows: np.ndarray  # structured, row_dtype(kinds)
    times: np.ndarray  # int64 ns
    ids: np.ndarray  # int64 transaction ids
    flags: np.ndarray  # uint64: bit i set when the event counts for aggregate i
    values: tuple[np.ndarray, ...]  # one column per ValueColumn of the entity

    @classmethod
    def of_rows(cls, rows: np.ndarray) -> EntityState:
        names = rows.dtype.names
        assert names is not None
        return cls(rows, rows["time"], rows["id"], rows["flags"], tuple(rows[n] for n in names[3:]))

    @classmethod
    def of_columns(
        cls, times: np.ndarray, ids: np.ndarray, flags: np.ndarray, values: Sequence[np.ndarray]
    ) -> EntityState:
        kinds = [_KIND_OF_DTYPE[np.dtype(v.dtype)] for v in values]
        rows = np.empty(len(times), dtype=row_dtype(kinds))
        rows["time"], rows["id"], rows["flags"] = times, ids, flags
        for i, v in enumerate(values):
            rows[f"v{i}"] = v
        return cls.of_rows(rows)

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def watermark(self) -> int:
        """The newest event time (ns)."""
        return int(self.times[-1])

    def to_bytes(self) -> bytes:
        """The stored form: a header, then the rows (row-major: a store inserts an
        event by splicing its row in, without rewriting every column)."""
        header = _HEADER.pack(_MAGIC, LAYOUT_VERSION, len(self.values), len(self.rows))
        return header + self.rows.tobytes()

    @classmethod
    def from_bytes(cls, data: bytes | memoryview, kinds: Sequence[ValueKind]) -> EntityState:
        """The state :meth:`to_bytes` wrote (read-only views of ``data``)."""
        n = stored_events(data, kinds)
        dtype = row_dtype(kinds)
        return cls.of_rows(np.frombuffer(data, dtype=dtype, count=n, offset=_HEADER.size))

    def slice(self, start: int, stop: int | None = None) -> EntityState:
        return EntityState.of_rows(self.rows[start:stop])


def stored_events(data: bytes | memoryview, kinds: Sequence[ValueKind]) -> int:
    """The number of events of a stored state (:meth:`EntityState.to_bytes`), after
    checking its header and length; :class:`StateError` for anything else."""
    if len(data) < _HEADER.size:
        raise StateError("feature state: too short")
    magic, version, n_values, n = _HEADER.unpack_from(data)
    if magic != _MAGIC or version != LAYOUT_VERSION or n_values != len(kinds):
        raise StateError(
            f"feature state: layout {bytes(magic)!r} v{version} with {n_values} value "
            f"column(s), expected {_MAGIC!r} v{LAYOUT_VERSION} with {len(kinds)}"
        )
    if len(data) != _HEADER.size + 8 * n * (3 + n_values):
        raise StateError(f"feature state: {len(data)} bytes do not hold {n} events")
    return n


@dataclass(frozen=True, slots=True)
class Event:
    """One transaction as one entity's state records it."""

    time: int  # ns
    id: int
    flags: int
    values: tuple[int | float, ...]


@dataclass(frozen=True, slots=True)
class Observation:
    """The result of observing one event: its features (in the entity's aggregate
    order), the new state (None when nothing changed, or when not asked for) and what
    happened."""

    features: tuple[float, ...]
    state: EntityState | None
    status: Status


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


def refused(observations: Sequence[Observation]) -> bool:
    """A transaction is refused when any of its entity values finds it too late; then
    no state records it (the store writes nothing)."""
    return any(o.status == Status.TOO_LATE for o in observations)


@dataclass(frozen=True)
class ValueColumn:
    column: str
    kind: ValueKind


@dataclass(frozen=True)
class _Slot:
    """One aggregate as the state machine evaluates it."""

    agg: AggregateFeature
    bit: np.uint64
    window: int  # ns
    value: int  # index into the state's value columns, -1 for count


# ----------------------------------------------------------------------------- one entity


def _column_type(columns: Mapping[str, Column], name: str, what: str) -> ColumnType:
    column = columns.get(name)
    if column is None:
        raise SpecError(f"{what}: column {name!r} is not in data.columns")
    if column.type == ColumnType.DATETIME:
        raise SpecError(f"{what}: {name} is a datetime column; it cannot be aggregated online")
    return column.type


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
        self.entity_type = _column_type(columns, entity, f"entity {entity}")
        self.aggregates = tuple(aggregates)
        self.names = tuple(a.name for a in aggregates)
        self.lateness = int(allowed_lateness_seconds) * _NS_PER_SECOND
        self.retention = max(a.window_seconds for a in aggregates) * _NS_PER_SECOND
        self.retention += self.lateness
        value_columns: list[ValueColumn] = []
        slots: list[_Slot] = []
        where: list[tuple[tuple[str, str | float], ...]] = []
        for i, agg in enumerate(aggregates):
            index = -1
            if agg.agg != Aggregation.COUNT:
                assert agg.column is not None
                _column_type(columns, agg.column, f"aggregate {agg.name}")
                kind = _KIND_OF[agg.agg]
                if kind != ValueKind.CODE and columns[agg.column].type in TEXT_TYPES:
                    raise SpecError(f"aggregate {agg.name}: {agg.agg.value} needs a number")
                vc = ValueColumn(agg.column, kind)
                if vc not in value_columns:
                    value_columns.append(vc)
                index = value_columns.index(vc)
            targets = tuple(
                (col, where_target(col, _column_type(columns, col, agg.name), value))
                for col, value in agg.where.items()
            )
            where.append(targets)
            slots.append(_Slot(agg, np.uint64(1 << i), agg.window_seconds * _NS_PER_SECOND, index))
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
            name: _column_type(columns, name, self.entity)
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
            out.append(_finish(kind, values) if values else EMPTY_VALUE[kind])
        return tuple(out)

    @staticmethod
    def _aggregate(slot: _Slot, state: EntityState, lo: int, hi: int) -> float:
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
        return _finish(kind, values.tolist())

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
            stored = _HEADER.pack(_MAGIC, LAYOUT_VERSION, len(self.kinds), 1) + self._row(event)
            return Observation(self.empty(), None, Status.RECORDED), stored if record else None
        assert data is not None
        if n > SMALL_STATE:
            obs = self.observe(self.decode(data), event, record=record)
            stored = None if obs.state is None else obs.state.to_bytes()
            return Observation(obs.features, None, obs.status), stored
        body = memoryview(data)[_HEADER.size :]
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
        header = _HEADER.pack(_MAGIC, LAYOUT_VERSION, len(self.kinds), n - first + 1)
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


def _finish(kind: Aggregation, values: list[Any]) -> float:
    """An aggregate of a window's counting values (Python numbers, at least one)."""
    if kind == Aggregation.SUM:
        return sum_value(sum(values))
    if kind == Aggregation.MEAN:
        return mean_value(sum(values), len(values))
    if kind == Aggregation.MAX:
        return float(max(values))
    if kind == Aggregation.NUNIQUE:
        return float(len(set(values)))
    return std_value(len(values), sum(values), sum(u * u for u in values))


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
    item = getattr(value, "item", None)
    if callable(item) and not isinstance(value, str):
        value = item()
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


# ----------------------------------------------------------------------------- from history


def read_history(spec: ModelSpec, path: Path, columns: Sequence[str]) -> pd.DataFrame:
    """Past transactions (a Parquet file or folder: ingest's ``data.parquet``, a
    generated data set, a lake export), only ``columns``, typed per spec."""
    import pandas as pd
    import pyarrow.dataset as ds

    from pipelines.features import retype_categories

    path = Path(path)
    if not path.exists():
        raise DataValidationError(f"{path}: history not found")
    try:
        names = set(ds.dataset(path, format="parquet").schema.names)
    except (OSError, ValueError) as exc:
        raise DataValidationError(f"{path}: not a Parquet history: {exc}") from None
    missing = [c for c in columns if c not in names]
    if missing:
        raise DataValidationError(f"{path}: history lacks column(s) {missing}")
    return retype_categories(pd.read_parquet(path, columns=list(columns)), spec)


def states_from_history(
    features: OnlineFeatures, frame: pd.DataFrame
) -> Iterator[tuple[EntityFeatures, str, EntityState]]:
    """The state each entity value would have after observing every row of ``frame``
    (columns typed per spec, as ingest writes them), built in one vectorised pass per
    entity column: ``(entity features, entity text, state)``.

    Equal to replaying the rows through :meth:`EntityFeatures.observe` in time order,
    except that no row is refused as too late (history is complete) and of rows with a
    duplicate transaction id the first is kept.
    """
    import pandas as pd

    from pipelines.windows import counting_mask

    for column in features.needed_columns:
        if column not in frame.columns:
            raise DataValidationError(f"history: column {column!r} missing")
    time = frame[features.time_column]
    if time.isna().any():
        raise DataValidationError(f"history: {features.time_column} has missing timestamps")
    times = time.to_numpy(dtype="datetime64[ns]").astype(np.int64)
    ids = _history_ids(features, frame[features.id_column])
    for entity in features.entities:
        codes, uniques = pd.factorize(frame[entity.entity], sort=False)
        flags = np.zeros(len(frame), dtype=np.uint64)
        for i, agg in enumerate(entity.aggregates):
            flags |= counting_mask(agg, frame).astype(np.uint64) << np.uint64(i)
        values = [_history_values(entity, vc, frame[vc.column]) for vc in entity.value_columns]
        table = EntityState.of_columns(times, ids, flags, values).rows
        del flags, values  # the rows hold them: no second copy while the states are cut
        valid = np.flatnonzero(codes >= 0)
        order = valid[np.lexsort((times[valid], codes[valid]))]
        sorted_codes = codes[order]
        bounds = np.flatnonzero(np.diff(sorted_codes)) + 1
        starts = np.concatenate([[0], bounds]).astype(np.int64)
        stops = np.concatenate([bounds, [len(order)]]).astype(np.int64)
        for start, stop in zip(starts.tolist(), stops.tolist(), strict=True):
            rows = order[start:stop]
            rows = rows[_first_ids(ids[rows])]
            state = entity.evict(EntityState.of_rows(table[rows]))
            text = entity_text(uniques[sorted_codes[start]])
            assert text is not None
            yield entity, text, state


def _first_ids(ids: np.ndarray) -> np.ndarray:
    """Positions of the first occurrence of each id, in their order."""
    if len(ids) < 2:
        return np.arange(len(ids))
    _, first = np.unique(ids, return_index=True)
    if len(first) == len(ids):
        return np.arange(len(ids))
    return np.sort(first)


def _history_ids(features: OnlineFeatures, ids: pd.Series) -> np.ndarray:
    if ids.isna().any():
        raise DataValidationError(f"history: {features.id_column} has nulls")
    if features.id_type == ColumnType.INT:
        return ids.to_numpy(dtype=np.int64)
    return np.array([features.event_id(v) for v in ids.tolist()], dtype=np.int64)


def _history_values(entity: EntityFeatures, vc: ValueColumn, series: pd.Series) -> np.ndarray:
    """One value column of the state, vectorised (equal to :meth:`EntityFeatures.event`)."""
    import pandas as pd

    from pipelines.aggregates import FixedPointError, fixed_point, value_codes

    column_type = entity._types[vc.column]
    if vc.kind == ValueKind.CODE and column_type in TEXT_TYPES:
        if isinstance(series.dtype, pd.CategoricalDtype):
            table = np.array(
                [value_code(str(c), column_type) for c in series.cat.categories] + [0],
                dtype=np.int64,
            )
            return table[series.cat.codes.to_numpy()]  # code -1 (null) takes the last entry
        return np.array([value_code(canonical_value(v, column_type), column_type)
                         for v in series.tolist()], dtype=np.int64)  # fmt: skip
    numbers = series.astype("float64").to_numpy()
    if vc.kind == ValueKind.FLOAT:
        return numbers
    if vc.kind == ValueKind.CODE:
        return value_codes(numbers, column_type)
    try:
        return fixed_point(numbers)
    except FixedPointError as exc:
        raise DataValidationError(f"history: {vc.column}: {exc}") from None
