"""Training stage: reproducible LightGBM, early stopping, baseline, scoring helpers."""

from __future__ import annotations

import json
from pathlib import Path

import lightgbm as lgb
import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from pipelines.artifacts import sha256_file
from pipelines.booster_layout import booster_categories
from pipelines.errors import DataValidationError
from pipelines.features import read_split
from pipelines.spec import ModelSpec
from pipelines.stages.train import TrainResult, train
from pipelines.training import (
    load_baseline,
    load_model,
    negative_sample,
    score,
    score_baseline,
)
from tests.datasets import with_training

TRAINING_KEYS = {
    "best_iteration",
    "num_boost_round",
    "params",
    "seed",
    "features",
    "categorical",
    "model_sha256",
    "baseline_sha256",
    "tuning",
    "lightgbm_version",
    "sklearn_version",
    "train_rows",
    "scale_pos_weight",
    "negative_sampling",
}


@pytest.fixture(scope="module")
def fraud(
    fraud_features: tuple[ModelSpec, Path], tmp_path_factory: pytest.TempPathFactory
) -> tuple[ModelSpec, Path, Path]:
    base, features = fraud_features
    spec = with_training(base, num_boost_round=150, early_stopping_rounds=20)
    out = tmp_path_factory.mktemp("fraud") / "train"
    train(spec, features, out)
    return spec, features, out


@pytest.fixture(scope="module")
def fraud_again(
    fraud: tuple[ModelSpec, Path, Path], tmp_path_factory: pytest.TempPathFactory
) -> TrainResult:
    """The same training run a second time, into another folder (booster in memory)."""
    spec, features, _ = fraud
    return train(spec, features, tmp_path_factory.mktemp("fraud-again") / "again")


@pytest.fixture(scope="module")
def credit(credit_features: tuple[ModelSpec, Path]) -> tuple[ModelSpec, Path]:
    return credit_features


def _training_json(folder: Path) -> dict:
    return json.loads((folder / "training.json").read_text())


def test_training_writes_the_contract(fraud: tuple[ModelSpec, Path, Path]) -> None:
    spec, _, out = fraud
    meta = _training_json(out)
    assert set(meta) == TRAINING_KEYS
    assert meta["model_sha256"] == sha256_file(out / "model.txt")
    assert meta["baseline_sha256"] == sha256_file(out / "baseline.joblib")
    assert meta["features"] == spec.features.names
    assert meta["categorical"] == ["channel", "merchant_segment", "mcc"]
    assert meta["params"]["deterministic"] is True and meta["params"]["seed"] == 7
    assert meta["tuning"] == {
        "trials": 0,
        "metric": "auc",
        "best_trial": None,
        "best_params": None,
        "history": [],
    }
    result = json.loads((out / "result.json").read_text())
    assert result["model_sha256"] == meta["model_sha256"]
    assert result["best_iteration"] == meta["best_iteration"]


def test_training_is_bit_for_bit_reproducible(
    fraud: tuple[ModelSpec, Path, Path], fraud_again: TrainResult
) -> None:
    _, _, out = fraud
    again_dir = fraud_again.model_path.parent
    assert sha256_file(again_dir / "model.txt") == sha256_file(out / "model.txt")
    assert fraud_again.model_sha256 == _training_json(out)["model_sha256"]
    assert fraud_again.baseline_sha256 == _training_json(out)["baseline_sha256"]
    assert (again_dir / "training.json").read_bytes() == (out / "training.json").read_bytes()


def test_the_model_beats_chance_on_fraud(fraud: tuple[ModelSpec, Path, Path]) -> None:
    spec, features, out = fraud
    test = read_split(spec, features, "test")
    assert test["is_fraud"].sum() >= 20
    auc = roc_auc_score(test["is_fraud"], score(load_model(out / "model.txt"), test))
    assert auc > 0.85
    baseline = score_baseline(load_baseline(out / "baseline.joblib"), test, spec.features.names)
    assert ((baseline >= 0) & (baseline <= 1)).all()
    assert roc_auc_score(test["is_fraud"], baseline) > 0.7


def test_reloaded_model_scores_exactly_like_the_in_memory_booster(
    fraud: tuple[ModelSpec, Path, Path], fraud_again: TrainResult
) -> None:
    spec, features, _ = fraud
    result = fraud_again
    assert result.booster is not None
    test = read_split(spec, features, "test")
    in_memory = result.booster.predict(test[spec.features.names])
    reloaded = load_model(result.model_path)
    scores = score(reloaded, test)  # test holds extra columns (id, target, passthrough)
    assert scores.dtype == np.float64
    np.testing.assert_array_equal(scores, in_memory)
    np.testing.assert_array_equal(score(result.booster, test), in_memory)
    # the saved file holds exactly the best iteration's trees
    assert reloaded.num_trees() == result.best_iteration


def test_score_retypes_categoricals_from_the_booster(fraud: tuple[ModelSpec, Path, Path]) -> None:
    spec, features, out = fraud
    booster = load_model(out / "model.txt")
    cats = booster_categories(booster)
    assert cats["channel"] == ["card_present", "online"]
    assert cats["mcc"] == spec.data.columns["mcc"].categories
    test = read_split(spec, features, "test").head(500)
    expected = score(booster, test)
    as_text = test.copy()
    for column in cats:
        as_text[column] = as_text[column].astype(object)  # plain strings (as from JSON)
    reordered = test.copy()
    reordered["merchant_segment"] = reordered["merchant_segment"].cat.reorder_categories(
        list(reversed(reordered["merchant_segment"].cat.categories))
    )
    np.testing.assert_array_equal(score(booster, as_text), expected)
    np.testing.assert_array_equal(score(booster, reordered), expected)
    with pytest.raises(DataValidationError, match="amount"):
        score(booster, test.drop(columns=["amount"]))


def test_baseline_handles_unseen_and_missing_categories(
    fraud: tuple[ModelSpec, Path, Path],
) -> None:
    spec, features, out = fraud
    pipeline = load_baseline(out / "baseline.joblib")
    test = read_split(spec, features, "test").head(50).copy()
    test["mcc"] = pd.Categorical([None] * 25 + ["6051"] * 25, categories=["6051"])
    scores = score_baseline(pipeline, test, spec.features.names)
    assert scores.shape == (50,) and np.isfinite(scores).all()
    assert pipeline.named_steps["model"].class_weight == "balanced"


def test_early_stopping_stops_before_num_boost_round(
    credit: tuple[ModelSpec, Path], tmp_path: Path
) -> None:
    spec, features = credit
    fast = with_training(
        spec,
        num_boost_round=500,
        early_stopping_rounds=10,
        params={"learning_rate": 0.3, "num_leaves": 31, "min_child_samples": 20},
    )
    result = train(fast, features, tmp_path)
    assert result.early_stopped
    assert result.best_iteration < 100
    assert load_model(result.model_path).num_trees() == result.best_iteration
    assert _training_json(tmp_path)["best_iteration"] == result.best_iteration


def test_the_model_beats_chance_on_credit(credit: tuple[ModelSpec, Path], tmp_path: Path) -> None:
    spec, features = credit
    result = train(spec, features, tmp_path)
    test = read_split(spec, features, "test")
    assert roc_auc_score(test["default_12m"], score(load_model(result.model_path), test)) > 0.75
    assert result.metric == "binary_logloss"  # imbalance none: early stopping on log-loss


@pytest.mark.parametrize("imbalance", ["scale_pos_weight", "is_unbalance", "none"])
def test_imbalance_setting_is_reflected_in_params(
    credit: tuple[ModelSpec, Path], tmp_path: Path, imbalance: str
) -> None:
    spec, features = credit
    result = train(with_training(spec, imbalance=imbalance, num_boost_round=20), features, tmp_path)
    meta = _training_json(tmp_path)
    booster_params = load_model(result.model_path).params
    y = read_split(spec, features, "train")["default_12m"]
    if imbalance == "scale_pos_weight":
        expected = float((y == 0).sum() / (y == 1).sum())
        assert meta["scale_pos_weight"] == pytest.approx(expected)
        assert meta["params"]["scale_pos_weight"] == meta["scale_pos_weight"]
        assert float(booster_params["scale_pos_weight"]) == pytest.approx(expected)
        assert "is_unbalance" not in meta["params"]
    elif imbalance == "is_unbalance":
        assert meta["scale_pos_weight"] is None
        assert meta["params"]["is_unbalance"] is True
        assert booster_params["is_unbalance"] in (True, "1", 1)
    else:
        assert meta["scale_pos_weight"] is None
        assert "scale_pos_weight" not in meta["params"] and "is_unbalance" not in meta["params"]
    class_weight = load_baseline(result.baseline_path).named_steps["model"].class_weight
    assert class_weight == (None if imbalance == "none" else "balanced")


def test_tuning_with_a_budget_is_deterministic_and_recorded(
    credit: tuple[ModelSpec, Path], tmp_path: Path
) -> None:
    spec, features = credit
    small = with_training(spec, num_boost_round=60, early_stopping_rounds=10)
    first = train(small, features, tmp_path / "a", tuning_trials=3)
    second = train(small, features, tmp_path / "b", tuning_trials=3)
    assert first.model_sha256 == second.model_sha256
    tuning_a = _training_json(tmp_path / "a")["tuning"]
    assert tuning_a == _training_json(tmp_path / "b")["tuning"]
    assert tuning_a["trials"] == 3
    assert [h["trial"] for h in tuning_a["history"]] == [0, 1, 2, 3]
    assert [h["source"] for h in tuning_a["history"]] == ["spec", "random", "random", "random"]
    for entry in tuning_a["history"][1:]:
        assert set(entry["params"]) == {
            "num_leaves",
            "learning_rate",
            "min_child_samples",
            "feature_fraction",
            "lambda_l2",
        }
    scores = [h["score"] for h in tuning_a["history"]]
    best = tuning_a["history"][tuning_a["best_trial"]]
    assert best["score"] == min(scores)  # log-loss: lower is better
    assert tuning_a["best_params"] == best["params"]
    params = _training_json(tmp_path / "a")["params"]
    assert all(params[k] == v for k, v in best["params"].items())


def test_one_class_training_data_is_refused(credit: tuple[ModelSpec, Path], tmp_path: Path) -> None:
    spec, features = credit
    copy = tmp_path / "features"
    copy.mkdir()
    for name in ("validation.parquet", "test.parquet", "features.json"):
        (copy / name).write_bytes((features / name).read_bytes())
    train_df = pd.read_parquet(features / "train.parquet")
    train_df[train_df["default_12m"] == 0].to_parquet(copy / "train.parquet", index=False)
    with pytest.raises(DataValidationError, match="one class"):
        train(spec, copy, tmp_path / "train")


def test_load_model_reports_a_missing_file(tmp_path: Path) -> None:
    with pytest.raises(DataValidationError, match="not found"):
        load_model(tmp_path / "model.txt")
    assert isinstance(lgb.__version__, str)


def test_negative_sampling_is_seeded_by_id_and_partition_independent(
    fraud: tuple[ModelSpec, Path, Path],
) -> None:
    spec, features, _ = fraud
    frame = read_split(spec, features, "train")
    sampled_spec = with_training(spec, negative_sample_rate=0.25)
    kept, weights = negative_sample(frame, sampled_spec)
    y = frame["is_fraud"].to_numpy()
    assert (kept["is_fraud"] == 1).sum() == (y == 1).sum()  # every positive
    negatives = int((kept["is_fraud"] == 0).sum())
    assert abs(negatives / (y == 0).sum() - 0.25) < 0.02
    assert weights is not None
    np.testing.assert_array_equal(weights, np.where(kept["is_fraud"] == 1, 1.0, 4.0))
    # the same rows whatever the chunking (the Dask backend samples per partition)
    chunks = [
        negative_sample(frame.iloc[i : i + 777], sampled_spec)[0] for i in range(0, len(frame), 777)
    ]
    pd.testing.assert_frame_equal(pd.concat(chunks), kept)
    # another seed keeps other negatives; the rate at 1 keeps the frame as it is
    other, _ = negative_sample(frame, with_training(sampled_spec, seed=8))
    assert set(other["transaction_id"]) != set(kept["transaction_id"])
    same, none = negative_sample(frame, spec)
    assert same is frame and none is None
    with_column, _ = negative_sample(frame, sampled_spec, weight_column="w")
    np.testing.assert_array_equal(with_column["w"].to_numpy(), weights)


def test_training_on_sampled_negatives_is_recorded_and_still_ranks(
    fraud: tuple[ModelSpec, Path, Path], tmp_path: Path
) -> None:
    spec, features, full = fraud
    sampled_spec = with_training(spec, negative_sample_rate=0.2)
    result = train(sampled_spec, features, tmp_path / "sampled")
    meta = _training_json(tmp_path / "sampled")
    rows = len(read_split(spec, features, "train"))
    assert meta["negative_sampling"]["rate"] == 0.2
    assert meta["negative_sampling"]["train_rows_before"] == rows
    assert result.train_rows == meta["train_rows"] < 0.3 * rows
    # scale_pos_weight comes from the full label counts: the same as without sampling
    assert meta["scale_pos_weight"] == _training_json(full)["scale_pos_weight"]
    test = read_split(spec, features, "test")
    auc = roc_auc_score(test["is_fraud"], score(load_model(result.model_path), test))
    assert auc > 0.85
    again = train(sampled_spec, features, tmp_path / "again")
    assert again.model_sha256 == result.model_sha256
