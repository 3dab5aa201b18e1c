"""Stage ``evaluate``: the candidate, the baseline and the champion on the test rows.

Inputs: the ``features`` and ``train`` folders, the champion's model, the monitoring
window of recent labelled rows (when there is one). Output, in ``<run>/evaluate/``:
``scores.parquet``, ``metrics.json``, the ROC / PR / calibration plots and
``result.json`` (:class:`EvalResult`), written by :func:`write_evaluation` from what the
backend scored (:class:`pipelines.evaluation.ScoredTest`). Runs on the spec's compute
backend; :func:`evaluate` is the local computation and the files in one call.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipelines.artifacts import write_bytes_atomic, write_json
from pipelines.backends import EVALUATE, open_backend, resolve_compute
from pipelines.runs import RunContext
from pipelines.spec import ModelSpec

if TYPE_CHECKING:
    from pipelines.evaluation import EvaluateInputs, ScoredTest

log = logging.getLogger(__name__)

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
class EvalResult:
    """What the evaluation stage wrote, with the headline numbers."""

    out_dir: Path
    metrics_path: Path
    scores_path: Path
    plots: dict[str, Path]
    rows: int
    positives: int
    threshold: float
    candidate: dict[str, Any] = field(default_factory=dict)
    baseline: dict[str, Any] = field(default_factory=dict)
    champion: dict[str, Any] | None = None
    champion_model: Path | None = None

    def to_dict(self) -> dict[str, Any]:
        headline = ("roc_auc", "pr_auc", "ks", "brier", "log_loss")

        def pick(metrics: dict[str, Any] | None) -> dict[str, Any] | None:
            return None if metrics is None else {k: metrics.get(k) for k in headline}

        return {
            "stage": "evaluate",
            "out_dir": str(self.out_dir),
            "metrics_path": str(self.metrics_path),
            "scores_path": str(self.scores_path),
            "plots": {k: str(v) for k, v in self.plots.items()},
            "rows": self.rows,
            "positives": self.positives,
            "threshold": self.threshold,
            "candidate": pick(self.candidate),
            "baseline": pick(self.baseline),
            "champion": pick(self.champion),
            "champion_model": None if self.champion_model is None else str(self.champion_model),
        }


def write_evaluation(spec: ModelSpec, out_dir: Path, scored: ScoredTest) -> EvalResult:
    """The stage's files, once whatever the backend: ``scores.parquet``, ``metrics.json``,
    the plots and ``result.json``."""
    import numpy as np
    import pandas as pd

    from pipelines.evaluation import METRICS_JSON, SCORES_FILE, plots
    from pipelines.features import RESULT_JSON, write_parquet

    threshold = float(spec.gates.decision_threshold)
    metrics, y, scores = scored.metrics, scored.y, scored.scores
    out_dir.mkdir(parents=True, exist_ok=True)
    scores_frame = pd.DataFrame(
        {
            "id": scored.ids,
            "target": y,
            "score": scores["candidate"],
            "baseline_score": scores["baseline"],
            "champion_score": scores.get("champion", np.full(len(y), np.nan)),
            "decision": (scores["candidate"] >= threshold).astype(np.int64),
        }
    )
    scores_path = out_dir / SCORES_FILE
    write_parquet(scores_frame, scores_path)
    metrics_path = out_dir / METRICS_JSON
    write_json(metrics_path, metrics)
    plot_paths: dict[str, Path] = {}
    for name, data in plots(spec, y, scores, metrics["calibration"]).items():
        plot_paths[name] = out_dir / name
        write_bytes_atomic(plot_paths[name], data)

    result = EvalResult(
        out_dir=out_dir,
        metrics_path=metrics_path,
        scores_path=scores_path,
        plots=plot_paths,
        rows=len(y),
        positives=int(y.sum()),
        threshold=threshold,
        candidate=metrics["candidate"],
        baseline=metrics["baseline"],
        champion=metrics["champion"],
        champion_model=scored.champion_model,
    )
    write_json(out_dir / RESULT_JSON, {**result.to_dict(), **scored.marker})
    cand = metrics["candidate"]
    log.info(
        "evaluated %s on %d test rows: ROC-AUC %s, PR-AUC %s (baseline ROC-AUC %s)",
        spec.name,
        len(y),
        cand["roc_auc"],
        cand["pr_auc"],
        metrics["baseline"]["roc_auc"],
    )
    return result


def evaluate(
    spec: ModelSpec,
    features_dir: Path,
    train_dir: Path,
    out_dir: Path,
    champion_model: Path | None = None,
    recent_window: Path | None = None,
) -> EvalResult:
    """Evaluate locally (:func:`pipelines.evaluation.evaluate`) and write the stage's
    files in ``out_dir``."""
    from pipelines import evaluation

    folders = (Path(features_dir), Path(train_dir))
    inputs = evaluation.EvaluateInputs(*folders, champion_model, recent_window)
    return write_evaluation(spec, Path(out_dir), evaluation.evaluate(spec, inputs))


def inputs_of(
    run: RunContext, features_dir: str, train_dir: str, champ: dict[str, str]
) -> EvaluateInputs:
    """The stage's :class:`pipelines.evaluation.EvaluateInputs`: the earlier stages'
    folders, the champion's model and the monitoring job's recent labelled rows."""
    from pipelines.evaluation import EvaluateInputs

    model = Path(champ["model"]) if champ.get("model") else None
    recent = run.settings.var_dir / "monitoring" / run.spec.name / "recent_labelled.parquet"
    window = recent if recent.is_file() else None
    return EvaluateInputs(Path(features_dir), Path(train_dir), model, window)


def run(run: RunContext, features_dir: str, train_dir: str, champ: dict[str, str]) -> str:
    """Evaluate the trained models; the stage folder."""
    inputs = inputs_of(run, features_dir, train_dir, champ)
    with open_backend(resolve_compute(run.spec, run.settings)) as backend:
        scored = backend.run(EVALUATE, run.spec, inputs)
    return str(write_evaluation(run.spec, run.stage_dir(NAME), scored).out_dir)
