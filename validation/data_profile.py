"""The data profile of a data set (``profile.json``): the drift reference of later runs.

:func:`build_profile` summarises a frame per column (see :mod:`validation.data_quality`
for the keys); :func:`load_profile` reads a profile back as a reference and refuses a
profile of another spec; :func:`jsonable` turns values into plain JSON types.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from datetime import date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pipelines.errors import DataValidationError
from pipelines.files import read_json
from pipelines.spec import ColumnType, ModelSpec

PROFILE_FORMAT = 1
PROFILE_QUANTILES: dict[str, float] = {"p01": 0.01, "p50": 0.5, "p99": 0.99}


# ----------------------------------------------------------------------------- JSON helpers


def jsonable(value: Any) -> Any:
    """Plain JSON types: numpy scalars unwrapped, NaN/NaT to None, datetimes as ISO text."""
    if value is None or isinstance(value, bool | str):
        return value
    if value is pd.NaT or value is pd.NA:
        return None
    if isinstance(value, np.generic):
        return jsonable(value.item())
    if isinstance(value, int):
        return value
    if isinstance(value, float | Decimal):
        f = float(value)
        return f if math.isfinite(f) else None
    if isinstance(value, pd.Timestamp | datetime | date):
        return value.isoformat()
    if isinstance(value, np.datetime64):
        return jsonable(pd.Timestamp(value))
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, set | frozenset):
        return sorted((jsonable(v) for v in value), key=str)
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    return str(value)


# ----------------------------------------------------------------------------- profile


def numeric_stats(values: pd.Series) -> dict[str, float | None]:
    numbers = pd.to_numeric(values, errors="coerce").astype("float64").to_numpy()
    numbers = numbers[np.isfinite(numbers)]
    keys = ["min", "max", "mean", *PROFILE_QUANTILES]
    if numbers.size == 0:
        return dict.fromkeys(keys)
    stats: dict[str, float | None] = {
        "min": float(numbers.min()),
        "max": float(numbers.max()),
        "mean": float(numbers.mean()),
    }
    qs = np.quantile(numbers, list(PROFILE_QUANTILES.values()))
    stats.update({k: float(q) for k, q in zip(PROFILE_QUANTILES, qs, strict=True)})
    return stats


def _label_rate(spec: ModelSpec, frame: pd.DataFrame) -> float | None:
    target = spec.data.target
    if target not in frame:
        return None
    values = pd.to_numeric(frame[target], errors="coerce").astype("float64").dropna()
    return float(values.mean()) if len(values) else None


def _max_time(spec: ModelSpec, frame: pd.DataFrame) -> str | None:
    time_col = spec.data.time_column
    if time_col is None or time_col not in frame:
        return None
    if not pd.api.types.is_datetime64_any_dtype(frame[time_col].dtype):
        return None
    latest = frame[time_col].max()
    return None if pd.isna(latest) else pd.Timestamp(latest).isoformat()


def build_profile(spec: ModelSpec, frame: pd.DataFrame, data_sha256: str) -> dict[str, Any]:
    """The profile of one data set (``profile.json``; a future reference profile)."""
    columns: dict[str, Any] = {}
    for name, col in spec.data.columns.items():
        if name not in frame:
            continue
        series = frame[name]
        entry: dict[str, Any] = {
            "dtype": str(series.dtype),
            "nulls": int(series.isna().sum()),
            "type": col.type.value,
        }
        if col.type in (ColumnType.FLOAT, ColumnType.INT):
            entry.update(numeric_stats(series))
        elif col.type == ColumnType.BOOL:
            entry["mean"] = numeric_stats(series.astype("float64"))["mean"]
        elif col.type == ColumnType.CATEGORY:
            counts = series.value_counts(dropna=True, sort=False)
            entry["frequencies"] = {str(k): int(v) for k, v in counts.items()}
        elif col.type == ColumnType.DATETIME and pd.api.types.is_datetime64_any_dtype(series):
            lo, hi = series.min(), series.max()
            entry["min"] = None if pd.isna(lo) else pd.Timestamp(lo).isoformat()
            entry["max"] = None if pd.isna(hi) else pd.Timestamp(hi).isoformat()
        elif col.type == ColumnType.STRING:
            entry["distinct"] = int(series.nunique(dropna=True))
        columns[name] = entry
    return jsonable(
        {
            "columns": columns,
            "data_sha256": data_sha256,
            "format": PROFILE_FORMAT,
            "label_rate": _label_rate(spec, frame),
            "max_time": _max_time(spec, frame),
            "rows": len(frame),
            "spec": spec.name,
            "target": spec.data.target,
            "time_column": spec.data.time_column,
        }
    )


def load_profile(path: Path, spec: ModelSpec | None = None) -> dict[str, Any]:
    """Read a ``profile.json`` written by ``validate_data``; DataValidationError if unusable."""
    path = Path(path)
    data = read_json(path, DataValidationError, f"{path}: reference profile")
    problems: list[str] = []
    if not isinstance(data, dict):
        raise DataValidationError(f"{path}: reference profile must be a JSON object")
    rows = data.get("rows")
    if not isinstance(rows, int) or isinstance(rows, bool) or rows < 1:
        problems.append("'rows' must be a positive integer")
    rate = data.get("label_rate")
    if rate is not None and (not isinstance(rate, int | float) or not 0 <= rate <= 1):
        problems.append("'label_rate' must be null or a number in [0, 1]")
    max_time = data.get("max_time")
    if max_time is not None:
        try:
            pd.Timestamp(max_time)
        except (TypeError, ValueError):
            problems.append(f"'max_time' is not a timestamp: {max_time!r}")
    if not isinstance(data.get("columns", {}), dict):
        problems.append("'columns' must be an object")
    if spec is not None and data.get("spec") not in (None, spec.name):
        problems.append(f"profile is for spec {data.get('spec')!r}, not {spec.name!r}")
    if problems:
        raise DataValidationError(f"{path}: invalid reference profile: " + "; ".join(problems))
    return data
