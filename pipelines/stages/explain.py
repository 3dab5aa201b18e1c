"""Stage ``explain``: SHAP importance and reason codes of the candidate.

Inputs: the ``features``, ``train`` and ``evaluate`` folders, the champion's model.
Output, in ``<run>/explain/``: ``shap_importance.json``, ``shap_summary.png``,
``reason_codes.parquet`` and ``result.json`` (:class:`validation.explain.ExplainResult`).
Runs on the spec's compute backend.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pipelines.backends import open_backend, resolve_compute
from pipelines.runs import RunContext
from pipelines.spec import Compute

NAME = "explain"
OUTPUTS: tuple[str, ...] = (
    "shap_importance.json",
    "shap_summary.png",
    "reason_codes.parquet",
    "result.json",
)


@dataclass(frozen=True)
class ExplainConfig:
    compute: Compute
    champion_model: Path | None

    @classmethod
    def from_run(cls, run: RunContext, champ: dict[str, str]) -> ExplainConfig:
        model = Path(champ["model"]) if champ.get("model") else None
        return cls(resolve_compute(run.spec, run.settings), model)


def run(
    run: RunContext, features_dir: str, train_dir: str, eval_dir: str, champ: dict[str, str]
) -> str:
    """Explain the candidate; the stage folder."""
    config = ExplainConfig.from_run(run, champ)
    folder = run.stage_dir(NAME)
    with open_backend(config.compute) as backend:
        backend.explain(
            run.spec,
            Path(features_dir),
            Path(train_dir),
            Path(eval_dir),
            folder,
            champion_model=config.champion_model,
        )
    return str(folder)
