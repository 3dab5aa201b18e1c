"""Stage ``train``: the LightGBM candidate and the baseline from the feature tables.

Input: the ``features`` folder. Output, in ``<run>/train/``: ``model.txt``,
``baseline.joblib``, ``training.json`` and ``result.json``
(:class:`pipelines.training.TrainResult`). Runs on the spec's compute backend.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pipelines.backends import open_backend, resolve_compute
from pipelines.runs import RunContext
from pipelines.spec import Compute

NAME = "train"
OUTPUTS: tuple[str, ...] = ("model.txt", "baseline.joblib", "training.json", "result.json")


@dataclass(frozen=True)
class TrainConfig:
    """The engine and the tuning budget (the run's ``tuning_trials``, else the spec's)."""

    compute: Compute
    tuning_trials: int | None

    @classmethod
    def from_run(cls, run: RunContext) -> TrainConfig:
        return cls(resolve_compute(run.spec, run.settings), run.params.get("tuning_trials"))


def run(run: RunContext, features_dir: str) -> str:
    """Train on ``features_dir``; the stage folder."""
    config = TrainConfig.from_run(run)
    folder = run.stage_dir(NAME)
    with open_backend(config.compute) as backend:
        backend.train(run.spec, Path(features_dir), folder, tuning_trials=config.tuning_trials)
    return str(folder)
