"""Column-wise request validation: a V2 request's tensors, and category codes of raw bytes.

:func:`validate_columns` checks the named input tensors of a V2 request (or the columns
the binary extension decoded) against a model's :class:`~serving.schema.FeatureSchema`
with the same rules and messages as :func:`~serving.schema.validate_rows`;
:func:`label_records` and :func:`codes_of_bytes` map category labels in raw bytes to
their codes (:mod:`serving.v2_binary`).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from serving.feature_values import (
    NAN,
    BadValue,
    Converter,
    FeatureInfo,
    FeatureKind,
    show_value,
)
from serving.schema import (
    VECTOR_MIN_ROWS,
    FeatureSchema,
    InputError,
    Problems,
    check_count,
    field_name,
    row_limit,
)


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
    return None, f"input {name}: expected a list of values, got {show_value(data, True)}"


def _numeric_tensor(
    f: FeatureInfo, convert: Converter, column: np.ndarray, out: np.ndarray, problems: Problems
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
        except BadValue as exc:
            problems.add(f"row {i}: {f.name}: {exc.text}")
        else:  # float64 rounding of a huge int64 crossed a bound
            problems.add(f"row {i}: {f.name}: value out of range")
    out[:] = x


def _named_columns(
    schema: FeatureSchema, columns: Mapping[str, Any]
) -> tuple[dict[str, Sequence[Any] | np.ndarray], int]:
    """Each feature's values by name and the row count; missing, unknown, malformed or
    mismatched inputs raise :class:`InputError`."""
    problems = Problems()
    for key in columns:
        if not isinstance(key, str) or key not in schema._index:
            problems.add(f"unknown input {field_name(key)} (not a model feature)")
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
    return values, n


def _fill_column(
    schema: FeatureSchema,
    j: int,
    seq: Sequence[Any] | np.ndarray,
    column: np.ndarray,
    problems: Problems,
) -> None:
    """Convert feature ``j``'s values into ``column`` (a view of the input matrix)."""
    f = schema.features[j]
    name, convert = schema._converters[j]
    if isinstance(seq, KnownCodes):
        if f.kind != FeatureKind.CATEGORY:  # (the decoder only codes categories)
            raise TypeError(f"{name}: coded values for a {f.kind} feature")
        column[:] = seq.codes
        return
    if (
        isinstance(seq, np.ndarray)
        and seq.dtype.kind in "iuf"
        and f.kind in (FeatureKind.FLOAT, FeatureKind.INT)
    ):
        _numeric_tensor(f, convert, seq, column, problems)
        return
    if isinstance(seq, np.ndarray):
        seq = seq.tolist()
    if f.kind == FeatureKind.CATEGORY and len(seq) >= VECTOR_MIN_ROWS:
        codes = schema._codes[name]
        mapped = [codes.get(v) if type(v) is str else None for v in seq]
        if None not in mapped:  # every value a known label: no per-value checks needed
            column[:] = mapped
            return
    encoded: list[float] = []
    for i, value in enumerate(seq):
        try:
            encoded.append(convert(value))
        except BadValue as bad:
            problems.add(f"row {i}: {name}: {bad.text}")
            encoded.append(NAN)
            if problems.full:
                break
    else:
        column[:] = encoded


def validate_columns(
    schema: FeatureSchema, columns: Mapping[str, Any], max_rows: int | None = None
) -> np.ndarray:
    """V2 inputs (one tensor per feature: a list or a 1-D numpy array, by name) as the
    model's float64 input matrix; the same checks as :func:`validate_rows`."""
    if not isinstance(columns, Mapping):
        raise InputError([f"inputs must be named tensors, got {show_value(columns, True)}"])
    values, n = _named_columns(schema, columns)
    check_count(n, row_limit(schema, max_rows), "rows")
    problems = Problems()
    out = np.empty((n, len(schema.features)), dtype=np.float64)
    for j, (name, _convert) in enumerate(schema._converters):
        if problems.full:
            break
        _fill_column(schema, j, values[name], out[:, j], problems)
    problems.raise_if_any()
    return out
