"""Stage ``ingest``: the run's data source, checked and typed per spec.

Input: the run's source (``data_path`` or the spec's source, materialised). Output, in
``<run>/ingest/``: ``data.parquet``, ``fingerprint.json``, ``result.json``
(:class:`pipelines.ingest.IngestResult`). Runs on the spec's compute backend.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pipelines.backends import open_backend, resolve_compute
from pipelines.runs import RunContext, resolve_source
from pipelines.spec import Compute

NAME = "ingest"
DATA_FILE = "data.parquet"
OUTPUTS: tuple[str, ...] = (DATA_FILE, "fingerprint.json", "result.json")


@dataclass(frozen=True)
class IngestConfig:
    """Where the data comes from and which engine reads it."""

    source: Path
    compute: Compute

    @classmethod
    def from_run(cls, run: RunContext) -> IngestConfig:
        return cls(resolve_source(run), resolve_compute(run.spec, run.settings))


def run(run: RunContext) -> str:
    """Ingest the run's source; the path of ``data.parquet`` (for the later stages)."""
    config = IngestConfig.from_run(run)
    folder = run.stage_dir(NAME)
    with open_backend(config.compute) as backend:
        backend.ingest(run.spec, config.source, folder)
    return str(folder / DATA_FILE)
