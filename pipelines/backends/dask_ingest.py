"""Ingest on a Dask cluster: a Parquet file (or a folder of them) typed partition by partition.

``ingest_dask(spec, inputs, cluster)`` writes the same ``data.parquet`` and returns the
same record as :func:`pipelines.ingest.ingest_source` (the stage writes
``fingerprint.json`` and ``result.json`` from it) without ever holding the whole table
in one process:

1. **scan** (on the workers): each partition (``partition_rows`` consecutive rows, read
   from the row groups it overlaps) goes through the same per-column casts as the local
   ingest (:func:`pipelines.ingest.conform_columns`) and returns its problems, its null
   counts and the category values outside the spec it saw;
2. the client merges them: one :class:`DataValidationError` with the *same text* as the
   local ingest (a column's bad-value count summed over partitions, its examples the
   first distinct bad values in row order; when partitions disagree on the kind of a
   column's problem, the kind the local cast checks first wins, as it does on the whole
   column), the global extra categories (sorted, after the spec's) and which int/bool
   columns hold nulls (``Int64`` / ``boolean`` everywhere then);
3. **write** (on the workers): every partition is typed again with those global choices
   and written as a part file; the client joins the parts in order into one
   ``data.parquet``, one row group at a time, keeping the pandas metadata.

Equal to the local ingest: the rows, values, dtypes and category lists of ``data.parquet``
(``pd.read_parquet`` gives an identical frame), ``fingerprint.json`` for a single file,
and every ``result.json`` field but ``data_sha256``: the row groups follow the partitions,
so the file's bytes (and SHA-256) differ from the local file's; they are deterministic for
a given ``partition_rows``. A folder source is its ``*.parquet`` files in name order (same
schema required); its ``sha256`` is the SHA-256 of the lines ``<name>\\t<file sha256>\\n``.
CSV files are not splittable by row groups: they go through the local ingest.
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from pipelines.column_casts import Problem
from pipelines.data.manifest import schema_to_list, sha256_file
from pipelines.errors import DataValidationError
from pipelines.ingest import (
    COMPRESSION,
    COMPRESSION_LEVEL,
    DATA_FILE,
    PARQUET_SUFFIXES,
    ROW_GROUP_ROWS,
    IngestedData,
    IngestInputs,
    check_source,
    conform_columns,
    ingest_source,
    mismatch_error,
    warn_extras,
    write_table,
)
from pipelines.spec import ColumnType, ModelSpec

if TYPE_CHECKING:
    from distributed import Client

    from pipelines.backends.dask_core import Cluster

log = logging.getLogger(__name__)

Piece = tuple[str, int, int]  # (file, first row, end row)
T = TypeVar("T")
#: the order in which the local casts check a column: the first kind found is reported
_PROBLEM_PRIORITY = ("not parseable", "non-integer", "outside the int64 range")


# ----------------------------------------------------------------------------- sources


def source_files(source: Path) -> list[Path]:
    """The Parquet files of ``source`` (a file, or a folder of ``*.parquet`` files)."""
    if source.is_dir():
        files = sorted(p for p in source.iterdir() if p.suffix.lower() in PARQUET_SUFFIXES)
        if not files:
            raise DataValidationError(f"{source}: folder holds no Parquet files")
        for file in files:
            check_source(file)
        return files
    check_source(source)
    return [source]


def _source_sha256(source: Path, files: list[Path]) -> str:
    if source.is_file():
        return sha256_file(source)
    import hashlib

    digest = hashlib.sha256()
    for file in files:
        digest.update(f"{file.name}\t{sha256_file(file)}\n".encode())
    return digest.hexdigest()


def _file_meta(file: Path) -> tuple[int, list[dict[str, str]]]:
    try:
        parquet = pq.ParquetFile(file)
        return parquet.metadata.num_rows, schema_to_list(parquet.schema_arrow)
    except (OSError, pa.ArrowException, ValueError) as exc:
        raise DataValidationError(f"{file}: not a readable Parquet file: {exc}") from exc


def plan_pieces(files: list[Path], partition_rows: int) -> tuple[list[Piece], int, list[Any]]:
    """(pieces of at most ``partition_rows`` rows, total rows, the common source schema)."""
    step = max(int(partition_rows), 1)
    pieces: list[Piece] = []
    schema: list[dict[str, str]] | None = None
    total = 0
    for file in files:
        rows, file_schema = _file_meta(file)
        if schema is None:
            schema = file_schema
        elif file_schema != schema:
            raise DataValidationError(
                f"{file}: schema differs from {files[0].name}'s ({file_schema} vs {schema})"
            )
        pieces += [(str(file), s, min(s + step, rows)) for s in range(0, rows, step)]
        total += rows
    return pieces, total, schema or []


def map_pieces(client: Client, fn: Callable[..., T], pieces: list[Piece], *same: Any) -> list[T]:
    """``fn(piece, *same)`` on the cluster for every piece, in piece order."""
    n = len(pieces)
    return client.gather(client.map(fn, pieces, *[[value] * n for value in same]))


def read_piece(piece: Piece, columns: list[str] | None = None) -> pa.Table:
    """Rows ``[start, stop)`` of a Parquet file (only the row groups they overlap, and only
    ``columns`` if given)."""
    path, start, stop = piece
    try:
        file = pq.ParquetFile(path)
        meta = file.metadata
        groups, first, offset = [], 0, None
        for i in range(meta.num_row_groups):
            n = meta.row_group(i).num_rows
            if first < stop and first + n > start:
                groups.append(i)
                offset = first if offset is None else offset
            first += n
        table = file.read_row_groups(groups, columns=columns)
    except (OSError, pa.ArrowException, ValueError) as exc:
        raise DataValidationError(f"{path}: not a readable Parquet file: {exc}") from exc
    return table.slice(start - (offset or 0), stop - start)


def _to_pandas(table: pa.Table, path: str, float_ints: set[str] = frozenset()) -> pd.DataFrame:
    """The pandas frame of a piece; ``float_ints`` integer columns come as float64, as
    ``to_pandas`` gives them for a whole file whose column holds nulls somewhere."""
    for name in float_ints:
        if name in table.column_names:
            i = table.column_names.index(name)
            if pa.types.is_integer(table.schema.field(i).type):
                table = table.set_column(i, name, table.column(i).cast(pa.float64()))
    try:
        return table.to_pandas()
    except (pa.ArrowException, ValueError, TypeError) as exc:
        raise DataValidationError(
            f"{path}: Parquet file cannot be converted to a table: {exc}"
        ) from exc


# ----------------------------------------------------------------------------- scan


def _problem_record(column: str | None, text: str) -> dict[str, Any]:
    if isinstance(text, Problem):
        return {
            "column": column,
            "text": str(text),
            "head": text.head,
            "count": text.count,
            "what": text.what,
            "examples": list(text.examples),
        }
    return {"column": column, "text": str(text)}


def scan_piece(piece: Piece, spec: ModelSpec) -> dict[str, Any]:
    """One partition's problems, nulls, extra columns and extra category values."""
    frame = _to_pandas(read_piece(piece), piece[0])
    typed, problems, extra_columns, extra_categories = conform_columns(spec, frame)
    nulls = {name: int(s.isna().sum()) for name, s in typed.items()}
    return {
        "rows": len(frame),
        "problems": [_problem_record(c, t) for c, t in problems],
        "extra_columns": extra_columns,
        "extra_categories": extra_categories,
        "nulls": nulls,
    }


def _priority(what: str) -> int:
    for i, key in enumerate(_PROBLEM_PRIORITY):
        if key in what:
            return i
    return len(_PROBLEM_PRIORITY)


def merge_problems(spec: ModelSpec, scans: list[dict[str, Any]]) -> list[str]:
    """The problems of the partitions as the local ingest reports them for the whole file."""
    merged: dict[tuple[str | None, str], dict[str, Any]] = {}
    for scan in scans:
        for record in scan["problems"]:
            key = (record["column"], record.get("what") or record["text"])
            if key not in merged:
                merged[key] = {**record, "examples": list(record.get("examples", []))}
            elif "count" in record:
                into = merged[key]
                into["count"] += record["count"]
                into["examples"] = list(dict.fromkeys(into["examples"] + record["examples"]))
    order = {name: i for i, name in enumerate(spec.data.columns)}
    best: dict[str, int] = {}
    for (column, _), record in merged.items():
        if column is not None and "what" in record:
            best[column] = min(best.get(column, 99), _priority(record["what"]))
    out: list[tuple[int, str]] = []
    for (column, _), record in merged.items():
        if "what" in record:
            if column is not None and _priority(record["what"]) > best[column]:
                continue  # the local cast stops at the first kind of problem
            text = str(Problem.of(record["head"], record["count"], record["what"],
                                  record["examples"]))  # fmt: skip
        else:
            text = record["text"]
        out.append((-1 if column is None else order.get(column, len(order)), text))
    return [text for _, text in sorted(out, key=lambda item: item[0])]


# ----------------------------------------------------------------------------- write


def write_piece(
    spec: ModelSpec,
    piece: Piece,
    part: str,
    extra_categories: dict[str, list[str]],
    nullable: set[str],
) -> dict[str, Any]:
    """Type one partition with the global choices and write it to ``part``."""
    frame = _to_pandas(read_piece(piece), piece[0], float_ints=nullable)
    typed, problems, _, _ = conform_columns(spec, frame)
    if problems:  # the scan saw none: the source changed in between
        raise mismatch_error(spec, piece[0], [text for _, text in problems])
    columns: dict[str, pd.Series] = {}
    for name, col in spec.data.columns.items():
        series = typed[name]
        if col.type == ColumnType.CATEGORY:
            categories = list(col.categories or []) + extra_categories.get(name, [])
            series = series.cat.set_categories(categories)
        elif col.type == ColumnType.INT:
            series = series.astype("Int64" if name in nullable else "int64")
        elif col.type == ColumnType.BOOL:
            series = series.astype("boolean" if name in nullable else bool)
        columns[name] = series
    out = pd.DataFrame(columns)
    write_table(pa.Table.from_pandas(out, preserve_index=False), Path(part))
    return {"rows": len(out), "dtypes": {n: str(d) for n, d in out.dtypes.items()}}


def join_parts(parts: list[Path], path: Path) -> None:
    """The part files, in order, as one Parquet file (one row group in memory at a time)."""
    tmp = path.with_name(f".{path.name}.tmp")
    writer: pq.ParquetWriter | None = None
    try:
        for part in parts:
            file = pq.ParquetFile(part)
            for i in range(file.metadata.num_row_groups):
                table = file.read_row_group(i)
                if writer is None:
                    writer = pq.ParquetWriter(
                        tmp,
                        table.schema,
                        compression=COMPRESSION,
                        compression_level=COMPRESSION_LEVEL,
                        use_dictionary=True,
                        write_statistics=True,
                        version="2.6",
                    )
                writer.write_table(table, row_group_size=ROW_GROUP_ROWS)
        assert writer is not None
        writer.close()
        writer = None
        os.replace(tmp, path)
    finally:
        if writer is not None:
            writer.close()
        if tmp.exists():
            tmp.unlink()


@dataclass(frozen=True)
class MergedScan:
    """What the partitions' scans found, merged: extra columns and categories, null
    counts, and the integer/boolean columns that hold nulls (written nullable)."""

    extra_columns: list[str]
    extra_categories: dict[str, list[str]]
    nulls: dict[str, int]
    nullable: set[str]


def _merge_scans(spec: ModelSpec, source: str, scans: list[dict[str, Any]]) -> MergedScan:
    """Merge the partitions' scans; a column that does not fit the spec anywhere fails."""
    problems = merge_problems(spec, scans)
    if problems:
        raise mismatch_error(spec, source, problems)
    found: dict[str, list[str]] = {}
    for scan in scans:
        for name, values in scan["extra_categories"].items():
            found.setdefault(name, []).extend(values)
    extra_categories = {
        name: sorted(set(found[name])) for name in spec.data.columns if name in found
    }
    nulls = {name: sum(scan["nulls"].get(name, 0) for scan in scans) for name in spec.data.columns}
    nullable = {
        name
        for name, col in spec.data.columns.items()
        if col.type in (ColumnType.INT, ColumnType.BOOL) and nulls[name] > 0
    }
    return MergedScan(scans[0]["extra_columns"], extra_categories, nulls, nullable)


def _write_pieces(
    client: Client, spec: ModelSpec, pieces: list[Any], out_dir: Path, merged: MergedScan
) -> list[dict[str, Any]]:
    """Write each partition typed on the cluster, then join them into ``data.parquet``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    parts_dir = out_dir / f".{DATA_FILE}.parts"
    shutil.rmtree(parts_dir, ignore_errors=True)
    parts_dir.mkdir()
    try:
        parts = [str(parts_dir / f"part.{i:06d}.parquet") for i in range(len(pieces))]
        n = len(pieces)
        written = client.gather(
            client.map(
                write_piece,
                [spec] * n,
                pieces,
                parts,
                [merged.extra_categories] * n,
                [merged.nullable] * n,
                pure=False,
            )
        )
        join_parts([Path(p) for p in parts], out_dir / DATA_FILE)
    finally:
        shutil.rmtree(parts_dir, ignore_errors=True)
    return written


# ----------------------------------------------------------------------------- stage


def ingest_dask(spec: ModelSpec, inputs: IngestInputs, cluster: Cluster) -> IngestedData:
    """:func:`pipelines.ingest.ingest_source` partition by partition on the cluster
    (module doc)."""
    source, out_dir, client = inputs.source, inputs.out_dir, cluster.client
    if source.is_file() and source.suffix.lower() not in PARQUET_SUFFIXES:
        log.info("%s: not Parquet, ingested by the local ingest", source)
        return ingest_source(spec, inputs)
    if not source.exists():
        raise DataValidationError(f"{source}: data file not found")
    files = source_files(source)
    pieces, rows, source_schema = plan_pieces(files, cluster.partition_rows)
    if rows == 0:
        raise DataValidationError(f"{source}: data file has no rows")
    log.info("ingest %s on dask: %d rows in %d partitions", source, rows, len(pieces))

    scans = map_pieces(client, scan_piece, pieces, spec)
    merged = _merge_scans(spec, str(source), scans)
    warn_extras(spec, source, merged.extra_columns, merged.extra_categories)
    written = _write_pieces(client, spec, pieces, out_dir, merged)
    if sum(w["rows"] for w in written) != rows:
        raise DataValidationError(f"{source}: changed while it was ingested")

    return IngestedData(
        source=source,
        format="parquet",
        sha256=_source_sha256(source, files),
        rows=rows,
        schema=source_schema,
        dtypes=written[0]["dtypes"],
        extra_columns=merged.extra_columns,
        extra_categories=merged.extra_categories,
        nulls=merged.nulls,
        marker={"backend": "dask", "partitions": len(pieces)},
    )
