"""TreeSHAP contributions and adverse-action reason codes (shared with the model server)."""

from __future__ import annotations

from pathlib import Path

import lightgbm as lgb
import numpy as np
import pandas as pd
import pytest

from pipelines.booster_layout import booster_categories, model_frame
from pipelines.errors import DataValidationError
from pipelines.reasons import (
    Reason,
    contributions,
    reason_codes,
)

COLOURS = ["red", "green", "blue"]
SIZES = ["s", "m", "l", "xl"]


def _frame(n: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=n)
    x[::23] = np.nan
    return pd.DataFrame(
        {
            "amount": x,
            "colour": pd.Categorical(rng.choice(COLOURS, n), categories=COLOURS),
            "count": rng.integers(0, 6, n).astype(np.int64),
            "size": pd.Categorical(rng.choice(SIZES, n), categories=SIZES),
        }
    )


@pytest.fixture(scope="module")
def trained() -> tuple[lgb.Booster, pd.DataFrame]:
    frame = _frame(3000, 0)
    rng = np.random.default_rng(1)
    logit = (
        np.nan_to_num(frame["amount"].to_numpy())
        + (frame["colour"] == "red") * 1.5
        + 0.4 * frame["count"]
        - (frame["size"] == "xl")
    )
    y = (rng.random(len(frame)) < 1 / (1 + np.exp(-(logit - 1.5)))).astype(int)
    params = {"objective": "binary", "verbose": -1, "seed": 3, "num_leaves": 7, "num_threads": 1}
    booster = lgb.train(params, lgb.Dataset(frame, y, categorical_feature="auto"), 25)
    return booster, frame


@pytest.fixture(scope="module")
def loaded(trained: tuple[lgb.Booster, pd.DataFrame], tmp_path_factory: pytest.TempPathFactory):
    path = tmp_path_factory.mktemp("model") / "model.txt"
    trained[0].save_model(str(path))
    return lgb.Booster(model_file=str(path))


def test_contributions_add_up_to_the_raw_score(
    trained: tuple[lgb.Booster, pd.DataFrame], loaded: lgb.Booster
) -> None:
    booster, frame = trained
    for model in (booster, loaded):
        contribs = contributions(model, frame)
        assert contribs.shape == (len(frame), 5)
        raw = model.predict(frame, raw_score=True)
        np.testing.assert_allclose(contribs.sum(axis=1), raw, atol=1e-10)
        np.testing.assert_allclose(
            contribs, model.predict(frame, pred_contrib=True), rtol=0, atol=1e-12
        )
        assert np.ptp(contribs[:, -1]) == 0  # the bias column is constant


def test_categories_are_retyped_like_training(
    trained: tuple[lgb.Booster, pd.DataFrame], loaded: lgb.Booster
) -> None:
    booster, frame = trained
    expected = contributions(loaded, frame)
    # strings, reordered categories, extra columns and another column order all give the
    # same contributions: categories are mapped by value through pandas_categorical
    as_text = frame.assign(colour=frame["colour"].astype(str), size=frame["size"].astype(str))
    reordered = frame.assign(
        colour=frame["colour"].cat.reorder_categories(["blue", "red", "green"]),
        other=1.0,
    )[["other", "size", "count", "colour", "amount"]]
    for variant in (as_text, reordered):
        np.testing.assert_allclose(contributions(loaded, variant), expected, atol=1e-12)
    assert booster_categories(loaded) == {"colour": COLOURS, "size": SIZES}
    assert booster_categories(booster) == {"colour": COLOURS, "size": SIZES}
    typed = model_frame(loaded, as_text)
    assert list(typed.columns) == ["amount", "colour", "count", "size"]
    assert list(typed["colour"].cat.categories) == COLOURS
    # an unseen category is treated as missing, exactly like a null
    unseen = frame.head(5).assign(colour=pd.Categorical(["purple"] * 5))
    missing = frame.head(5).assign(colour=pd.Categorical([None] * 5, categories=COLOURS))
    np.testing.assert_allclose(contributions(loaded, unseen), contributions(loaded, missing))


def test_contributions_errors_and_empty_frames(loaded: lgb.Booster) -> None:
    frame = _frame(10, 5)
    with pytest.raises(DataValidationError, match=r"\['count'\]"):
        contributions(loaded, frame.drop(columns=["count"]))
    with pytest.raises(DataValidationError, match="amount"):
        contributions(loaded, frame.assign(amount="high"))
    assert contributions(loaded, frame.head(0)).shape == (0, 5)


def test_reason_codes_positive_only_sorted_with_name_ties() -> None:
    names = ["b", "a", "d", "c", "e"]
    contribs = np.array(
        [
            [0.5, 0.5, -1.0, 0.2, 0.0, 9.0],  # tie a/b -> a first; zero and negatives dropped
            [-0.1, -0.2, -0.3, -0.4, -0.5, 1.0],  # nothing adverse
            [0.1, 0.2, 0.3, 0.4, 0.5, 0.0],  # more than k positive: top 4
        ]
    )
    labels = {"a": "Label A", "c": "Label C"}
    codes = reason_codes(contribs, names, labels, k=4)
    assert codes[0] == [
        Reason("a", "Label A", 0.5),
        Reason("b", "b", 0.5),
        Reason("c", "Label C", 0.2),
    ]
    assert codes[1] == []
    assert [r.feature for r in codes[2]] == ["e", "c", "d", "a"]
    assert all(isinstance(r, tuple) and len(r) == 3 for row in codes for r in row)
    assert isinstance(codes[0][0].contribution, float)
    # the bias column is optional
    assert reason_codes(contribs[:, :-1], names, labels, k=4) == codes
    assert [len(r) for r in reason_codes(contribs, names, labels, k=1)] == [1, 0, 1]


def test_reason_codes_match_a_plain_reference_implementation() -> None:
    rng = np.random.default_rng(7)
    names = [f"f{i:02d}" for i in range(15)]
    shuffled = list(rng.permutation(names))
    contribs = np.round(rng.normal(size=(500, 16)), 1)  # rounding makes many ties
    codes = reason_codes(contribs, shuffled, {}, k=4)
    for row, got in zip(contribs, codes, strict=True):
        pairs = [(v, n) for v, n in zip(row[:-1], shuffled, strict=True) if v > 0]
        expected = sorted(pairs, key=lambda t: (-t[0], t[1]))[:4]
        assert [(r.contribution, r.feature) for r in got] == expected


def test_reason_codes_rejects_bad_shapes() -> None:
    with pytest.raises(ValueError, match="columns"):
        reason_codes(np.zeros((2, 7)), ["a", "b"], {})
    with pytest.raises(ValueError, match="2-d"):
        reason_codes(np.zeros(3), ["a", "b", "c"], {})
    assert reason_codes(np.zeros((0, 3)), ["a", "b"], {}) == []


def test_contributions_on_a_saved_model_file(tmp_path: Path, loaded: lgb.Booster) -> None:
    """The loaded booster knows its categoricals from the model file alone."""
    frame = _frame(200, 9)
    contribs = contributions(loaded, frame)
    codes = reason_codes(contribs, loaded.feature_name(), {"colour": "Colour of item"})
    assert len(codes) == len(frame)
    flat = [r for row in codes for r in row]
    assert flat and all(r.contribution > 0 for r in flat)
    assert {r.label for r in flat if r.feature == "colour"} <= {"Colour of item"}
