"""Stage ``ingest``: the run's data source, checked and typed per spec.

Input: the run's source (``data_path`` or the spec's source, materialised). Output, in
``<run>/ingest/``: ``data.parquet`` (written by the computation,
:func:`pipelines.ingest.ingest_source` or its Dask twin), ``fingerprint.json`` and
``result.json`` (:class:`IngestResult`), written by :func:`write_ingest` from the
computation's record (:class:`pipelines.ingest.IngestedData`). Runs on the spec's
compute backend; :func:`ingest` is the local computation and the files in one call.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipelines.artifacts import write_json
from pipelines.backends import INGEST, open_backend, resolve_compute
from pipelines.runs import RunContext, resolve_source
from pipelines.spec import ModelSpec

if TYPE_CHECKING:
    from pipelines.ingest import IngestedData

log = logging.getLogger(__name__)

NAME = "ingest"
DATA_FILE = "data.parquet"
FINGERPRINT_FILE = "fingerprint.json"
RESULT_FILE = "result.json"
OUTPUTS: tuple[str, ...] = (DATA_FILE, FINGERPRINT_FILE, RESULT_FILE)


@dataclass(frozen=True)
class IngestResult:
    """What ingest wrote (also written to ``result.json``)."""

    spec: str
    source: str
    format: str
    sha256: str
    rows: int
    columns: list[str]
    dtypes: dict[str, str]
    extra_columns: list[str]
    extra_categories: dict[str, list[str]]
    data: str
    data_sha256: str
    fingerprint: str
    nulls: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def write_ingest(spec: ModelSpec, out_dir: Path, ingested: IngestedData) -> IngestResult:
    """The stage's record beside ``data.parquet``, once whatever the backend:
    ``fingerprint.json`` and ``result.json``."""
    from pipelines.data.manifest import sha256_file

    data_path = out_dir / DATA_FILE
    resolved = str(ingested.source.resolve())
    fingerprint = {
        "rows": ingested.rows,
        "schema": ingested.schema,
        "sha256": ingested.sha256,
        "source": resolved,
    }
    fingerprint_path = out_dir / FINGERPRINT_FILE
    write_json(fingerprint_path, fingerprint)
    result = IngestResult(
        spec=spec.name,
        source=resolved,
        format=ingested.format,
        sha256=ingested.sha256,
        rows=ingested.rows,
        columns=list(spec.data.columns),
        dtypes=ingested.dtypes,
        extra_columns=ingested.extra_columns,
        extra_categories=ingested.extra_categories,
        data=str(data_path),
        data_sha256=sha256_file(data_path),
        fingerprint=str(fingerprint_path),
        nulls=ingested.nulls,
    )
    write_json(out_dir / RESULT_FILE, {**result.to_dict(), **ingested.marker})
    log.info(
        "ingested %s (%d rows, sha256 %s) into %s",
        ingested.source,
        result.rows,
        ingested.sha256[:12],
        data_path,
    )
    return result


def ingest(spec: ModelSpec, source: Path, out_dir: Path) -> IngestResult:
    """Ingest ``source`` locally (:func:`pipelines.ingest.ingest_source`) and write the
    stage's files in ``out_dir``."""
    from pipelines.ingest import IngestInputs, ingest_source

    out_dir = Path(out_dir)
    return write_ingest(spec, out_dir, ingest_source(spec, IngestInputs(Path(source), out_dir)))


def run(run: RunContext) -> str:
    """Ingest the run's source; the path of ``data.parquet`` (for the later stages)."""
    from pipelines.ingest import IngestInputs

    source = resolve_source(run)
    folder = run.stage_dir(NAME)
    with open_backend(resolve_compute(run.spec, run.settings)) as backend:
        ingested = backend.run(INGEST, run.spec, IngestInputs(source, folder))
    write_ingest(run.spec, folder, ingested)
    return str(folder / DATA_FILE)
