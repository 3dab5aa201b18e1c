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

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from pipelines.errors import GovMLError, SpecError
from pipelines.spec import Column, ColumnType, ModelSpec
from pipelines.spec_features import AggregateFeature, Aggregation
from serving.feature_values import (
    NAN,
    BadValue,
    Converter,
    FeatureInfo,
    FeatureKind,
    clip_text,
    converter,
    raw_feature,
    show_value,
)

DEFAULT_MAX_ROWS = 10_000
#: problems listed in one error; checking stops there (a hostile request stays cheap)
MAX_PROBLEMS = 100
#: unknown field names listed per row
MAX_LISTED_FIELDS = 5
#: relative rounding slack on the bounds of a ``mean`` aggregate
MEAN_SLACK = 1e-6

_ABSENT = object()


class InputError(GovMLError):
    """A request does not satisfy the model's input schema (HTTP 400)."""

    status = 400

    def __init__(self, problems: Sequence[str]) -> None:
        self.problems = list(problems)
        count = len(self.problems)
        super().__init__(f"{count} problem(s) in the request: " + "; ".join(self.problems))


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
            self, "_converters", tuple((f.name, converter(f)) for f in self.features)
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
                features.append(raw_feature(name, spec.data.columns[name], extra.get(name)))
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
        category list per categorical feature (``pipelines.booster_layout.booster_categories``).
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


# ----------------------------------------------------------------------------- value checks


# ----------------------------------------------------------------------------- requests


class Problems:
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


def row_limit(schema: FeatureSchema, max_rows: int | None) -> int:
    """The most rows a request may have: ``max_rows``, else the schema's."""
    return schema.max_rows if max_rows is None else max_rows


def check_count(n: int, limit: int, what: str) -> None:
    """Refuse a request of no rows, or of more than ``limit``."""
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
        got = show_value(instances, True)
        raise InputError([f"'instances' must be a list of objects {{feature: value}}, got {got}"])
    check_count(len(rows), row_limit(schema, max_rows), "instances")
    if len(rows) >= VECTOR_MIN_ROWS:
        matrix = _rows_vectorised(schema, rows)
        if matrix is not None:
            return matrix
    return _rows_one_by_one(schema, rows)


def _rows_one_by_one(schema: FeatureSchema, rows: Sequence[Any]) -> np.ndarray:
    """The input matrix, converting value by value; every problem named."""
    converters = schema._converters
    flat: list[float] = []
    append = flat.append
    problems = Problems()
    width = len(converters)
    for i, row in enumerate(rows):
        if problems.full:
            break
        if type(row) is not dict and not isinstance(row, Mapping):
            problems.add(
                f"row {i}: expected an object {{feature: value}}, got {show_value(row, True)}"
            )
            flat.extend([NAN] * width)
            continue
        found = 0
        for name, convert in converters:
            value = row.get(name, _ABSENT)
            if value is _ABSENT:
                problems.add(f"row {i}: {name}: missing field")
                append(NAN)
                continue
            found += 1
            try:
                append(convert(value))
            except BadValue as bad:
                problems.add(f"row {i}: {name}: {bad.text}")
                append(NAN)
        if len(row) != found:
            _unknown_fields(schema, i, row, problems)
    problems.raise_if_any()
    return np.array(flat, dtype=np.float64).reshape(len(rows), width)


def _unknown_fields(
    schema: FeatureSchema, i: int, row: Mapping[Any, Any], problems: Problems
) -> None:
    unknown = [k for k in row if not isinstance(k, str) or k not in schema._index]
    for key in unknown[:MAX_LISTED_FIELDS]:
        problems.add(f"row {i}: unknown field {field_name(key)} (not a model feature)")
    if len(unknown) > MAX_LISTED_FIELDS:
        problems.add(f"row {i}: ... and {len(unknown) - MAX_LISTED_FIELDS} more unknown fields")


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


def field_name(key: Any) -> str:
    """A request's field name as a message quotes it (clipped)."""
    return repr(clip_text(str(key)))


# ----------------------------------------------------------------------------- JSON Schema
