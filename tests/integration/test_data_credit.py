"""Synthetic credit generator: schema, determinism, label model and the bias knob."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from pipelines.data.credit import (
    COLUMNS,
    CREDIT_CATEGORIES,
    DISADVANTAGED_GROUP,
    FEATURES,
    LOAN_TERMS,
    RACE_ETHNICITY,
    SEXES,
    CreditConfig,
    generate_credit,
    write_credit,
)
from pipelines.data.manifest import verify_manifest
from pipelines.errors import DataValidationError

N_ROWS = 30_000
SEED = 4

EXPECTED_DTYPES = {
    "application_id": "int64",
    "application_time": "datetime64[ns]",
    "customer_id": "int64",
    "income": "float64",
    "debt_to_income": "float64",
    "credit_utilisation": "float64",
    "credit_history_months": "int32",
    "delinquencies_2y": "int32",
    "inquiries_6m": "int32",
    "employment_years": "float64",
    "loan_amount": "float64",
    "loan_term_months": "int32",
    "purpose": "category",
    "home_ownership": "category",
    "region": "category",
    "postcode_risk_index": "float64",
    "age_band": "category",
    "sex": "category",
    "race_ethnicity": "category",
    "default_12m": "int8",
    "label_time": "datetime64[ns]",
}
NUMERIC_FEATURES = [c for c in FEATURES if EXPECTED_DTYPES[c] != "category"]


@pytest.fixture(scope="module")
def fair() -> pd.DataFrame:
    return generate_credit(CreditConfig(n_rows=N_ROWS, seed=SEED, bias=0.0))


@pytest.fixture(scope="module")
def biased() -> pd.DataFrame:
    return generate_credit(CreditConfig(n_rows=N_ROWS, seed=SEED, bias=0.8))


def test_columns_and_dtypes_are_exact(fair: pd.DataFrame) -> None:
    assert tuple(fair.columns) == COLUMNS
    assert {c: str(t) for c, t in fair.dtypes.items()} == EXPECTED_DTYPES
    assert len(fair) == N_ROWS
    assert {c for c, t in EXPECTED_DTYPES.items() if t == "category"} == set(CREDIT_CATEGORIES)
    for col, expected in CREDIT_CATEGORIES.items():
        assert tuple(fair[col].cat.categories) == expected, col
        assert fair[col].notna().all()
    assert len(RACE_ETHNICITY) == 5
    assert set(SEXES) == {"female", "male"}
    assert not {"age_band", "sex", "race_ethnicity"} & set(FEATURES)


def test_value_ranges(fair: pd.DataFrame) -> None:
    assert fair["application_id"].tolist() == list(range(1, N_ROWS + 1))
    assert fair["application_time"].is_monotonic_increasing
    assert fair["customer_id"].is_unique
    assert (fair["income"] > 0).all()
    assert fair["debt_to_income"].between(0, 1.5).all()
    assert fair["credit_utilisation"].between(0, 1.2).all()
    assert (fair["credit_utilisation"] > 1.0).any()
    assert set(fair["loan_term_months"].unique()) <= set(LOAN_TERMS)
    assert fair["loan_term_months"].nunique() == len(LOAN_TERMS)
    assert (fair["credit_history_months"] >= 0).all()
    assert (fair[["delinquencies_2y", "inquiries_6m"]] >= 0).all().all()
    assert (fair["employment_years"] >= 0).all()
    assert (fair["loan_amount"] > 0).all()
    assert fair["postcode_risk_index"].between(0, 1).all()
    assert fair["credit_history_months"].max() <= 800
    assert fair["loan_amount"].between(100, 1_000_000).all()


def test_label_time_is_twelve_months_later(fair: pd.DataFrame) -> None:
    months = (fair["label_time"].dt.year - fair["application_time"].dt.year) * 12 + (
        fair["label_time"].dt.month - fair["application_time"].dt.month
    )
    assert (months == 12).all()
    gap = fair["label_time"] - fair["application_time"]
    assert gap.between(pd.Timedelta(days=365), pd.Timedelta(days=366)).all()


@pytest.mark.parametrize("bias", [0.0, 0.5, 1.0])
def test_default_rate_is_realistic(bias: float) -> None:
    df = generate_credit(CreditConfig(n_rows=20_000, seed=1, bias=bias))
    assert 0.08 <= df["default_12m"].mean() <= 0.15
    assert set(df["default_12m"].unique()) == {0, 1}


def test_default_follows_the_risk_features(fair: pd.DataFrame) -> None:
    high_util = fair["credit_utilisation"] > fair["credit_utilisation"].quantile(0.8)
    low_util = fair["credit_utilisation"] < fair["credit_utilisation"].quantile(0.2)
    assert fair.loc[high_util, "default_12m"].mean() > 2 * fair.loc[low_util, "default_12m"].mean()
    delinquent = fair["delinquencies_2y"] > 0
    assert fair.loc[delinquent, "default_12m"].mean() > fair.loc[~delinquent, "default_12m"].mean()


def test_protected_attributes_only_weakly_linked_at_bias_zero(fair: pd.DataFrame) -> None:
    is_b = (fair["race_ethnicity"] == DISADVANTAGED_GROUP).astype(float)
    assert abs(np.corrcoef(fair["postcode_risk_index"], is_b)[0, 1]) < 0.1
    by_group = fair.groupby("race_ethnicity", observed=True)["default_12m"].mean()
    assert by_group.max() - by_group.min() < 0.05
    # realistic: older applicants have longer credit histories
    history = fair.groupby("age_band", observed=True)["credit_history_months"].median()
    assert history["65+"] > history["18-25"]


def test_bias_makes_postcode_a_proxy_and_shifts_the_label(
    fair: pd.DataFrame, biased: pd.DataFrame
) -> None:
    is_b = (biased["race_ethnicity"] == DISADVANTAGED_GROUP).astype(float)
    assert np.corrcoef(biased["postcode_risk_index"], is_b)[0, 1] > 0.4
    rate = biased.groupby("race_ethnicity", observed=True)["default_12m"].mean()
    others = rate.drop(DISADVANTAGED_GROUP)
    assert rate[DISADVANTAGED_GROUP] > 2 * others.max()
    # the applicants are the same people: only the proxy and the label move
    unchanged = [c for c in COLUMNS if c not in ("postcode_risk_index", "default_12m")]
    pd.testing.assert_frame_equal(fair[unchanged], biased[unchanged])


def _approval_ratio(df: pd.DataFrame) -> float:
    """Fit a logistic model on the features only (no protected attributes), approve the
    75 % lowest predicted risk, return min/max approval rate over race_ethnicity groups."""
    sklearn = pytest.importorskip("sklearn")
    assert sklearn is not None
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x = df[NUMERIC_FEATURES].to_numpy(dtype=float)
    logged = [NUMERIC_FEATURES.index(c) for c in ("income", "loan_amount")]
    x[:, logged] = np.log(x[:, logged])
    y = df["default_12m"].to_numpy()
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))
    model.fit(x, y)
    risk = model.predict_proba(x)[:, 1]
    approved = risk < np.quantile(risk, 0.75)
    rates = pd.Series(approved).groupby(df["race_ethnicity"].to_numpy()).mean()
    return float(rates.min() / rates.max())


def test_demographic_parity_holds_without_bias(fair: pd.DataFrame) -> None:
    assert _approval_ratio(fair) > 0.8


def test_demographic_parity_breaks_with_bias(biased: pd.DataFrame) -> None:
    assert _approval_ratio(biased) < 0.8


def test_same_seed_same_file_other_seed_differs(tmp_path: Path) -> None:
    cfg = CreditConfig(n_rows=5_000, seed=9, bias=0.3)
    a = write_credit(cfg, tmp_path / "a")
    b = write_credit(cfg, tmp_path / "b")
    c = write_credit(dataclasses.replace(cfg, seed=10), tmp_path / "c")
    assert a.sha256 == b.sha256
    assert a.sha256 != c.sha256
    assert a.rows == 5_000
    assert CreditConfig.from_params(a.params) == cfg
    assert verify_manifest(tmp_path / "a" / "credit_applications.manifest.json") == a
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "a" / a.path), generate_credit(cfg))


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("n_rows", 5),
        ("n_rows", "1000"),
        ("seed", -3),
        ("start", "2025-02-30"),
        ("days", 0),
        ("bias", 1.5),
        ("bias", -0.1),
        ("bias", float("inf")),
        ("bias", True),
    ],
)
def test_invalid_config_names_the_field(field: str, value: Any) -> None:
    kwargs: dict[str, Any] = {"n_rows": 1_000, field: value}
    with pytest.raises(DataValidationError, match=field):
        CreditConfig(**kwargs)
