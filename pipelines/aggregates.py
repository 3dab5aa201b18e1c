"""The arithmetic that the offline and the online windowed aggregates share.

``pipelines.features`` computes the spec's aggregates over history (vectorised, for
training and backfills) and ``pipelines.features_online`` computes them for one live
event at a time. Both must give *exactly* the same float64 for the same events, so the
steps where floating point could differ are defined once, here:

* **Sums are exact.** ``sum``, ``mean`` and ``std`` work on the column's values in
  fixed point: ``round(value * 10**6)`` as int64 (:func:`fixed_point`, half to even),
  summed in integers, which is exact and independent of the order of the events (a
  float sum is not: the offline path takes differences of cumulative sums, the online
  path adds up one window). A window's ``sum`` is then ``float(total) / 10**6``, its
  ``mean`` that divided by the count, its ``std`` the square root of the exactly
  rounded sample variance of the fixed-point values (Python integers, no
  cancellation), divided by ``10**6``. Values with more than six decimals are rounded
  to six for these three aggregates; money and distances have two.
* **Distinct values** (``nunique``) compare values for equality: numbers as float64
  (``-0.0`` equals ``0.0``), categories and strings as text. The online state keeps
  an int64 code per value (:func:`value_codes`: the float's bits, or a 64-bit BLAKE2b
  digest of the text).
* **Filters** (``where``): a category or string column matches when its text equals
  ``str(value)``; a number or boolean column when it equals ``float(value)``; a null
  never matches (:func:`where_mask`).

Imports numpy and the spec only: it loads in the serving environment too.
"""

from __future__ import annotations

import hashlib
import math
import struct
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from pipelines.errors import SpecError
from pipelines.spec import ColumnType
from pipelines.spec_features import Aggregation

SUM_DECIMALS = 6
SUM_SCALE = 10.0**SUM_DECIMALS  # 1e6 is exact in float64
#: largest |value * 10**6| summed (an int64 with headroom)
MAX_FIXED_UNITS = 2.0**62
MAX_FIXED_VALUE = MAX_FIXED_UNITS / SUM_SCALE
_DOUBLE = struct.Struct("<d")
_FLOAT_BITS = struct.Struct("<q")
TEXT_TYPES = (ColumnType.CATEGORY, ColumnType.STRING)
NUMBER_TYPES = (ColumnType.INT, ColumnType.FLOAT, ColumnType.BOOL)

#: an empty window's value per aggregation
EMPTY_VALUE: dict[Aggregation, float] = {
    Aggregation.COUNT: 0.0,
    Aggregation.SUM: 0.0,
    Aggregation.NUNIQUE: 0.0,
    Aggregation.MEAN: math.nan,
    Aggregation.MAX: math.nan,
    Aggregation.STD: math.nan,
}


class FixedPointError(ValueError):
    """A value cannot take part in an exact sum (infinite, or too large)."""


def fixed_point(values: np.ndarray) -> np.ndarray:
    """float64 values as int64 in units of 10**-6 (round half to even).

    Raises :class:`FixedPointError` for an infinite value or one whose units exceed
    :data:`MAX_FIXED_UNITS` in magnitude; NaN must be masked out by the caller (it is
    mapped to 0 here).
    """
    scaled = np.asarray(values, dtype=np.float64) * SUM_SCALE
    nan = np.isnan(scaled)
    if nan.any():
        scaled[nan] = 0.0
    peak = float(np.abs(scaled).max()) if scaled.size else 0.0
    if math.isinf(peak):
        raise FixedPointError("infinite values cannot be summed")
    if peak > MAX_FIXED_UNITS:
        raise FixedPointError(f"values above {MAX_FIXED_VALUE:.3g} in magnitude cannot be summed")
    return np.rint(scaled, out=scaled).astype(np.int64)


def fixed_point_value(value: float) -> int:
    """One value as :func:`fixed_point` gives it (the online path's scalar form)."""
    if math.isnan(value):
        return 0
    scaled = value * SUM_SCALE
    if math.isinf(scaled):
        raise FixedPointError("infinite values cannot be summed")
    if abs(scaled) > MAX_FIXED_UNITS:
        raise FixedPointError(f"values above {MAX_FIXED_VALUE:.3g} in magnitude cannot be summed")
    return int(round(scaled))


def check_sum_fits(max_abs_units: int, max_events: int) -> None:
    """Refuse windows whose integer sum could overflow int64."""
    if max_abs_units * max_events >= 2**63:
        raise FixedPointError(
            f"a window of {max_events} values up to {max_abs_units / SUM_SCALE:.3g} "
            "can overflow the exact sum"
        )


def sum_value(total: int) -> float:
    """A window's ``sum`` from its fixed-point total (same as :func:`sum_values`)."""
    return float(total) / SUM_SCALE


def sum_values(totals: np.ndarray) -> np.ndarray:
    """Vectorised :func:`sum_value` (int64 totals, bit-identical results)."""
    return totals.astype(np.float64) / SUM_SCALE


def mean_value(total: int, count: int) -> float:
    """A window's ``mean``: NaN for an empty window (same as :func:`mean_values`)."""
    return sum_value(total) / count if count else math.nan


def mean_values(totals: np.ndarray, counts: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(counts > 0, sum_values(totals) / counts, np.nan)


def std_value(count: int, total: int, squares: int) -> float:
    """Sample standard deviation (ddof 1) from exact integer sums of the fixed-point
    values and of their squares; NaN with fewer than two events."""
    if count < 2:
        return math.nan
    return math.sqrt((count * squares - total * total) / (count * (count - 1))) / SUM_SCALE


def std_values(counts: np.ndarray, totals: Sequence[int], squares: Sequence[int]) -> np.ndarray:
    """Vectorised :func:`std_value` on Python integers (bit-identical results)."""
    out = np.full(len(counts), np.nan)
    for i in np.flatnonzero(counts > 1).tolist():
        out[i] = std_value(int(counts[i]), int(totals[i]), int(squares[i]))
    return out


def text_code(text: str) -> int:
    """A 64-bit code of a text (BLAKE2b), as a signed int64."""
    digest = hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "little", signed=True)


def value_codes(values: np.ndarray, column_type: ColumnType) -> np.ndarray:
    """int64 codes that are equal exactly when the values are (nulls map to 0).

    ``values`` are canonical (:func:`canonical_values`): float64 for numbers, text
    or None for categories and strings.
    """
    if column_type in TEXT_TYPES:
        return np.fromiter(
            (0 if v is None else text_code(v) for v in values), dtype=np.int64, count=len(values)
        )
    numbers = np.asarray(values, dtype=np.float64) + 0.0  # -0.0 becomes 0.0
    return np.where(np.isnan(numbers), 0.0, numbers).view(np.int64)


def value_code(value: str | float | None, column_type: ColumnType) -> int:
    """One canonical value's code, as :func:`value_codes` gives it."""
    if column_type in TEXT_TYPES:
        return 0 if value is None else text_code(str(value))
    number = math.nan if value is None else float(value) + 0.0
    return 0 if math.isnan(number) else _FLOAT_BITS.unpack(_DOUBLE.pack(number))[0]


def canonical_value(value: Any, column_type: ColumnType) -> str | float | None:
    """One value in canonical form (see :func:`canonical_values`)."""
    if column_type in TEXT_TYPES:
        return None if _is_null(value) else str(value)
    if column_type in NUMBER_TYPES:
        return math.nan if _is_null(value) else float(value)
    raise SpecError(f"a {column_type.value} column cannot be aggregated online")


def canonical_values(values: Iterable[Any], column_type: ColumnType) -> np.ndarray:
    """A column's values in the canonical form of :func:`where_mask` and
    :func:`value_codes`: float64 (NaN for null) for numbers and booleans, an object
    array of text (None for null) for categories and strings."""
    if column_type in TEXT_TYPES:
        items = [None if _is_null(v) else str(v) for v in values]
        out = np.empty(len(items), dtype=object)
        out[:] = items
        return out
    if column_type in NUMBER_TYPES:
        return np.array([math.nan if _is_null(v) else float(v) for v in values], dtype=np.float64)
    raise SpecError(f"a {column_type.value} column cannot be aggregated online")


def _is_null(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def where_target(column: str, column_type: ColumnType, value: Any) -> str | float:
    """The value a ``where`` filter compares the canonical column with."""
    if column_type in TEXT_TYPES:
        return str(value)
    if column_type in NUMBER_TYPES:
        try:
            return float(value)
        except (TypeError, ValueError):
            raise SpecError(f"where {column} = {value!r}, but {column} is numeric") from None
    raise SpecError(f"where on {column}: a {column_type.value} column cannot be filtered")


def matches(value: str | float | None, target: str | float) -> bool:
    """One canonical value against a ``where`` target, as :func:`where_mask`."""
    if isinstance(target, str):
        return value == target
    return value is not None and not isinstance(value, str) and value == target


def where_mask(values: np.ndarray, target: str | float) -> np.ndarray:
    """Canonical values equal to the target (a null never matches)."""
    if isinstance(target, str):
        return np.fromiter((v == target for v in values), dtype=bool, count=len(values))
    return np.asarray(values, dtype=np.float64) == target
