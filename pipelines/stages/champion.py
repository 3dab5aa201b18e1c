"""Stage ``champion``: the serving champion's model and data profile, if there is one.

Output, in ``<run>/champion/``: the champion's files fetched from the registry; the
stage returns their paths by name (``model``, ``profile``; empty without a champion),
which ``validate_data``, ``evaluate`` and ``explain`` compare against.
"""

from __future__ import annotations

from pipelines.runs import RunContext

NAME = "champion"


def run(run: RunContext) -> dict[str, str]:
    from registry.mlflow_registry import fetch_champion

    found = fetch_champion(run.settings.mlflow_tracking_uri, run.spec.name, run.stage_dir(NAME))
    return {k: str(v) for k, v in (found or {}).items()}
