"""Drift statistics against scipy's reference implementations."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from pipelines.drift import compare
from pipelines.drift_stats import benjamini_hochberg, ks_matrix, psi, psi_matrix
from pipelines.errors import DataValidationError
from pipelines.spec_features import Segment
from pipelines.spec_operations import Drift


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
