"""Stage ``train``: the LightGBM candidate and the baseline from the feature tables.

Input: the ``features`` folder. Output, in ``<run>/train/``: ``model.txt``,
``baseline.joblib``, ``training.json`` and ``result.json`` (:class:`TrainResult`),
written by :func:`write_training` from what the backend trained
(:class:`pipelines.training.TrainedModels`). Runs on the spec's compute backend;
:func:`train` is the local computation and the files in one call.
"""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipelines.artifacts import sha256_file, write_bytes_atomic, write_json
from pipelines.backends import TRAIN, open_backend, resolve_compute
from pipelines.runs import RunContext
from pipelines.spec import ModelSpec

if TYPE_CHECKING:
    import lightgbm as lgb

    from pipelines.training import TrainedModels

log = logging.getLogger(__name__)

NAME = "train"
OUTPUTS: tuple[str, ...] = ("model.txt", "baseline.joblib", "training.json", "result.json")


@dataclass(frozen=True)
class TrainResult:
    """What the training stage wrote."""

    out_dir: Path
    model_path: Path
    baseline_path: Path
    training_json: Path
    model_sha256: str
    baseline_sha256: str
    best_iteration: int
    num_boost_round: int
    early_stopped: bool
    metric: str
    validation_score: float | None
    train_rows: int
    validation_rows: int
    tuning_trials: int
    params: dict[str, Any] = field(default_factory=dict)
    #: the trained booster, in memory (not serialised; the file is ``model_path``)
    booster: lgb.Booster | None = field(default=None, repr=False, compare=False)

    def to_dict(self) -> dict[str, Any]:
        return {
            "stage": "train",
            "out_dir": str(self.out_dir),
            "model_path": str(self.model_path),
            "baseline_path": str(self.baseline_path),
            "training_json": str(self.training_json),
            "model_sha256": self.model_sha256,
            "baseline_sha256": self.baseline_sha256,
            "best_iteration": self.best_iteration,
            "num_boost_round": self.num_boost_round,
            "early_stopped": self.early_stopped,
            "metric": self.metric,
            "validation_score": self.validation_score,
            "train_rows": self.train_rows,
            "validation_rows": self.validation_rows,
            "tuning_trials": self.tuning_trials,
            "params": dict(self.params),
        }


def _joblib_bytes(obj: Any) -> bytes:
    import joblib

    buffer = io.BytesIO()
    joblib.dump(obj, buffer)
    return buffer.getvalue()


def _training_record(
    spec: ModelSpec, trained: TrainedModels, model_sha: str, baseline_sha: str
) -> dict[str, Any]:
    """``training.json``."""
    import lightgbm as lgb
    import sklearn

    return {
        "best_iteration": trained.best_iteration,
        "num_boost_round": spec.training.num_boost_round,
        "params": trained.params,
        "seed": spec.training.seed,
        "features": trained.features,
        "categorical": trained.categorical,
        "model_sha256": model_sha,
        "baseline_sha256": baseline_sha,
        "tuning": trained.tuning,
        "lightgbm_version": lgb.__version__,
        "sklearn_version": sklearn.__version__,
        "train_rows": trained.train_rows,
        "scale_pos_weight": trained.scale_pos_weight,
        "negative_sampling": {
            "rate": spec.training.negative_sample_rate,
            "train_rows_before": trained.train_rows_before,
            "validation_rows": trained.validation_rows,
        },
        **trained.extra,
    }


def write_training(spec: ModelSpec, out_dir: Path, trained: TrainedModels) -> TrainResult:
    """The training stage's files, once whatever the backend: ``model.txt``,
    ``baseline.joblib``, ``training.json`` and ``result.json``."""
    from pipelines.features import RESULT_JSON
    from pipelines.training import BASELINE_FILE, MODEL_FILE, TRAINING_JSON

    out_dir.mkdir(parents=True, exist_ok=True)
    model_path = out_dir / MODEL_FILE
    write_bytes_atomic(model_path, trained.model_text.encode("utf-8"))
    model_sha = sha256_file(model_path)
    baseline_path = out_dir / BASELINE_FILE
    write_bytes_atomic(baseline_path, _joblib_bytes(trained.baseline))
    baseline_sha = sha256_file(baseline_path)
    nbr = spec.training.num_boost_round
    training_json = out_dir / TRAINING_JSON
    write_json(training_json, _training_record(spec, trained, model_sha, baseline_sha))
    result = TrainResult(
        out_dir=out_dir,
        model_path=model_path,
        baseline_path=baseline_path,
        training_json=training_json,
        model_sha256=model_sha,
        baseline_sha256=baseline_sha,
        best_iteration=trained.best_iteration,
        num_boost_round=nbr,
        early_stopped=trained.early_stopped,
        metric=trained.metric,
        validation_score=trained.validation_score,
        train_rows=trained.train_rows,
        validation_rows=trained.validation_rows,
        tuning_trials=int(trained.tuning["trials"]),
        params=trained.params,
        booster=trained.booster,
    )
    write_json(out_dir / RESULT_JSON, {**result.to_dict(), **trained.marker})
    log.info(
        "trained %s%s: best iteration %d of %d, validation %s %s, model sha256 %s",
        spec.name,
        f" on {trained.marker['backend']}" if "backend" in trained.marker else "",
        trained.best_iteration,
        nbr,
        trained.metric,
        trained.validation_score,
        model_sha[:12],
    )
    return result


def train(
    spec: ModelSpec, features_dir: Path, out_dir: Path, tuning_trials: int | None = None
) -> TrainResult:
    """Train locally on ``features_dir`` and write the stage's files in ``out_dir``."""
    from pipelines.training import TrainInputs, fit_models

    trained = fit_models(spec, TrainInputs(Path(features_dir), tuning_trials))
    return write_training(spec, Path(out_dir), trained)


def run(run: RunContext, features_dir: str) -> str:
    """Train on ``features_dir`` with the run's ``tuning_trials`` (else the spec's); the
    stage folder."""
    from pipelines.training import TrainInputs

    inputs = TrainInputs(Path(features_dir), run.params.get("tuning_trials"))
    with open_backend(resolve_compute(run.spec, run.settings)) as backend:
        trained = backend.run(TRAIN, run.spec, inputs)
    return str(write_training(run.spec, run.stage_dir(NAME), trained).out_dir)
