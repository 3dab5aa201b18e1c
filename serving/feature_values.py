"""One feature as a model endpoint accepts it, and the strict checks of its values.

A :class:`FeatureInfo` says what a field takes (kind, nullability, bounds, categories);
:func:`converter` turns it into the function that checks one JSON value and gives its
float64 (a category's code, NaN for an allowed null), or raises :class:`BadValue` with
a message that never echoes a personal-data value. :func:`raw_feature` and
:func:`column_check` build them from a spec's columns.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import Any

import numpy as np

from pipelines.formatting import message_number
from pipelines.spec import Column, ColumnType, MissingPolicy

#: characters of a bad value echoed in a message
MAX_SHOWN_CHARS = 40


#: categories listed in an "unknown category" message
MAX_LISTED_CATEGORIES = 10
FLOAT_MAX = float(np.finfo(np.float64).max)


NAN = math.nan


class FeatureKind(StrEnum):
    FLOAT = "float"
    INT = "int"
    BOOL = "bool"
    CATEGORY = "category"


@dataclass(frozen=True)
class FeatureInfo:
    """One model feature as the endpoint accepts it."""

    name: str
    kind: FeatureKind
    nullable: bool
    minimum: float | None = None
    maximum: float | None = None
    categories: tuple[str, ...] | None = None
    description: str = ""
    source: str = "raw"  # "raw" or "aggregate"
    personal_data: bool = False

    @property
    def lower(self) -> float:
        """The minimum actually enforced (a number must fit a float64)."""
        return -FLOAT_MAX if self.minimum is None else self.minimum

    @property
    def upper(self) -> float:
        return FLOAT_MAX if self.maximum is None else self.maximum


class BadValue(Exception):
    """A value fails its field's check (internal; becomes one line of an InputError)."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.text = text


Converter = Callable[[Any], float]


def raw_feature(name: str, col: Column, categories: Sequence[str] | None) -> FeatureInfo:
    base = FeatureInfo(
        name=name,
        kind=FeatureKind.FLOAT,
        nullable=col.missing != MissingPolicy.FORBID,
        description=col.description,
        personal_data=col.personal_data,
    )
    if col.type == ColumnType.FLOAT:
        return replace(base, minimum=col.min, maximum=col.max)
    if col.type == ColumnType.INT:
        return replace(base, kind=FeatureKind.INT, minimum=col.min, maximum=col.max)
    if col.type == ColumnType.BOOL:
        return replace(base, kind=FeatureKind.BOOL)
    if col.type == ColumnType.CATEGORY:
        cats = tuple(col.categories or ())
        if categories is not None and [str(c) for c in categories] != list(cats):
            raise ValueError(f"categories {list(categories)} differ from the spec's {list(cats)}")
        return replace(base, kind=FeatureKind.CATEGORY, categories=cats)
    if col.type == ColumnType.STRING:
        if not categories:
            raise ValueError(
                "a string feature needs its category list (the booster's, as training "
                "takes the values seen in the training split)"
            )
        cats = tuple(str(c) for c in categories)
        return replace(base, kind=FeatureKind.CATEGORY, categories=cats)
    raise ValueError(f"a {col.type.value} column cannot be a served feature")


def column_check(name: str, column: Column) -> Callable[[Any], float]:
    """The strict check of one spec column used as a request field (the feature
    transformer's raw transactions, :mod:`serving.transactions`): the same rules as a
    raw feature of that column. The check takes a JSON value and returns its float64
    (a category's code, NaN for an allowed null) or raises ``ValueError`` with the
    reason (never echoing a personal-data value). A ``string`` column takes any text."""
    if column.type == ColumnType.STRING:
        info = FeatureInfo(
            name=name,
            kind=FeatureKind.CATEGORY,
            nullable=column.missing != MissingPolicy.FORBID,
            personal_data=column.personal_data,
        )

        def check_text(value: Any) -> float:
            if type(value) is str:
                return NAN
            if value is None:
                return _null(info, value)
            raise BadValue(f"expected a string, got {show_value(value, info.personal_data)}")

        convert = check_text
    else:
        convert = converter(raw_feature(name, column, None))

    def check(value: Any) -> float:
        try:
            return convert(value)
        except BadValue as bad:
            raise ValueError(bad.text) from None

    return check


def clip_text(text: str) -> str:
    """``text``, cut to :data:`MAX_SHOWN_CHARS` for a message."""
    if len(text) > MAX_SHOWN_CHARS:
        return f"{text[:MAX_SHOWN_CHARS]}... ({len(text)} characters)"
    return text


def show_value(value: Any, secret: bool) -> str:
    """A short, safe description of a bad value for a message."""
    if value is None:
        return "null"
    if isinstance(value, bool | np.bool_):
        return "a boolean"
    if isinstance(value, str | bytes):
        kind = "a string" if isinstance(value, str) else "bytes"
        if secret:
            return kind
        text = value if isinstance(value, str) else value.decode("utf-8", "replace")
        return f"{kind} {clip_text(text)!r}"
    if isinstance(value, Mapping):
        return "an object"
    if isinstance(value, list | tuple):
        return "an array"
    if isinstance(value, int | float | np.integer | np.floating):
        return "a number" if secret else f"the number {message_number(value)}"
    return f"a {type(value).__name__}"


def _is_bool(value: Any) -> bool:
    return isinstance(value, bool | np.bool_)


def _null(f: FeatureInfo, value: Any) -> float:
    """NaN for a null/NaN in a nullable field, else the matching error."""
    if f.nullable:
        return NAN
    what = "null" if value is None else "NaN"
    raise BadValue(f"{what} is not allowed (this field may not be missing)")


def _number_slow(f: FeatureInfo, value: Any) -> float:
    expected = "an integer" if f.kind == FeatureKind.INT else "a number"
    if value is None:
        return _null(f, value)
    if _is_bool(value) or not isinstance(value, int | float | np.integer | np.floating):
        raise BadValue(f"expected {expected}, got {show_value(value, f.personal_data)}")
    number: int | float = int(value) if isinstance(value, int | np.integer) else float(value)
    if isinstance(number, float):
        if math.isnan(number):
            return _null(f, number)
        if math.isinf(number):
            raise BadValue("infinity is not allowed")
        if f.kind == FeatureKind.INT and not number.is_integer():
            raise BadValue(f"expected an integer, got {show_value(number, f.personal_data)}")
    shown = "the value" if f.personal_data else message_number(number)
    if number < f.lower:
        raise BadValue(f"{shown} is below the minimum {message_number(f.lower)}")
    if number > f.upper:
        raise BadValue(f"{shown} is above the maximum {message_number(f.upper)}")
    return float(number)


def _category_slow(f: FeatureInfo, codes: Mapping[str, float], value: Any) -> float:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return _null(f, value)
    if isinstance(value, bytes):
        try:
            value = value.decode("utf-8")
        except UnicodeDecodeError:
            raise BadValue("expected a UTF-8 string, got undecodable bytes") from None
    if not isinstance(value, str):
        raise BadValue(f"expected a string (a category), got {show_value(value, f.personal_data)}")
    code = codes.get(value)
    if code is not None:
        return code
    cats = f.categories or ()
    allowed = ", ".join(repr(c) for c in cats[:MAX_LISTED_CATEGORIES])
    if len(cats) > MAX_LISTED_CATEGORIES:
        allowed += f", ... ({len(cats)} in all)"
    got = "" if f.personal_data else f" {clip_text(value)!r}"
    raise BadValue(f"unknown category{got}; allowed: {allowed}")


def _bool_slow(f: FeatureInfo, value: Any) -> float:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return _null(f, value)
    if isinstance(value, np.bool_):
        return 1.0 if value else 0.0
    raise BadValue(f"expected true or false, got {show_value(value, f.personal_data)}")


def _float_converter(f: FeatureInfo) -> Converter:
    lo, hi = f.lower, f.upper

    def convert_float(v: Any) -> float:
        t = type(v)
        if t is float:
            if lo <= v <= hi:  # NaN fails both comparisons
                return v
        elif t is int and lo <= v <= hi:
            return float(v)
        return _number_slow(f, v)

    return convert_float


def _int_converter(f: FeatureInfo) -> Converter:
    lo, hi = f.lower, f.upper

    def convert_int(v: Any) -> float:
        t = type(v)
        if t is int:
            if lo <= v <= hi:
                return float(v)
        elif t is float and lo <= v <= hi and v.is_integer():
            return v
        return _number_slow(f, v)

    return convert_int


def _category_converter(f: FeatureInfo) -> Converter:
    codes = {c: float(i) for i, c in enumerate(f.categories or ())}

    def convert_category(v: Any) -> float:
        if type(v) is str:
            code = codes.get(v)
            if code is not None:
                return code
        return _category_slow(f, codes, v)

    return convert_category


def _bool_converter(f: FeatureInfo) -> Converter:
    def convert_bool(v: Any) -> float:
        if v is True:
            return 1.0
        if v is False:
            return 0.0
        return _bool_slow(f, v)

    return convert_bool


_CONVERTERS = {
    FeatureKind.FLOAT: _float_converter,
    FeatureKind.INT: _int_converter,
    FeatureKind.CATEGORY: _category_converter,
}


def converter(f: FeatureInfo) -> Converter:
    """A function value -> float64 for one field; raises :class:`BadValue`.

    The fast paths (exact JSON types, in range) come first; anything unusual goes to
    the slow path, which either accepts it (numpy scalars, nulls) or explains it.
    """
    return _CONVERTERS.get(f.kind, _bool_converter)(f)
