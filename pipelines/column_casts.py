"""Casting a source column to the spec's type, listing every bad value instead of failing.

Each cast of :data:`CASTS` (one per :class:`pipelines.spec.ColumnType`) takes the column
name, its spec and the raw series, and returns the typed series (``None`` when it cannot
be typed) and its problems: :class:`Problem` texts that carry their parts, so the Dask
ingest can merge the problems of its partitions. Used by :mod:`pipelines.ingest`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd

from pipelines.spec import Column, ColumnType

_EXAMPLES = 3  # bad values quoted per problem
_NULL_TOKENS = frozenset({"", "nan", "null", "none", "na", "n/a", "nat", "<na>"})
_TRUE_TOKENS = frozenset({"true", "t", "yes", "y", "1"})
_FALSE_TOKENS = frozenset({"false", "f", "no", "n", "0"})
# a time of day followed by a time-zone designator (Z, +02, +0200, +02:00) at the end
_TZ_SUFFIX = r"\d{2}:\d{2}(?::\d{2}(?:[.,]\d+)?)?\s*(?:[zZ]|[+-]\d{2}(?::?\d{2})?)$"


# ----------------------------------------------------------------------------- helpers


class Problem(str):
    """A problem text that also carries its parts, so partial results can be merged.

    ``head`` is ``column 'x' (type)``, ``count`` the bad values, ``what`` their kind and
    ``examples`` the first distinct bad values as text (at most ``_EXAMPLES``).
    """

    head: str
    count: int
    what: str
    examples: list[str]

    @classmethod
    def of(cls, head: str, count: int, what: str, examples: list[str]) -> Problem:
        shown = ", ".join(repr(v) for v in examples[:_EXAMPLES])
        problem = cls(f"{head}: {count} {what} ({f'e.g. {shown}' if shown else ''})")
        problem.head, problem.count, problem.what = head, count, what
        problem.examples = list(examples[:_EXAMPLES])
        return problem


def _problem(name: str, col: Column, bad: pd.Series, what: str) -> str:
    uniq = list(dict.fromkeys(str(v) for v in bad.tolist()))
    return Problem.of(f"column {name!r} ({col.type.value})", len(bad), what, uniq[:_EXAMPLES])


def _as_text(s: pd.Series) -> pd.Series:
    """Object series of stripped strings (nulls as None)."""
    out = s.astype(object)
    mask = out.notna()
    out = out.where(~mask, out[mask].map(lambda v: str(v).strip()))
    return out.where(mask, None)


def _text_nulls(s: pd.Series) -> pd.Series:
    """A textual series with the null tokens (for non-text types) turned into None."""
    text = _as_text(s)
    is_null_token = text.map(lambda v: v is None or v.lower() in _NULL_TOKENS)
    return text.where(~is_null_token.astype(bool), None)


def _is_bool_dtype(s: pd.Series) -> bool:
    return pd.api.types.is_bool_dtype(s.dtype)


def _is_numeric(s: pd.Series) -> bool:
    return pd.api.types.is_numeric_dtype(s.dtype) and not _is_bool_dtype(s)


def _is_datetime(s: pd.Series) -> bool:
    return pd.api.types.is_datetime64_any_dtype(s.dtype)


# ----------------------------------------------------------------------------- casts
# Each cast returns (typed series, problems). Nulls are never a problem here.


def _to_number(name: str, col: Column, s: pd.Series) -> tuple[pd.Series | None, list[str]]:
    if _is_numeric(s):
        return s.astype("float64"), []
    if _is_bool_dtype(s):
        return None, [f"column {name!r} ({col.type.value}): holds booleans, not numbers"]
    if _is_datetime(s):
        return None, [f"column {name!r} ({col.type.value}): holds datetimes, not numbers"]
    text = _text_nulls(s)
    parsed = pd.to_numeric(text, errors="coerce")
    bad = text[text.notna() & parsed.isna()]
    if len(bad):
        return None, [_problem(name, col, bad, f"value(s) not parseable as {col.type.value}")]
    return parsed.astype("float64"), []


def _cast_float(name: str, col: Column, s: pd.Series) -> tuple[pd.Series | None, list[str]]:
    out, problems = _to_number(name, col, s)
    return (None if out is None else out.astype("float64")), problems


def _cast_int(name: str, col: Column, s: pd.Series) -> tuple[pd.Series | None, list[str]]:
    if pd.api.types.is_integer_dtype(s.dtype) and not _is_bool_dtype(s):
        if s.isna().any():
            return s.astype("Int64"), []
        try:
            return s.astype("int64"), []
        except (OverflowError, TypeError, ValueError):
            return None, [f"column {name!r} (int): values outside the int64 range"]
    if pd.api.types.is_object_dtype(s.dtype) or pd.api.types.is_string_dtype(s.dtype):
        # Parse integers exactly (no float round trip) when the text allows it.
        text = _text_nulls(s)
        parsed = pd.to_numeric(text, errors="coerce")
        bad = text[text.notna() & parsed.isna()]
        if len(bad):
            return None, [_problem(name, col, bad, "value(s) not parseable as int")]
        if pd.api.types.is_integer_dtype(parsed.dtype):
            return parsed.astype("int64"), []
        numbers = parsed
        original = text
    else:
        numbers, problems = _to_number(name, col, s)
        if numbers is None:
            return None, problems
        original = s
    finite = numbers.notna() & np.isfinite(numbers.fillna(0.0))
    fractional = numbers.notna() & (~finite | (numbers != np.round(numbers.fillna(0.0))))
    if fractional.any():
        return None, [_problem(name, col, original[fractional], "non-integer value(s)")]
    limit = float(np.iinfo(np.int64).max)
    outside = numbers.notna() & (numbers.abs() >= limit)
    if outside.any():
        return None, [_problem(name, col, original[outside], "value(s) outside the int64 range")]
    if numbers.isna().any():
        return numbers.astype("Int64"), []
    return numbers.astype("int64"), []


def _cast_bool(name: str, col: Column, s: pd.Series) -> tuple[pd.Series | None, list[str]]:
    if _is_bool_dtype(s):
        out = s
    elif _is_numeric(s):
        ok = s.isna() | s.isin([0, 1])
        if not ok.all():
            return None, [_problem(name, col, s[~ok], "value(s) that are not 0/1")]
        out = s.map(lambda v: None if pd.isna(v) else bool(v))
    elif _is_datetime(s):
        return None, [f"column {name!r} (bool): holds datetimes, not booleans"]
    else:
        text = _text_nulls(s)
        lower = text.map(lambda v: None if v is None else v.lower())
        ok = lower.isna() | lower.isin(_TRUE_TOKENS | _FALSE_TOKENS)
        if not ok.all():
            return None, [_problem(name, col, text[~ok], "value(s) not parseable as bool")]
        out = lower.map(lambda v: None if v is None else v in _TRUE_TOKENS)
    if out.isna().any():
        return out.astype("boolean"), []
    return out.astype(bool), []


def _cast_datetime(name: str, col: Column, s: pd.Series) -> tuple[pd.Series | None, list[str]]:
    if _is_datetime(s):
        values = s
        if isinstance(values.dtype, pd.DatetimeTZDtype):
            values = values.dt.tz_convert("UTC").dt.tz_localize(None)
        try:
            return values.astype("datetime64[ns]"), []
        except (OverflowError, ValueError, pd.errors.OutOfBoundsDatetime) as exc:
            return None, [f"column {name!r} (datetime): values out of the supported range ({exc})"]
    if _is_numeric(s) or _is_bool_dtype(s):
        return None, [
            f"column {name!r} (datetime): holds {s.dtype} numbers, not datetimes "
            "(write ISO 8601 text or a timestamp type)"
        ]
    if pd.api.types.is_object_dtype(s.dtype):
        # Python date/datetime objects (for example a Parquet date32 column).
        dated = s.map(lambda v: isinstance(v, pd.Timestamp | np.datetime64) or hasattr(v, "year"))
        if dated.any() and bool((dated | s.isna()).all()):
            try:
                parsed = pd.to_datetime(s, utc=True)
                return parsed.dt.tz_localize(None).astype("datetime64[ns]"), []
            except (ValueError, TypeError, OverflowError):
                pass
    text = _text_nulls(s)
    parsed = _parse_iso8601(text)
    bad = text[text.notna() & parsed.isna()]
    if len(bad):
        return None, [_problem(name, col, bad, "value(s) not parseable as ISO 8601 datetimes")]
    return parsed, []


def _parse_iso8601(text: pd.Series) -> pd.Series:
    """ISO 8601 text to naive-UTC datetime64[ns]; unparseable values become NaT.

    Values with an offset (``Z``, ``+02:00``) and naive values are parsed separately:
    pandas applies the offset of an aware value to the naive values parsed with it.
    """
    out = pd.Series(pd.NaT, index=text.index, dtype="datetime64[ns]")
    present = text.notna()
    aware = present & text.str.contains(_TZ_SUFFIX, regex=True, na=False)
    naive = present & ~aware
    if aware.any():
        values = pd.to_datetime(text[aware], errors="coerce", utc=True, format="ISO8601")
        out[aware] = values.dt.tz_localize(None).astype("datetime64[ns]")
    if naive.any():
        values = pd.to_datetime(text[naive], errors="coerce", format="ISO8601")
        out[naive] = values.astype("datetime64[ns]")
    return out


def _format_text(v: Any) -> str:
    if isinstance(v, float | np.floating) and float(v).is_integer():
        return str(int(v))
    return str(v).strip()


def _format_values(s: pd.Series) -> pd.Series:
    """Object series: every value as :func:`_format_text`, nulls as None.

    A categorical series formats each category once (the same text as row by row).
    """
    if isinstance(s.dtype, pd.CategoricalDtype):
        texts = np.empty(len(s.cat.categories) + 1, dtype=object)
        texts[:-1] = [_format_text(c) for c in s.cat.categories]
        texts[-1] = None  # code -1: null
        return pd.Series(texts[s.cat.codes.to_numpy()], index=s.index, name=s.name)
    mask = s.notna()
    values = s.astype(object)
    return values.where(~mask, values[mask].map(_format_text)).where(mask, None)


def _cast_category(name: str, col: Column, s: pd.Series) -> tuple[pd.Series | None, list[str]]:
    mask = s.notna()
    values = _format_values(s)
    spec_categories = list(col.categories or [])
    known = set(spec_categories)
    extra = sorted({v for v in values[mask].unique() if v not in known})
    categorical = pd.Categorical(values, categories=spec_categories + extra, ordered=False)
    return pd.Series(categorical, index=s.index, name=s.name), []


def _cast_string(name: str, col: Column, s: pd.Series) -> tuple[pd.Series | None, list[str]]:
    return _format_values(s), []


CASTS: dict[ColumnType, Callable[[str, Column, pd.Series], tuple[pd.Series | None, list[str]]]] = {
    ColumnType.FLOAT: _cast_float,
    ColumnType.INT: _cast_int,
    ColumnType.BOOL: _cast_bool,
    ColumnType.DATETIME: _cast_datetime,
    ColumnType.CATEGORY: _cast_category,
    ColumnType.STRING: _cast_string,
}
