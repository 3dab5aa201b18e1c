"""Ingest: read a Parquet or CSV file, check it against the spec, write it typed.

:func:`ingest_source` is the computation of the first lifecycle stage
(:mod:`pipelines.stages.ingest`, see ``docs/lifecycle.md``). It enforces the
*structural* contract of the data only:

* every column of ``spec.data.columns`` is present, and
* every value can be cast to the column's spec type (a string in a float column,
  an unparseable datetime, a fraction in an int column, ``"maybe"`` in a bool column
  are errors).

Everything else (ranges, category lists, nulls in ``missing: forbid`` columns,
duplicate ids, row counts, label rates) is the job of
the data checks (:mod:`pipelines.stages.validate_data`) so that all such problems are reported
together, with the Data Docs. When the structural contract is broken ingest raises
one :class:`DataValidationError` naming the file and listing *every* problem.

Interpretations of the contract, chosen and documented here:

* **Unexpected columns** (in the file, not in the spec) are not an error: they are
  dropped from ``data.parquet``, logged, and listed in ``result.json`` under
  ``extra_columns``.
* **Category values outside the spec's list** are kept: the pandas categories are the
  spec's categories in spec order followed by every extra observed value, sorted, so
  validation can report them. They are listed under ``extra_categories``.
* **Nulls** never fail ingest. An int column with nulls becomes pandas ``Int64``
  (nullable) and a bool column with nulls pandas ``boolean``, whatever its missing
  policy; validation's not-null check then rejects them for ``missing: forbid``
  columns. Without nulls they are ``int64`` / ``bool``.
* **Datetimes** become ``datetime64[ns]``, naive UTC: time-zone aware values are
  converted to UTC, naive values are taken as UTC. Strings must be ISO 8601. Numbers
  are refused (the unit would be a guess).
* **CSV** is read with every field as text (only an empty field is null, so a
  category value such as ``"NA"`` or ``"none"`` stays a value) and parsed per spec
  type; in float, int, bool and datetime columns the tokens ``nan``, ``null``,
  ``none``, ``na``, ``n/a``, ``nat`` and ``<na>`` (any case) are also nulls.
* **Category and string** columns accept any value (it is turned into text);
  integral floats print without ``.0``.

``data.parquet`` is written with pyarrow (zstd, no index, fixed row-group size) and
*keeps* the pandas metadata so that ``pd.read_parquet`` restores ``Int64``,
``boolean`` and ``category`` dtypes; reruns in the same environment are
byte-identical. The stage's ``fingerprint.json`` holds ``source`` (the resolved path),
``sha256`` of the source file, ``rows`` and ``schema`` (the source's own schema:
Arrow types for Parquet, ``string`` for every CSV column), from :class:`IngestedData`.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from pipelines.artifacts import temporary_beside
from pipelines.column_casts import CASTS
from pipelines.data.manifest import schema_to_list, sha256_file
from pipelines.errors import DataValidationError
from pipelines.spec import ColumnType, ModelSpec

log = logging.getLogger(__name__)

DATA_FILE = "data.parquet"

PARQUET_SUFFIXES = (".parquet", ".pq")
CSV_SUFFIXES = (".csv",)

ROW_GROUP_ROWS = 1_048_576
COMPRESSION = "zstd"
COMPRESSION_LEVEL = 3


# ----------------------------------------------------------------------------- reading


def _file_format(source: Path) -> str:
    suffix = source.suffix.lower()
    if suffix in PARQUET_SUFFIXES:
        return "parquet"
    if suffix in CSV_SUFFIXES:
        return "csv"
    raise DataValidationError(
        f"{source}: unsupported file type {source.suffix!r}; "
        f"use {', '.join(PARQUET_SUFFIXES + CSV_SUFFIXES)}"
    )


def _read_parquet(source: Path) -> tuple[pd.DataFrame, list[dict[str, str]]]:
    try:
        table = pq.read_table(source)
    except (OSError, pa.ArrowException, ValueError) as exc:
        raise DataValidationError(f"{source}: not a readable Parquet file: {exc}") from exc
    schema = schema_to_list(table.schema)
    try:
        frame = table.to_pandas()
    except (pa.ArrowException, ValueError, TypeError) as exc:
        raise DataValidationError(
            f"{source}: Parquet file cannot be converted to a table: {exc}"
        ) from exc
    return frame, schema


def _read_csv(source: Path) -> tuple[pd.DataFrame, list[dict[str, str]]]:
    try:
        frame = pd.read_csv(
            source,
            dtype=str,
            keep_default_na=False,
            na_values=[""],
            skipinitialspace=False,
        )
    except pd.errors.EmptyDataError as exc:
        raise DataValidationError(f"{source}: CSV file has no header and no data") from exc
    except (pd.errors.ParserError, UnicodeDecodeError, OSError, ValueError) as exc:
        raise DataValidationError(f"{source}: not a readable CSV file: {exc}") from exc
    frame.columns = [str(c).strip() for c in frame.columns]
    schema = [{"name": str(c), "dtype": "string"} for c in frame.columns]
    return frame, schema


def _read(source: Path) -> tuple[str, pd.DataFrame, list[dict[str, str]]]:
    fmt = check_source(source)
    frame, schema = _read_parquet(source) if fmt == "parquet" else _read_csv(source)
    if len(frame) == 0:
        raise DataValidationError(f"{source}: data file has no rows")
    return fmt, frame, schema


def check_source(source: Path) -> str:
    """The format of a readable, non-empty data file; DataValidationError otherwise."""
    if not source.exists():
        raise DataValidationError(f"{source}: data file not found")
    if not source.is_file():
        raise DataValidationError(f"{source}: not a regular file")
    fmt = _file_format(source)
    try:
        size = source.stat().st_size
    except OSError as exc:
        raise DataValidationError(f"{source}: cannot read data file ({exc.strerror})") from exc
    if size == 0:
        raise DataValidationError(f"{source}: data file is empty (0 bytes)")
    if not os.access(source, os.R_OK):
        raise DataValidationError(f"{source}: data file is not readable (permission denied)")
    return fmt


# ----------------------------------------------------------------------------- writing


def write_table(table: pa.Table, path: Path) -> None:
    """Write ``table`` to ``path`` atomically with the fixed Parquet settings (zstd level
    3, row groups of :data:`ROW_GROUP_ROWS`, dictionaries, statistics, format 2.6)."""
    tmp = temporary_beside(path)
    try:
        pq.write_table(
            table,
            tmp,
            compression=COMPRESSION,
            compression_level=COMPRESSION_LEVEL,
            row_group_size=ROW_GROUP_ROWS,
            use_dictionary=True,
            write_statistics=True,
            version="2.6",
        )
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def warn_extras(
    spec: ModelSpec, source: Path, extra_columns: list[str], extra_categories: dict[str, list[str]]
) -> None:
    """Log the source's columns outside the spec and values outside its categories."""
    if extra_columns:
        log.warning(
            "%s: ignoring %d column(s) not in spec %r: %s",
            source,
            len(extra_columns),
            spec.name,
            ", ".join(extra_columns),
        )
    for name, values in extra_categories.items():
        log.info("%s: column %r has values outside the spec's categories: %s", source, name, values)


# ----------------------------------------------------------------------------- stage


def conform_columns(
    spec: ModelSpec, frame: pd.DataFrame
) -> tuple[dict[str, pd.Series], list[tuple[str | None, str]], list[str], dict[str, list[str]]]:
    """The per-column work of :func:`conform`, without raising.

    Returns (typed columns, problems as ``(column or None, text)`` in report order,
    extra columns, extra categories). Shared with the Dask ingest, which merges the
    problems of its partitions.
    """
    problems: list[tuple[str | None, str]] = []
    names = [str(c) for c in frame.columns]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        problems.append((None, f"duplicate column name(s) {', '.join(repr(d) for d in dupes)}"))
    missing = [name for name in spec.data.columns if name not in names]
    if missing:
        problems.append((None, f"missing column(s) {', '.join(repr(m) for m in missing)}"))
    extra_columns = [n for n in names if n not in spec.data.columns]

    typed: dict[str, pd.Series] = {}
    extra_categories: dict[str, list[str]] = {}
    for name, col in spec.data.columns.items():
        if name not in names or name in dupes:
            continue
        series = frame[name].reset_index(drop=True)
        out, col_problems = CASTS[col.type](name, col, series)
        problems.extend((name, p) for p in col_problems)
        if out is None:
            continue
        typed[name] = out.rename(name)
        if col.type == ColumnType.CATEGORY:
            extra = [c for c in out.cat.categories if c not in set(col.categories or [])]
            if extra:
                extra_categories[name] = [str(c) for c in extra]
    return typed, problems, extra_columns, extra_categories


def mismatch_error(spec: ModelSpec, where: str, problems: list[str]) -> DataValidationError:
    """The one error listing every structural problem of ``where``."""
    n = len(problems)
    return DataValidationError(
        f"{where}: does not match spec {spec.name!r} ({n} problem{'s' if n > 1 else ''}): "
        + "; ".join(problems)
    )


def conform(
    spec: ModelSpec, frame: pd.DataFrame, where: str
) -> tuple[pd.DataFrame, list[str], dict[str, list[str]]]:
    """Type ``frame`` per spec: (typed frame in spec order, extra columns, extra categories).

    Raises DataValidationError naming ``where`` and every structural problem.
    """
    typed, problems, extra_columns, extra_categories = conform_columns(spec, frame)
    if problems:
        raise mismatch_error(spec, where, [text for _, text in problems])
    out_frame = pd.DataFrame({name: typed[name] for name in spec.data.columns})
    return out_frame, extra_columns, extra_categories


@dataclass(frozen=True)
class IngestInputs:
    """The ingest computation's inputs: the source file (or folder, on Dask) and the
    folder ``data.parquet`` goes to."""

    source: Path
    out_dir: Path


def ingest_source(spec: ModelSpec, inputs: IngestInputs) -> IngestedData:
    """The local ingest computation (:data:`pipelines.backends.INGEST`): read
    ``inputs.source`` (Parquet or CSV), check and type it per spec and write it as
    ``data.parquet`` into ``inputs.out_dir`` (atomically; reruns give identical bytes);
    the stage writes the record (:func:`pipelines.stages.ingest.write_ingest`).

    Raises DataValidationError naming the file and every structural problem (missing
    columns, values that cannot be cast).
    """
    source, out_dir = inputs.source, inputs.out_dir
    fmt, frame, source_schema = _read(source)
    digest = sha256_file(source)
    typed, extra_columns, extra_categories = conform(spec, frame, str(source))
    warn_extras(spec, source, extra_columns, extra_categories)

    out_dir.mkdir(parents=True, exist_ok=True)
    data_path = out_dir / DATA_FILE
    write_table(pa.Table.from_pandas(typed, preserve_index=False), data_path)
    return IngestedData(
        source=source,
        format=fmt,
        sha256=digest,
        rows=len(typed),
        schema=source_schema,
        dtypes={name: str(dtype) for name, dtype in typed.dtypes.items()},
        extra_columns=extra_columns,
        extra_categories=extra_categories,
        nulls={name: int(n) for name, n in typed.isna().sum().items()},
    )


@dataclass(frozen=True)
class IngestedData:
    """What an ingest computation (local or on Dask) read and wrote to ``data.parquet``,
    for the stage's record (:func:`pipelines.stages.ingest.write_ingest`); ``marker`` is
    what a backend adds to ``result.json``."""

    source: Path
    format: str
    sha256: str
    rows: int
    schema: Any
    dtypes: dict[str, str]
    extra_columns: list[str]
    extra_categories: dict[str, list[str]]
    nulls: dict[str, int]
    marker: dict[str, Any] = field(default_factory=dict)
