"""Drift statistics against scipy's reference implementations."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from pipelines.data.fraud import FraudConfig, generate_fraud
from pipelines.drift import benjamini_hochberg, compare, ks_matrix, psi, psi_matrix
from pipelines.errors import DataValidationError
from pipelines.spec import Drift, Segment, load_spec


def test_ks_agrees_with_scipy_for_small_and_large_samples() -> None:
    rng = np.random.default_rng(7)
    for n in (300, 30_000):  # exact p-values, then the asymptotic ones
        reference = rng.normal(size=(n, 4))
        current = rng.normal(size=(n // 2, 4))
        current[:, 1] += 0.1  # a small shift in one feature
        current[:, 3] = np.round(current[:, 3], 1)  # ties
        reference[::17, 2] = np.nan  # missing values are ignored
        statistic, pvalue = ks_matrix(reference, current)
        for j in range(4):
            a, b = reference[:, j], current[:, j]
            expected = stats.ks_2samp(a[~np.isnan(a)], b[~np.isnan(b)])
            assert statistic[j] == pytest.approx(expected.statistic, abs=1e-12)
            assert pvalue[j] == pytest.approx(expected.pvalue, abs=1e-6)
        assert pvalue[1] < 0.01 < pvalue[0]


def test_psi_matrix_is_psi_per_column_and_flags_a_shift() -> None:
    rng = np.random.default_rng(8)
    reference = rng.lognormal(3, 1, size=(20_000, 3))
    current = rng.lognormal(3, 1, size=(20_000, 3))
    current[:, 2] *= 1.5
    values = psi_matrix(reference, current)
    assert values[0] < 0.01 and values[1] < 0.01 and values[2] > 0.1
    assert values[2] == psi(reference[:, 2], current[:, 2])


def test_benjamini_hochberg_matches_scipy() -> None:
    rng = np.random.default_rng(9)
    pvalues = np.concatenate([rng.uniform(size=90), rng.uniform(0, 0.001, size=10)])
    rejected, adjusted = benjamini_hochberg(pvalues, 0.05)
    assert np.allclose(adjusted, stats.false_discovery_control(pvalues, method="bh"))
    assert rejected[90:].all() and rejected.sum() < 15


@pytest.mark.parametrize(
    ("call", "needle"),
    [
        (lambda: benjamini_hochberg(np.array([0.5, 1.2]), 0.05), r"\[0, 1\]"),
        (lambda: benjamini_hochberg(np.array([0.5]), 1.5), "false discovery rate"),
        (lambda: ks_matrix(np.zeros((5, 2)), np.zeros((5, 3))), "same columns"),
        (lambda: psi(np.array([np.nan]), np.array([1.0])), "both sides"),
    ],
)
def test_bad_input_is_named(call, needle: str) -> None:  # noqa: ANN001
    with pytest.raises(ValueError, match=needle):
        call()


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


def test_compare_statistics_equal_scipy_on_the_population_and_a_segment() -> None:
    from scipy.spatial import distance

    rng = np.random.default_rng(12)
    n = 4_000
    ref = pd.DataFrame({
        "x": rng.lognormal(size=n), "c": rng.choice(list("abcd"), n), "s": rng.choice(["u", "v"], n)
    })  # fmt: skip
    cur = pd.DataFrame({
        "x": rng.lognormal(0.1, size=n), "c": rng.choice(list("abcd"), n, p=[0.4, 0.2, 0.2, 0.2]),
        "s": rng.choice(["u", "v"], n),
    })  # fmt: skip
    ref.loc[::50, "x"] = np.nan
    report = compare(
        ref, cur, numeric=["x"], categorical=["c"], segments=[Segment(name="s", column="s")],
        policy=Drift(min_segment_rows=10),
    )  # fmt: skip
    table = report.table.set_index(["segment", "value", "feature"])
    for seg, mask_r, mask_c in (
        ("all", ref.index >= 0, cur.index >= 0),
        ("u", ref.s == "u", cur.s == "u"),
    ):
        key = ("all", "all") if seg == "all" else ("s", "u")
        a, b = ref.x[mask_r].dropna().to_numpy(), cur.x[mask_c].to_numpy()
        row = table.loc[(*key, "x")]
        ks = stats.ks_2samp(a, b)
        assert row["ks_statistic"] == pytest.approx(ks.statistic, abs=1e-12)
        assert row["ks_pvalue"] == pytest.approx(ks.pvalue, abs=1e-9)
        assert row["wasserstein"] == pytest.approx(stats.wasserstein_distance(a, b), rel=1e-9)
        assert row["wasserstein_norm"] == pytest.approx(row["wasserstein"] / np.std(a))
        assert row["missing_reference"] == pytest.approx(1 - len(a) / mask_r.sum())
        edges = np.unique(np.quantile(a, np.linspace(0, 1, 11))[1:-1])
        p = np.bincount(np.searchsorted(edges, a, side="right"), minlength=len(edges) + 1)
        q = np.bincount(np.searchsorted(edges, b, side="right"), minlength=len(edges) + 1)
        assert row["js_distance"] == pytest.approx(distance.jensenshannon(p / p.sum(), q / q.sum()))
        pp, qq = np.maximum(p / p.sum(), 1e-4), np.maximum(q / q.sum(), 1e-4)
        assert row["psi"] == pytest.approx(np.sum((qq - pp) * np.log(qq / pp)))
        counts = pd.crosstab(
            np.r_[np.zeros(mask_r.sum()), np.ones(mask_c.sum())],
            np.r_[ref.c[mask_r].to_numpy(), cur.c[mask_c].to_numpy()],
        )
        chi2, pvalue, *_ = stats.chi2_contingency(counts.to_numpy(), correction=False)
        crow = table.loc[(*key, "c")]
        assert crow["chi2_statistic"] == pytest.approx(chi2)
        assert crow["chi2_pvalue"] == pytest.approx(pvalue)
    adjusted = stats.false_discovery_control(report.table["pvalue"].to_numpy(), method="bh")
    assert np.allclose(report.table["pvalue_adjusted"], adjusted)


def test_missing_categories_and_small_segments() -> None:
    ref = pd.DataFrame({"c": ["a", "b"] * 500, "s": ["big"] * 990 + ["tiny"] * 10})
    cur = pd.DataFrame({"c": ["a", None] * 500, "s": ["big"] * 990 + ["tiny"] * 10})
    report = compare(
        ref, cur, numeric=[], categorical=["c"], segments=[Segment(name="s", column="s")],
        policy=Drift(min_segment_rows=50),
    )  # fmt: skip
    whole = report.population().loc["c"]
    assert whole["chi2_pvalue"] < 1e-100 and whole["severity"] == "alarm"  # "(missing)" is new
    tiny = report.table.query("value == 'tiny'")
    assert tiny["skipped"].str.contains("fewer than 50").all() and tiny["pvalue"].isna().all()
    assert report.summary()["skipped_segments"] == ["s=tiny"]


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"numeric": ["nope"]}, r"lacks column\(s\) \['nope'\]"),
        ({"numeric": ["c"]}, "numeric feature 'c' has non-numeric values"),
        ({"numeric": []}, "no features"),
        ({"numeric": ["x"], "categorical": ["x"]}, "numeric and categorical"),
    ],
)
def test_compare_names_bad_input(kwargs: dict, needle: str) -> None:
    frame = pd.DataFrame({"x": [1.0, 2.0], "c": ["a", "b"]})
    with pytest.raises(DataValidationError, match=needle):
        compare(frame, frame, **kwargs)
    with pytest.raises(DataValidationError, match="current data has no rows"):
        compare(frame, frame.iloc[:0], numeric=["x"])
