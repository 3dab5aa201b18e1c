"""Online feature states built from history in one vectorised pass.

:func:`states_from_history` gives, for every entity value of a history (a Parquet file or
directory, :func:`read_history`), the state the online path
(:mod:`pipelines.features_online`) would hold after observing every row in time order;
the warm-up of a new model version (``ops.feature_backfill``).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from pipelines.aggregates import TEXT_TYPES, canonical_value, value_code
from pipelines.errors import DataValidationError
from pipelines.feature_state import EntityState, ValueColumn, ValueKind
from pipelines.features_online import EntityFeatures, OnlineFeatures, entity_text
from pipelines.spec import ColumnType, ModelSpec

if TYPE_CHECKING:
    import pandas as pd


# ----------------------------------------------------------------------------- from history


def read_history(spec: ModelSpec, path: Path, columns: Sequence[str]) -> pd.DataFrame:
    """Past transactions (a Parquet file or folder: ingest's ``data.parquet``, a
    generated data set, a lake export), only ``columns``, typed per spec."""
    import pandas as pd
    import pyarrow.dataset as ds

    from pipelines.features import retype_categories

    path = Path(path)
    if not path.exists():
        raise DataValidationError(f"{path}: history not found")
    try:
        names = set(ds.dataset(path, format="parquet").schema.names)
    except (OSError, ValueError) as exc:
        raise DataValidationError(f"{path}: not a Parquet history: {exc}") from None
    missing = [c for c in columns if c not in names]
    if missing:
        raise DataValidationError(f"{path}: history lacks column(s) {missing}")
    return retype_categories(pd.read_parquet(path, columns=list(columns)), spec)


def states_from_history(
    features: OnlineFeatures, frame: pd.DataFrame
) -> Iterator[tuple[EntityFeatures, str, EntityState]]:
    """The state each entity value would have after observing every row of ``frame``
    (columns typed per spec, as ingest writes them), built in one vectorised pass per
    entity column: ``(entity features, entity text, state)``.

    Equal to replaying the rows through :meth:`EntityFeatures.observe` in time order,
    except that no row is refused as too late (history is complete) and of rows with a
    duplicate transaction id the first is kept.
    """
    import pandas as pd

    from pipelines.windows import counting_mask

    for column in features.needed_columns:
        if column not in frame.columns:
            raise DataValidationError(f"history: column {column!r} missing")
    time = frame[features.time_column]
    if time.isna().any():
        raise DataValidationError(f"history: {features.time_column} has missing timestamps")
    times = time.to_numpy(dtype="datetime64[ns]").astype(np.int64)
    ids = _history_ids(features, frame[features.id_column])
    for entity in features.entities:
        codes, uniques = pd.factorize(frame[entity.entity], sort=False)
        flags = np.zeros(len(frame), dtype=np.uint64)
        for i, agg in enumerate(entity.aggregates):
            flags |= counting_mask(agg, frame).astype(np.uint64) << np.uint64(i)
        values = [_history_values(entity, vc, frame[vc.column]) for vc in entity.value_columns]
        table = EntityState.of_columns(times, ids, flags, values).rows
        del flags, values  # the rows hold them: no second copy while the states are cut
        valid = np.flatnonzero(codes >= 0)
        order = valid[np.lexsort((times[valid], codes[valid]))]
        sorted_codes = codes[order]
        bounds = np.flatnonzero(np.diff(sorted_codes)) + 1
        starts = np.concatenate([[0], bounds]).astype(np.int64)
        stops = np.concatenate([bounds, [len(order)]]).astype(np.int64)
        for start, stop in zip(starts.tolist(), stops.tolist(), strict=True):
            rows = order[start:stop]
            rows = rows[_first_ids(ids[rows])]
            state = entity.evict(EntityState.of_rows(table[rows]))
            text = entity_text(uniques[sorted_codes[start]])
            assert text is not None
            yield entity, text, state


def _first_ids(ids: np.ndarray) -> np.ndarray:
    """Positions of the first occurrence of each id, in their order."""
    if len(ids) < 2:
        return np.arange(len(ids))
    _, first = np.unique(ids, return_index=True)
    if len(first) == len(ids):
        return np.arange(len(ids))
    return np.sort(first)


def _history_ids(features: OnlineFeatures, ids: pd.Series) -> np.ndarray:
    if ids.isna().any():
        raise DataValidationError(f"history: {features.id_column} has nulls")
    if features.id_type == ColumnType.INT:
        return ids.to_numpy(dtype=np.int64)
    return np.array([features.event_id(v) for v in ids.tolist()], dtype=np.int64)


def _history_values(entity: EntityFeatures, vc: ValueColumn, series: pd.Series) -> np.ndarray:
    """One value column of the state, vectorised (equal to :meth:`EntityFeatures.event`)."""
    import pandas as pd

    from pipelines.aggregates import FixedPointError, fixed_point, value_codes

    column_type = entity.column_type(vc.column)
    if vc.kind == ValueKind.CODE and column_type in TEXT_TYPES:
        if isinstance(series.dtype, pd.CategoricalDtype):
            table = np.array(
                [value_code(str(c), column_type) for c in series.cat.categories] + [0],
                dtype=np.int64,
            )
            return table[series.cat.codes.to_numpy()]  # code -1 (null) takes the last entry
        return np.array([value_code(canonical_value(v, column_type), column_type)
                         for v in series.tolist()], dtype=np.int64)  # fmt: skip
    numbers = series.astype("float64").to_numpy()
    if vc.kind == ValueKind.FLOAT:
        return numbers
    if vc.kind == ValueKind.CODE:
        return value_codes(numbers, column_type)
    try:
        return fixed_point(numbers)
    except FixedPointError as exc:
        raise DataValidationError(f"history: {vc.column}: {exc}") from None
