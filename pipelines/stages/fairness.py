"""Stage ``fairness``: group metrics of the candidate's decisions (local only).

Inputs: the ``features`` and ``evaluate`` folders. Output, in ``<run>/fairness/``:
``fairness.json``, ``fairness.md`` and ``result.json``
(:class:`validation.fairness.FairnessResult`).
"""

from __future__ import annotations

from pathlib import Path

from pipelines.runs import RunContext

NAME = "fairness"
OUTPUTS: tuple[str, ...] = ("fairness.json", "fairness.md", "result.json")


def run(run: RunContext, features_dir: str, eval_dir: str) -> str:
    from validation.fairness import assess_fairness

    folder = run.stage_dir(NAME)
    assess_fairness(run.spec, Path(features_dir), Path(eval_dir), folder)
    return str(folder)
