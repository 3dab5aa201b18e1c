"""Stage ``evaluate``: the candidate, the baseline and the champion on the test rows.

Inputs: the ``features`` and ``train`` folders, the champion's model, the monitoring
window of recent labelled rows (when there is one). Output, in ``<run>/evaluate/``:
``scores.parquet``, ``metrics.json``, the ROC / PR / calibration plots and
``result.json`` (:class:`pipelines.evaluation.EvalResult`). Runs on the spec's compute
backend.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pipelines.backends import open_backend, resolve_compute
from pipelines.runs import RunContext
from pipelines.spec import Compute

NAME = "evaluate"
OUTPUTS: tuple[str, ...] = (
    "scores.parquet",
    "metrics.json",
    "roc.png",
    "pr.png",
    "calibration.png",
    "result.json",
)


@dataclass(frozen=True)
class EvaluateConfig:
    compute: Compute
    champion_model: Path | None
    recent_window: Path | None

    @classmethod
    def from_run(cls, run: RunContext, champ: dict[str, str]) -> EvaluateConfig:
        model = Path(champ["model"]) if champ.get("model") else None
        recent = run.settings.var_dir / "monitoring" / run.spec.name / "recent_labelled.parquet"
        return cls(
            resolve_compute(run.spec, run.settings), model, recent if recent.is_file() else None
        )


def run(run: RunContext, features_dir: str, train_dir: str, champ: dict[str, str]) -> str:
    """Evaluate the trained models; the stage folder."""
    config = EvaluateConfig.from_run(run, champ)
    folder = run.stage_dir(NAME)
    with open_backend(config.compute) as backend:
        backend.evaluate(
            run.spec,
            Path(features_dir),
            Path(train_dir),
            folder,
            champion_model=config.champion_model,
            recent_window=config.recent_window,
        )
    return str(folder)
