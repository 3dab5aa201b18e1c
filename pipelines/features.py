"""Feature stage: point-in-time aggregates, the train/validation/test split, feature tables.

:func:`feature_tables` reads the ingest output ``data.parquet`` and writes
``train.parquet``, ``validation.parquet`` and ``test.parquet``; the stage
(:mod:`pipelines.stages.features`) writes ``features.json`` and ``result.json`` (see
``docs/lifecycle.md``).

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
convention), NaN with fewer than two events. All aggregates are float64. ``sum``,
``mean`` and ``std`` are exact: they add the values in fixed point (int64 units of
10**-6) and finish with the float steps of :mod:`pipelines.aggregates`, which the
online path (:mod:`pipelines.features_online`) shares, so both give the same bits.

Late events: the result for a row depends only on the rows of its entity with an
earlier time, never on the order of the rows in ``frame``; an event that arrives late
(its time is before rows already in the data) sees exactly the events with earlier
times in its window, and is seen by the later rows whose windows cover it.

The computation is vectorised and parallel (:mod:`pipelines.windows`: one radix
sort per entity column, one binary search per window length, prefix sums, a sparse
table for ``max``, runs of overlapping occurrences for ``nunique``).

Also here: the atomic, deterministic writers (Parquet and JSON) and the reader of the
feature tables that the later stages share.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
from sklearn.model_selection import train_test_split

from pipelines.artifacts import (
    sha256_file,
)
from pipelines.errors import DataValidationError
from pipelines.ingest import write_table
from pipelines.spec import ColumnType, ModelSpec, SplitMethod
from pipelines.spec_features import AggregateFeature
from pipelines.windows import compute as compute_windows

log = logging.getLogger(__name__)

SPLITS: tuple[str, ...] = ("train", "validation", "test")
FEATURES_JSON = "features.json"
RESULT_JSON = "result.json"
_NS_PER_SECOND = 1_000_000_000


# ----------------------------------------------------------------------------- file helpers


def write_parquet(frame: pd.DataFrame, path: Path) -> str:
    """Write ``frame`` atomically with fixed settings (no index, no pandas metadata).

    Returns the SHA-256 of the written file. The same frame always gives the same bytes.
    """
    table = pa.Table.from_pandas(frame, preserve_index=False).replace_schema_metadata(None)
    write_table(table, path)
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


def compute_aggregates(
    aggregates: Sequence[AggregateFeature], frame: pd.DataFrame, time_column: str
) -> pd.DataFrame:
    """Every aggregate as a float64 column, rows in ``frame`` order (index kept).

    Vectorised and parallel (:mod:`pipelines.windows`); the semantics are the module
    doc's.
    """
    names = [a.name for a in aggregates]
    if not aggregates:
        return pd.DataFrame(index=frame.index, columns=names, dtype=np.float64)
    columns = compute_windows(aggregates, frame, time_column)
    return pd.DataFrame({n: columns[n] for n in names}, index=frame.index, columns=names)


def compute_aggregate(agg: AggregateFeature, frame: pd.DataFrame, time_column: str) -> np.ndarray:
    """One windowed aggregate for every row of ``frame`` (float64, in frame order)."""
    return compute_windows([agg], frame, time_column)[agg.name]


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


def stratified_split(
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


def categorical_features(spec: ModelSpec) -> list[str]:
    """Raw features that LightGBM treats as categorical (category or string columns)."""
    kinds = (ColumnType.CATEGORY, ColumnType.STRING)
    return [f for f in spec.features.raw if spec.data.columns[f].type in kinds]


def table_columns(spec: ModelSpec) -> list[str]:
    """The columns of every split table, in order: id, time, target, features, pass-through."""
    columns = [spec.data.id_column]
    if spec.data.time_column:
        columns.append(spec.data.time_column)
    return columns + [spec.data.target, *spec.features.names, *passthrough_columns(spec)]


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


def check_input(frame: pd.DataFrame, spec: ModelSpec, source: Path) -> None:
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


@dataclass(frozen=True)
class FeaturesInputs:
    """The features computation's inputs: the ingest ``data.parquet`` and the folder the
    split tables go to."""

    data: Path
    out_dir: Path


def feature_tables(spec: ModelSpec, inputs: FeaturesInputs) -> FeatureTables:
    """The local features computation (:data:`pipelines.backends.FEATURES`): aggregates,
    split and the split tables in ``inputs.out_dir``, from the ingest ``data.parquet``;
    the stage writes the record (:func:`pipelines.stages.features.write_features`)."""
    data, out_dir = inputs.data, inputs.out_dir
    if not data.is_file():
        raise DataValidationError(f"{data}: ingest data not found")
    frame = retype_categories(pd.read_parquet(data), spec)
    check_input(frame, spec, data)
    frame = frame.reset_index(drop=True)
    log.info("features for %s: %d rows from %s", spec.name, len(frame), data)

    if spec.features.aggregates:
        assert spec.data.time_column is not None
        aggregates = compute_aggregates(spec.features.aggregates, frame, spec.data.time_column)
        frame = pd.concat(
            [frame.drop(columns=aggregates.columns, errors="ignore"), aggregates], axis=1
        )

    columns = table_columns(spec)
    table = frame[columns]

    if spec.data.split.method == SplitMethod.TIME:
        parts, boundaries = _time_split(table, spec)
    else:
        parts, boundaries = stratified_split(table, spec)

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
    return FeatureTables(out_dir, paths, sha, rows, label_rate, boundaries)


@dataclass(frozen=True)
class FeatureTables:
    """The split tables a features computation (local or on Dask) wrote, and their
    statistics, for the stage's record (:func:`pipelines.stages.features.write_features`);
    ``marker`` is what a backend adds to ``features.json`` and ``result.json``."""

    out_dir: Path
    paths: dict[str, Path]
    sha256: dict[str, str]
    rows: dict[str, int]
    label_rate: dict[str, float | None]
    boundaries: dict[str, Any]
    marker: dict[str, Any] = field(default_factory=dict)
