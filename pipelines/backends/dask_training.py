"""The Dask backend of the training stage: ``lightgbm.dask`` on the cluster.

Results against the local backend: **within a tolerance.** ``lightgbm.dask`` trains
data-parallel: histograms are built per worker and merged, so bin boundaries and
tie-breaks differ from a single-process run; models are not bit-identical.
``lightgbm.dask`` has no early stopping: the backend trains ``num_boost_round`` trees
while recording the validation metric and keeps the best iteration (the local rule,
without stopping early). The test-set ROC-AUC stays within :data:`AUC_TOLERANCE` of the
local model's (tested). The logistic-regression baseline is fitted on a seeded sample of
at most :data:`BASELINE_SAMPLE_ROWS` training rows. Hyper-parameter search is refused.

:func:`train_dask` returns what it trained (:class:`pipelines.training.TrainedModels`);
the stage (:mod:`pipelines.stages.train`) writes the files, as for the local backend.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from pipelines.backends.dask_core import Cluster, on_cluster, read_partitioned
from pipelines.errors import ConfigError, DataValidationError
from pipelines.features import read_features_json
from pipelines.spec import ModelSpec

if TYPE_CHECKING:
    import dask.dataframe as dd
    from distributed import Client

    from pipelines.training import TrainedModels, TrainInputs

log = logging.getLogger(__name__)

#: test-set ROC-AUC of a lightgbm.dask model vs the local model on the same features
AUC_TOLERANCE = 0.02
BASELINE_SAMPLE_ROWS = 500_000

_WEIGHT = "__govml_weight__"


def _category_lists_dask(frame: dd.DataFrame, categorical: list[str]) -> dict[str, list[Any]]:
    """The local rule: spec categories for category columns, sorted seen values for strings."""
    out: dict[str, list[Any]] = {}
    for name in categorical:
        dtype = frame._meta[name].dtype
        if isinstance(dtype, pd.CategoricalDtype):
            out[name] = list(dtype.categories)
        else:
            seen = frame[name].dropna().astype(str).unique().compute()
            out[name] = sorted(set(seen.tolist()))
    return out


def _sampled_partition(part: pd.DataFrame, spec: ModelSpec) -> pd.DataFrame:
    from pipelines.training import negative_sample

    return negative_sample(part, spec, weight_column=_WEIGHT)[0]


def _sampled(frame: dd.DataFrame, spec: ModelSpec) -> dd.DataFrame:
    """:func:`pipelines.training.negative_sample` per partition (it depends on each row's
    id alone), the weights in the ``_WEIGHT`` column."""
    meta = frame._meta.assign(**{_WEIGHT: np.array([], dtype=np.float64)})
    return frame.map_partitions(_sampled_partition, spec, meta=meta)


def _best_iteration(history: list[float], higher_is_better: bool) -> int:
    values = np.asarray(history, dtype=np.float64)
    if values.size == 0:
        return 0
    best = int(np.argmax(values) if higher_is_better else np.argmin(values))
    return best + 1


def _refuse_tuning(spec: ModelSpec, tuning_trials: int | None) -> None:
    trials = spec.training.tuning_trials if tuning_trials is None else int(tuning_trials)
    if trials:
        raise ConfigError(
            f"tuning_trials={trials}: hyper-parameter search is not available on the dask "
            "backend; tune with compute.backend local on a sample, then set training.params"
        )


@dataclass(frozen=True)
class _Columns:
    """The feature columns of the tables, their categorical ones and the label."""

    features: list[str]
    categorical: list[str]
    target: str


@dataclass(frozen=True)
class _Params:
    """The LightGBM parameters as recorded, the fit's own, the metric and the weight."""

    recorded: dict[str, Any]
    fit: dict[str, Any]
    metric: str
    scale_pos_weight: float | None


def _params(spec: ModelSpec, counts: pd.Series, y_val: np.ndarray) -> _Params:
    """The local rule's parameters, on the full label counts."""
    from pipelines.training import HIGHER_IS_BETTER, base_params

    y_counts = np.array([int(counts.get(0, 0)), int(counts.get(1, 0))])
    params, scale_pos_weight = base_params(spec, np.array([0, 1]))
    if scale_pos_weight is not None:  # the local rule on the full label counts
        scale_pos_weight = float(y_counts[0] / y_counts[1]) if y_counts[1] else 1.0
        params["scale_pos_weight"] = scale_pos_weight
    metric = params["metric"]
    if metric in HIGHER_IS_BETTER and len(np.unique(y_val)) < 2:
        log.warning("validation holds one class: choosing the iteration on binary_logloss")
        metric = params["metric"] = "binary_logloss"
    fit_params = {k: v for k, v in params.items() if k not in ("seed", "num_threads")}
    # as recorded: LightGBM on dask takes its threads from each worker's nthreads
    recorded = {**fit_params, "objective": "binary", "seed": params["seed"]}
    recorded["tree_learner"] = "data"
    return _Params(recorded, {**fit_params, "seed": params["seed"]}, metric, scale_pos_weight)


def _baseline_sample(
    train_df: dd.DataFrame, cols: _Columns, n_train: int, seed: int
) -> pd.DataFrame:
    """A seeded sample of at most :data:`BASELINE_SAMPLE_ROWS` training rows."""
    fraction = min(1.0, BASELINE_SAMPLE_ROWS / max(n_train, 1))
    rows = train_df[[*cols.features, cols.target]]
    if fraction < 1.0:
        return rows.sample(frac=fraction, random_state=seed).compute()
    return rows.compute()


def _fit(
    spec: ModelSpec, client: Client, params: _Params, frames: tuple, sampled: bool
) -> tuple[Any, list[float]]:
    """The ``lightgbm.dask`` model and its validation history."""
    from lightgbm.dask import DaskLGBMClassifier

    x_train, y_train, x_val, val_df, train_df = frames
    fit_params = {k: v for k, v in params.fit.items() if k != "seed"}
    model = DaskLGBMClassifier(
        client=client,
        n_estimators=spec.training.num_boost_round,
        random_state=params.fit["seed"],
        tree_learner="data",
        **{k: v for k, v in fit_params.items() if k != "objective"},
    )
    with client.as_current():  # lightgbm.dask waits on the default client
        model.fit(
            x_train,
            y_train,
            sample_weight=train_df[_WEIGHT] if sampled else None,
            eval_X=(x_val,),
            eval_y=(val_df[spec.data.target].astype("int64"),),
            eval_sample_weight=[val_df[_WEIGHT]] if sampled else None,
            eval_names=["validation"],
        )
    return model, list(model.evals_result_.get("validation", {}).get(params.metric, []))


@dataclass(frozen=True)
class _Tables:
    """The training and validation tables on the cluster (negatively sampled when the
    spec says so), their model inputs, the label counts and the local validation labels."""

    train: Any
    val: Any
    x_train: Any
    x_val: Any
    counts: pd.Series
    sampled: bool
    y_val: np.ndarray
    w_val: np.ndarray | None


def _tables(
    spec: ModelSpec, features_dir: Path, client: Client, partition_rows: int, cols: _Columns
) -> _Tables:
    from pipelines import booster_layout

    train_df = read_partitioned(features_dir / "train.parquet", spec, partition_rows)
    val_df = read_partitioned(features_dir / "validation.parquet", spec, partition_rows)
    counts = train_df[cols.target].astype("int64").value_counts().compute()
    if len(counts) < 2:
        raise DataValidationError(f"{features_dir}: the training rows hold only one class")
    sampled = spec.training.negative_sample_rate < 1.0
    if sampled:  # the rows and weights of the local rule, partition by partition,
        # kept on the workers (a small share of the rows) for training, counts and
        # the baseline's sample
        train_df, val_df = client.persist([_sampled(train_df, spec), _sampled(val_df, spec)])
    features = cols.features
    cats = _category_lists_dask(train_df, cols.categorical)
    x_meta = booster_layout.typed_frame(train_df._meta, features, cats)
    x_train = train_df.map_partitions(booster_layout.typed_frame, features, cats, meta=x_meta)
    x_val = val_df.map_partitions(booster_layout.typed_frame, features, cats, meta=x_meta)
    y_val_local = val_df[cols.target].compute().to_numpy().astype(np.int64)
    w_val_local = val_df[_WEIGHT].compute().to_numpy() if sampled else None
    if len(y_val_local) == 0:
        raise DataValidationError(f"{features_dir}: no validation rows for early stopping")
    return _Tables(train_df, val_df, x_train, x_val, counts, sampled, y_val_local, w_val_local)


def _best_model(
    spec: ModelSpec, metric: str, booster: Any, history: list[float], tables: _Tables
) -> tuple[str, int, float | None]:
    """The model text at the best iteration (checked to reproduce the booster), the
    iteration and its validation score."""
    import lightgbm as lgb

    from pipelines.training import HIGHER_IS_BETTER, score, validation_score

    best_iteration = (
        _best_iteration(history, metric in HIGHER_IS_BETTER) or spec.training.num_boost_round
    )
    x_val_local = tables.x_val.compute()
    p_val = booster.predict(x_val_local, num_iteration=best_iteration)
    best_score = validation_score(metric, tables.y_val, p_val, booster, tables.w_val)
    model_text = booster.model_to_string(num_iteration=best_iteration)
    check = score(lgb.Booster(model_str=model_text), x_val_local.iloc[:5])
    if not np.allclose(check, p_val[:5]):
        raise RuntimeError("the saved model does not reproduce the trained booster")
    return model_text, best_iteration, best_score


@dataclass(frozen=True)
class _DaskFit:
    """What the cluster trained: the model at its best iteration and the baseline's
    sample, with the counts ``training.json`` records."""

    params: _Params
    model_text: str
    best_iteration: int
    best_score: float | None
    history: list[float]
    rows_before_sampling: int
    train_rows: int
    validation_rows: int
    sample: pd.DataFrame


def _fit_on_cluster(
    spec: ModelSpec, features_dir: Path, client: Client, partition_rows: int, cols: _Columns
) -> _DaskFit:
    with on_cluster(client):
        tables = _tables(spec, features_dir, client, partition_rows, cols)
        params = _params(spec, tables.counts, tables.y_val)
        rows_before_sampling = int(tables.counts.get(0, 0)) + int(tables.counts.get(1, 0))
        log.info(
            "training %s on dask: %d rows, %d features, %d trees, metric %s",
            spec.name,
            rows_before_sampling,
            len(cols.features),
            spec.training.num_boost_round,
            params.metric,
        )
        frames = (
            tables.x_train,
            tables.train[cols.target].astype("int64"),
            tables.x_val,
            tables.val,
            tables.train,
        )
        model, history = _fit(spec, client, params, frames, tables.sampled)
        model_text, best_iteration, best_score = _best_model(
            spec, params.metric, model.booster_, history, tables
        )
        n_train = int(len(tables.train)) if tables.sampled else rows_before_sampling
        sample = _baseline_sample(tables.train, cols, n_train, spec.training.seed)
    return _DaskFit(
        params,
        model_text,
        best_iteration,
        best_score,
        history,
        rows_before_sampling,
        n_train,
        len(tables.y_val),
        sample,
    )


def train_dask(spec: ModelSpec, inputs: TrainInputs, cluster: Cluster) -> TrainedModels:
    """:func:`pipelines.training.fit_models` with ``lightgbm.dask`` on the cluster.

    The same models to write (the stage writes ``model.txt``, ``baseline.joblib``,
    ``training.json``, ``result.json``); the model is within :data:`AUC_TOLERANCE` test
    ROC-AUC of the local one.
    """
    import lightgbm as lgb

    from pipelines.training import TrainedModels, build_baseline

    _refuse_tuning(spec, inputs.tuning_trials)
    features_dir, client = inputs.features_dir, cluster.client
    meta = read_features_json(features_dir)
    features = list(meta.get("features") or spec.features.names)
    cols = _Columns(
        features, [c for c in meta.get("categorical", []) if c in features], spec.data.target
    )
    fit = _fit_on_cluster(spec, features_dir, client, cluster.partition_rows, cols)
    class_weight = "balanced" if spec.training.imbalance != "none" else None
    baseline = build_baseline(features, cols.categorical, class_weight, spec.training.seed)
    baseline.fit(fit.sample[features], fit.sample[cols.target].to_numpy().astype(np.int64))
    workers = len(client.scheduler_info().get("workers", {}))
    metric = fit.params.metric
    return TrainedModels(
        booster=lgb.Booster(model_str=fit.model_text),
        model_text=fit.model_text,
        baseline=baseline,
        best_iteration=fit.best_iteration,
        early_stopped=False,
        metric=metric,
        validation_score=fit.best_score,
        params=fit.params.recorded,
        features=features,
        categorical=cols.categorical,
        train_rows=fit.train_rows,
        train_rows_before=fit.rows_before_sampling,
        validation_rows=fit.validation_rows,
        scale_pos_weight=fit.params.scale_pos_weight,
        tuning={
            "trials": 0,
            "metric": metric,
            "best_trial": None,
            "best_params": None,
            "history": [],
        },
        extra={
            "backend": "dask",
            "dask_workers": workers,
            "validation_history": fit.history,
            "baseline_rows": len(fit.sample),
        },
        marker={"backend": "dask"},
    )
