"""Deterministic Parquet files with a JSON manifest beside them.

Every generated or loaded data set is written as ``<out_dir>/<name>.parquet`` plus
``<out_dir>/<name>.manifest.json``. The manifest records the row count, the Arrow
schema, the SHA-256 of the Parquet file and the generator with its parameters, so a
later stage can check it reads exactly the data that was produced.

Reruns are byte-identical: the Parquet file is written by pyarrow with fixed settings
(zstd, fixed row-group size, no pandas index and no pandas metadata), rows are
re-sliced into row groups of a fixed size whatever the chunking of the input, and the
manifest has sorted keys and no timestamp.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from pipelines.errors import DataValidationError
from pipelines.files import read_json

log = logging.getLogger(__name__)

CREATED_BY = "govml"
MANIFEST_SUFFIX = ".manifest.json"
PARQUET_SUFFIX = ".parquet"
DEFAULT_ROW_GROUP_ROWS = 1_048_576
_HASH_BLOCK = 1 << 20  # 1 MiB
#: how every Parquet file of the project is written (same options, same bytes)
PARQUET_OPTIONS: dict[str, Any] = {
    "compression": "zstd",
    "compression_level": 3,
    "use_dictionary": True,
    "write_statistics": True,
    "version": "2.6",
}

Frame = pd.DataFrame | pa.Table


@dataclass(frozen=True)
class Manifest:
    """What was written: one Parquet file, described well enough to verify it."""

    name: str
    path: str
    rows: int
    schema: list[dict[str, str]]
    sha256: str
    generator: str
    params: dict[str, Any] = field(default_factory=dict)
    created_by: str = CREATED_BY

    def to_dict(self) -> dict[str, Any]:
        """The JSON-serialisable form written to ``<name>.manifest.json``."""
        return {
            "created_by": self.created_by,
            "generator": self.generator,
            "name": self.name,
            "params": self.params,
            "path": self.path,
            "rows": self.rows,
            "schema": [dict(col) for col in self.schema],
            "sha256": self.sha256,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = "manifest") -> Manifest:
        """Build a manifest from its JSON form; raise DataValidationError if malformed."""
        required = ("name", "path", "rows", "schema", "sha256", "generator")
        missing = [key for key in required if key not in data]
        if missing:
            raise DataValidationError(f"{source}: missing key(s) {', '.join(missing)}")
        schema = data["schema"]
        if not isinstance(schema, list) or not all(
            isinstance(col, dict) and {"name", "dtype"} <= col.keys() for col in schema
        ):
            raise DataValidationError(f"{source}: 'schema' must be a list of {{name, dtype}}")
        rows = data["rows"]
        if not isinstance(rows, int) or isinstance(rows, bool) or rows < 0:
            raise DataValidationError(f"{source}: 'rows' must be a non-negative integer")
        params = data.get("params", {})
        if not isinstance(params, dict):
            raise DataValidationError(f"{source}: 'params' must be an object")
        return cls(
            name=str(data["name"]),
            path=str(data["path"]),
            rows=rows,
            schema=[{"name": str(c["name"]), "dtype": str(c["dtype"])} for c in schema],
            sha256=str(data["sha256"]),
            generator=str(data["generator"]),
            params=params,
            created_by=str(data.get("created_by", CREATED_BY)),
        )

    def to_json(self) -> str:
        """Canonical JSON text: sorted keys, indent 2, trailing newline."""
        return json.dumps(self.to_dict(), sort_keys=True, indent=2, allow_nan=False) + "\n"


def sha256_file(path: str | os.PathLike[str]) -> str:
    """SHA-256 hex digest of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(_HASH_BLOCK):
            digest.update(block)
    return digest.hexdigest()


def schema_to_list(schema: pa.Schema) -> list[dict[str, str]]:
    """An Arrow schema as ``[{name, dtype}]`` with Arrow type strings."""
    return [{"name": f.name, "dtype": str(f.type)} for f in schema]


def manifest_path_for(out_dir: str | os.PathLike[str], name: str) -> Path:
    """Where the manifest of data set ``name`` lives in ``out_dir``."""
    return Path(out_dir) / f"{name}{MANIFEST_SUFFIX}"


def _to_table(frame: Frame) -> pa.Table:
    if isinstance(frame, pa.Table):
        table = frame
    elif isinstance(frame, pd.DataFrame):
        table = pa.Table.from_pandas(frame, preserve_index=False)
    else:
        raise DataValidationError(
            f"expected a pandas DataFrame or pyarrow Table, got {type(frame).__name__}"
        )
    # No pandas/arrow metadata: the file must not depend on the pandas version.
    return table.replace_schema_metadata(None)


def _iter_tables(data: Frame | Iterable[Frame]) -> Iterator[pa.Table]:
    if isinstance(data, pd.DataFrame | pa.Table):
        yield _to_table(data)
        return
    for frame in data:
        yield _to_table(frame)


def _check_name(name: str) -> None:
    if not name or "/" in name or "\\" in name or name.startswith("."):
        raise DataValidationError(f"invalid data set name {name!r}: use a plain file stem")


def _check_params(params: Mapping[str, Any], name: str) -> dict[str, Any]:
    try:
        return json.loads(json.dumps(dict(params), sort_keys=True, allow_nan=False))
    except (TypeError, ValueError) as exc:
        raise DataValidationError(
            f"params of data set {name!r} are not JSON-serialisable: {exc}"
        ) from exc


class _RowGroups:
    """A Parquet file written in row groups of exactly ``row_group_rows`` (the last may be
    shorter) whatever the input chunks; the first chunk fixes the schema."""

    def __init__(self, path: Path, name: str, row_group_rows: int) -> None:
        self.path, self.name, self.row_group_rows = path, name, row_group_rows
        self.writer: pq.ParquetWriter | None = None
        self.schema: pa.Schema | None = None
        self.pending: list[pa.Table] = []
        self.pending_rows = 0
        self.total_rows = 0

    def add(self, table: pa.Table) -> None:
        if self.schema is None:
            self.schema = table.schema
            self.writer = pq.ParquetWriter(self.path, self.schema, **PARQUET_OPTIONS)
        elif not table.schema.equals(self.schema):
            try:
                table = table.cast(self.schema)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError, ValueError) as exc:
                raise DataValidationError(
                    f"data set {self.name!r}: chunk schema differs from the first chunk: {exc}"
                ) from exc
        if table.num_rows == 0:
            return
        self.pending.append(table)
        self.pending_rows += table.num_rows
        self.total_rows += table.num_rows
        if self.pending_rows >= self.row_group_rows:
            self.flush(final=False)

    def flush(self, final: bool) -> None:
        assert self.writer is not None
        if not self.pending:
            return
        merged = pa.concat_tables(self.pending)
        size, offset = self.row_group_rows, 0
        while merged.num_rows - offset >= size or (final and offset < merged.num_rows):
            piece = merged.slice(offset, size)
            self.writer.write_table(piece, row_group_size=size)
            offset += piece.num_rows
        rest = merged.slice(offset)
        self.pending = [rest] if rest.num_rows else []
        self.pending_rows = rest.num_rows

    def finish(self) -> None:
        if self.writer is None:
            raise DataValidationError(f"data set {self.name!r}: no data to write")
        self.flush(final=True)
        self.writer.close()
        self.writer = None

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def write_parquet_with_manifest(
    data: Frame | Iterable[Frame],
    out_dir: str | os.PathLike[str],
    name: str,
    params: Mapping[str, Any],
    *,
    generator: str = "",
    row_group_rows: int = DEFAULT_ROW_GROUP_ROWS,
) -> Manifest:
    """Write ``data`` to ``<out_dir>/<name>.parquet`` and its manifest; return the manifest.

    ``data`` is one DataFrame/Table or an iterable of them with the same schema (the
    first chunk fixes it; later chunks are cast to it). Rows are written in row groups
    of exactly ``row_group_rows`` (the last may be shorter), so the bytes do not depend
    on how the input was chunked, and at most about one row group is held in memory
    besides the current input chunk.
    """
    _check_name(name)
    if row_group_rows < 1:
        raise DataValidationError(f"row_group_rows must be >= 1, got {row_group_rows}")
    clean_params = _check_params(params, name)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    parquet_path = out / f"{name}{PARQUET_SUFFIX}"
    tmp_path = out / f".{name}{PARQUET_SUFFIX}.tmp"

    groups = _RowGroups(tmp_path, name, row_group_rows)
    try:
        for table in _iter_tables(data):
            groups.add(table)
        groups.finish()
        os.replace(tmp_path, parquet_path)
    finally:
        groups.close()
        if tmp_path.exists():
            tmp_path.unlink()

    assert groups.schema is not None
    manifest = Manifest(
        name=name,
        path=parquet_path.name,
        rows=groups.total_rows,
        schema=schema_to_list(groups.schema),
        sha256=sha256_file(parquet_path),
        generator=generator,
        params=clean_params,
    )
    manifest_file = manifest_path_for(out, name)
    manifest_file.write_text(manifest.to_json(), encoding="utf-8")
    log.info("wrote %s (%d rows, sha256 %s)", parquet_path, groups.total_rows, manifest.sha256[:12])
    return manifest


def read_manifest(path: str | os.PathLike[str]) -> Manifest:
    """Read a ``*.manifest.json`` file; raise DataValidationError if missing or malformed."""
    p = Path(path)
    data = read_json(p, DataValidationError, f"manifest {p}")
    if not isinstance(data, dict):
        raise DataValidationError(f"manifest {p} must hold a JSON object")
    return Manifest.from_dict(data, source=f"manifest {p}")


def data_path(manifest_path: str | os.PathLike[str], manifest: Manifest) -> Path:
    """The Parquet file a manifest describes (its path is relative to the manifest)."""
    return Path(manifest_path).parent / manifest.path


def verify_manifest(manifest_path: str | os.PathLike[str]) -> Manifest:
    """Check the Parquet file against its manifest (SHA-256, rows, schema); return it.

    Raises DataValidationError naming the file and the mismatch.
    """
    manifest = read_manifest(manifest_path)
    parquet_path = data_path(manifest_path, manifest)
    if not parquet_path.is_file():
        raise DataValidationError(
            f"{parquet_path}: data file listed in manifest {manifest_path} is missing"
        )
    actual_sha = sha256_file(parquet_path)
    if actual_sha != manifest.sha256:
        raise DataValidationError(
            f"{parquet_path}: sha256 mismatch: manifest says {manifest.sha256}, "
            f"file has {actual_sha}"
        )
    try:
        meta = pq.read_metadata(parquet_path)
        schema = pq.read_schema(parquet_path)
    except (OSError, pa.ArrowException) as exc:
        raise DataValidationError(f"{parquet_path}: not a readable Parquet file: {exc}") from exc
    if meta.num_rows != manifest.rows:
        raise DataValidationError(
            f"{parquet_path}: row count mismatch: manifest says {manifest.rows}, "
            f"file has {meta.num_rows}"
        )
    actual_schema = schema_to_list(schema)
    if actual_schema != manifest.schema:
        raise DataValidationError(
            f"{parquet_path}: schema mismatch: manifest says {manifest.schema}, "
            f"file has {actual_schema}"
        )
    log.info("verified %s against %s", parquet_path, manifest_path)
    return manifest
