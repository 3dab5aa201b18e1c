"""Drift found in generated worlds of 300,000 transactions (60 days): where it lives,
and the false discovery rate when there is none."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from pipelines.data.fraud import generate_fraud
from pipelines.data.fraud_config import FraudConfig
from pipelines.drift import compare
from pipelines.spec import load_spec

# ------------------------------------------------------------------------- compare()

FRAUD_SPEC = load_spec(Path(__file__).resolve().parents[2] / "specs" / "fraud.yaml")
NUMERIC = ["amount", "distance_from_home_km"]
CATEGORICAL = ["channel", "merchant_segment", "mcc"]


def _periods(**knobs: object) -> tuple[pd.DataFrame, pd.DataFrame]:
    """60 days of one generated world: the knobs act from day 30 (the current period)."""
    frame = generate_fraud(
        FraudConfig(n_rows=300_000, days=60, seed=3, fraud_rate=0.01, drift_from_day=30, **knobs)
    )
    cut = frame["tx_time"].min().normalize() + pd.Timedelta(days=30)
    return frame[frame["tx_time"] < cut], frame[frame["tx_time"] >= cut]


def _fraud_compare(reference: pd.DataFrame, current: pd.DataFrame):  # noqa: ANN202
    return compare(
        reference,
        current,
        numeric=NUMERIC,
        categorical=CATEGORICAL,
        segments=FRAUD_SPEC.segments,
        policy=FRAUD_SPEC.drift,
    )


def test_an_amount_shift_in_one_region_is_found_in_that_segment_only() -> None:
    report = _fraud_compare(*_periods(amount_shift=0.5, amount_shift_region="north"))
    assert report.drifted_features() == []  # diluted in the whole population
    assert report.drifted_segments() == {"region=north": ["amount"]}
    assert report.segment_only() == {"region=north": ["amount"]}
    north = report.table.query("segment == 'region' and value == 'north' and feature == 'amount'")
    assert north["significant"].item() and north["psi"].item() >= FRAUD_SPEC.drift.psi_warn


def test_a_new_fraud_pattern_is_significant_exactly_where_it_lives() -> None:
    """High-value online payments at crypto merchants (0.2 % of rows): BH finds the MCC
    mix and the amounts of online / marketplace payments, nothing about card-present
    amounts; the effect is too small for a drift alert (the decay check catches it once
    chargebacks arrive: tests/integration/test_monitoring.py)."""
    report = _fraud_compare(*_periods(new_fraud_pattern=True))
    found = report.table[report.table["significant"]]
    amount = found[found["feature"] == "amount"]
    assert set(zip(amount["segment"], amount["value"], strict=True)) == {
        ("channel", "online"), ("merchant_segment", "online_marketplace"),
    }  # fmt: skip
    mcc = found[found["feature"] == "mcc"]
    assert ("all", "all") in set(zip(mcc["segment"], mcc["value"], strict=True))
    assert report.drifted.empty  # significant, but below the spec's effect sizes
    quiet = _fraud_compare(*_periods())  # the same world without the pattern
    assert quiet.table[quiet.table["feature"] == "amount"]["significant"].sum() == 0


def test_a_new_merchant_segment_drifts_everywhere_except_card_present() -> None:
    report = _fraud_compare(*_periods(new_merchant_segment=True))
    assert report.drifted_features() == ["mcc", "merchant_segment"]
    row = report.population().loc["merchant_segment"]
    assert row["chi2_pvalue"] < 1e-12 and row["severity"] == "alarm"  # bnpl: never seen
    drifted = report.drifted_segments()
    assert set(map(tuple, drifted.values())) == {("mcc", "merchant_segment")}
    assert "channel=online" in drifted
    assert "channel=card_present" not in drifted  # BNPL is paid online only


def test_no_drift_over_200_repetitions_stays_within_the_false_discovery_rate() -> None:
    """Random halves of one data set (exchangeable: no drift by construction)."""
    frame = generate_fraud(FraudConfig(n_rows=24_000, days=30, seed=5))
    policy = FRAUD_SPEC.drift
    alarms = discoveries = unadjusted = 0
    for seed in range(200):
        half = np.random.default_rng(seed).random(len(frame)) < 0.5
        report = compare(
            frame[half], frame[~half], numeric=NUMERIC, categorical=CATEGORICAL,
            segments=FRAUD_SPEC.segments, policy=policy, workers=1,
        )  # fmt: skip
        alarms += bool(report.table["drifted"].any())
        discoveries += bool(report.table["significant"].any())
        unadjusted += bool((report.table["pvalue"] < policy.false_discovery_rate).any())
    assert alarms / 200 <= policy.false_discovery_rate  # no drift alert beyond the rate
    # the statistical layer alone: under the complete null BH's false discovery rate is
    # the chance of any discovery; allow two binomial standard errors over 200 runs
    q = policy.false_discovery_rate
    assert discoveries / 200 <= q + 2 * np.sqrt(q * (1 - q) / 200)
    assert unadjusted / 200 > 0.5  # 120 tests a run: without the correction, most runs alarm
