"""Stage ``lineage``: which data, code, spec and parameters this run used.

Input: ``fingerprint.json`` beside ``ingest``'s ``data.parquet``. Output:
``<run>/lineage/lineage.json`` and the governance store's lineage records.
"""

from __future__ import annotations

from pathlib import Path

from pipelines.runs import RunContext

NAME = "lineage"


def run(run: RunContext, data: str) -> str:
    from registry.lineage import capture_run_lineage

    return str(
        capture_run_lineage(
            run.settings.governance_url,
            run.spec.name,
            run.spec_path,
            run.run_id,
            Path(data).parent / "fingerprint.json",
            run.params,
            run.settings.home,
            run.stage_dir(NAME),
        )
    )
