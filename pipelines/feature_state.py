"""The stored state of one entity value in the online features, and what observing gives.

An entity value's events in time order, one packed little-endian row each
(:func:`row_dtype`): time (ns), transaction id, one bit per aggregate telling whether the
event counts for it, then the values the aggregates need (fixed-point, float64 or an int64
code, :class:`ValueKind`). :meth:`EntityState.to_bytes` is the form a store keeps, behind a
header (:data:`STATE_HEADER`: magic, :data:`LAYOUT_VERSION`, value columns, events).
:mod:`pipelines.features_online` computes the features from it and updates it.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

import numpy as np

from pipelines.errors import GovMLError

LAYOUT_VERSION = 2  # 1: column-major (one column after another)


STATE_HEADER = struct.Struct("<2sBBI")  # magic, layout version, value columns, events
STATE_MAGIC = b"GF"


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
        header = STATE_HEADER.pack(STATE_MAGIC, LAYOUT_VERSION, len(self.values), len(self.rows))
        return header + self.rows.tobytes()

    @classmethod
    def from_bytes(cls, data: bytes | memoryview, kinds: Sequence[ValueKind]) -> EntityState:
        """The state :meth:`to_bytes` wrote (read-only views of ``data``)."""
        n = stored_events(data, kinds)
        dtype = row_dtype(kinds)
        return cls.of_rows(np.frombuffer(data, dtype=dtype, count=n, offset=STATE_HEADER.size))

    def slice(self, start: int, stop: int | None = None) -> EntityState:
        return EntityState.of_rows(self.rows[start:stop])


def stored_events(data: bytes | memoryview, kinds: Sequence[ValueKind]) -> int:
    """The number of events of a stored state (:meth:`EntityState.to_bytes`), after
    checking its header and length; :class:`StateError` for anything else."""
    if len(data) < STATE_HEADER.size:
        raise StateError("feature state: too short")
    magic, version, n_values, n = STATE_HEADER.unpack_from(data)
    if magic != STATE_MAGIC or version != LAYOUT_VERSION or n_values != len(kinds):
        raise StateError(
            f"feature state: layout {bytes(magic)!r} v{version} with {n_values} value "
            f"column(s), expected {STATE_MAGIC!r} v{LAYOUT_VERSION} with {len(kinds)}"
        )
    if len(data) != STATE_HEADER.size + 8 * n * (3 + n_values):
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


def refused(observations: Sequence[Observation]) -> bool:
    """A transaction is refused when any of its entity values finds it too late; then
    no state records it (the store writes nothing)."""
    return any(o.status == Status.TOO_LATE for o in observations)


@dataclass(frozen=True)
class ValueColumn:
    column: str
    kind: ValueKind
