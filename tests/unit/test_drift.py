"""Drift statistics against scipy's reference implementations."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from pipelines.drift import benjamini_hochberg, ks_matrix, psi, psi_matrix


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
