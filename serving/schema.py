"""The strict input contract of a served model, derived from its spec.

The bank's systems call the endpoint, so every request is checked against the spec
before it reaches the booster, and a bad request gets one ``400`` listing *every*
problem (up to :data:`MAX_PROBLEMS`), each naming the row and the field.

``FeatureSchema.from_spec(spec)`` describes each model feature in
``spec.features.names`` order:

* **raw features** take the spec column's type, ``min``/``max``, categories and
  missing policy (``forbid`` -> not nullable; ``allow`` and ``impute`` -> nullable:
  the pipeline passes a null to LightGBM as NaN, it implements no imputation);
* **aggregates** (all float64 in ``pipelines.features``) are numbers whose type and
  bounds follow from the aggregation: ``count`` and ``nunique`` are integers >= 0 and
  never null (an empty window gives 0); ``sum`` is never null and >= 0 (<= 0) when
  its column is non-negative (non-positive); ``max`` lies within the column's bounds;
  ``mean`` too, widened by a rounding slack (values are summed in fixed point, six
  decimals, then divided); ``std`` is >= 0; ``mean``, ``max`` and ``std`` are
  nullable (empty window, or fewer than two events for ``std``). ``sum`` and ``max``
  of an int or bool column are integers.

``validate_rows`` (protocol V1: ``[{feature: value}, ...]``) and ``validate_columns``
(protocol V2: one tensor per feature) return the float64 matrix that
``Booster.predict`` takes: exactly what ``pipelines.training.score`` gives LightGBM
for the same rows (numbers as float64, booleans as 1.0/0.0, a category as its index
in the spec's list, a null as NaN). The rules:

* every feature present, no other field;
* numbers are JSON numbers: booleans and numeric-looking strings are refused; an int
  field takes integers and integral floats (``3.0``, as JSON Schema's ``integer``);
* a category is one of the spec's strings (``5411`` the number is not ``"5411"``);
* booleans are ``true``/``false`` (not 0/1);
* ``null`` (and NaN) only where the field is nullable; infinity never;
* ``min``/``max`` inclusive; an unbounded number must still fit a float64.

Messages never echo the value of a field whose column is ``personal_data``.
``openapi_schema`` gives the same contract as JSON Schema (draft 2020-12, OpenAPI 3.1).

Imports only numpy, the standard library and the spec, so the module loads in both
the training and the serving environments; no pandas on the request path.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any

import numpy as np

from pipelines.errors import GovMLError, SpecError
from pipelines.spec import (
    AggregateFeature,
    Aggregation,
    Column,
    ColumnType,
    MissingPolicy,
    ModelSpec,
)

DEFAULT_MAX_ROWS = 10_000
#: problems listed in one error; checking stops there (a hostile request stays cheap)
MAX_PROBLEMS = 100
#: categories listed in an "unknown category" message
MAX_LISTED_CATEGORIES = 10
#: unknown field names listed per row
MAX_LISTED_FIELDS = 5
#: characters of a bad value echoed in a message
MAX_SHOWN_CHARS = 40
#: relative rounding slack on the bounds of a ``mean`` aggregate
MEAN_SLACK = 1e-6
FLOAT_MAX = float(np.finfo(np.float64).max)
JSON_SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"

_NAN = math.nan
_ABSENT = object()


class InputError(GovMLError):
    """A request does not satisfy the model's input schema (HTTP 400)."""

    status = 400

    def __init__(self, problems: Sequence[str]) -> None:
        self.problems = list(problems)
        count = len(self.problems)
        super().__init__(f"{count} problem(s) in the request: " + "; ".join(self.problems))


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


class _Bad(Exception):
    """A value fails its field's check (internal; becomes one line of an InputError)."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.text = text


Converter = Callable[[Any], float]


@dataclass(frozen=True)
class FeatureSchema:
    """The features of one model, in model order, with precomputed per-field checks."""

    model: str
    features: tuple[FeatureInfo, ...]
    max_rows: int = DEFAULT_MAX_ROWS
    _converters: tuple[tuple[str, Converter], ...] = field(
        default=(), init=False, repr=False, compare=False
    )
    _index: dict[str, int] = field(default_factory=dict, init=False, repr=False, compare=False)
    _codes: dict[str, dict[str, float]] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )

    def __post_init__(self) -> None:
        if self.max_rows < 1:
            raise ValueError(f"max_rows must be >= 1, got {self.max_rows}")
        names = [f.name for f in self.features]
        if len(set(names)) != len(names):
            raise ValueError(f"duplicate feature names in {names}")
        object.__setattr__(
            self, "_converters", tuple((f.name, _converter(f)) for f in self.features)
        )
        object.__setattr__(self, "_index", {name: i for i, name in enumerate(names)})
        codes = {
            f.name: {c: float(i) for i, c in enumerate(f.categories or ())}
            for f in self.features
            if f.kind == FeatureKind.CATEGORY
        }
        object.__setattr__(self, "_codes", codes)

    @property
    def names(self) -> list[str]:
        return [f.name for f in self.features]

    def feature(self, name: str) -> FeatureInfo:
        return self.features[self._index[name]]

    @classmethod
    def from_spec(
        cls,
        spec: ModelSpec,
        *,
        categories: Mapping[str, Sequence[str]] | None = None,
        max_rows: int = DEFAULT_MAX_ROWS,
    ) -> FeatureSchema:
        """The schema of ``spec``'s model features.

        ``categories`` supplies the category lists of ``string`` features (the spec has
        none; training takes the sorted values seen in the training split, stored in the
        booster's ``pandas_categorical``). A datetime feature cannot be served.
        """
        extra = dict(categories or {})
        problems: list[str] = []
        features: list[FeatureInfo] = []
        for name in spec.features.raw:
            try:
                features.append(_raw_feature(name, spec.data.columns[name], extra.get(name)))
            except ValueError as exc:
                problems.append(f"features.raw: {name}: {exc}")
        for agg in spec.features.aggregates:
            features.append(_aggregate_feature(agg, spec.data.columns.get(agg.column or "")))
        if problems:
            raise SpecError(f"{spec.name}: cannot build the serving schema: " + "; ".join(problems))
        return cls(model=spec.name, features=tuple(features), max_rows=max_rows)

    def check_model(
        self, feature_names: Sequence[str], categories: Mapping[str, Sequence[Any]]
    ) -> None:
        """Refuse a booster whose features or category lists differ from this schema.

        ``feature_names`` is ``booster.feature_name()``, ``categories`` the booster's
        category list per categorical feature (``pipelines.training.booster_categories``).
        The encoded category codes are only right when the lists are equal.
        """
        problems: list[str] = []
        if list(feature_names) != self.names:
            problems.append(f"model features {list(feature_names)} != schema {self.names}")
        for f in self.features:
            if f.kind == FeatureKind.CATEGORY:
                got = categories.get(f.name)
                if got is None:
                    problems.append(f"{f.name}: not categorical in the model")
                elif [str(c) for c in got] != list(f.categories or ()):
                    problems.append(
                        f"{f.name}: model categories {list(got)} != spec {list(f.categories or ())}"
                    )
        for name in categories:
            if name not in self._index or self.feature(name).kind != FeatureKind.CATEGORY:
                problems.append(f"{name}: categorical in the model but not in the schema")
        if problems:
            raise SpecError(
                f"{self.model}: the model does not match the spec: " + "; ".join(problems)
            )


# ----------------------------------------------------------------------------- from the spec


def _raw_feature(name: str, col: Column, categories: Sequence[str] | None) -> FeatureInfo:
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


def _source_bounds(col: Column | None) -> tuple[float | None, float | None, bool]:
    """(min, max, integral) of an aggregate's source column."""
    if col is None:
        return None, None, False
    if col.type == ColumnType.BOOL:
        return 0.0, 1.0, True
    if col.type in (ColumnType.FLOAT, ColumnType.INT):
        return col.min, col.max, col.type == ColumnType.INT
    return None, None, False


def _describe(agg: AggregateFeature, nullable: bool) -> str:
    events = f"earlier events of the same {agg.entity} in the past {agg.window}"
    if agg.agg == Aggregation.COUNT:
        text = f"number of {events}"
    elif agg.agg == Aggregation.NUNIQUE:
        text = f"distinct {agg.column} values among {events}"
    else:
        text = f"{agg.agg.value} of {agg.column} over {events}"
    if agg.where:
        text += " where " + ", ".join(f"{k} = {v}" for k, v in agg.where.items())
    if nullable:
        text += " (null when there is no such event)"
    return text


def _aggregate_feature(agg: AggregateFeature, col: Column | None) -> FeatureInfo:
    lo_s, hi_s, integral = _source_bounds(col)
    kind = FeatureKind.FLOAT
    lo: float | None = None
    hi: float | None = None
    nullable = agg.agg in (Aggregation.MEAN, Aggregation.MAX, Aggregation.STD)
    if agg.agg in (Aggregation.COUNT, Aggregation.NUNIQUE):
        kind, lo = FeatureKind.INT, 0.0
    elif agg.agg == Aggregation.SUM:
        kind = FeatureKind.INT if integral else FeatureKind.FLOAT
        lo = 0.0 if lo_s is not None and lo_s >= 0 else None
        hi = 0.0 if hi_s is not None and hi_s <= 0 else None
    elif agg.agg == Aggregation.MAX:
        kind = FeatureKind.INT if integral else FeatureKind.FLOAT
        lo, hi = lo_s, hi_s
    elif agg.agg == Aggregation.MEAN:
        scale = max(abs(lo_s or 0.0), abs(hi_s or 0.0), 1.0)
        slack = MEAN_SLACK * scale
        if lo_s is not None:
            lo = max(lo_s - slack, 0.0) if lo_s >= 0 else lo_s - slack
        if hi_s is not None:
            hi = min(hi_s + slack, 0.0) if hi_s <= 0 else hi_s + slack
    elif agg.agg == Aggregation.STD:
        lo = 0.0
    return FeatureInfo(
        name=agg.name,
        kind=kind,
        nullable=nullable,
        minimum=lo,
        maximum=hi,
        description=_describe(agg, nullable),
        source="aggregate",
    )


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
                return _NAN
            if value is None:
                return _null(info, value)
            raise _Bad(f"expected a string, got {_show(value, info.personal_data)}")

        convert = check_text
    else:
        convert = _converter(_raw_feature(name, column, None))

    def check(value: Any) -> float:
        try:
            return convert(value)
        except _Bad as bad:
            raise ValueError(bad.text) from None

    return check


# ----------------------------------------------------------------------------- value checks


def _fmt(x: float) -> str:
    """A number as a message shows it (``50000``, ``0.01``, never thousands of digits)."""
    if isinstance(x, int | np.integer):
        x = int(x)
        return str(x) if x.bit_length() <= 128 else f"an integer of {x.bit_length()} bits"
    x = float(x)
    if x.is_integer() and abs(x) < 1e16:
        return str(int(x))
    return repr(x)


def _clip(text: str) -> str:
    if len(text) > MAX_SHOWN_CHARS:
        return f"{text[:MAX_SHOWN_CHARS]}... ({len(text)} characters)"
    return text


def _show(value: Any, secret: bool) -> str:
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
        return f"{kind} {_clip(text)!r}"
    if isinstance(value, Mapping):
        return "an object"
    if isinstance(value, list | tuple):
        return "an array"
    if isinstance(value, int | float | np.integer | np.floating):
        return "a number" if secret else f"the number {_fmt(value)}"
    return f"a {type(value).__name__}"


def _is_bool(value: Any) -> bool:
    return isinstance(value, bool | np.bool_)


def _null(f: FeatureInfo, value: Any) -> float:
    """NaN for a null/NaN in a nullable field, else the matching error."""
    if f.nullable:
        return _NAN
    what = "null" if value is None else "NaN"
    raise _Bad(f"{what} is not allowed (this field may not be missing)")


def _number_slow(f: FeatureInfo, value: Any) -> float:
    expected = "an integer" if f.kind == FeatureKind.INT else "a number"
    if value is None:
        return _null(f, value)
    if _is_bool(value) or not isinstance(value, int | float | np.integer | np.floating):
        raise _Bad(f"expected {expected}, got {_show(value, f.personal_data)}")
    number: int | float = int(value) if isinstance(value, int | np.integer) else float(value)
    if isinstance(number, float):
        if math.isnan(number):
            return _null(f, number)
        if math.isinf(number):
            raise _Bad("infinity is not allowed")
        if f.kind == FeatureKind.INT and not number.is_integer():
            raise _Bad(f"expected an integer, got {_show(number, f.personal_data)}")
    shown = "the value" if f.personal_data else _fmt(number)
    if number < f.lower:
        raise _Bad(f"{shown} is below the minimum {_fmt(f.lower)}")
    if number > f.upper:
        raise _Bad(f"{shown} is above the maximum {_fmt(f.upper)}")
    return float(number)


def _category_slow(f: FeatureInfo, codes: Mapping[str, float], value: Any) -> float:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return _null(f, value)
    if isinstance(value, bytes):
        try:
            value = value.decode("utf-8")
        except UnicodeDecodeError:
            raise _Bad("expected a UTF-8 string, got undecodable bytes") from None
    if not isinstance(value, str):
        raise _Bad(f"expected a string (a category), got {_show(value, f.personal_data)}")
    code = codes.get(value)
    if code is not None:
        return code
    cats = f.categories or ()
    allowed = ", ".join(repr(c) for c in cats[:MAX_LISTED_CATEGORIES])
    if len(cats) > MAX_LISTED_CATEGORIES:
        allowed += f", ... ({len(cats)} in all)"
    got = "" if f.personal_data else f" {_clip(value)!r}"
    raise _Bad(f"unknown category{got}; allowed: {allowed}")


def _bool_slow(f: FeatureInfo, value: Any) -> float:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return _null(f, value)
    if isinstance(value, np.bool_):
        return 1.0 if value else 0.0
    raise _Bad(f"expected true or false, got {_show(value, f.personal_data)}")


def _converter(f: FeatureInfo) -> Converter:
    """A function value -> float64 for one field; raises :class:`_Bad`.

    The fast paths (exact JSON types, in range) come first; anything unusual goes to
    the slow path, which either accepts it (numpy scalars, nulls) or explains it.
    """
    lo, hi = f.lower, f.upper
    if f.kind == FeatureKind.FLOAT:

        def convert_float(v: Any) -> float:
            t = type(v)
            if t is float:
                if lo <= v <= hi:  # NaN fails both comparisons
                    return v
            elif t is int and lo <= v <= hi:
                return float(v)
            return _number_slow(f, v)

        return convert_float
    if f.kind == FeatureKind.INT:

        def convert_int(v: Any) -> float:
            t = type(v)
            if t is int:
                if lo <= v <= hi:
                    return float(v)
            elif t is float and lo <= v <= hi and v.is_integer():
                return v
            return _number_slow(f, v)

        return convert_int
    if f.kind == FeatureKind.CATEGORY:
        codes = {c: float(i) for i, c in enumerate(f.categories or ())}

        def convert_category(v: Any) -> float:
            if type(v) is str:
                code = codes.get(v)
                if code is not None:
                    return code
            return _category_slow(f, codes, v)

        return convert_category

    def convert_bool(v: Any) -> float:
        if v is True:
            return 1.0
        if v is False:
            return 0.0
        return _bool_slow(f, v)

    return convert_bool


# ----------------------------------------------------------------------------- requests


class _Problems:
    """Collects problem lines up to :data:`MAX_PROBLEMS`."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.full = False

    def add(self, line: str) -> None:
        if len(self.lines) < MAX_PROBLEMS:
            self.lines.append(line)
        if len(self.lines) >= MAX_PROBLEMS:
            self.full = True

    def raise_if_any(self) -> None:
        if self.lines:
            lines = list(self.lines)
            if self.full:
                lines.append(f"(stopped after {MAX_PROBLEMS} problems)")
            raise InputError(lines)


def _limit(schema: FeatureSchema, max_rows: int | None) -> int:
    return schema.max_rows if max_rows is None else max_rows


def _check_count(n: int, limit: int, what: str) -> None:
    if n == 0:
        raise InputError([f"no {what}: send at least one"])
    if n > limit:
        raise InputError([f"too many {what}: {n} (at most {limit} per request)"])


def validate_rows(schema: FeatureSchema, instances: Any, max_rows: int | None = None) -> np.ndarray:
    """V1 instances (a list of ``{feature: value}``, or one such object) as the model's
    float64 input matrix of shape ``(n, n_features)``; raises :class:`InputError`."""
    rows: Sequence[Any]
    if isinstance(instances, list | tuple):
        rows = instances
    elif isinstance(instances, Mapping):
        rows = [instances]
    else:
        got = _show(instances, True)
        raise InputError([f"'instances' must be a list of objects {{feature: value}}, got {got}"])
    _check_count(len(rows), _limit(schema, max_rows), "instances")
    if len(rows) >= VECTOR_MIN_ROWS:
        matrix = _rows_vectorised(schema, rows)
        if matrix is not None:
            return matrix
    converters = schema._converters
    index = schema._index
    flat: list[float] = []
    append = flat.append
    problems = _Problems()
    width = len(converters)
    for i, row in enumerate(rows):
        if problems.full:
            break
        if type(row) is not dict and not isinstance(row, Mapping):
            problems.add(f"row {i}: expected an object {{feature: value}}, got {_show(row, True)}")
            flat.extend([_NAN] * width)
            continue
        found = 0
        for name, convert in converters:
            value = row.get(name, _ABSENT)
            if value is _ABSENT:
                problems.add(f"row {i}: {name}: missing field")
                append(_NAN)
                continue
            found += 1
            try:
                append(convert(value))
            except _Bad as bad:
                problems.add(f"row {i}: {name}: {bad.text}")
                append(_NAN)
        if len(row) != found:
            unknown = [k for k in row if not isinstance(k, str) or k not in index]
            for key in unknown[:MAX_LISTED_FIELDS]:
                problems.add(f"row {i}: unknown field {_field_name(key)} (not a model feature)")
            if len(unknown) > MAX_LISTED_FIELDS:
                problems.add(
                    f"row {i}: ... and {len(unknown) - MAX_LISTED_FIELDS} more unknown fields"
                )
    problems.raise_if_any()
    return np.array(flat, dtype=np.float64).reshape(len(rows), width)


# Requests of at least this many rows are first checked column by column with numpy; a
# column with anything unusual (nulls, bools, text in a number, unknown categories, values
# out of range...) sends the whole request to the row-by-row path, which accepts exactly
# the same values and names every problem.
VECTOR_MIN_ROWS = 64
_NUMBER_TYPES = frozenset({int, float})


def _rows_vectorised(schema: FeatureSchema, rows: Sequence[Any]) -> np.ndarray | None:
    """The input matrix when every row is a plain, complete, valid object; else None."""
    width = len(schema.features)
    if not all(type(r) is dict and len(r) == width for r in rows):
        return None
    out = np.empty((len(rows), width), dtype=np.float64)
    for j, f in enumerate(schema.features):
        name = f.name
        column = [r.get(name, _ABSENT) for r in rows]
        if f.kind in (FeatureKind.FLOAT, FeatureKind.INT):
            types = set(map(type, column))
            if not types <= _NUMBER_TYPES:
                return None
            try:
                x = np.array(column, dtype=np.float64)
            except (OverflowError, TypeError, ValueError):
                return None
            if not (np.isfinite(x).all() and (x >= f.lower).all() and (x <= f.upper).all()):
                return None
            if f.kind == FeatureKind.INT and float in types and (x != np.floor(x)).any():
                return None
            out[:, j] = x
        elif f.kind == FeatureKind.CATEGORY:
            codes = schema._codes[name]
            if not all(type(v) is str for v in column):
                return None
            try:
                out[:, j] = [codes[v] for v in column]
            except KeyError:
                return None
        else:  # BOOL
            if not all(type(v) is bool for v in column):
                return None
            out[:, j] = np.array(column, dtype=np.float64)
    return out


def _field_name(key: Any) -> str:
    return repr(_clip(str(key)))


class KnownCodes:
    """A category input already mapped to the model's codes (every value a known label,
    checked by whoever built it: the V2 binary decoder); taken as is."""

    __slots__ = ("codes",)

    def __init__(self, codes: np.ndarray) -> None:
        self.codes = codes

    def __len__(self) -> int:
        return len(self.codes)


def label_records(schema: FeatureSchema, name: str) -> tuple[re.Pattern[bytes], dict[bytes, float]]:
    """For a category feature: a pattern matching one V2 ``BYTES`` element (4-byte
    little-endian length, then the UTF-8 label) of each known label, and each element's
    code (see :func:`codes_of_bytes`)."""
    table = {
        len(label.encode()).to_bytes(4, "little") + label.encode(): code
        for label, code in schema._codes[name].items()
        if type(label) is str
    }
    alternatives = sorted(table, key=len, reverse=True)
    return re.compile(b"|".join(re.escape(a) for a in alternatives)), table


def codes_of_bytes(
    chunk: bytes, count: int, pattern: re.Pattern[bytes], table: dict[bytes, float]
) -> KnownCodes | None:
    """A ``BYTES`` tensor of ``count`` elements as codes, when every element is a known
    label; None otherwise (the caller then decodes it element by element and the
    checks name what is wrong). The matches tile the chunk exactly, or it is None:
    a tiling by length-prefixed records from offset 0 is the tensor's only parse."""
    found = pattern.findall(chunk)
    if len(found) != count or sum(map(len, found)) != len(chunk):
        return None
    return KnownCodes(np.fromiter(map(table.__getitem__, found), dtype=np.float64, count=count))


def _column_values(name: str, data: Any) -> tuple[Sequence[Any] | np.ndarray | None, str | None]:
    """A V2 input as a 1-D sequence, or the problem with it."""
    if isinstance(data, KnownCodes):
        return data, None  # type: ignore[return-value]
    if isinstance(data, np.ndarray):
        if data.ndim == 2 and data.shape[1] == 1:
            data = data.reshape(-1)
        if data.ndim != 1:
            shape = list(data.shape)
            return (
                None,
                f"input {name}: expected a 1-D tensor (one value per row), got shape {shape}",
            )
        return data, None
    if isinstance(data, list | tuple):
        return data, None
    return None, f"input {name}: expected a list of values, got {_show(data, True)}"


def _numeric_tensor(
    f: FeatureInfo, convert: Converter, column: np.ndarray, out: np.ndarray, problems: _Problems
) -> None:
    """Vectorised checks of an int/uint/float tensor for a numeric field."""
    x = column.astype(np.float64)
    bad = np.zeros(len(x), dtype=bool)
    if column.dtype.kind == "f":
        nan = np.isnan(x)
        if not f.nullable:
            bad |= nan
        bad |= np.isinf(x)
        finite = np.isfinite(x)
        if f.kind == FeatureKind.INT:
            bad |= finite & (x != np.floor(np.where(finite, x, 0.0)))
    with np.errstate(invalid="ignore"):
        bad |= (x < f.lower) | (x > f.upper)
    for i in np.flatnonzero(bad):
        if problems.full:
            break
        try:
            convert(column[i].item())
        except _Bad as exc:
            problems.add(f"row {i}: {f.name}: {exc.text}")
        else:  # float64 rounding of a huge int64 crossed a bound
            problems.add(f"row {i}: {f.name}: value out of range")
    out[:] = x


def validate_columns(
    schema: FeatureSchema, columns: Mapping[str, Any], max_rows: int | None = None
) -> np.ndarray:
    """V2 inputs (one tensor per feature: a list or a 1-D numpy array, by name) as the
    model's float64 input matrix; the same checks as :func:`validate_rows`."""
    if not isinstance(columns, Mapping):
        raise InputError([f"inputs must be named tensors, got {_show(columns, True)}"])
    problems = _Problems()
    for key in columns:
        if not isinstance(key, str) or key not in schema._index:
            problems.add(f"unknown input {_field_name(key)} (not a model feature)")
    values: dict[str, Sequence[Any] | np.ndarray] = {}
    for name in schema.names:
        if name not in columns:
            problems.add(f"input {name}: missing")
            continue
        seq, problem = _column_values(name, columns[name])
        if problem is not None:
            problems.add(problem)
        elif seq is not None:
            values[name] = seq
    lengths = {name: len(seq) for name, seq in values.items()}
    counts = Counter(lengths.values())
    n = max(counts, key=lambda k: counts[k]) if counts else 0  # the most common length
    for name, length in lengths.items():
        if length != n:
            problems.add(f"input {name}: {length} value(s), but the other inputs have {n}")
    problems.raise_if_any()
    _check_count(n, _limit(schema, max_rows), "rows")
    out = np.empty((n, len(schema.features)), dtype=np.float64)
    for j, (f, (name, convert)) in enumerate(zip(schema.features, schema._converters, strict=True)):
        if problems.full:
            break
        seq = values[name]
        if isinstance(seq, KnownCodes):
            if f.kind != FeatureKind.CATEGORY:  # (the decoder only codes categories)
                raise TypeError(f"{name}: coded values for a {f.kind} feature")
            out[:, j] = seq.codes
            continue
        if (
            isinstance(seq, np.ndarray)
            and seq.dtype.kind in "iuf"
            and f.kind in (FeatureKind.FLOAT, FeatureKind.INT)
        ):
            _numeric_tensor(f, convert, seq, out[:, j], problems)
            continue
        if isinstance(seq, np.ndarray):
            seq = seq.tolist()
        if f.kind == FeatureKind.CATEGORY and len(seq) >= VECTOR_MIN_ROWS:
            codes = schema._codes[name]
            mapped = [codes.get(v) if type(v) is str else None for v in seq]
            if None not in mapped:  # every value a known label: no per-value checks needed
                out[:, j] = mapped
                continue
        encoded: list[float] = []
        for i, value in enumerate(seq):
            try:
                encoded.append(convert(value))
            except _Bad as bad:
                problems.add(f"row {i}: {name}: {bad.text}")
                encoded.append(_NAN)
                if problems.full:
                    break
        else:
            out[:, j] = encoded
    problems.raise_if_any()
    return out


# ----------------------------------------------------------------------------- JSON Schema


def _field_schema(f: FeatureInfo) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if f.description:
        out["description"] = f.description
    if f.kind == FeatureKind.CATEGORY:
        out["type"] = ["string", "null"] if f.nullable else "string"
        cats: list[Any] = list(f.categories or ())
        out["enum"] = [*cats, None] if f.nullable else cats
        return out
    base = {
        FeatureKind.FLOAT: "number",
        FeatureKind.INT: "integer",
        FeatureKind.BOOL: "boolean",
    }[f.kind]
    out["type"] = [base, "null"] if f.nullable else base
    if f.kind != FeatureKind.BOOL:
        out["minimum"] = f.lower
        out["maximum"] = f.upper
    return out


def openapi_schema(schema: FeatureSchema) -> dict[str, Any]:
    """JSON Schema (draft 2020-12 / OpenAPI 3.1) of the V1 request ``{"instances": [...]}``.

    Self-contained (no ``$ref``), so it can be embedded in an OpenAPI document as is.
    Numbers without a spec bound carry the float64 limits, as :func:`validate_rows`
    enforces them.
    """
    row = {
        "type": "object",
        "title": f"{schema.model} features",
        "properties": {f.name: _field_schema(f) for f in schema.features},
        "required": schema.names,
        "additionalProperties": False,
    }
    return {
        "$schema": JSON_SCHEMA_DIALECT,
        "title": f"{schema.model} prediction request (KServe V1)",
        "type": "object",
        "properties": {
            "instances": {
                "type": "array",
                "minItems": 1,
                "maxItems": schema.max_rows,
                "items": row,
            }
        },
        "required": ["instances"],
        "additionalProperties": False,
    }
