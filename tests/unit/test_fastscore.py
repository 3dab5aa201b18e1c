"""RowScorer: LightGBM's single-row fast C API gives bit-for-bit Booster.predict's scores."""

from __future__ import annotations

import lightgbm as lgb
import numpy as np
import pandas as pd
import pytest

from serving.fastscore import RowScorer


def _booster(rows: int = 4000, **params: object) -> tuple[lgb.Booster, np.ndarray]:
    rng = np.random.default_rng(3)
    frame = pd.DataFrame(
        {
            "amount": rng.lognormal(3, 1, rows),
            "hour": rng.integers(0, 24, rows).astype(float),
            "channel": pd.Categorical(rng.choice(["pos", "web", "atm"], rows)),
            "noise": rng.normal(size=rows),
        }
    )
    frame.loc[rng.random(rows) < 0.05, "amount"] = np.nan
    y = ((frame["amount"].fillna(0) > 40) ^ (frame["channel"] == "web")).astype(int)
    base = {"objective": "binary", "verbosity": -1, "seed": 1, "num_leaves": 15}
    booster = lgb.train({**base, **params}, lgb.Dataset(frame, y), num_boost_round=60)
    matrix = frame.assign(channel=frame["channel"].cat.codes.astype(float)).to_numpy(float)
    return booster, matrix


def test_every_single_row_score_is_identical_nan_and_categories_included() -> None:
    booster, matrix = _booster()
    scorer = RowScorer(booster)
    expected = booster.predict(matrix)
    got = np.array([scorer.score(row) for row in matrix])
    assert np.isnan(matrix).any()
    assert np.array_equal(got, expected)  # exactly, not approximately
    one_by_one = np.array([booster.predict(matrix[i : i + 1])[0] for i in range(200)])
    assert np.array_equal(got[:200], one_by_one)


def test_predict_uses_the_fast_path_for_one_row_and_booster_predict_for_more() -> None:
    booster, matrix = _booster()
    scorer = RowScorer(booster)
    assert np.array_equal(scorer.predict(matrix[:1]), booster.predict(matrix[:1]))
    assert np.array_equal(scorer.predict(matrix[:50]), booster.predict(matrix[:50]))
    assert scorer.predict(matrix[:1]).dtype == np.float64


def test_a_saved_and_reloaded_model_with_early_stopping_scores_alike(tmp_path) -> None:  # noqa: ANN001
    booster, matrix = _booster()
    path = tmp_path / "model.txt"
    booster.save_model(str(path), num_iteration=40)  # as the pipeline saves the best iteration
    loaded = lgb.Booster(model_file=str(path))
    scorer = RowScorer(loaded)
    assert np.array_equal(
        np.array([scorer.score(r) for r in matrix[:500]]), loaded.predict(matrix[:500])
    )


def test_multiclass_models_are_refused_so_callers_fall_back() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 3))
    booster = lgb.train(
        {"objective": "multiclass", "num_class": 3, "verbosity": -1},
        lgb.Dataset(x, rng.integers(0, 3, 300)),
        num_boost_round=5,
    )
    with pytest.raises(ValueError, match="single-output"):
        RowScorer(booster)


def test_a_row_of_the_wrong_width_is_refused() -> None:
    booster, _ = _booster(rows=500)
    scorer = RowScorer(booster)
    with pytest.raises(ValueError):
        scorer.score([1.0, 2.0])
