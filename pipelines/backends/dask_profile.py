"""The data profile (``profile.json``) on a Dask cluster: each partition's partial
profile on the workers, merged on the client into exactly the local profile
(:func:`validation.data_profile.build_profile`); numeric statistics gather one column
at a time (:mod:`pipelines.backends.dask_validation`, module doc)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pandas as pd

from pipelines.backends.dask_ingest import Piece, map_pieces, read_piece
from pipelines.spec import ColumnType, ModelSpec

if TYPE_CHECKING:
    from distributed import Client


def partial_profile(spec: ModelSpec, frame: pd.DataFrame) -> dict[str, Any]:
    out: dict[str, Any] = {"rows": len(frame), "columns": {}}
    for name, col in spec.data.columns.items():
        if name not in frame:
            continue
        series = frame[name]
        entry: dict[str, Any] = {"dtype": str(series.dtype), "nulls": int(series.isna().sum())}
        if col.type == ColumnType.CATEGORY:
            counts = series.value_counts(dropna=True, sort=False)
            entry["frequencies"] = [(k, int(v)) for k, v in counts.items()]
        elif col.type == ColumnType.DATETIME and pd.api.types.is_datetime64_any_dtype(series):
            entry["min"], entry["max"] = series.min(), series.max()
        elif col.type == ColumnType.STRING:
            entry["values"] = set(series.dropna().unique().tolist())
        out["columns"][name] = entry
    target = spec.data.target
    if target in frame:
        values = pd.to_numeric(frame[target], errors="coerce").astype("float64").dropna()
        out["target"] = (float(values.sum()), len(values))
    return out


def read_column(piece: Piece, column: str) -> pd.Series:
    table = read_piece(piece, [column])
    series = table.to_pandas()[column]
    series.index = pd.RangeIndex(piece[1], piece[2])
    return series


def gather_column(client: Client, pieces: list[Piece], column: str) -> pd.Series:
    parts = map_pieces(client, read_column, pieces, column)
    return pd.concat(parts)


def _column_profile(
    col: Any,
    name: str,
    entries: list[dict[str, Any]],
    client: Client,
    pieces: list[Piece],
    gathered: dict[str, pd.Series],
) -> dict[str, Any]:
    """One column's profile entry merged from its partitions' ``entries``."""
    from validation.data_profile import numeric_stats

    entry: dict[str, Any] = {
        "dtype": entries[0]["dtype"],
        "nulls": sum(e["nulls"] for e in entries),
        "type": col.type.value,
    }
    if col.type in (ColumnType.FLOAT, ColumnType.INT, ColumnType.BOOL):
        series = gathered.pop(name, None)
        if series is None:
            series = gather_column(client, pieces, name)
        if col.type == ColumnType.BOOL:
            entry["mean"] = numeric_stats(series.astype("float64"))["mean"]
        else:
            entry.update(numeric_stats(series))
        del series
    elif col.type == ColumnType.CATEGORY:
        freq: dict[Any, int] = {}
        for e in entries:
            for k, v in e["frequencies"]:
                freq[k] = freq.get(k, 0) + v
        entry["frequencies"] = {str(k): int(v) for k, v in freq.items()}
    elif col.type == ColumnType.DATETIME and "min" in entries[0]:
        lows = [e["min"] for e in entries if not pd.isna(e["min"])]
        highs = [e["max"] for e in entries if not pd.isna(e["max"])]
        entry["min"] = pd.Timestamp(min(lows)).isoformat() if lows else None
        entry["max"] = pd.Timestamp(max(highs)).isoformat() if highs else None
    elif col.type == ColumnType.STRING:
        entry["distinct"] = len(set().union(*(e["values"] for e in entries)))
    return entry


def merged_profile(
    spec: ModelSpec,
    partials: list[dict[str, Any]],
    client: Client,
    pieces: list[Piece],
    data_sha256: str,
    gathered: dict[str, pd.Series],
) -> dict[str, Any]:
    """:func:`validation.data_profile.build_profile` from partition results (module doc)."""
    from validation.data_profile import PROFILE_FORMAT, jsonable

    columns: dict[str, Any] = {}
    for name, col in spec.data.columns.items():
        entries = [p["columns"][name] for p in partials if name in p["columns"]]
        if entries:
            columns[name] = _column_profile(col, name, entries, client, pieces, gathered)
    rows = sum(p["rows"] for p in partials)
    target = [p["target"] for p in partials if "target" in p]
    count = sum(c for _, c in target)
    label_rate = sum(s for s, _ in target) / count if target and count else None
    time_col = spec.data.time_column
    max_time = None
    if time_col and time_col in columns and "max" in columns[time_col]:
        max_time = columns[time_col]["max"]
    return jsonable(
        {
            "columns": columns,
            "data_sha256": data_sha256,
            "format": PROFILE_FORMAT,
            "label_rate": label_rate,
            "max_time": max_time,
            "rows": rows,
            "spec": spec.name,
            "target": spec.data.target,
            "time_column": spec.data.time_column,
        }
    )
