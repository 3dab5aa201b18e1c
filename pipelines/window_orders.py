"""The sorted orders the windowed aggregates of :mod:`pipelines.windows` are read from.

The rows are put in time order (:class:`Timeline`), then grouped by entity code with a
*stable* LSD radix sort on 16-bit digits (:func:`stable_order`), which keeps time order
within each entity (:class:`EntityOrder`). Every window of a row is then a slice
``[lo, hi)`` of that order (:meth:`EntityOrder.window_starts`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from pipelines.errors import DataValidationError

MAX_STEPS = 8


def factorize(series: pd.Series) -> tuple[np.ndarray, int]:
    """int64 codes (-1 for null) and how many distinct values."""
    codes, uniques = pd.factorize(series, sort=False)
    return codes.astype(np.int64, copy=False), len(uniques)


def stable_order(codes: np.ndarray, n_codes: int) -> np.ndarray:
    """The stable argsort of non-negative int64 codes below ``n_codes``: an LSD radix
    sort on 16-bit digits (numpy sorts 16-bit integers stably by radix)."""
    if n_codes <= 1:
        return np.arange(len(codes))
    digits = max(1, (int(n_codes - 1).bit_length() + 15) // 16)
    if digits > 3:
        return np.argsort(codes, kind="stable")
    order = np.argsort((codes & 0xFFFF).astype(np.uint16), kind="stable")
    for d in range(1, digits):
        digit = ((codes[order] >> (16 * d)) & 0xFFFF).astype(np.uint16)
        order = order[np.argsort(digit, kind="stable")]
    return order


def group_starts(sorted_keys: np.ndarray) -> np.ndarray:
    """Per position of a sorted array: the first position holding the same key."""
    n = len(sorted_keys)
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    firsts = np.flatnonzero(np.concatenate(([True], sorted_keys[1:] != sorted_keys[:-1])))
    return np.repeat(firsts, np.diff(np.append(firsts, n)))


def prefix(values: np.ndarray) -> np.ndarray:
    """``[0, v0, v0 + v1, ...]`` (int64 sums wrap around, which keeps differences exact)."""
    out = np.zeros(len(values) + 1, dtype=values.dtype)
    np.cumsum(values, out=out[1:])
    return out


# ----------------------------------------------------------------------------- orders


@dataclass(frozen=True)
class Timeline:
    """Every row's time, the rows in time order, the sorted distinct times and each
    row's rank among them."""

    times: np.ndarray  # int64 ns per row
    order: np.ndarray | None  # rows in time order (None: already in time order)
    universe: np.ndarray  # sorted distinct times
    rank: np.ndarray  # per row: index of its time in ``universe``

    @classmethod
    def of(cls, times: np.ndarray) -> Timeline:
        n = len(times)
        order = None
        ordered = times
        if n and not bool(np.all(times[1:] >= times[:-1])):
            order = np.argsort(times, kind="stable")
            ordered = times[order]
        new = np.ones(n, dtype=bool)
        new[1:] = ordered[1:] != ordered[:-1]
        rank_sorted = np.cumsum(new, dtype=np.int64) - 1
        if order is None:
            rank = rank_sorted
        else:
            rank = np.empty(n, dtype=np.int64)
            rank[order] = rank_sorted
        return cls(times=times, order=order, universe=ordered[new], rank=rank)


@dataclass(frozen=True)
class EntityOrder:
    """The rows of one entity column sorted by (entity, time) (see the module doc)."""

    rows: np.ndarray  # row index per position (rows without an entity are left out)
    codes: np.ndarray  # entity code per position
    rank: np.ndarray  # time rank per position
    times: np.ndarray  # time (ns) per position
    keys: np.ndarray  # sorted int64 keys: code * n_times + rank
    seg_start: np.ndarray  # per position: first position of its entity
    hi: np.ndarray  # per position: first position of its (entity, time) group
    n_times: int

    @classmethod
    def of(cls, codes: np.ndarray, n_codes: int, timeline: Timeline) -> EntityOrder:
        n_times = len(timeline.universe)
        if n_codes * n_times >= np.iinfo(np.int64).max:
            raise DataValidationError("too many entities x timestamps for the aggregate index")
        if timeline.order is None and (len(codes) == 0 or int(codes.min()) >= 0):
            rows = stable_order(codes, n_codes)  # already in time order, no nulls
        else:
            by_time = timeline.order if timeline.order is not None else np.arange(len(codes))
            by_time = by_time[codes[by_time] >= 0]
            rows = by_time[stable_order(codes[by_time], n_codes)]
        sorted_codes = codes[rows]
        rank = timeline.rank[rows]
        keys = sorted_codes * np.int64(n_times) + rank
        seg_start = group_starts(sorted_codes)
        hi = group_starts(keys)
        return cls(rows, sorted_codes, rank, timeline.times[rows], keys, seg_start, hi, n_times)

    def window_starts(self, timeline: Timeline, window: int) -> np.ndarray:
        """Per position: the first position of its entity with time > t - window.

        Short windows hold few events: ``lo`` steps left from ``hi`` while the event
        before it is still inside the window (vectorised over the positions still
        moving), as long as that set halves at each step; a binary search on the keys
        finds the rest.
        """
        times = self.times
        if not self._mostly_empty(window):
            return self._search(timeline, window, None)
        bound = times - window
        lo = self.hi.copy()
        active = np.flatnonzero(lo > self.seg_start)
        for _ in range(MAX_STEPS):
            if active.size == 0:
                return lo
            inside = times[lo[active] - 1] > bound[active]
            moving = active[inside]
            lo[moving] -= 1
            still = moving[lo[moving] > self.seg_start[moving]]
            halved = still.size * 2 <= active.size
            active = still
            if not halved:
                break
        if active.size:
            lo[active] = self._search(timeline, window, active)
        return lo

    def _search(self, timeline: Timeline, window: int, at: np.ndarray | None) -> np.ndarray:
        """Window starts by binary search on the keys, for the positions ``at`` (all)."""
        # per distinct time u: the rank of the first distinct time > u - window (sorted
        # queries: fast), then per position by its time's rank
        first = np.searchsorted(timeline.universe, timeline.universe - window, "right")
        if at is None:
            query = self.codes * np.int64(self.n_times) + first[self.rank]
        else:
            query = self.codes[at] * np.int64(self.n_times) + first[self.rank[at]]
        return np.searchsorted(self.keys, query, "left")

    def _mostly_empty(self, window: int) -> bool:
        """Whether most windows of this length hold no earlier event (then stepping
        pays), judged on up to 4096 evenly spaced positions that have one before."""
        n = len(self.rows)
        if n < 2:
            return True
        sample = np.linspace(1, n - 1, min(4096, n - 1)).astype(np.int64)
        sample = sample[self.hi[sample] > self.seg_start[sample]]
        if sample.size == 0:
            return True
        before = self.hi[sample] - 1
        return bool((self.times[before] > self.times[sample] - window).mean() < 0.5)
