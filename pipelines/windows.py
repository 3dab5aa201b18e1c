"""The vectorised engine of the offline windowed aggregates (``compute_aggregates``).

Semantics are those of :mod:`pipelines.features` (window ``(t - window, t)`` per entity,
``where`` filters, nulls, exact sums with :mod:`pipelines.aggregates`); this module is
only about doing it fast on tens of millions of rows with numpy:

* **One order per entity column.** The rows are put in time order (they usually
  already are), then grouped by entity code with a *stable* LSD radix sort on 16-bit
  digits (numpy's stable sort of 16-bit integers is a radix sort), which keeps time
  order within each entity: ``O(n)`` instead of an ``O(n log n)`` comparison sort. Every
  window of a row is a slice ``[lo, hi)`` of that order: ``hi`` is the first row of the
  row's (entity, time) group (rows at the same instant never see each other), ``lo``
  the first with a time after ``t - window``: one ``searchsorted`` on the integer key
  ``entity_code * n_times + time_rank`` per window length, shared by all aggregates of
  that length.
* **Counts and sums** are differences of prefix sums (int64: the fixed-point sums
  wrap around on overflow, which keeps the differences exact; a window that could
  really overflow is refused). **max** is a sparse table of range maxima built level
  by level in place (memory: two arrays). **std** adds exact Python integers.
* **nunique.** Each row is grouped with the earlier rows of the same (entity, value)
  by a second stable radix sort (by value, on the entity order). Occurrences whose
  windows overlap (less than a window apart) form a *run*; a run covers the queries
  after its first occurrence and up to a window after its last. So the distinct values
  in a row's window are the runs of its entity that *began* at a position before
  ``hi`` minus those whose last occurrence lies before ``lo`` (they ended before
  ``t``): two prefix counts, no per-row loop.
* **Parallel.** Factorising, ordering, window starts, aggregates and scattering the
  results back run as tasks on a thread pool (numpy's sorts, searches, ufuncs and
  fancy indexing release the GIL).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
import pandas as pd

from pipelines.aggregates import (
    EMPTY_VALUE,
    FixedPointError,
    check_sum_fits,
    fixed_point,
    mean_values,
    std_values,
    sum_values,
)
from pipelines.errors import DataValidationError
from pipelines.spec_features import AggregateFeature, Aggregation
from pipelines.window_orders import EntityOrder, Timeline, factorize, prefix, stable_order

NS_PER_SECOND = 1_000_000_000
#: window starts found by stepping left before a binary search takes over
T = TypeVar("T")
R = TypeVar("R")


# ----------------------------------------------------------------------------- inputs


def where_mask(frame: pd.DataFrame, where: Mapping[str, Any], name: str) -> np.ndarray:
    """Rows whose columns equal every ``where`` value (nulls never match)."""
    mask = np.ones(len(frame), dtype=bool)
    for column, value in where.items():
        if column not in frame.columns:
            raise DataValidationError(f"aggregate {name}: where column {column!r} not in the data")
        series = frame[column]
        if isinstance(series.dtype, pd.CategoricalDtype):
            cats = [str(c) for c in series.cat.categories]
            wanted = [i for i, c in enumerate(cats) if c == str(value)]
            match = np.isin(series.cat.codes.to_numpy(), wanted)
        elif pd.api.types.is_bool_dtype(series.dtype) or isinstance(value, bool):
            match = (series == value).to_numpy(dtype=bool, na_value=False)
        elif pd.api.types.is_numeric_dtype(series.dtype):
            try:
                target = float(value)
            except (TypeError, ValueError):
                raise DataValidationError(
                    f"aggregate {name}: where {column} = {value!r} but {column} is numeric"
                ) from None
            match = (series.astype("float64") == target).to_numpy(dtype=bool, na_value=False)
        else:
            match = (series.astype(object) == str(value)).to_numpy(dtype=bool, na_value=False)
            match &= series.notna().to_numpy()
        mask &= match
    return mask


def counting_mask(agg: AggregateFeature, frame: pd.DataFrame) -> np.ndarray:
    """The rows that count for ``agg`` as past events: its ``where`` holds and its
    ``column`` (if any) is not null."""
    counting = where_mask(frame, agg.where, agg.name)
    if agg.column is not None:
        counting &= frame[agg.column].notna().to_numpy()
    return counting


def require_numeric(frame: pd.DataFrame, agg: AggregateFeature) -> None:
    """Refuse a sum/mean/max/std over a column that is not numeric, naming it."""
    assert agg.column is not None
    dtype = frame[agg.column].dtype
    if isinstance(dtype, pd.CategoricalDtype) or not (
        pd.api.types.is_numeric_dtype(dtype) or pd.api.types.is_bool_dtype(dtype)
    ):
        raise DataValidationError(
            f"aggregate {agg.name}: {agg.agg.value} needs a numeric column, "
            f"{agg.column!r} is {dtype}"
        )


# ----------------------------------------------------------------------------- aggregates


def window_max(values: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Range maximum of ``values`` over each ``[lo, hi)`` (a sparse table built in
    place, one level at a time; each level answers the ranges of its length class);
    -inf for an empty range."""
    length = hi - lo
    out = np.full(len(lo), -np.inf)
    longest = int(length.max()) if length.size else 0
    if longest == 0:
        return out
    levels = longest.bit_length()
    # level of a range: floor(log2(length)); empty ranges get the extra class `levels`
    level = np.frexp(np.maximum(length, 1).astype(np.float64))[1].astype(np.uint8) - 1
    level[length == 0] = levels
    by_level = np.argsort(level, kind="stable")  # radix sort of uint8: linear
    bounds = np.concatenate(([0], np.cumsum(np.bincount(level, minlength=levels + 1))))
    table = values.copy()
    span = 1
    for k in range(levels):
        sel = by_level[bounds[k] : bounds[k + 1]]
        if sel.size:
            out[sel] = np.maximum(table[lo[sel]], table[hi[sel] - span])
        if k + 1 < levels:
            table[:-span] = np.maximum(table[:-span], table[span:])
            span *= 2
    return out


def run_bounds(
    order: EntityOrder,
    timeline: Timeline,
    counting: np.ndarray,
    values: np.ndarray,
    n_values: int,
    window: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Where the runs of each (entity, value) pair begin and end (their last
    occurrence), as flags per position of the entity order (see the module doc).

    ``counting`` and ``values`` (codes, -1 for null) are in entity order.
    """
    n = len(order.rows)
    begun = np.zeros(n, dtype=bool)
    ended = np.zeros(n, dtype=bool)
    complete = n == 0 or (bool(counting.all()) and int(values.min()) >= 0)
    events = None if complete else np.flatnonzero(counting & (values >= 0))
    if n == 0 or (events is not None and events.size == 0):
        return begun, ended
    # group by value keeping (entity, time) order: runs of one (entity, value) pair
    if events is None:
        events = stable_order(values, n_values)
    else:
        events = events[stable_order(values[events], n_values)]
    if (int(order.codes[-1]) + 1) * n_values < np.iinfo(np.int64).max:
        pair = (order.codes * np.int64(n_values) + values)[events]
        pair_start = np.concatenate(([True], pair[1:] != pair[:-1]))
    else:
        v, c = values[events], order.codes[events]
        pair_start = np.concatenate(([True], (v[1:] != v[:-1]) | (c[1:] != c[:-1])))
    t = order.times[events]
    starts = pair_start
    starts[1:] |= t[1:] >= t[:-1] + window
    lasts = np.append(starts[1:], True)
    begun[events[starts]] = True
    ended[events[lasts]] = True
    return begun, ended


def nunique_from_runs(
    order: EntityOrder, lo: np.ndarray, begun: np.ndarray, ended: np.ndarray
) -> np.ndarray:
    """Distinct values per position: runs begun before ``hi`` minus runs whose last
    occurrence lies before ``lo``. Every run of an earlier entity began and ended
    before this entity's first position, so the counts need no entity offset."""
    begins, ends = _count_prefix(begun), _count_prefix(ended)
    return (begins[order.hi] - ends[lo]).astype(np.float64)


def window_nunique(
    order: EntityOrder,
    timeline: Timeline,
    counting: np.ndarray,
    values: np.ndarray,
    n_values: int,
    lo: np.ndarray,
    window: int,
) -> np.ndarray:
    """Distinct values among each position's window events."""
    begun, ended = run_bounds(order, timeline, counting, values, n_values, window)
    return nunique_from_runs(order, lo, begun, ended)


def _count_prefix(flags: np.ndarray) -> np.ndarray:
    """``[0, f0, f0 + f1, ...]`` of booleans, as int64."""
    out = np.zeros(len(flags) + 1, dtype=np.int64)
    np.cumsum(flags, out=out[1:])
    return out


def window_std(
    counting: np.ndarray, units: np.ndarray, lo: np.ndarray, hi: np.ndarray, count: np.ndarray
) -> np.ndarray:
    """Exact sample standard deviation: integer sums of values and squares as Python
    integers (object arrays), finished like the online path (:func:`std_values`)."""
    big = np.where(counting, units, 0).astype(object)
    firsts = prefix(big)
    seconds = prefix(big * big)
    return std_values(count, firsts[hi] - firsts[lo], seconds[hi] - seconds[lo])


@dataclass(frozen=True)
class _Inputs:
    """What one aggregate needs, in its entity's order."""

    order: EntityOrder
    lo: np.ndarray
    counting: np.ndarray
    values: np.ndarray | None  # float64 values, or value codes for nunique
    n_values: int
    every: bool  # every event counts (no filter, no null)
    units: np.ndarray | None = None  # fixed-point values when every event counts


def aggregate_in_order(agg: AggregateFeature, inputs: _Inputs, timeline: Timeline) -> np.ndarray:
    """One aggregate per position of its entity order."""
    order, lo, counting, hi = inputs.order, inputs.lo, inputs.counting, inputs.order.hi
    if agg.agg == Aggregation.NUNIQUE:
        assert inputs.values is not None
        window = int(agg.window_seconds) * NS_PER_SECOND
        return window_nunique(order, timeline, counting, inputs.values, inputs.n_values, lo, window)
    if inputs.every:
        count = hi - lo
    else:
        cumulative = prefix(counting.astype(np.int64))
        count = cumulative[hi] - cumulative[lo]
    if agg.agg == Aggregation.COUNT:
        return count.astype(np.float64)
    values = inputs.values
    assert values is not None
    if agg.agg == Aggregation.MAX:
        best = window_max(np.where(counting, values, -np.inf), lo, hi)
        return np.where(count > 0, best, np.nan)
    try:
        if inputs.units is not None:
            units = inputs.units  # every event counts: shared by the column's aggregates
        else:
            units = fixed_point(np.where(counting, values, 0.0))
        if agg.agg == Aggregation.STD:
            return window_std(counting, units, lo, hi, count)
        check_sum_fits(int(np.abs(units).max(initial=0)), int(count.max(initial=0)))
    except FixedPointError as exc:
        raise DataValidationError(f"aggregate {agg.name}: {agg.column}: {exc}") from None
    sums = prefix(units)
    totals = sums[hi] - sums[lo]
    if agg.agg == Aggregation.SUM:
        return sum_values(totals)
    return mean_values(totals, count)


# ----------------------------------------------------------------------------- driver


def _check(aggregates: Sequence[AggregateFeature], frame: pd.DataFrame, time: str) -> None:
    for agg in aggregates:
        for column in (agg.entity, time, agg.column):
            if column is not None and column not in frame.columns:
                raise DataValidationError(
                    f"aggregate {agg.name}: column {column!r} not in the data"
                )
        if agg.agg not in (Aggregation.COUNT, Aggregation.NUNIQUE):
            require_numeric(frame, agg)
    if frame[time].isna().any():
        raise DataValidationError(f"aggregate {aggregates[0].name}: {time} has missing timestamps")


class _Tasks:
    """Run functions on the pool (or at once without one) and fetch their results.

    Dependencies are submitted before the tasks that wait for them and the pool runs
    tasks in submission order, so a waiting task's dependencies are done or running:
    no deadlock, and no barrier between phases (a thread that finished one entity's
    sort goes on with that entity's windows while the other sorts).
    """

    def __init__(self, pool: ThreadPoolExecutor | None) -> None:
        self.pool = pool

    def submit(self, fn: Callable[..., R], *args: Any) -> Callable[[], R]:
        if self.pool is None:
            value = fn(*args)
            return lambda: value
        future = self.pool.submit(fn, *args)
        return future.result


_COST = {Aggregation.NUNIQUE: 0, Aggregation.MAX: 1, Aggregation.STD: 1}


def _pair_key(agg: AggregateFeature, frame: pd.DataFrame) -> tuple[frozenset[str], int] | None:
    """The (columns, window) of an unfiltered nunique over columns without nulls."""
    if agg.agg != Aggregation.NUNIQUE or agg.where or agg.column is None:
        return None
    if agg.column == agg.entity:
        return None
    if frame[agg.entity].isna().any() or frame[agg.column].isna().any():
        return None
    return frozenset((agg.entity, agg.column)), int(agg.window_seconds) * NS_PER_SECOND


def _pair_twice(
    key: tuple[frozenset[str], int], aggregates: Sequence[AggregateFeature], frame: pd.DataFrame
) -> bool:
    return sum(1 for a in aggregates if _pair_key(a, frame) == key) > 1


def compute(
    aggregates: Sequence[AggregateFeature],
    frame: pd.DataFrame,
    time_column: str,
    workers: int | None = None,
) -> dict[str, np.ndarray]:
    """Every aggregate as a float64 array in ``frame`` row order."""
    _check(aggregates, frame, time_column)
    workers = workers or os.cpu_count() or 1
    pool = ThreadPoolExecutor(max_workers=workers) if workers > 1 else None
    try:
        return _Run(aggregates, frame, time_column, pool).results()
    finally:
        if pool is not None:
            pool.shutdown()


class _Run:
    """One call of :func:`compute`: the shared inputs (codes, entity orders, window
    starts, gathered values, shared nunique runs) submitted as tasks, in dependency
    order, then one task per aggregate."""

    def __init__(
        self,
        aggregates: Sequence[AggregateFeature],
        frame: pd.DataFrame,
        time_column: str,
        pool: ThreadPoolExecutor | None,
    ) -> None:
        self.aggregates = aggregates
        self.frame = frame
        self.tasks = tasks = _Tasks(pool)
        times = frame[time_column].to_numpy(dtype="datetime64[ns]").astype(np.int64)
        entities = list(dict.fromkeys(a.entity for a in aggregates))
        distinct = [a.column for a in aggregates if a.agg == Aggregation.NUNIQUE and a.column]
        columns = dict.fromkeys([*entities, *distinct])
        self.coded = coded = {c: tasks.submit(factorize, frame[c]) for c in columns}
        self.timeline = timeline = Timeline.of(times)
        self.orders = orders = {
            e: tasks.submit(lambda e: EntityOrder.of(*coded[e](), timeline), e) for e in entities
        }
        self.starts = {
            (a.entity, w): tasks.submit(
                lambda e, w: orders[e]().window_starts(timeline, w), a.entity, w
            )
            for a in aggregates
            for w in [int(a.window_seconds) * NS_PER_SECOND]
        }
        self.sums = {
            (a.entity, a.column)
            for a in aggregates
            if a.agg in (Aggregation.SUM, Aggregation.MEAN, Aggregation.STD)
        }
        self.gathered = {
            (a.entity, a.column): tasks.submit(self.gather, a.entity, a.column)
            for a in aggregates
            if a.column is not None and a.agg not in (Aggregation.COUNT, Aggregation.NUNIQUE)
        }
        self.pairs: dict[
            tuple[frozenset[str], int], Callable[[], tuple[np.ndarray, np.ndarray]]
        ] = {}
        for agg in aggregates:
            key = _pair_key(agg, frame)
            if key is not None and key not in self.pairs and _pair_twice(key, aggregates, frame):
                self.pairs[key] = tasks.submit(self.shared_runs, agg)

    def results(self) -> dict[str, np.ndarray]:
        heavy_first = sorted(self.aggregates, key=lambda a: _COST.get(a.agg, 2))
        results = {a.name: self.tasks.submit(self.one, a) for a in heavy_first}
        return {a.name: results[a.name]() for a in self.aggregates}

    def gather(self, entity: str, column: str) -> tuple[np.ndarray, np.ndarray | None]:
        values = self.frame[column].astype("float64").to_numpy()[self.orders[entity]().rows]
        if (entity, column) not in self.sums:
            return values, None
        try:
            return values, fixed_point(values)
        except FixedPointError:
            return values, None  # the aggregate that sums it says why

    def one(self, agg: AggregateFeature) -> np.ndarray:
        frame = self.frame
        order = self.orders[agg.entity]()
        shared = self.one_distinct(agg) if agg.agg == Aggregation.NUNIQUE else None
        if shared is not None:
            column = np.full(len(frame), EMPTY_VALUE[agg.agg])
            column[order.rows] = shared
            return column
        mask = counting_mask(agg, frame)
        every = bool(mask.all())
        counting = np.ones(len(order.rows), dtype=bool) if every else mask[order.rows]
        values: np.ndarray | None = None
        n_values = 0
        if agg.agg == Aggregation.NUNIQUE:
            assert agg.column is not None
            codes, n_values = self.coded[agg.column]()
            values = codes[order.rows]
        units = None
        if agg.agg not in (Aggregation.COUNT, Aggregation.NUNIQUE):
            values, all_units = self.gathered[agg.entity, agg.column]()
            units = all_units if every else None
        lo = self.starts[agg.entity, int(agg.window_seconds) * NS_PER_SECOND]()
        inputs = _Inputs(order, lo, counting, values, n_values, every, units)
        column = np.full(len(frame), EMPTY_VALUE[agg.agg])
        column[order.rows] = aggregate_in_order(agg, inputs, self.timeline)
        return column

    # Two nunique aggregates over the same pair of columns and window (distinct
    # terminals per card, distinct cards per terminal) have the same runs: found once,
    # from the first one's entity order, and kept per row for the other.
    def shared_runs(self, agg: AggregateFeature) -> tuple[np.ndarray, np.ndarray]:
        assert agg.column is not None
        n = len(self.frame)
        order = self.orders[agg.entity]()
        codes, n_values = self.coded[agg.column]()
        counting = np.ones(len(order.rows), dtype=bool)
        window = int(agg.window_seconds) * NS_PER_SECOND
        begun, ended = run_bounds(
            order, self.timeline, counting, codes[order.rows], n_values, window
        )
        begun_rows = np.zeros(n, dtype=bool)
        ended_rows = np.zeros(n, dtype=bool)
        begun_rows[order.rows] = begun
        ended_rows[order.rows] = ended
        return begun_rows, ended_rows

    def one_distinct(self, agg: AggregateFeature) -> np.ndarray | None:
        key = _pair_key(agg, self.frame)
        if key is None or key not in self.pairs:
            return None
        order = self.orders[agg.entity]()
        begun_rows, ended_rows = self.pairs[key]()
        lo = self.starts[agg.entity, int(agg.window_seconds) * NS_PER_SECOND]()
        return nunique_from_runs(order, lo, begun_rows[order.rows], ended_rows[order.rows])
