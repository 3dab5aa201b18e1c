"""Training stage: a reproducible LightGBM candidate and a logistic-regression baseline.

``fit_models(spec, TrainInputs(features_dir))`` trains on ``train.parquet`` with early
stopping on ``validation.parquet`` and returns :class:`TrainedModels`; the stage
(:mod:`pipelines.stages.train`) writes ``model.txt``, ``baseline.joblib``,
``training.json`` and ``result.json`` (see ``docs/lifecycle.md``).

Reproducibility: LightGBM runs with ``seed``, ``deterministic=True``,
``force_row_wise=True`` and a fixed ``num_threads`` (1 unless the spec sets it), so two
trainings on the same feature tables give byte-identical ``model.txt`` files.

Early stopping (and the optional seeded random search) watch one validation metric:
``spec.training.params["metric"]`` when given, else ``auc`` when the class imbalance is
re-weighted and ``binary_logloss`` otherwise. With re-weighting the probabilities are
inflated on purpose, so validation log-loss measures the weighting rather than the
ranking; ROC-AUC is invariant to it and, with the few positives of a fraud validation
window, much less noisy than average precision (which stopped the 200k-row fraud spec
after 3 trees).

Negative downsampling (``training.negative_sample_rate`` below 1, for fraud data of
tens of millions of rows with a fraction of a percent positive): every positive and a
seeded share of the negatives of the training and validation splits are kept, chosen by
a hash of the id column (:func:`negative_sample`: the same rows on the local and the
Dask backend), and each kept negative is weighted 1/rate in training and in the
early-stopping metric, so the model sees the original class balance (and
``scale_pos_weight`` is computed on the full label counts). The test split is not sampled.

Scoring helpers shared by evaluation, explanation and serving: :func:`load_model`,
:func:`score` (re-types categoricals from the booster's ``pandas_categorical``),
:func:`load_baseline` and :func:`score_baseline`.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import joblib
import lightgbm as lgb
import numpy as np
import pandas as pd
from sklearn.compose import ColumnTransformer
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import average_precision_score, log_loss, roc_auc_score
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import FunctionTransformer, OneHotEncoder, StandardScaler

from pipelines import booster_layout
from pipelines.errors import DataValidationError
from pipelines.features import read_features_json, read_split
from pipelines.spec import ModelSpec

log = logging.getLogger(__name__)

MODEL_FILE = "model.txt"
BASELINE_FILE = "baseline.joblib"
TRAINING_JSON = "training.json"
DEFAULT_NUM_THREADS = 1
MISSING_CATEGORY = "__missing__"

#: LightGBM aliases of each tuned parameter (removed from the spec params when tuned)
_ALIASES: dict[str, tuple[str, ...]] = {
    "num_leaves": ("num_leaves", "num_leaf", "max_leaves", "max_leaf", "max_leaf_nodes"),
    "learning_rate": ("learning_rate", "shrinkage_rate", "eta"),
    "min_child_samples": (
        "min_child_samples",
        "min_data_in_leaf",
        "min_data_per_leaf",
        "min_data",
        "min_samples_leaf",
    ),
    "feature_fraction": ("feature_fraction", "sub_feature", "colsample_bytree"),
    "lambda_l2": ("lambda_l2", "reg_lambda", "lambda", "l2_regularization"),
}
HIGHER_IS_BETTER = {"auc", "average_precision"}


# ----------------------------------------------------------------------------- scoring


def load_model(path: Path) -> lgb.Booster:
    """A LightGBM booster from a ``model.txt`` file."""
    path = Path(path)
    if not path.is_file():
        raise DataValidationError(f"{path}: model file not found")
    return lgb.Booster(model_file=str(path))


def score(booster: lgb.Booster, frame: pd.DataFrame) -> np.ndarray:
    """Probability of the bad outcome for every row of ``frame`` (float64)."""
    if len(frame) == 0:
        return np.zeros(0, dtype=np.float64)
    return np.asarray(booster.predict(booster_layout.model_frame(booster, frame)), dtype=np.float64)


def _categorical_as_text(frame: pd.DataFrame) -> pd.DataFrame:
    """Categorical columns as strings (missing as a category of its own)."""
    out = frame.astype(object)
    return out.where(out.notna(), MISSING_CATEGORY).astype(str)


def _numeric_as_float(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.astype("float64")


def build_baseline(
    features: list[str], categorical: list[str], class_weight: str | None, seed: int
) -> Pipeline:
    """The baseline: impute + scale numerics, one-hot categoricals, logistic regression."""
    numeric = [f for f in features if f not in categorical]
    cats = [f for f in features if f in categorical]
    scaled = [
        ("float", FunctionTransformer(_numeric_as_float)),
        ("impute", SimpleImputer(strategy="median")),
        ("scale", StandardScaler()),
    ]
    one_hot = [
        ("text", FunctionTransformer(_categorical_as_text)),
        ("onehot", OneHotEncoder(handle_unknown="ignore")),
    ]
    parts = (("numeric", scaled, numeric), ("categorical", one_hot, cats))
    transformers = [(name, Pipeline(steps), cols) for name, steps, cols in parts if cols]
    return Pipeline(
        [
            ("preprocess", ColumnTransformer(transformers, remainder="drop")),
            (
                "model",
                LogisticRegression(max_iter=1000, class_weight=class_weight, random_state=seed),
            ),
        ]
    )


def load_baseline(path: Path) -> Pipeline:
    """The scikit-learn baseline pipeline saved by :func:`train`."""
    path = Path(path)
    if not path.is_file():
        raise DataValidationError(f"{path}: baseline model not found")
    return joblib.load(path)


def score_baseline(pipeline: Pipeline, frame: pd.DataFrame, features: list[str]) -> np.ndarray:
    """Baseline probability of the bad outcome for every row of ``frame`` (float64)."""
    missing = [f for f in features if f not in frame.columns]
    if missing:
        raise DataValidationError(f"frame lacks baseline feature(s) {missing}")
    if len(frame) == 0:
        return np.zeros(0, dtype=np.float64)
    return np.asarray(pipeline.predict_proba(frame[features])[:, 1], dtype=np.float64)


# ----------------------------------------------------------------------------- training


def _early_stopping_metric(spec: ModelSpec) -> str:
    metric = spec.training.params.get("metric")
    if isinstance(metric, str) and metric and "," not in metric:
        return metric
    return "auc" if spec.training.imbalance != "none" else "binary_logloss"


def base_params(spec: ModelSpec, y_train: np.ndarray) -> tuple[dict[str, Any], float | None]:
    """LightGBM params: the spec's, the imbalance setting and the determinism settings."""
    params: dict[str, Any] = dict(spec.training.params)
    scale_pos_weight: float | None = None
    if spec.training.imbalance == "scale_pos_weight":
        pos = int(np.sum(y_train == 1))
        neg = int(np.sum(y_train == 0))
        scale_pos_weight = float(neg / pos) if pos else 1.0
        params["scale_pos_weight"] = scale_pos_weight
        params.pop("is_unbalance", None)
    elif spec.training.imbalance == "is_unbalance":
        params["is_unbalance"] = True
        params.pop("scale_pos_weight", None)
    params.update(
        {
            "objective": "binary",
            "metric": _early_stopping_metric(spec),
            "seed": spec.training.seed,
            "deterministic": True,
            "force_row_wise": True,
            "num_threads": int(params.get("num_threads", DEFAULT_NUM_THREADS)),
            "verbosity": -1,
        }
    )
    params.pop("verbose", None)
    return params, scale_pos_weight


def _sample_trial(rng: np.random.Generator) -> dict[str, Any]:
    return {
        "num_leaves": int(rng.choice([7, 15, 31, 63, 127])),
        "learning_rate": round(float(10 ** rng.uniform(math.log10(0.01), math.log10(0.2))), 4),
        "min_child_samples": int(rng.choice([10, 20, 50, 100, 200])),
        "feature_fraction": round(float(rng.uniform(0.5, 1.0)), 3),
        "lambda_l2": round(float(10 ** rng.uniform(-3.0, 1.0)), 4),
    }


def _trial_record(
    trial: int, source: str, params: dict[str, Any], value: float | None, booster: lgb.Booster
) -> dict[str, Any]:
    return {
        "trial": trial,
        "source": source,
        "params": params,
        "score": value,
        "best_iteration": int(booster.best_iteration),
    }


def _with_trial(params: dict[str, Any], trial: dict[str, Any]) -> dict[str, Any]:
    out = dict(params)
    for key in trial:
        for alias in _ALIASES[key]:
            out.pop(alias, None)
    out.update(trial)
    return out


#: negatives are kept when the top 32 bits of their id hash are below rate * 2**32
_SAMPLE_SCALE = 1 << 32


def _sample_hash_key(seed: int) -> str:
    """The 16-character key of pandas' id hash for ``seed``."""
    return f"govml{seed & 0xFFFFFFFFFFF:011x}"


def _seeded_hash(ids: pd.Series, seed: int) -> np.ndarray:
    """uint64 hashes of ``ids`` that depend on ``seed`` (pandas' hash of integers ignores
    its key: the seed is mixed in with the splitmix64 finaliser)."""
    key = _sample_hash_key(seed)
    x = pd.util.hash_pandas_object(ids, index=False, hash_key=key).to_numpy()
    with np.errstate(over="ignore"):
        x = x ^ np.uint64((seed * 0x9E3779B97F4A7C15) & 0xFFFFFFFFFFFFFFFF)
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return x ^ (x >> np.uint64(31))


def negative_sample(
    frame: pd.DataFrame, spec: ModelSpec, weight_column: str | None = None
) -> tuple[pd.DataFrame, np.ndarray | None]:
    """``frame`` with every positive and a seeded ``training.negative_sample_rate`` share
    of its negatives, and the kept rows' weights (1 for positives, 1/rate for negatives).

    A negative is kept when the top 32 bits of a hash of its id and ``training.seed``
    fall below rate * 2**32: the choice depends on the row's id
    alone, so a frame in partitions keeps exactly the rows the whole frame keeps (the
    Dask backend applies this per partition). With the rate at 1, ``frame`` and None.
    With ``weight_column`` the weights are also added to the returned frame as that
    column (for Dask, where they must travel with the partition)."""
    rate = spec.training.negative_sample_rate
    if rate >= 1.0:
        return frame, None
    hashed = _seeded_hash(frame[spec.data.id_column], spec.training.seed)
    positive = frame[spec.data.target].to_numpy() == 1
    keep = positive | ((hashed >> np.uint64(32)) < np.uint64(int(rate * _SAMPLE_SCALE)))
    out = frame.loc[keep]
    weights = np.where(positive[keep], 1.0, 1.0 / rate)
    if weight_column is not None:
        out = out.assign(**{weight_column: weights})
    return out, weights


def _fit(
    params: dict[str, Any],
    data: tuple[
        pd.DataFrame, np.ndarray, pd.DataFrame, np.ndarray, np.ndarray | None, np.ndarray | None
    ],
    num_boost_round: int,
    early_stopping_rounds: int,
) -> lgb.Booster:
    """One LightGBM training with early stopping (fresh Datasets: params may differ)."""
    x_train, y_train, x_val, y_val, w_train, w_val = data
    quiet = {"verbosity": -1}
    train_set = lgb.Dataset(
        x_train, label=y_train, weight=w_train, params=quiet, free_raw_data=True
    )
    valid_set = lgb.Dataset(x_val, label=y_val, weight=w_val, reference=train_set, params=quiet)
    return lgb.train(
        params,
        train_set,
        num_boost_round=num_boost_round,
        valid_sets=[valid_set],
        valid_names=["validation"],
        callbacks=[
            lgb.early_stopping(early_stopping_rounds, first_metric_only=True, verbose=False)
        ],
    )


def validation_score(
    metric: str, y: np.ndarray, p: np.ndarray, booster: lgb.Booster, w: np.ndarray | None = None
) -> float | None:
    """The early-stopping metric on validation at the best iteration (weighted by the
    negative-sampling weights ``w`` when the validation rows were sampled)."""
    if metric == "average_precision":
        return float(average_precision_score(y, p, sample_weight=w)) if y.any() else None
    if metric == "auc":
        return float(roc_auc_score(y, p, sample_weight=w)) if 0 < y.sum() < len(y) else None
    if metric == "binary_logloss":
        return float(log_loss(y, p, labels=[0, 1], sample_weight=w))
    best = booster.best_score.get("validation", {}).get(metric)
    return None if best is None else float(best)


def _better(metric: str, new: float | None, old: float | None) -> bool:
    if new is None:
        return False
    if old is None:
        return True
    return new > old if metric in HIGHER_IS_BETTER else new < old


def _labels(frame: pd.DataFrame, target: str) -> np.ndarray:
    return frame[target].to_numpy().astype(np.int64)


def _sampled_splits(
    spec: ModelSpec, train_df: pd.DataFrame, val_df: pd.DataFrame
) -> tuple[pd.DataFrame, pd.DataFrame, np.ndarray | None, np.ndarray | None]:
    """The training and validation rows after negative sampling, and their weights."""
    rows_before_sampling = len(train_df)
    train_df, w_train = negative_sample(train_df, spec)
    val_df, w_val = negative_sample(val_df, spec)
    if w_train is not None:
        log.info(
            "negative sampling at %g: %d of %d training rows, %d validation rows",
            spec.training.negative_sample_rate,
            len(train_df),
            rows_before_sampling,
            len(val_df),
        )
    return train_df, val_df, w_train, w_val


def _search(
    params: dict[str, Any], data: tuple, metric: str, trials: int, spec: ModelSpec
) -> tuple[lgb.Booster, float | None, dict[str, Any], dict[str, Any]]:
    """The spec's booster, then ``trials`` seeded random trials: the best booster, its
    validation score, its params and the ``tuning`` record."""
    _, _, x_val, y_val, _, w_val = data
    nbr = spec.training.num_boost_round
    esr = spec.training.early_stopping_rounds
    booster = _fit(params, data, nbr, esr)
    best_score = validation_score(metric, y_val, booster.predict(x_val), booster, w_val)
    best_params = params
    history: list[dict[str, Any]] = []
    best_trial, best_trial_params = 0, None
    if trials:
        history.append(_trial_record(0, "spec", {}, best_score, booster))
        rng = np.random.default_rng(spec.training.seed)
        for i in range(1, trials + 1):
            trial = _sample_trial(rng)
            trial_params = _with_trial(params, trial)
            candidate = _fit(trial_params, data, nbr, esr)
            trial_score = validation_score(
                metric, y_val, candidate.predict(x_val), candidate, w_val
            )
            history.append(_trial_record(i, "random", trial, trial_score, candidate))
            log.info("tuning trial %d: %s -> %s %s", i, trial, metric, trial_score)
            if _better(metric, trial_score, best_score):
                booster, best_score, best_params = candidate, trial_score, trial_params
                best_trial, best_trial_params = i, trial
    tuning = {
        "trials": trials,
        "metric": metric,
        "best_trial": best_trial if trials else None,
        "best_params": (best_trial_params or {}) if trials else None,
        "history": history,
    }
    return booster, best_score, best_params, tuning


def _metric_and_trials(
    spec: ModelSpec, params: dict[str, Any], y_val: np.ndarray, tuning_trials: int | None
) -> tuple[str, int]:
    """The early-stopping metric (set in ``params``) and the tuning budget."""
    metric = params["metric"]
    if metric in HIGHER_IS_BETTER and len(np.unique(y_val)) < 2:
        log.warning("validation holds one class: early stopping on binary_logloss instead")
        metric = params["metric"] = "binary_logloss"
    trials = spec.training.tuning_trials if tuning_trials is None else int(tuning_trials)
    if trials < 0:
        raise ValueError(f"tuning_trials must be >= 0, got {trials}")
    return metric, trials


@dataclass(frozen=True)
class TrainInputs:
    """The training computation's inputs: the ``features`` folder and the tuning budget
    (None: the spec's)."""

    features_dir: Path
    tuning_trials: int | None = None


def fit_models(spec: ModelSpec, inputs: TrainInputs) -> TrainedModels:
    """The LightGBM candidate and the baseline, trained on the feature tables (the stage
    :mod:`pipelines.stages.train` writes them; :data:`pipelines.backends.TRAIN`)."""
    features_dir, tuning_trials = inputs.features_dir, inputs.tuning_trials
    meta = read_features_json(features_dir)
    features = list(meta.get("features") or spec.features.names)
    categorical = [c for c in meta.get("categorical", []) if c in features]
    target = spec.data.target
    train_df = read_split(spec, features_dir, "train")
    val_df = read_split(spec, features_dir, "validation")
    y_train = _labels(train_df, target)
    if len(np.unique(y_train)) < 2:
        raise DataValidationError(f"{features_dir}: the training rows hold only one class")
    if len(val_df) == 0:
        raise DataValidationError(f"{features_dir}: no validation rows for early stopping")

    params, scale_pos_weight = base_params(spec, y_train)  # on the full label counts
    rows_before_sampling = len(train_df)
    train_df, val_df, w_train, w_val = _sampled_splits(spec, train_df, val_df)
    y_train, y_val = _labels(train_df, target), _labels(val_df, target)

    cats = booster_layout.category_lists(train_df, categorical)
    x_train = booster_layout.typed_frame(train_df, features, cats)
    x_val = booster_layout.typed_frame(val_df, features, cats)

    metric, trials = _metric_and_trials(spec, params, y_val, tuning_trials)
    log.info(
        "training %s: %d rows, %d features, metric %s",
        spec.name,
        len(x_train),
        len(features),
        metric,
    )
    data = (x_train, y_train, x_val, y_val, w_train, w_val)
    booster, best_score, best_params, tuning = _search(params, data, metric, trials, spec)

    best_iteration = int(booster.best_iteration) or int(booster.current_iteration())
    class_weight = "balanced" if spec.training.imbalance != "none" else None
    baseline = build_baseline(features, categorical, class_weight, spec.training.seed)
    baseline.fit(train_df[features], y_train)
    return TrainedModels(
        booster=booster,
        model_text=booster.model_to_string(num_iteration=best_iteration),
        baseline=baseline,
        best_iteration=best_iteration,
        early_stopped=booster.current_iteration() < spec.training.num_boost_round,
        metric=metric,
        validation_score=best_score,
        params=best_params,
        features=features,
        categorical=categorical,
        train_rows=len(train_df),
        train_rows_before=rows_before_sampling,
        validation_rows=len(val_df),
        scale_pos_weight=scale_pos_weight,
        tuning=tuning,
    )


@dataclass(frozen=True)
class TrainedModels:
    """What a training computation (local or on Dask) hands to the stage's writer
    (:func:`pipelines.stages.train.write_training`).

    ``extra`` holds a backend's own ``training.json`` keys; ``marker`` what it adds to
    ``result.json`` (both empty locally).
    """

    booster: lgb.Booster
    model_text: str
    baseline: Pipeline
    best_iteration: int
    early_stopped: bool
    metric: str
    validation_score: float | None
    params: dict[str, Any]
    features: list[str]
    categorical: list[str]
    train_rows: int
    train_rows_before: int
    validation_rows: int
    scale_pos_weight: float | None
    tuning: dict[str, Any]
    extra: dict[str, Any] = field(default_factory=dict)
    marker: dict[str, Any] = field(default_factory=dict)
