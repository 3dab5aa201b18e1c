"""Synthetic consumer-credit applications with protected attributes and a bias knob.

Each row is one loan application with bureau-style features, the applicant's
protected attributes stored beside them (``age_band``, ``sex``, ``race_ethnicity``)
and the outcome ``default_12m`` observed twelve months later (``label_time``).

With ``bias = 0`` the default label comes from a logistic model of the features
only, and the protected attributes are only weakly related to the features (income
varies a little by group and sex, credit history grows with age), so a model that
does not see the protected attributes can treat the groups about equally (young
applicants default a little more, through thinner files and lower incomes).

With ``bias > 0`` two things happen, both proportional to ``bias``:

* ``postcode_risk_index`` (a score in [0, 1]) shifts upwards for applicants in
  :data:`DISADVANTAGED_GROUP`, so it becomes a strong proxy for ``race_ethnicity``;
* the *recorded* default label of that group is shifted upwards (historically biased
  outcomes: a group-dependent term in the label's log-odds).

A model trained on the features then picks the group up through the proxy and
approves that group far less often (demographic-parity ratio well below 0.8 at
``bias = 0.8``). The intercept is calibrated so the overall default rate stays near
11 % for any ``bias``.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass

import numpy as np
import pandas as pd

from pipelines.data.generator_config import GeneratorConfig
from pipelines.data.manifest import Manifest, write_parquet_with_manifest
from pipelines.errors import DataValidationError

log = logging.getLogger(__name__)

DATASET_NAME = "credit_applications"
GENERATOR = "pipelines.data.credit.generate_credit"

PURPOSES: tuple[str, ...] = (
    "debt_consolidation",
    "home_improvement",
    "car",
    "education",
    "medical",
    "small_business",
    "other",
)
HOME_OWNERSHIP: tuple[str, ...] = ("rent", "mortgage", "own")
REGIONS: tuple[str, ...] = ("north", "south", "east", "west", "central")
AGE_BANDS: tuple[str, ...] = ("18-25", "26-35", "36-50", "51-65", "65+")
SEXES: tuple[str, ...] = ("female", "male")
RACE_ETHNICITY: tuple[str, ...] = ("group_a", "group_b", "group_c", "group_d", "group_e")
DISADVANTAGED_GROUP = "group_b"
LOAN_TERMS: tuple[int, ...] = (12, 24, 36, 48, 60)
PROTECTED_ATTRIBUTES: tuple[str, ...] = ("age_band", "sex", "race_ethnicity")
FEATURES: tuple[str, ...] = (
    "income",
    "debt_to_income",
    "credit_utilisation",
    "credit_history_months",
    "delinquencies_2y",
    "inquiries_6m",
    "employment_years",
    "loan_amount",
    "loan_term_months",
    "purpose",
    "home_ownership",
    "region",
    "postcode_risk_index",
)
CREDIT_CATEGORIES: dict[str, tuple[str, ...]] = {
    "purpose": PURPOSES,
    "home_ownership": HOME_OWNERSHIP,
    "region": REGIONS,
    "age_band": AGE_BANDS,
    "sex": SEXES,
    "race_ethnicity": RACE_ETHNICITY,
}
"""The categorical columns and their categories, in code order."""
TARGET = "default_12m"
COLUMNS: tuple[str, ...] = (
    "application_id",
    "application_time",
    "customer_id",
    *FEATURES,
    *PROTECTED_ATTRIBUTES,
    TARGET,
    "label_time",
)

TARGET_DEFAULT_RATE = 0.11

_RACE_P = np.array([0.58, 0.14, 0.17, 0.07, 0.04])
_SEX_P = np.array([0.49, 0.51])
_AGE_BAND_P = np.array([0.14, 0.24, 0.30, 0.21, 0.11])
_AGE_LOW = np.array([18, 26, 36, 51, 66])
_AGE_HIGH = np.array([25, 35, 50, 65, 80])
_PURPOSE_P = np.array([0.38, 0.12, 0.14, 0.06, 0.05, 0.07, 0.18])
_PURPOSE_AMOUNT = np.array([0.05, 0.20, 0.10, -0.25, -0.35, 0.35, -0.30])  # log-scale
_PURPOSE_RISK = np.array([0.10, -0.15, -0.10, 0.05, 0.20, 0.35, 0.0])
_HOME_RISK = np.array([0.15, -0.10, -0.20])
# weak, realistic links at bias 0: residential patterns and a small income gap
_REGION_P_BY_RACE = np.array(
    [
        [0.20, 0.18, 0.20, 0.20, 0.22],
        [0.18, 0.26, 0.18, 0.16, 0.22],
        [0.16, 0.24, 0.20, 0.22, 0.18],
        [0.20, 0.16, 0.24, 0.18, 0.22],
        [0.20, 0.20, 0.20, 0.20, 0.20],
    ]
)
_RACE_INCOME = np.array([0.0, -0.04, -0.03, 0.03, 0.0])
_SEX_INCOME = np.array([-0.04, 0.0])
_REGION_INCOME = np.array([0.02, -0.05, 0.03, -0.02, 0.06])
_REGION_POSTCODE = np.array([-0.2, 0.3, -0.1, 0.1, -0.1])
_PROXY_SHIFT = 3.0  # postcode latent shift of the disadvantaged group at bias = 1
_LABEL_SHIFT = 2.5  # log-odds shift of its recorded label at bias = 1


@dataclass(frozen=True)
class CreditConfig(GeneratorConfig):
    """Parameters of one synthetic credit data set."""

    n_rows: int
    seed: int = 0
    start: str = "2025-01-01"
    days: int = 365
    bias: float = 0.0

    def __post_init__(self) -> None:
        self.check_int("n_rows", 100, 200_000_000)
        self.check_int("seed", 0, 2**63 - 1)
        self.check_date("start")
        self.check_int("days", 1, 3_660)
        bias = self.bias
        if (
            not isinstance(bias, int | float | np.floating)
            or isinstance(bias, bool)
            or not math.isfinite(float(bias))
            or not 0.0 <= float(bias) <= 1.0
        ):
            raise DataValidationError(f"CreditConfig.bias must be a number in [0, 1], got {bias!r}")


def _z(x: np.ndarray) -> np.ndarray:
    sd = float(x.std())
    return (x - x.mean()) / (sd if sd > 0 else 1.0)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _calibrate_intercept(logit: np.ndarray, target: float) -> float:
    """Intercept b with mean(sigmoid(logit + b)) == target (bisection, deterministic)."""
    low, high = -15.0, 15.0
    for _ in range(60):
        mid = (low + high) / 2
        if float(_sigmoid(logit + mid).mean()) < target:
            low = mid
        else:
            high = mid
    return (low + high) / 2


def _categorical(codes: np.ndarray, column: str) -> pd.Categorical:
    categories = list(CREDIT_CATEGORIES[column])
    return pd.Categorical.from_codes(codes.astype(np.int8), categories=categories)


@dataclass(frozen=True)
class _Applicants:
    """Who applies: protected attributes, where they live, income, bureau data."""

    race: np.ndarray
    sex: np.ndarray
    age_band: np.ndarray
    is_disadvantaged: np.ndarray
    region: np.ndarray
    log_income: np.ndarray
    income: np.ndarray
    employment_years: np.ndarray
    history: np.ndarray
    home: np.ndarray
    dti: np.ndarray
    util: np.ndarray
    delinquencies: np.ndarray
    inquiries: np.ndarray


def _applicants(rng: np.random.Generator, n: int) -> _Applicants:
    # protected attributes
    race = rng.choice(len(RACE_ETHNICITY), size=n, p=_RACE_P)
    sex = rng.choice(len(SEXES), size=n, p=_SEX_P)
    age_band = rng.choice(len(AGE_BANDS), size=n, p=_AGE_BAND_P)
    age = rng.uniform(_AGE_LOW[age_band], _AGE_HIGH[age_band] + 1)
    is_disadvantaged = race == RACE_ETHNICITY.index(DISADVANTAGED_GROUP)

    # where people live (weakly related to group)
    region_cdf = np.cumsum(_REGION_P_BY_RACE[race], axis=1)
    region = np.minimum((rng.random(n)[:, None] > region_cdf).sum(axis=1), len(REGIONS) - 1)

    # income and employment
    career = 0.12 * (1.0 - ((age - 50.0) / 32.0) ** 2)
    log_income = (
        np.log(38_000.0)
        + career
        + _RACE_INCOME[race]
        + _SEX_INCOME[sex]
        + _REGION_INCOME[region]
        + rng.normal(0.0, 0.45, size=n)
    )
    income = np.maximum(np.round(np.exp(log_income), -2), 8_000.0)
    employment_years = np.round(np.minimum(rng.gamma(2.0, 3.5, size=n), age - 18.0), 1)
    file_age = np.minimum((age - 18.0) * 12.0 * rng.beta(3.0, 1.2, size=n), 790.0)
    history = np.minimum(file_age, rng.lognormal(np.log(130.0), 0.7, size=n)).astype(np.int64)
    history = history + rng.integers(0, 6, size=n)
    home_score = 0.07 * (age - 38.0) + 1.2 * (log_income - np.log(38_000.0))
    home_score = home_score + rng.logistic(0.0, 1.0, size=n)
    home = np.where(home_score < 0.0, 0, np.where(home_score < 2.2, 1, 2))

    # bureau data
    dti = np.round(np.clip(rng.lognormal(np.log(0.28), 0.5, size=n), 0.0, 1.5), 3)
    util = rng.beta(1.6, 2.4, size=n) * 1.05
    over = rng.random(n) < 0.04
    util = np.where(over, rng.uniform(1.0, 1.2, size=n), util)
    util = np.round(np.clip(util, 0.0, 1.2), 3)
    delinquencies = rng.poisson(0.12 + 0.6 * util**2)
    inquiries = rng.poisson(np.where(age < 30, 1.1, 0.9))
    return _Applicants(
        race, sex, age_band, is_disadvantaged, region, log_income, income,
        employment_years, history, home, dti, util, delinquencies, inquiries,
    )  # fmt: skip


def _loan(
    rng: np.random.Generator, income: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The loan applied for: purpose, amount and the index of its term in LOAN_TERMS."""
    n = len(income)
    purpose = rng.choice(len(PURPOSES), size=n, p=_PURPOSE_P)
    loan_ratio = rng.lognormal(np.log(0.22) + _PURPOSE_AMOUNT[purpose], 0.5, size=n)
    loan_amount = np.round(np.clip(income * loan_ratio, 1_000.0, 150_000.0) / 50.0) * 50.0
    term_idx = np.floor(1.2 * np.log(loan_amount / 3_000.0) + rng.normal(0.0, 0.8, size=n) + 1.0)
    return purpose, loan_amount, np.clip(term_idx, 0, len(LOAN_TERMS) - 1).astype(np.int64)


def _default_logit(
    p: _Applicants,
    loan_amount: np.ndarray,
    term_idx: np.ndarray,
    purpose: np.ndarray,
    postcode_base: np.ndarray,
    bias: float,
) -> np.ndarray:
    """The outcome: features only, plus (with bias) a group shift of the recorded label."""
    logit = (
        # non-linear, as in real bureau data: risk jumps past the 43% DTI line and for
        # maxed-out revolving credit, and delinquencies weigh more on a thin file
        0.45 * _z(p.dti)
        + 1.10 * (p.dti > 0.43)
        + 0.40 * _z(p.util)
        + 1.40 * np.clip((p.util - 0.8) / 0.2, 0.0, 2.0)
        + 0.50 * p.delinquencies * (1.0 + 0.8 * (p.history < 36))
        + 0.60 * (p.history < 24)
        + 0.15 * p.inquiries
        - 0.50 * _z(p.log_income)
        - 0.12 * _z(p.history.astype(float))
        - 0.08 * _z(p.employment_years)
        + 0.30 * _z(np.log(loan_amount / p.income))
        + 0.10 * (term_idx - 2)
        + _PURPOSE_RISK[purpose]
        + _HOME_RISK[p.home]
        + 0.35 * _z(postcode_base)
        + _LABEL_SHIFT * bias * p.is_disadvantaged
    )
    return logit + _calibrate_intercept(logit, TARGET_DEFAULT_RATE)


def generate_credit(cfg: CreditConfig) -> pd.DataFrame:
    """One synthetic credit data set (columns :data:`COLUMNS`, sorted by application time)."""
    rng = np.random.default_rng([cfg.seed, 0])
    n = cfg.n_rows
    p = _applicants(rng, n)

    purpose, loan_amount, term_idx = _loan(rng, p.income)
    term = np.asarray(LOAN_TERMS)[term_idx]

    # postcode risk index: local economy, plus (with bias) a proxy for the group
    postcode_base = _REGION_POSTCODE[p.region] + rng.normal(0.0, 1.0, size=n)
    postcode_latent = postcode_base + _PROXY_SHIFT * cfg.bias * p.is_disadvantaged
    postcode_index = np.round(_sigmoid(0.9 * postcode_latent), 4)

    logit = _default_logit(p, loan_amount, term_idx, purpose, postcode_base, cfg.bias)
    default = (rng.random(n) < _sigmoid(logit)).astype(np.int8)

    # when: business hours over the period, ids in time order
    start = np.datetime64(cfg.start, "s")
    day = rng.integers(0, cfg.days, size=n)
    seconds = day * 86_400 + rng.integers(8 * 3600, 21 * 3600, size=n)
    order = np.argsort(seconds, kind="stable")
    app_time = pd.DatetimeIndex((start + np.sort(seconds)).astype("datetime64[ns]"))
    customer_id = 1_000_000 + rng.permutation(n).astype(np.int64)

    def o(a: np.ndarray) -> np.ndarray:
        return a[order]

    df = pd.DataFrame(
        {
            "application_id": np.arange(1, n + 1, dtype=np.int64),
            "application_time": app_time,
            "customer_id": customer_id,
            "income": o(p.income).astype(np.float64),
            "debt_to_income": o(p.dti),
            "credit_utilisation": o(p.util),
            "credit_history_months": o(p.history).astype(np.int32),
            "delinquencies_2y": o(p.delinquencies).astype(np.int32),
            "inquiries_6m": o(p.inquiries).astype(np.int32),
            "employment_years": o(p.employment_years),
            "loan_amount": o(loan_amount),
            "loan_term_months": o(term).astype(np.int32),
            "purpose": _categorical(o(purpose), "purpose"),
            "home_ownership": _categorical(o(p.home), "home_ownership"),
            "region": _categorical(o(p.region), "region"),
            "postcode_risk_index": o(postcode_index),
            "age_band": _categorical(o(p.age_band), "age_band"),
            "sex": _categorical(o(p.sex), "sex"),
            "race_ethnicity": _categorical(o(p.race), "race_ethnicity"),
            TARGET: o(default),
            "label_time": app_time + pd.DateOffset(months=12),
        }
    )
    log.info(
        "generated %d credit applications (bias %.2f, default rate %.3f)",
        n,
        cfg.bias,
        float(df[TARGET].mean()),
    )
    return df


def write_credit(
    cfg: CreditConfig, out_dir: str | os.PathLike[str], name: str = DATASET_NAME
) -> Manifest:
    """Write ``<out_dir>/<name>.parquet`` and its manifest."""
    return write_parquet_with_manifest(
        generate_credit(cfg), out_dir, name, cfg.to_params(), generator=GENERATOR
    )
