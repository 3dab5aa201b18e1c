"""Evaluation stage: metrics, champion scoring, segments, business metrics, degenerate data."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import (
    average_precision_score,
    brier_score_loss,
    log_loss,
    roc_auc_score,
)

from pipelines.evaluation import (
    bin_labels,
    calibration,
    classification_metrics,
    credit_business,
    fraud_business,
    metric_points,
    precision_at_recall,
    recall_at_fpr,
    segment_labels,
)
from pipelines.features import read_split
from pipelines.spec import ModelSpec
from pipelines.stages.evaluate import evaluate
from pipelines.stages.train import train
from pipelines.training import load_model, score
from tests.datasets import spec_of, with_training

PNG = b"\x89PNG\r\n\x1a\n"
METRIC_KEYS = {
    "roc_auc",
    "pr_auc",
    "ks",
    "brier",
    "log_loss",
    "recall_at_fpr",
    "precision_at_recall",
    "positive_rate",
    "rows",
    "positives",
}


# ----------------------------------------------------------------------------- metric units


def test_metrics_equal_sklearn_on_a_small_case() -> None:
    y = np.array([0, 0, 1, 0, 1, 1, 0, 1, 0, 0])
    s = np.array([0.1, 0.4, 0.35, 0.8, 0.7, 0.9, 0.2, 0.65, 0.3, 0.05])
    m = classification_metrics(y, s, threshold=0.5, recall_fprs=(0.2,), precision_recalls=(0.5,))
    assert set(m) == METRIC_KEYS
    assert m["roc_auc"] == pytest.approx(roc_auc_score(y, s))
    assert m["pr_auc"] == pytest.approx(average_precision_score(y, s))
    assert m["brier"] == pytest.approx(brier_score_loss(y, s))
    assert m["log_loss"] == pytest.approx(log_loss(y, s))
    # KS by hand: sorted by score, TPR - FPR peaks at 1 - 2/6 (after the 0.35 row)
    assert m["ks"] == pytest.approx(1 - 2 / 6)
    assert m["positive_rate"] == pytest.approx(0.4)  # 0.8, 0.7, 0.9, 0.65
    assert (m["rows"], m["positives"]) == (10, 4)
    assert m["roc_auc"] == pytest.approx(20 / 24)  # 20 of 24 positive/negative pairs ordered


def test_recall_at_fpr_on_a_hand_built_example() -> None:
    # scores descending: P N P P N N N N N P  (4 positives, 6 negatives)
    y = np.array([1, 0, 1, 1, 0, 0, 0, 0, 0, 1])
    s = np.array([0.95, 0.9, 0.85, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2])
    assert recall_at_fpr(y, s, 0.0) == pytest.approx(0.25)  # before the first negative
    assert recall_at_fpr(y, s, 0.1) == pytest.approx(0.25)  # one negative = FPR 1/6 > 0.1
    assert recall_at_fpr(y, s, 1 / 6) == pytest.approx(0.75)  # one negative allowed
    assert recall_at_fpr(y, s, 0.5) == pytest.approx(0.75)
    assert recall_at_fpr(y, s, 1.0) == pytest.approx(1.0)
    # precision at recall >= r: the best precision among thresholds reaching r
    assert precision_at_recall(y, s, 0.25) == pytest.approx(1.0)
    assert precision_at_recall(y, s, 0.75) == pytest.approx(0.75)
    assert precision_at_recall(y, s, 1.0) == pytest.approx(0.4)


def test_one_class_gives_null_ranking_metrics_not_a_crash() -> None:
    y = np.zeros(20, dtype=int)
    s = np.linspace(0.01, 0.9, 20)
    m = classification_metrics(y, s, 0.5, (0.01,), (0.5,))
    assert m["roc_auc"] is None and m["pr_auc"] is None and m["ks"] is None
    assert m["recall_at_fpr"] == {"0.01": None}
    assert m["precision_at_recall"] == {"0.5": None}
    assert m["brier"] == pytest.approx(brier_score_loss(y, s, labels=[0, 1]))
    assert math.isfinite(m["log_loss"])
    empty = classification_metrics(np.array([], dtype=int), np.array([]), 0.5)
    assert empty["rows"] == 0 and empty["roc_auc"] is None and empty["brier"] is None


def test_calibration_uses_ten_quantile_bins() -> None:
    rng = np.random.default_rng(0)
    s = rng.random(1000)
    y = (rng.random(1000) < s).astype(int)
    cal = calibration(y, s)
    assert len(cal["bins"]) == len(cal["mean_predicted"]) == len(cal["fraction_positive"]) == 10
    assert cal["counts"] == [100] * 10
    assert all(
        lo <= p <= hi for (lo, hi), p in zip(cal["bins"], cal["mean_predicted"], strict=True)
    )
    tied = calibration(np.array([0, 1, 0, 1]), np.array([0.3, 0.3, 0.3, 0.3]))
    assert tied["counts"] == [4] and tied["fraction_positive"] == [0.5]


def test_bins_are_labelled_as_intervals() -> None:
    assert bin_labels([0, 180, 730, 1825, 40000]) == [
        "[0, 180)",
        "[180, 730)",
        "[730, 1825)",
        "[1825, 40000]",
    ]
    labels, order = segment_labels(pd.Series([0, 179, 180, 40000, 50000, None]), [0, 180, 40000])
    assert labels.tolist() == [
        "[0, 180)",
        "[0, 180)",
        "[180, 40000]",
        "[180, 40000]",
        "(out of range)",
        "(missing)",
    ]
    assert order == ["[0, 180)", "[180, 40000]", "(out of range)", "(missing)"]
    assert bin_labels([0.5, 1.25]) == ["[0.5, 1.25]"]


def test_business_metric_units() -> None:
    y = np.array([0] * 190 + [1] * 10)
    s = np.concatenate([np.linspace(0.0, 0.4, 190), np.linspace(0.5, 0.99, 10)])
    amount = np.arange(200, dtype=float)
    fraud = fraud_business(y, s, amount, threshold=0.5)
    assert fraud["alert_budget"] == 1  # ceil(0.5 % of 200)
    assert fraud["fraud_amount_caught"] == 199.0  # the top-scored row
    assert fraud["fraud_amount_total"] == float(sum(range(190, 200)))
    assert fraud["fraud_amount_caught"] <= fraud["fraud_amount_total"]
    assert fraud["alert_rate"] == pytest.approx(0.05) and fraud["false_positive_rate"] == 0.0
    no_amount = fraud_business(y, s, None, threshold=0.5)
    assert (
        no_amount["fraud_amount_caught"] is None and no_amount["fraud_amount_caught_ratio"] is None
    )
    credit = credit_business(y, s, threshold=0.5)
    assert credit["approval_rate"] + credit["decline_rate"] == pytest.approx(1.0)
    assert credit["observed_default_rate_approved"] == 0.0
    assert credit["expected_default_rate_approved"] == pytest.approx(s[:190].mean())


def test_metric_points_follow_the_gates() -> None:
    assert metric_points(spec_of("fraud")) == ((0.01,), (0.5,))
    assert metric_points(spec_of("credit")) == ((), ())


# ----------------------------------------------------------------------------- the stage


@pytest.fixture(scope="module")
def credit_run(
    credit_features: tuple[ModelSpec, Path], tmp_path_factory: pytest.TempPathFactory
) -> tuple[ModelSpec, Path, Path, Path]:
    """Credit features, a candidate and a different champion model."""
    base, features = credit_features
    root = tmp_path_factory.mktemp("credit")
    spec = with_training(base, num_boost_round=80)
    train(spec, features, root / "train")
    champion_spec = with_training(spec, params={"learning_rate": 0.1, "num_leaves": 4}, seed=5)
    train(champion_spec, features, root / "champion")
    return spec, features, root / "train", root / "champion" / "model.txt"


@pytest.fixture(scope="module")
def fraud_run(
    fraud_features: tuple[ModelSpec, Path], tmp_path_factory: pytest.TempPathFactory
) -> tuple[ModelSpec, Path, Path]:
    base, features = fraud_features
    root = tmp_path_factory.mktemp("fraud")
    spec = with_training(base, num_boost_round=60, early_stopping_rounds=15)
    train(spec, features, root / "train")
    evaluate(spec, features, root / "train", root / "evaluate")
    return spec, features, root / "evaluate"


def test_champion_scoring_path(
    credit_run: tuple[ModelSpec, Path, Path, Path], tmp_path: Path
) -> None:
    spec, features, train_dir, champion = credit_run
    result = evaluate(spec, features, train_dir, tmp_path, champion_model=champion)
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert set(metrics) == {
        "threshold",
        "candidate",
        "baseline",
        "champion",
        "business",
        "segments",
        "calibration",
    }
    for name in ("candidate", "baseline", "champion"):
        assert set(metrics[name]) == METRIC_KEYS
        assert metrics[name]["roc_auc"] > 0.7
        assert metrics["business"][name] is not None
    assert metrics["champion"]["roc_auc"] != metrics["candidate"]["roc_auc"]
    assert result.champion is not None and result.champion_model == champion

    scores = pd.read_parquet(tmp_path / "scores.parquet")
    assert list(scores.columns) == [
        "id",
        "target",
        "score",
        "baseline_score",
        "champion_score",
        "decision",
    ]
    test = read_split(spec, features, "test")
    assert scores["id"].tolist() == test["application_id"].tolist()
    np.testing.assert_array_equal(scores["champion_score"], score(load_model(champion), test))
    np.testing.assert_array_equal(scores["score"], score(load_model(train_dir / "model.txt"), test))
    assert (scores["decision"] == (scores["score"] >= 0.2).astype(int)).all()
    for plot in ("roc.png", "pr.png", "calibration.png"):
        assert (tmp_path / plot).read_bytes().startswith(PNG)
    assert json.loads((tmp_path / "result.json").read_text())["champion_model"] == str(champion)


@pytest.fixture(scope="module")
def credit_evaluated(
    credit_run: tuple[ModelSpec, Path, Path, Path], tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """The credit candidate evaluated without a champion (read-only)."""
    spec, features, train_dir, _ = credit_run
    out = tmp_path_factory.mktemp("credit-evaluate")
    evaluate(spec, features, train_dir, out)
    return out


def test_without_champion_the_champion_is_null(credit_evaluated: Path) -> None:
    metrics = json.loads((credit_evaluated / "metrics.json").read_text())
    assert metrics["champion"] is None and metrics["business"]["champion"] is None
    assert pd.read_parquet(credit_evaluated / "scores.parquet")["champion_score"].isna().all()


def test_evaluation_is_idempotent(
    credit_run: tuple[ModelSpec, Path, Path, Path], credit_evaluated: Path, tmp_path: Path
) -> None:
    spec, features, train_dir, _ = credit_run
    evaluate(spec, features, train_dir, tmp_path / "b")
    for name in ("metrics.json", "scores.parquet", "roc.png", "pr.png", "calibration.png"):
        assert (credit_evaluated / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name


def test_credit_segments_and_business(
    credit_run: tuple[ModelSpec, Path, Path, Path], credit_evaluated: Path
) -> None:
    spec = credit_run[0]
    metrics = json.loads((credit_evaluated / "metrics.json").read_text())
    rows = metrics["candidate"]["rows"]
    segments = metrics["segments"]
    assert set(segments) == {"region", "purpose", "age_band", "tenure_band"}
    # (metrics.json has sorted keys, so compare the labels as sets)
    assert set(segments["tenure_band"]) == {"[0, 24)", "[24, 60)", "[60, 120)", "[120, 800]"}
    assert set(segments["region"]) == set(spec.data.columns["region"].categories)
    for entries in segments.values():
        assert sum(e["rows"] for e in entries.values()) == rows
        for entry in entries.values():
            assert set(entry) == {"rows", "positives", "roc_auc", "pr_auc", "flag_rate"}
            assert 0 <= entry["flag_rate"] <= 1
    business = metrics["business"]["candidate"]
    assert business["approval_rate"] + business["decline_rate"] == pytest.approx(1.0)
    assert business["approval_rate"] == pytest.approx(1 - metrics["candidate"]["positive_rate"])
    assert 0 <= business["observed_default_rate_approved"] < 0.11  # below the overall rate
    calib = metrics["calibration"]
    assert len(calib["bins"]) == 10 and sum(calib["counts"]) == rows


def test_fraud_business_metrics_and_segments(fraud_run: tuple[ModelSpec, Path, Path]) -> None:
    spec, features, out = fraud_run
    metrics = json.loads((out / "metrics.json").read_text())
    test = read_split(spec, features, "test")
    cand = metrics["candidate"]
    assert cand["roc_auc"] > 0.85
    assert set(cand["recall_at_fpr"]) == {"0.01"} and set(cand["precision_at_recall"]) == {"0.5"}
    for name in ("candidate", "baseline"):
        business = metrics["business"][name]
        assert business["alert_budget"] == math.ceil(0.005 * len(test))
        assert 0 <= business["fraud_amount_caught"] <= business["fraud_amount_total"]
        assert business["fraud_amount_total"] == pytest.approx(
            test.loc[test["is_fraud"] == 1, "amount"].sum()
        )
        assert 0 <= business["fraud_amount_caught_ratio"] <= 1
        assert 0 <= business["false_positive_rate"] <= 1 and 0 <= business["alert_rate"] <= 1
    assert metrics["business"]["champion"] is None
    assert set(metrics["segments"]["tenure_band"]) == {
        "[0, 180)",
        "[180, 730)",
        "[730, 1825)",
        "[1825, 40000]",
    }
    ages = spec.data.columns["customer_age_band"].categories
    assert set(metrics["segments"]["age_band"]) == set(ages)
    assert sum(e["rows"] for e in metrics["segments"]["age_band"].values()) == len(test)


def test_no_positives_in_test_gives_nulls_and_a_warning(
    fraud_run: tuple[ModelSpec, Path, Path], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    spec, features, out = fraud_run
    copy = tmp_path / "features"
    copy.mkdir()
    for name in ("train.parquet", "validation.parquet", "features.json"):
        (copy / name).write_bytes((features / name).read_bytes())
    test = pd.read_parquet(features / "test.parquet")
    test = test[test["is_fraud"] == 0]
    test.to_parquet(copy / "test.parquet", index=False)
    train_dir = out.parent / "train"
    with caplog.at_level(logging.WARNING, logger="pipelines.evaluation"):
        evaluate(spec, copy, train_dir, tmp_path / "evaluate")
    assert "ranking metrics are null" in caplog.text
    metrics = json.loads((tmp_path / "evaluate" / "metrics.json").read_text())
    assert metrics["candidate"]["positives"] == 0
    assert metrics["candidate"]["roc_auc"] is None and metrics["baseline"]["pr_auc"] is None
    assert metrics["candidate"]["recall_at_fpr"] == {"0.01": None}
    assert metrics["business"]["candidate"]["fraud_amount_caught_ratio"] is None
    assert all(e["roc_auc"] is None for e in metrics["segments"]["channel"].values())
    assert (tmp_path / "evaluate" / "roc.png").read_bytes().startswith(PNG)
