"""The data-quality suite: which checks a spec (and a reference profile) imply.

:func:`build_checks` turns the spec's data contract and, when given, the champion's data
profile into :class:`Check` rows (a Great Expectations expectation each, blocking or a
warning); the bounds are the module constants (conventions in
:mod:`validation.data_quality`). Great Expectations is imported inside the functions.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pandas as pd

from pipelines.formatting import short_number
from pipelines.spec import ColumnType, MissingPolicy, ModelSpec

ROW_COUNT_MIN_RATIO = 0.5
ROW_COUNT_MAX_RATIO = 2.0
LABEL_RATE_RELATIVE_TOLERANCE = 0.4
LABEL_RATE_STANDARD_ERRORS = 3.0
REFERENCE_MAX_TIME_TOLERANCE = timedelta(days=2)
LABEL_RATE_SANITY_MIN = 0.0  # exclusive
LABEL_RATE_SANITY_MAX = 0.5  # exclusive


@dataclass(frozen=True)
class Check:
    """One expectation of the suite with our bookkeeping."""

    key: str
    expectation: Any  # a great_expectations Expectation
    description: str
    blocking: bool


# ----------------------------------------------------------------------------- suite


def _expected_dtype(col_type: ColumnType, dtype: Any) -> str:
    if col_type == ColumnType.FLOAT:
        return "float64"
    if col_type == ColumnType.INT:
        return "Int64" if isinstance(dtype, pd.Int64Dtype) else "int64"
    if col_type == ColumnType.BOOL:
        return "boolean" if isinstance(dtype, pd.BooleanDtype) else "bool"
    if col_type == ColumnType.CATEGORY:
        return "category"
    if col_type == ColumnType.DATETIME:
        return "datetime64[ns]"
    return "string" if isinstance(dtype, pd.StringDtype) else "object"


def _bounds_text(lo: Any, hi: Any) -> str:
    if lo is not None and hi is not None:
        return f"between {short_number(lo)} and {short_number(hi)}"
    if lo is not None:
        return f"at least {short_number(lo)}"
    return f"at most {short_number(hi)}"


def _label_rate_bounds(
    reference: Mapping[str, Any] | None, rows: int
) -> tuple[float, float, bool, str]:
    """(min, max, strict, how) for the target mean."""
    ref_rate = None if reference is None else reference.get("label_rate")
    if ref_rate is None:
        return (
            LABEL_RATE_SANITY_MIN,
            LABEL_RATE_SANITY_MAX,
            True,
            f"strictly between {short_number(LABEL_RATE_SANITY_MIN)} "
            f"and {short_number(LABEL_RATE_SANITY_MAX)}",
        )
    p = float(ref_rate)
    se = math.sqrt(p * (1.0 - p) / max(rows, 1))
    half = max(LABEL_RATE_RELATIVE_TOLERANCE * p, LABEL_RATE_STANDARD_ERRORS * se)
    lo, hi = max(0.0, p - half), min(1.0, p + half)
    how = (
        f"between {short_number(lo)} and {short_number(hi)} (reference {short_number(p)} "
        f"± max({short_number(LABEL_RATE_RELATIVE_TOLERANCE * 100)}%, "
        f"{short_number(LABEL_RATE_STANDARD_ERRORS)} standard errors))"
    )
    return lo, hi, False, how


def _naive_utc(moment: datetime) -> datetime:
    if moment.tzinfo is not None:
        moment = moment.astimezone(UTC).replace(tzinfo=None)
    return moment


class _Suite:
    """The checks being built, in order; :meth:`add` appends one expectation."""

    def __init__(self) -> None:
        import great_expectations as gx

        self.expect = gx.expectations
        self.checks: list[Check] = []

    def add(
        self, key: str, factory: Any, description: str, blocking: bool = True, **kwargs: Any
    ) -> None:
        meta = {"blocking": blocking, "check": key}
        expectation = factory(**kwargs, description=description, meta=meta)
        self.checks.append(Check(key, expectation, description, blocking))


def _column_checks(suite: _Suite, spec: ModelSpec, frame: pd.DataFrame) -> None:
    """Per spec column present in ``frame``: dtype, nulls, range, categories, uniqueness."""
    expect, add = suite.expect, suite.add
    data = spec.data
    for name, col in data.columns.items():
        if name not in frame:
            continue
        dtype_name = _expected_dtype(col.type, frame[name].dtype)
        add(
            f"{name}.type",
            expect.ExpectColumnTypeToBe,
            f"{name}: dtype {dtype_name}",
            column=name,
            type_=dtype_name,
        )
        if col.missing == MissingPolicy.FORBID:
            add(
                f"{name}.not_null",
                expect.ExpectColumnValuesToNotBeNull,
                f"{name}: no nulls",
                column=name,
            )
        if col.min is not None or col.max is not None:
            add(
                f"{name}.range",
                expect.ExpectColumnValuesToBeBetween,
                f"{name}: values {_bounds_text(col.min, col.max)}",
                column=name,
                min_value=col.min,
                max_value=col.max,
            )
        if col.categories is not None:
            add(
                f"{name}.categories",
                expect.ExpectColumnValuesToBeInSet,
                f"{name}: values in the spec's {len(col.categories)} categories",
                column=name,
                value_set=list(col.categories),
            )
        if col.unique or name == data.id_column:
            add(
                f"{name}.unique",
                expect.ExpectColumnValuesToBeUnique,
                f"{name}: unique values" + (" (id column)" if name == data.id_column else ""),
                column=name,
            )


def _drift_checks(
    suite: _Suite, spec: ModelSpec, frame: pd.DataFrame, reference: Mapping[str, Any]
) -> None:
    """Warnings: each numeric raw feature's or segment's median within the reference's
    p01..p99."""
    ref_columns = reference.get("columns") or {}
    drift_columns = set(spec.features.raw) | {seg.column for seg in spec.segments}
    for name, col in spec.data.columns.items():
        numeric = col.type in (ColumnType.FLOAT, ColumnType.INT)
        if not numeric or name not in drift_columns or name not in frame:
            continue
        ref_col = ref_columns.get(name) or {}
        p01, p99 = ref_col.get("p01"), ref_col.get("p99")
        if not isinstance(p01, int | float) or not isinstance(p99, int | float):
            continue
        suite.add(
            f"reference.{name}.median",
            suite.expect.ExpectColumnMedianToBeBetween,
            f"{name}: median between the reference's p01 and p99 "
            f"({short_number(p01)}..{short_number(p99)})",
            blocking=False,
            column=name,
            min_value=float(p01),
            max_value=float(p99),
        )


def _reference_checks(
    suite: _Suite, spec: ModelSpec, frame: pd.DataFrame, reference: Mapping[str, Any]
) -> None:
    """Against the reference profile: row count, recency, then the drift warnings."""
    expect, add = suite.expect, suite.add
    time_col = spec.data.time_column
    has_time = time_col is not None and time_col in frame
    ref_rows = int(reference["rows"])
    lo_rows = math.ceil(ROW_COUNT_MIN_RATIO * ref_rows)
    hi_rows = math.floor(ROW_COUNT_MAX_RATIO * ref_rows)
    add(
        "reference.rows",
        expect.ExpectTableRowCountToBeBetween,
        f"table: rows between {lo_rows} and {hi_rows} ({short_number(ROW_COUNT_MIN_RATIO)}x-"
        f"{short_number(ROW_COUNT_MAX_RATIO)}x the reference's {ref_rows})",
        min_value=lo_rows,
        max_value=hi_rows,
    )
    ref_time = reference.get("max_time")
    if has_time and ref_time is not None:
        ref_latest = pd.Timestamp(ref_time).to_pydatetime()
        bound = ref_latest - REFERENCE_MAX_TIME_TOLERANCE
        add(
            "reference.max_time",
            expect.ExpectColumnMaxToBeBetween,
            f"{time_col}: latest time at or after {short_number(bound)} (the reference's latest, "
            f"{short_number(ref_latest)}, minus {REFERENCE_MAX_TIME_TOLERANCE.days} days)",
            column=time_col,
            min_value=bound,
        )
    _drift_checks(suite, spec, frame, reference)


def build_checks(
    spec: ModelSpec,
    frame: pd.DataFrame,
    reference: Mapping[str, Any] | None = None,
    now: datetime | None = None,
    max_age: timedelta | None = None,
    rows: int | None = None,
) -> list[Check]:
    """The suite's expectations, in a fixed order (table, columns, label, time, reference).

    ``frame`` gives the columns and dtypes; ``rows`` (default ``len(frame)``) the row count
    the label-rate bound uses (the Dask backend passes one partition and the total).
    """
    suite = _Suite()
    expect, add = suite.expect, suite.add
    data = spec.data
    add(
        "table.columns",
        expect.ExpectTableColumnsToMatchOrderedList,
        "table: the spec's columns in spec order",
        column_list=list(data.columns),
    )
    add(
        "table.min_rows",
        expect.ExpectTableRowCountToBeBetween,
        f"table: at least {data.min_rows} rows (data.min_rows)",
        min_value=data.min_rows,
    )
    _column_checks(suite, spec, frame)

    rows = len(frame) if rows is None else rows
    if data.target in frame:
        lo, hi, strict, how = _label_rate_bounds(reference, rows)
        add(
            "label_rate",
            expect.ExpectColumnMeanToBeBetween,
            f"{data.target}: label rate {how}",
            column=data.target,
            min_value=lo,
            max_value=hi,
            strict_min=strict,
            strict_max=strict,
        )

    time_col = data.time_column
    if time_col is not None and time_col in frame and max_age is not None:
        moment = _naive_utc(now or datetime.now(UTC))
        oldest = moment - max_age
        add(
            "freshness",
            expect.ExpectColumnMaxToBeBetween,
            f"{time_col}: latest time at or after {short_number(oldest)} (now - {max_age})",
            column=time_col,
            min_value=oldest,
        )

    if reference is not None:
        _reference_checks(suite, spec, frame, reference)
    return suite.checks
