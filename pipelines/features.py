"""Feature stage: point-in-time aggregates, the train/validation/test split, feature tables.

``build_features(spec, data, out_dir)`` reads the ingest output ``data.parquet`` and
writes ``train.parquet``, ``validation.parquet``, ``test.parquet``, ``features.json``
and ``result.json`` (see ``docs/lifecycle.md``).

Windowed aggregates (``spec.features.aggregates``) are point-in-time correct. For an
event of entity ``e`` at time ``t`` the window holds the events of the same entity with
a time in the open interval ``(t - window, t)``:

* strictly before ``t``: the current row, later rows **and rows of the same entity with
  the same timestamp** never count (two events at the same instant do not see each
  other, so the result does not depend on the order of tied rows);
* strictly after ``t - window``: an event exactly one window old has left the window;
* ``where`` (equality per column, all must hold) selects which past events count; every
  row still gets a value;
* rows whose ``column`` is null do not count (for ``count`` with a ``column`` too).

Empty windows give ``count = 0``, ``sum = 0``, ``nunique = 0`` and NaN for ``mean``,
``max`` and ``std``. ``std`` is the sample standard deviation (``ddof = 1``, pandas'
convention), NaN with fewer than two events. All aggregates are float64.

The computation is vectorised: the counting events are sorted by (entity, time); each
window is a contiguous slice ``[lo, hi)`` of that order, found with ``searchsorted`` on
an integer key ``entity_code * n_times + time_rank``. Sums use per-entity cumulative
sums (``std`` on values shifted by the entity's first value, for precision), ``max`` a
sparse table (range-maximum queries), and ``nunique`` merges the occurrences of each
(entity, value) pair into the disjoint time intervals during which the value is inside
the window, so that the count for a query is ``#(interval starts < t) - #(interval
ends <= t)``.

Also here: the atomic, deterministic writers (Parquet and JSON) and the reader of the
feature tables that the later stages share.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from sklearn.model_selection import train_test_split

from pipelines.artifacts import (
    sha256_file,
    temporary_beside,
    write_json,
)
from pipelines.errors import DataValidationError
from pipelines.spec import AggregateFeature, Aggregation, ColumnType, ModelSpec, SplitMethod

log = logging.getLogger(__name__)

SPLITS: tuple[str, ...] = ("train", "validation", "test")
FEATURES_JSON = "features.json"
RESULT_JSON = "result.json"
_NS_PER_SECOND = 1_000_000_000
_ROW_GROUP_ROWS = 1_048_576
_COMPRESSION = "zstd"
_COMPRESSION_LEVEL = 3


# ----------------------------------------------------------------------------- file helpers


def write_parquet(frame: pd.DataFrame, path: Path) -> str:
    """Write ``frame`` atomically with fixed settings (no index, no pandas metadata).

    Returns the SHA-256 of the written file. The same frame always gives the same bytes.
    """
    table = pa.Table.from_pandas(frame, preserve_index=False).replace_schema_metadata(None)
    tmp = temporary_beside(path)
    try:
        pq.write_table(
            table,
            tmp,
            row_group_size=_ROW_GROUP_ROWS,
            compression=_COMPRESSION,
            compression_level=_COMPRESSION_LEVEL,
            use_dictionary=True,
            write_statistics=True,
            version="2.6",
        )
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return sha256_file(path)


def retype_categories(frame: pd.DataFrame, spec: ModelSpec) -> pd.DataFrame:
    """Category columns of the spec as pandas ``category`` with the spec's categories."""
    out = frame.copy()
    for name, column in spec.data.columns.items():
        if column.type != ColumnType.CATEGORY or name not in out.columns:
            continue
        categories = list(column.categories or [])
        series = out[name]
        if isinstance(series.dtype, pd.CategoricalDtype):
            if list(series.cat.categories) == categories:
                continue
            series = series.astype(object)
        values = series.where(series.isna(), series.astype(str))
        typed = pd.Categorical(values, categories=categories)
        unknown = int(series.notna().sum() - pd.notna(typed).sum())
        if unknown:
            log.warning(
                "%s: %d value(s) outside the spec's categories are treated as missing",
                name,
                unknown,
            )
        out[name] = typed
    return out


def read_split(spec: ModelSpec, features_dir: Path, split: str) -> pd.DataFrame:
    """One feature table (``train``, ``validation`` or ``test``) with spec categories."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    path = Path(features_dir) / f"{split}.parquet"
    if not path.is_file():
        raise DataValidationError(f"{path}: feature table not found (run the features stage)")
    return retype_categories(pd.read_parquet(path), spec)


def read_features_json(features_dir: Path) -> dict[str, Any]:
    """The ``features.json`` of a features folder."""
    path = Path(features_dir) / FEATURES_JSON
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataValidationError(f"{path}: not found (run the features stage)") from None
    except ValueError as exc:
        raise DataValidationError(f"{path}: not valid JSON: {exc}") from None


# ----------------------------------------------------------------------------- aggregates


def _sorted_unique(values: np.ndarray) -> np.ndarray:
    """Sorted distinct values (faster than ``np.unique`` for int64 timestamps)."""
    ordered = np.sort(values, kind="stable")
    if ordered.size == 0:
        return ordered
    keep = np.ones(len(ordered), dtype=bool)
    keep[1:] = ordered[1:] != ordered[:-1]
    return ordered[keep]


def _entity_codes(series: pd.Series) -> np.ndarray:
    codes, _ = pd.factorize(series, sort=True)
    return codes.astype(np.int64)


def _where_mask(frame: pd.DataFrame, where: Mapping[str, Any], name: str) -> np.ndarray:
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


def _numeric_values(frame: pd.DataFrame, agg: AggregateFeature) -> np.ndarray:
    assert agg.column is not None
    series = frame[agg.column]
    if isinstance(series.dtype, pd.CategoricalDtype) or not (
        pd.api.types.is_numeric_dtype(series.dtype) or pd.api.types.is_bool_dtype(series.dtype)
    ):
        raise DataValidationError(
            f"aggregate {agg.name}: {agg.agg.value} needs a numeric column, "
            f"{agg.column!r} is {series.dtype}"
        )
    return series.astype("float64").to_numpy()


@dataclass(frozen=True)
class _Windows:
    """Counting events sorted by (entity, time) and each row's window ``[lo, hi)``."""

    rows: np.ndarray  # original row index of each counting event, in sorted order
    codes: np.ndarray  # entity code of each counting event, in sorted order
    start: np.ndarray  # per query row: first sorted index of its entity
    lo: np.ndarray  # per query row: first event with time > t - window
    hi: np.ndarray  # per query row: first event with time >= t


def _windows(codes: np.ndarray, times: np.ndarray, counting: np.ndarray, window: int) -> _Windows:
    valid = codes >= 0
    rows = np.flatnonzero(counting & valid)
    universe = _sorted_unique(np.concatenate([times, times - window]))
    n_times = np.int64(len(universe))
    if codes.size and (int(codes.max()) + 1) * int(n_times) >= np.iinfo(np.int64).max:
        raise DataValidationError("too many entities x timestamps for the aggregate index")
    rank_t = np.searchsorted(universe, times).astype(np.int64)
    rank_lo = np.searchsorted(universe, times - window).astype(np.int64)
    keys = codes[rows] * n_times + rank_t[rows]
    order = np.argsort(keys, kind="stable")
    rows, keys = rows[order], keys[order]
    base = np.where(valid, codes, 0) * n_times
    start = np.searchsorted(keys, base, side="left")
    lo = np.searchsorted(keys, base + rank_lo, side="right")
    hi = np.searchsorted(keys, base + rank_t, side="left")
    lo = np.where(valid, lo, start)
    hi = np.where(valid, hi, start)
    return _Windows(rows=rows, codes=codes[rows], start=start, lo=lo, hi=hi)


def _window_sums(w: _Windows, values: np.ndarray) -> np.ndarray:
    """Sum of ``values`` (in sorted event order) over each row's window; 0 when empty."""
    if values.size == 0:
        return np.zeros(len(w.lo), dtype=np.float64)
    within = pd.Series(values).groupby(w.codes, sort=False).cumsum().to_numpy(np.float64)
    prefix = np.concatenate([[0.0], within])
    before = np.where(w.lo > w.start, prefix[w.lo], 0.0)
    return np.where(w.hi > w.lo, prefix[w.hi] - before, 0.0)


def _window_max(w: _Windows, values: np.ndarray) -> np.ndarray:
    """Range maximum over each window with a sparse table; NaN when empty."""
    length = w.hi - w.lo
    out = np.full(len(length), np.nan)
    if values.size == 0 or not length.any():
        return out
    levels = [values]
    span = 1
    while span * 2 <= int(length.max()):
        prev = levels[-1]
        levels.append(np.maximum(prev[:-span], prev[span:]))
        span *= 2
    powers = 1 << np.arange(len(levels), dtype=np.int64)
    level = np.searchsorted(powers, length, side="right") - 1
    for k, table in enumerate(levels):
        sel = np.flatnonzero((length > 0) & (level == k))
        if sel.size:
            out[sel] = np.maximum(table[w.lo[sel]], table[w.hi[sel] - powers[k]])
    return out


def _count_points(
    q_codes: np.ndarray, q_times: np.ndarray, p_codes: np.ndarray, p_times: np.ndarray, strict: bool
) -> np.ndarray:
    """Per query: points of the same entity with time < t (strict) or <= t."""
    universe = _sorted_unique(np.concatenate([q_times, p_times]))
    n_times = np.int64(len(universe))
    p_keys = np.sort(p_codes * n_times + np.searchsorted(universe, p_times))
    valid = q_codes >= 0
    base = np.where(valid, q_codes, 0) * n_times
    q_keys = base + np.searchsorted(universe, q_times)
    upper = np.searchsorted(p_keys, q_keys, side="left" if strict else "right")
    lower = np.searchsorted(p_keys, base, side="left")
    return np.where(valid, upper - lower, 0)


def _window_nunique(
    codes: np.ndarray, times: np.ndarray, counting: np.ndarray, values: pd.Series, window: int
) -> np.ndarray:
    """Distinct non-null values among each row's window events."""
    value_codes, _ = pd.factorize(values, sort=True)
    rows = np.flatnonzero(counting & (codes >= 0) & (value_codes >= 0))
    if rows.size == 0:
        return np.zeros(len(codes), dtype=np.float64)
    order = np.lexsort((rows, times[rows], value_codes[rows], codes[rows]))
    rows = rows[order]
    e, v, t = codes[rows], value_codes[rows], times[rows]
    # a new coverage interval starts at the first occurrence of an (entity, value) pair
    # and wherever the previous occurrence has already left the window
    new_pair = np.ones(len(rows), dtype=bool)
    new_pair[1:] = (e[1:] != e[:-1]) | (v[1:] != v[:-1])
    gap = np.zeros(len(rows), dtype=bool)
    gap[1:] = t[1:] >= t[:-1] + window
    run_start = np.flatnonzero(new_pair | gap)
    run_end = np.concatenate([run_start[1:], [len(rows)]]) - 1
    # the value is in the window of a query at time q iff q lies in (start, last + window)
    begins = _count_points(codes, times, e[run_start], t[run_start], strict=True)
    ends = _count_points(codes, times, e[run_end], t[run_end] + window, strict=False)
    return (begins - ends).astype(np.float64)


def compute_aggregate(agg: AggregateFeature, frame: pd.DataFrame, time_column: str) -> np.ndarray:
    """One windowed aggregate for every row of ``frame`` (float64, in frame order)."""
    for column in (agg.entity, time_column, agg.column):
        if column is not None and column not in frame.columns:
            raise DataValidationError(f"aggregate {agg.name}: column {column!r} not in the data")
    time = frame[time_column]
    if time.isna().any():
        raise DataValidationError(f"aggregate {agg.name}: {time_column} has missing timestamps")
    times = time.to_numpy(dtype="datetime64[ns]").astype(np.int64)
    codes = _entity_codes(frame[agg.entity])
    window = int(agg.window_seconds) * _NS_PER_SECOND
    counting = _where_mask(frame, agg.where, agg.name)
    if agg.column is not None:
        counting &= frame[agg.column].notna().to_numpy()

    if agg.agg == Aggregation.NUNIQUE:
        assert agg.column is not None
        return _window_nunique(codes, times, counting, frame[agg.column], window)

    w = _windows(codes, times, counting, window)
    count = (w.hi - w.lo).astype(np.float64)
    if agg.agg == Aggregation.COUNT:
        return count
    values = _numeric_values(frame, agg)[w.rows]
    if agg.agg == Aggregation.MAX:
        return _window_max(w, values)
    if agg.agg == Aggregation.SUM:
        return _window_sums(w, values)
    with np.errstate(invalid="ignore", divide="ignore"):
        if agg.agg == Aggregation.MEAN:
            return np.where(count > 0, _window_sums(w, values) / count, np.nan)
        # STD: shift by the entity's first value so the sums of squares stay small
        first = np.zeros(len(values))
        if values.size:
            is_first = np.ones(len(values), dtype=bool)
            is_first[1:] = w.codes[1:] != w.codes[:-1]
            first_pos = np.maximum.accumulate(np.where(is_first, np.arange(len(values)), 0))
            first = values[first_pos]
        shifted = values - first
        s1 = _window_sums(w, shifted)
        s2 = _window_sums(w, shifted * shifted)
        var = (s2 - s1 * s1 / count) / (count - 1.0)
        return np.where(count > 1, np.sqrt(np.maximum(var, 0.0)), np.nan)


def compute_aggregates(
    aggregates: Sequence[AggregateFeature], frame: pd.DataFrame, time_column: str
) -> pd.DataFrame:
    """Every aggregate as a float64 column, rows in ``frame`` order (index kept)."""
    out = {a.name: compute_aggregate(a, frame, time_column) for a in aggregates}
    return pd.DataFrame(out, index=frame.index, columns=[a.name for a in aggregates])


# ----------------------------------------------------------------------------- split


def _time_split(
    frame: pd.DataFrame, spec: ModelSpec
) -> tuple[dict[str, pd.DataFrame], dict[str, Any]]:
    time_col = spec.data.time_column
    assert time_col is not None
    ordered = frame.sort_values([time_col, spec.data.id_column], kind="mergesort")
    n = len(ordered)
    n_test = int(round(n * spec.data.split.test_fraction))
    n_val = int(round(n * spec.data.split.validation_fraction))
    n_train = n - n_val - n_test
    parts = {
        "train": ordered.iloc[:n_train],
        "validation": ordered.iloc[n_train : n_train + n_val],
        "test": ordered.iloc[n_train + n_val :],
    }

    def iso(value: Any) -> str | None:
        return None if pd.isna(value) else pd.Timestamp(value).isoformat()

    boundaries: dict[str, Any] = {}
    for name, part in parts.items():
        boundaries[f"{name}_start"] = iso(part[time_col].min()) if len(part) else None
        boundaries[f"{name}_end"] = iso(part[time_col].max()) if len(part) else None
    return parts, boundaries


def _stratified_split(
    frame: pd.DataFrame, spec: ModelSpec
) -> tuple[dict[str, pd.DataFrame], dict[str, Any]]:
    split = spec.data.split
    seed = spec.training.seed
    y = frame[spec.data.target].to_numpy()
    index = np.arange(len(frame))

    def stratify(labels: np.ndarray) -> np.ndarray | None:
        counts = np.unique(labels, return_counts=True)[1]
        if len(counts) < 2 or counts.min() < 2:
            log.warning("a class has fewer than 2 rows: splitting without stratification")
            return None
        return labels

    rest, test = train_test_split(
        index, test_size=split.test_fraction, stratify=stratify(y), random_state=seed
    )
    val_share = split.validation_fraction / (1.0 - split.test_fraction)
    train, val = train_test_split(
        rest, test_size=val_share, stratify=stratify(y[rest]), random_state=seed
    )
    id_col = spec.data.id_column
    parts = {
        name: frame.iloc[np.sort(idx)].sort_values(id_col, kind="mergesort")
        for name, idx in (("train", train), ("validation", val), ("test", test))
    }
    return parts, {}


# ----------------------------------------------------------------------------- stage


@dataclass(frozen=True)
class FeatureResult:
    """What the features stage wrote."""

    out_dir: Path
    paths: dict[str, Path]
    features_json: Path
    features: list[str]
    categorical: list[str]
    passthrough: list[str]
    rows: dict[str, int]
    label_rate: dict[str, float | None]
    split_method: str
    boundaries: dict[str, Any] = field(default_factory=dict)
    sha256: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "stage": "features",
            "out_dir": str(self.out_dir),
            "paths": {k: str(v) for k, v in self.paths.items()},
            "features_json": str(self.features_json),
            "features": list(self.features),
            "categorical": list(self.categorical),
            "passthrough": list(self.passthrough),
            "rows": dict(self.rows),
            "label_rate": dict(self.label_rate),
            "split": {"method": self.split_method, "boundaries": dict(self.boundaries)},
            "sha256": dict(self.sha256),
        }


def categorical_features(spec: ModelSpec) -> list[str]:
    """Raw features that LightGBM treats as categorical (category or string columns)."""
    kinds = (ColumnType.CATEGORY, ColumnType.STRING)
    return [f for f in spec.features.raw if spec.data.columns[f].type in kinds]


def passthrough_columns(spec: ModelSpec) -> list[str]:
    """Columns carried beside the features: protected attributes, segment columns that
    are not features, the label-time column (in that order, without duplicates)."""
    taken = {spec.data.id_column, spec.data.time_column, spec.data.target}
    taken |= set(spec.features.names)
    out: list[str] = []
    candidates = [*spec.protected_attributes, *(s.column for s in spec.segments)]
    if spec.data.label_time_column:
        candidates.append(spec.data.label_time_column)
    for column in candidates:
        if column not in taken and column not in out:
            out.append(column)
    return out


def _check_input(frame: pd.DataFrame, spec: ModelSpec, source: Path) -> None:
    needed = [spec.data.id_column, spec.data.target, *spec.features.raw]
    if spec.data.time_column:
        needed.append(spec.data.time_column)
    needed += passthrough_columns(spec)
    for agg in spec.features.aggregates:
        needed += [agg.entity, *([agg.column] if agg.column else []), *agg.where]
    missing = sorted({c for c in needed if c not in frame.columns})
    if missing:
        raise DataValidationError(f"{source}: missing column(s) {missing}")
    target = frame[spec.data.target]
    if target.isna().any() or not set(pd.unique(target)) <= {0, 1}:
        raise DataValidationError(
            f"{source}: target {spec.data.target!r} must be 0/1 without nulls"
        )
    if frame[spec.data.id_column].duplicated().any():
        raise DataValidationError(f"{source}: id column {spec.data.id_column!r} has duplicates")
    if spec.data.time_column and frame[spec.data.time_column].isna().any():
        raise DataValidationError(f"{source}: time column {spec.data.time_column!r} has nulls")


def build_features(spec: ModelSpec, data: Path, out_dir: Path) -> FeatureResult:
    """Aggregates, split and feature tables for ``spec`` from the ingest ``data.parquet``."""
    data, out_dir = Path(data), Path(out_dir)
    if not data.is_file():
        raise DataValidationError(f"{data}: ingest data not found")
    frame = retype_categories(pd.read_parquet(data), spec)
    _check_input(frame, spec, data)
    frame = frame.reset_index(drop=True)
    log.info("features for %s: %d rows from %s", spec.name, len(frame), data)

    if spec.features.aggregates:
        assert spec.data.time_column is not None
        aggregates = compute_aggregates(spec.features.aggregates, frame, spec.data.time_column)
        frame = pd.concat(
            [frame.drop(columns=aggregates.columns, errors="ignore"), aggregates], axis=1
        )

    columns = [spec.data.id_column]
    if spec.data.time_column:
        columns.append(spec.data.time_column)
    columns += [spec.data.target, *spec.features.names, *passthrough_columns(spec)]
    table = frame[columns]

    if spec.data.split.method == SplitMethod.TIME:
        parts, boundaries = _time_split(table, spec)
    else:
        parts, boundaries = _stratified_split(table, spec)

    out_dir.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}
    sha: dict[str, str] = {}
    rows: dict[str, int] = {}
    label_rate: dict[str, float | None] = {}
    for name in SPLITS:
        part = parts[name].reset_index(drop=True)
        paths[name] = out_dir / f"{name}.parquet"
        sha[name] = write_parquet(part, paths[name])
        rows[name] = len(part)
        label_rate[name] = float(part[spec.data.target].mean()) if len(part) else None
        log.info("%s: %d rows, label rate %s", name, rows[name], label_rate[name])

    result = FeatureResult(
        out_dir=out_dir,
        paths=paths,
        features_json=out_dir / FEATURES_JSON,
        features=spec.features.names,
        categorical=categorical_features(spec),
        passthrough=passthrough_columns(spec),
        rows=rows,
        label_rate=label_rate,
        split_method=spec.data.split.method.value,
        boundaries=boundaries,
        sha256=sha,
    )
    write_json(
        result.features_json,
        {
            "features": result.features,
            "categorical": result.categorical,
            "passthrough": result.passthrough,
            "rows": rows,
            "label_rate": label_rate,
            "split": {"method": result.split_method, "boundaries": boundaries},
            "sha256": sha,
        },
    )
    write_json(out_dir / RESULT_JSON, result.to_dict())
    return result
