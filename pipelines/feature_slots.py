"""How an entity's aggregates are compiled for the online state machine.

Each :class:`~pipelines.spec_features.AggregateFeature` of one entity column becomes a
:class:`Slot`: its bit in a stored event's flags, its window in ns and the value column
it reads (:func:`compile_slots`, which also checks the spec's columns and types);
:func:`finish_window` turns a window's counting values into the aggregate's value, with
the offline path's exact sums (:mod:`pipelines.aggregates`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from pipelines.aggregates import TEXT_TYPES, mean_value, std_value, sum_value, where_target
from pipelines.errors import SpecError
from pipelines.feature_state import ValueColumn, ValueKind
from pipelines.spec import Column, ColumnType
from pipelines.spec_features import AggregateFeature, Aggregation

NS_PER_SECOND = 1_000_000_000


KIND_OF = {
    Aggregation.SUM: ValueKind.FIXED,
    Aggregation.MEAN: ValueKind.FIXED,
    Aggregation.STD: ValueKind.FIXED,
    Aggregation.MAX: ValueKind.FLOAT,
    Aggregation.NUNIQUE: ValueKind.CODE,
}


@dataclass(frozen=True)
class Slot:
    """One aggregate as the state machine evaluates it."""

    agg: AggregateFeature
    bit: np.uint64
    window: int  # ns
    value: int  # index into the state's value columns, -1 for count


def spec_column_type(columns: Mapping[str, Column], name: str, what: str) -> ColumnType:
    column = columns.get(name)
    if column is None:
        raise SpecError(f"{what}: column {name!r} is not in data.columns")
    if column.type == ColumnType.DATETIME:
        raise SpecError(f"{what}: {name} is a datetime column; it cannot be aggregated online")
    return column.type


def compile_slots(
    aggregates: Sequence[AggregateFeature], columns: Mapping[str, Column]
) -> tuple[list[ValueColumn], list[Slot], list[tuple[tuple[str, str | float], ...]]]:
    """The value columns an entity's aggregates read, each aggregate's slot, and each
    aggregate's ``where`` targets."""
    value_columns: list[ValueColumn] = []
    slots: list[Slot] = []
    where: list[tuple[tuple[str, str | float], ...]] = []
    for i, agg in enumerate(aggregates):
        index = -1
        if agg.agg != Aggregation.COUNT:
            assert agg.column is not None
            spec_column_type(columns, agg.column, f"aggregate {agg.name}")
            kind = KIND_OF[agg.agg]
            if kind != ValueKind.CODE and columns[agg.column].type in TEXT_TYPES:
                raise SpecError(f"aggregate {agg.name}: {agg.agg.value} needs a number")
            vc = ValueColumn(agg.column, kind)
            if vc not in value_columns:
                value_columns.append(vc)
            index = value_columns.index(vc)
        targets = tuple(
            (col, where_target(col, spec_column_type(columns, col, agg.name), value))
            for col, value in agg.where.items()
        )
        where.append(targets)
        slots.append(Slot(agg, np.uint64(1 << i), agg.window_seconds * NS_PER_SECOND, index))
    return value_columns, slots, where


def finish_window(kind: Aggregation, values: list[Any]) -> float:
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
