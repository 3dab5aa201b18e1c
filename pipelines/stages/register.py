"""Stage ``register``: log the run to MLflow, register the model with alias ``candidate``.

Waits for ``gates`` (the registry refuses a run whose gates did not pass). Output:
``<run>/register/`` and the registration's governance record; returns the
registration (model name, version, alias, URIs) for the approval request.
"""

from __future__ import annotations

from typing import Any

from pipelines.runs import RunContext

NAME = "register"


def run(run: RunContext) -> dict[str, Any]:
    from pipelines.spec import spec_hash
    from registry.governance import record_registration
    from registry.mlflow_registry import artifact_location_for, register

    uri = run.settings.mlflow_tracking_uri
    result = register(
        run.spec,
        run.run_dir,
        run.run_id,
        uri,
        run.stage_dir(NAME),
        spec_sha256=spec_hash(run.spec_path),
        artifact_location=artifact_location_for(uri, run.settings.mlflow_artifacts),
    ).to_dict()
    record_registration(run.settings.governance_url, run.run_id, result)
    return result
